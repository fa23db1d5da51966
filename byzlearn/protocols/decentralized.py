"""Decentralised learning: peers on a graph, no server (Collaborative Learning in the Jungle,
NeurIPS 2021; MoNNA, ICML 2023).

The n workers of the config are peers, each with its own data, model ``theta_i`` and local
momentum; f of them are Byzantine (:class:`~byzlearn.protocols.adversary.ByzantineNodes`,
running the config's ``attack`` on the vectors peers exchange). One step t of honest peer i:

1. ``v_i = mu v_i + g_i(theta_i)`` (the config's worker momentum, local steps, clipping);
   half step ``x_i = theta_i - lr_t v_i``;
2. ``mixing_rounds`` times: send ``x_i`` to its neighbours, receive theirs (the first ``deg(i)``,
   or what came by ``deadline``), and replace ``x_i`` by the mixing of its own vector and the
   received ones ``R_i``:

   - ``nna`` (nearest-neighbour averaging, MoNNA): the mean of the ``|R_i| + 1 - f`` vectors of
     ``{x_i} + R_i`` nearest to ``x_i`` (``x_i`` itself included; none when ``|R_i| < f``);
   - ``rule``: the config's rule on ``{x_i} + R_i`` with the declared f: ``trimmed_mean``
     repeated over rounds is the iterated coordinate-wise trimmed mean of LEARN / RB-TM,
     ``mda`` the MDA-based averaging agreement, ``centered_clipping`` (centred at ``x_i``:
     self-centred clipping, SCC), or any other rule;
   - ``gossip``: the plain mean of ``{x_i} + R_i`` (D-SGD, the non-robust baseline);
3. ``theta_i = x_i``.

A peer that received fewer vectors than its mixing needs keeps its own (``kept_own``). The
topology (complete, ring, random regular, Erdos-Renyi, explicit edges) is the engine's: messages
along a missing edge are never delivered. Records: the honest peers' model diameter (largest
distance between two honest models) and the mean distance of honest models to their mean.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field, model_validator

import byzlearn.aggregators as agg
from byzlearn.engines.base import Engine, Message, Node
from byzlearn.engines.topology import (
    Complete,
    ErdosRenyi,
    Explicit,
    RandomRegular,
    Ring,
    Topology,
)
from byzlearn.protocols.adversary import ByzantineNodes, NodeAttackConfig
from byzlearn.protocols.base import STRICT_OPTIONS, Protocol, World, diameter, register
from byzlearn.protocols.workers import ComputeWorkers, computing_workers

__all__ = ["DecentralizedOptions", "DecentralizedProtocol", "TopologyConfig", "nna"]


#: the options each topology reads (any other one given is refused, not ignored)
_TAKES = {
    "complete": (),
    "ring": ("k",),
    "random_regular": ("degree", "seed"),
    "erdos_renyi": ("p", "seed"),
    "explicit": ("edges",),
}


class TopologyConfig(BaseModel):
    """The peers' graph: ``complete``, ``ring`` (``k`` neighbours per side),
    ``random_regular`` (``degree``), ``erdos_renyi`` (``p``) or ``explicit`` (``edges``)."""

    model_config = STRICT_OPTIONS

    name: Literal["complete", "ring", "random_regular", "erdos_renyi", "explicit"] = "complete"
    degree: int | None = Field(None, ge=1)
    k: int = Field(1, ge=1)
    p: float | None = Field(None, gt=0, le=1)
    edges: list[list[int]] | None = Field(None, description="explicit: [[a, b], ...] peer indices")
    seed: int | None = Field(None, ge=0, description="random graphs (default: the run's seed)")

    @model_validator(mode="after")
    def _needed(self) -> TopologyConfig:
        need = {"random_regular": "degree", "erdos_renyi": "p", "explicit": "edges"}.get(self.name)
        if need is not None and getattr(self, need) is None:
            raise ValueError(f"{need}: topology {self.name} needs {need}")
        takes = _TAKES[self.name]
        for key, default in (("degree", None), ("k", 1), ("p", None), ("edges", None)):
            if key not in takes and getattr(self, key) != default:  # a ring's degree: k=1
                raise ValueError(
                    f"{key}: topology {self.name} takes {' and '.join(takes) or 'no option'}, "
                    f"not {key}"
                )
        if self.seed is not None and "seed" not in takes:
            raise ValueError(f"seed: topology {self.name} is not random, it takes no seed")
        bad = [e for e in self.edges or [] if len(e) != 2]
        if bad:
            raise ValueError(f"edges: each edge is a pair [a, b] of peer indices, got {bad[0]}")
        return self

    def build(self, ids: list[int], seed: int) -> Topology:
        """The topology over the peers' node ids (``edges`` name peer indices)."""
        s = seed if self.seed is None else self.seed
        if self.name == "complete":
            return Complete()
        if self.name == "ring":
            return Ring(ids, self.k)
        if self.name == "random_regular":
            return RandomRegular(ids, int(self.degree or 0), seed=s)
        if self.name == "erdos_renyi":
            return ErdosRenyi(ids, float(self.p or 0), seed=s)
        edges = self.edges or []
        bad = [e for e in edges if not all(0 <= v < len(ids) for v in e)]
        if bad:
            raise ValueError(
                f"topology.edges: peer indices must be in [0, {len(ids)}), got {bad[0]}"
            )
        return Explicit(ids, [(ids[a], ids[b]) for a, b in edges])


class DecentralizedOptions(BaseModel):
    """Config section ``protocol: {name: decentralized, ...}``."""

    model_config = STRICT_OPTIONS

    name: Literal["decentralized"] = "decentralized"
    topology: TopologyConfig = Field(default_factory=TopologyConfig)
    mixing: Literal["nna", "rule", "gossip"] = Field(
        "nna", description="nna (MoNNA), rule (the config's rule on own + received), gossip"
    )
    mixing_rounds: int = Field(1, ge=1, description="exchanges per step (iterated mixing)")
    deadline: float | None = Field(None, gt=0, description="simulated seconds to wait")
    equivocate: bool = Field(
        False, description="Byzantine peers send each neighbour another vector"
    )

    def method_label(self, rule: str) -> str:
        """How reports name this method: ``decentralized/nna@random_regular8``."""
        mixing = rule if self.mixing == "rule" else self.mixing
        t = self.topology
        extra = {"random_regular": t.degree, "ring": t.k, "erdos_renyi": t.p}.get(t.name, "")
        rounds = f"x{self.mixing_rounds}" if self.mixing_rounds > 1 else ""
        return f"decentralized/{mixing}{rounds}@{t.name}{extra}"

    def check_config(self, n: int, f: int) -> None:
        """The graph can be built over n peers, and NNA on a regular graph has a vector to
        average (``degree >= f``) (one clear line when not)."""
        try:
            self.topology.build(list(range(n)), seed=0)
        except ValueError as exc:
            raise ValueError(f"protocol.topology: {' '.join(str(exc).split())}") from None
        degree = self.peer_degree(n)
        if self.mixing == "nna" and degree is not None and degree < f:
            raise ValueError(
                f"protocol.mixing: nna averages the |R| + 1 - f vectors nearest a peer's own, "
                f"none on a {self.topology.name} graph of degree {degree} with f={f}: needs "
                f"f <= {degree} or more neighbours"
            )

    def peer_degree(self, n: int) -> int | None:
        """Neighbours of every peer on a regular graph over n peers (complete: n - 1; ring:
        2k; random regular: degree); None for random and explicit graphs."""
        t = self.topology
        if t.name == "complete":
            return n - 1
        if t.name == "ring":
            return min(2 * t.k, n - 1)
        return t.degree if t.name == "random_regular" else None

    def rule_arity(self, n: int, f: int) -> tuple[int, int] | None:
        """Inputs and f of one mixing with the config's rule (``mixing: rule`` only): a peer's
        own vector and its neighbours' (:meth:`peer_degree`; n - 1 for random and explicit graphs,
        whose peers with too few inputs keep their own vector at each mixing)."""
        if self.mixing != "rule":
            return None
        degree = self.peer_degree(n)
        return (n - 1 if degree is None else degree) + 1, f


def nna(own: torch.Tensor, received: torch.Tensor, f: int) -> torch.Tensor:
    """Nearest-neighbour averaging (MoNNA, Farhadkhani et al., ICML 2023): the mean of the
    ``m + 1 - f`` vectors of ``{own} + received`` (m rows) nearest to ``own`` (own included).
    Non-finite vectors are farthest."""
    X = torch.cat([own[None], received])
    dist = (X - own).double().norm(dim=1)
    dist = torch.where(torch.isfinite(dist), dist, torch.full_like(dist, float("inf")))
    keep = max(len(X) - f, 1)
    idx = torch.argsort(dist, stable=True)[:keep]
    return X[idx].mean(dim=0)


@register
class DecentralizedProtocol(Protocol):
    """Decentralised robust learning (see the module docstring). Node ids: the n peers."""

    name = "decentralized"
    Options = DecentralizedOptions

    def __init__(
        self,
        world: World,
        engine: Engine,
        nodes: list[Node],
        honest: list[int],
        compute: ComputeWorkers,
        coalition: ByzantineNodes,
    ) -> None:
        c = world.config
        self.options: DecentralizedOptions = c.protocol  # type: ignore[assignment]
        self.engine = engine
        self.nodes = nodes  # honest peers' handles, in index order
        self.honest = honest  # their indices
        self.compute = compute
        self.coalition = coalition
        self.ids = [n.id for n in nodes]
        self.peer_ids = engine.nodes("peer")
        self.byzantine = set(world.byzantine)  # poisoning peers compute, but are not honest
        self.f = c.declared_f
        self.rule = c.rule.full_name
        self.rule_options = dict(c.rule.options)
        self.seed = c.seed
        from byzlearn.experiments.schedules import learning_rate

        self.lr = learning_rate(c.optimizer, c.steps)
        theta0 = world.model.flatten()
        self.theta = theta0[None].repeat(len(nodes), 1)
        self.round = 0
        self.events = world.events

    @classmethod
    def build(cls, world: World, engine: Engine) -> DecentralizedProtocol:
        c = world.config
        options: DecentralizedOptions = c.protocol  # type: ignore[assignment]
        ids = engine.reserve("peer", c.n)
        engine.set_topology(options.topology.build(ids, c.seed))
        byz = set(world.byzantine)
        gradient_attack = c.attack.name != "none" and bool(byz)
        compute = computing_workers(world, ids, c.optimizer.momentum)  # local momentum
        honest = compute.indices
        nodes = [engine.driven(ids[i]) for i in honest]
        attack = NodeAttackConfig(
            name="silent" if c.attack.name == "none" else c.attack.name,
            options=dict(c.attack.options),
            equivocate=options.equivocate and c.attack.name != "none",
        )
        byz_nodes = (
            [engine.driven(ids[i], adversary=True) for i in sorted(byz)] if gradient_attack else []
        )
        coalition = ByzantineNodes(
            byz_nodes,
            attack,
            rule={"nna": "nnm+average", "gossip": "average"}.get(options.mixing, c.rule.full_name),
            rule_options=c.rule.options if options.mixing == "rule" else {},
            seed=c.seed,
            label="peers",
        )
        return cls(world, engine, nodes, honest, compute, coalition)

    # ------------------------------------------------------------------ steps
    @property
    def worker_ids(self) -> list[int]:
        return self.peer_ids

    @property
    def steps_done(self) -> int:
        return self.round

    @property
    def time(self) -> float:
        return max(float(n.clock) for n in self.nodes)

    def _mix(
        self, row: int, own: torch.Tensor, received: list[torch.Tensor], t: int, r: int
    ) -> torch.Tensor | None:
        mixing = self.options.mixing
        if mixing == "nna" and len(received) < self.f:
            return None  # |R| + 1 - f < 1: no vector to average
        if not received:
            return own
        R = torch.stack(received)
        if mixing == "gossip":
            return torch.cat([own[None], R]).mean(dim=0)
        if mixing == "nna":
            return nna(own, R, self.f)
        X = torch.cat([own[None], R])
        f = agg.largest_f(self.rule, len(X), self.f, **self.rule_options)
        if f is None or f < min(self.f, len(received)):
            return None  # too few vectors for the rule with the declared f
        opts = agg.call_options(  # centred at its own vector: self-centred clipping
            self.rule, self.rule_options, centre=own, key=(self.seed, "mix", self.honest[row], t, r)
        )
        try:
            return agg.get(self.rule)(X, f=f, **opts)
        except ValueError:
            return None

    def step(self) -> dict[str, Any]:
        t = self.round + 1
        lr = float(self.lr(t))
        vec, loss = self.compute.submit(
            self.ids, self.theta, [t] * len(self.ids), [lr] * len(self.ids)
        )
        for node in self.nodes:
            node.compute(t)  # the peers' gradients take their compute time
        x = self.theta - lr * vec
        topology = self.engine.topology
        everyone = self.peer_ids
        kept_own = received_total = 0
        for r in range(self.options.mixing_rounds):
            for node, row in zip(self.nodes, x, strict=True):
                node.discard(lambda m: m.round < t)
                msg = Message(kind="vector", round=t, payload=row.clone())
                msg.meta["mix"] = r
                node.multicast(msg, topology.neighbours(node.id, everyone))
            self.coalition.send(
                t,
                "vector",
                lambda me: topology.neighbours(me, everyone),
                observe=_of_mix(t, r),
                stage=r,
                meta={"mix": r},
            )
            mixed = []
            for i, node in enumerate(self.nodes):
                degree = len(topology.neighbours(node.id, everyone))
                got = node.gather(
                    t,
                    degree,
                    self.options.deadline,
                    kind="vector",
                    match=_of_mix(t, r),
                )
                received_total += len(got)
                out = self._mix(i, x[i], [m.payload for m in got], t, r)
                if out is None:
                    kept_own += 1
                    out = x[i]
                mixed.append(out)
            x = torch.stack(mixed)
        self.theta = x
        self.round = t
        finite = torch.isfinite(loss)
        record: dict[str, Any] = {
            "round": t,
            "lr": lr,
            "received": received_total / (len(self.nodes) * self.options.mixing_rounds),
            "kept_own": kept_own,
            "train_loss": float(loss[finite].mean()) if bool(finite.any()) else None,
            "peer_diameter": diameter(self.theta[self._truly_honest]),
            "peer_spread": _spread(self.theta[self._truly_honest]),
            "time": self.time,
        }
        return record

    @property
    def _truly_honest(self) -> list[int]:
        return [r for r, i in enumerate(self.honest) if i not in self.byzantine]

    def models(self) -> dict[str, torch.Tensor]:
        """The honest peers' models (not those of peers poisoning their data)."""
        return {f"peer{self.honest[r]}": self.theta[r] for r in self._truly_honest}

    def state_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "theta": self.theta,
            "compute": self.compute.state_dict(),
            "coalition": self.coalition.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.round = int(state["round"])
        self.theta = state["theta"]
        self.compute.load_state_dict(state["compute"])
        self.coalition.load_state_dict(state["coalition"])


def _spread(X: torch.Tensor) -> float:
    """Mean distance of the rows to their mean."""
    return float((X - X.mean(0)).norm(dim=1).mean()) if len(X) else 0.0


def _of_mix(t: int, r: int) -> Callable[[Message], bool]:
    """Matches the vectors of step ``t``, mixing round ``r``."""
    return lambda m: m.kind == "vector" and m.round == t and m.meta.get("mix") == r
