"""Replicated Byzantine parameter servers: ByzSGD (PODC 2020). LiuBei is in
:mod:`byzlearn.protocols.liubei` and shares the options and the model filter defined here.

No single server is trusted: ``servers`` replicas hold the model, ``f_servers`` of them may be
Byzantine (:class:`~byzlearn.protocols.adversary.ByzantineNodes`: garbage, a model attack,
equivocation, silence); the n workers include f Byzantine ones as in every protocol.

One step ``t`` (every correct server, every worker):

1. *scatter*: every server sends its model ``theta_s`` to every worker (kind ``model``);
2. a worker *reads* a model: ``median`` (``variant: async``): the coordinate-wise median of the
   first ``model_quorum`` models to arrive (default ``servers - f_servers``); ``filtered``
   (``variant: sync``, the paper's synchronous variant): the model of one server (server
   ``(i + t) mod servers`` for worker i), accepted when it passes the filters
   (:class:`ModelFilter`), else (rejected, or it did not come) the median of the quorum;
3. the worker computes its gradient at the model it read and sends it to every server;
4. each correct server aggregates the first ``gradient_quorum`` gradients (default ``n - f``)
   with the rule (MDA by default) and updates, with the failure policy of the synchronous
   parameter server when too few came;
5. *gather* (DMC), every ``gather_every`` steps: every server sends its model to the other
   servers and replaces its model by the coordinate-wise median of its own and the first
   ``model_quorum - 1`` others to arrive. This contracts the distance between correct servers.

Requirements (checked when the config is parsed): ``servers >= 3 f_servers + 1`` and
``n >= 3 f + 1`` (ByzSGD tolerates a third of each, PODC 2020), the quorums within bounds, and
the rule's own requirement on ``gradient_quorum`` inputs with f. Deviations from the papers are
listed in ``docs/replicated.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field, model_validator

import byzlearn.aggregators as agg
from byzlearn.engines.base import Engine, Message
from byzlearn.protocols.adversary import ByzantineNodes, NodeAttackConfig
from byzlearn.protocols.base import (
    STRICT_OPTIONS,
    Events,
    Protocol,
    World,
    diameter,
    register,
)
from byzlearn.protocols.parameter_server import ParameterServer
from byzlearn.protocols.workers import ComputeWorkers, WorkerSet, build_workers

__all__ = [
    "ByzSGDOptions",
    "ByzSGDProtocol",
    "ModelFilter",
    "ReplicaServer",
    "ReplicaWorkers",
    "ReplicatedOptions",
]

_SEED_SERVERS = 11  # offset of the stream that picks the Byzantine servers


class ReplicatedOptions(BaseModel):
    """Options shared by the replicated-server protocols."""

    model_config = STRICT_OPTIONS

    servers: int = Field(4, ge=1, description="server replicas (n_ps)")
    f_servers: int = Field(1, ge=0, description="Byzantine servers tolerated (f_ps)")
    byzantine_servers: int | None = Field(
        None, ge=0, description="servers that actually are Byzantine (default f_servers)"
    )
    server_attack: NodeAttackConfig = Field(default_factory=NodeAttackConfig)
    gather_every: int = Field(1, ge=1, description="steps between two DMC gather phases (T)")
    model_quorum: int | None = Field(None, ge=1, description="models read (default n_ps - f_ps)")
    gradient_quorum: int | None = Field(
        None, ge=1, description="gradients a server aggregates (default n - f)"
    )
    deadline: float | None = Field(None, gt=0, description="simulated seconds a server waits")
    on_missing: Literal["shrink", "skip"] = "shrink"

    @property
    def byzantine_server_count(self) -> int:
        return self.f_servers if self.byzantine_servers is None else self.byzantine_servers

    @property
    def quorum(self) -> int:
        """Models a worker (and a server in the gather phase) waits for."""
        return self.model_quorum or self.servers - self.f_servers

    @model_validator(mode="after")
    def _servers(self) -> ReplicatedOptions:
        n, f = self.servers, self.f_servers
        if n < 3 * f + 1:
            raise ValueError(
                f"servers: {self.name} needs servers >= 3 f_servers + 1, "  # type: ignore[attr-defined]
                f"got servers={n}, f_servers={f}"
            )
        if self.byzantine_server_count > n:
            raise ValueError(f"byzantine_servers: must be <= servers={n}")
        if not f < self.quorum <= n:
            raise ValueError(
                f"model_quorum: must be in (f_servers, servers] = ({f}, {n}], got {self.quorum}"
            )
        _try_server_attack(self.server_attack, n - self.byzantine_server_count)
        return self

    def method_label(self, rule: str) -> str:
        """How reports name this method: ``byzsgd-async/mda``, ``liubei/mda``."""
        variant = getattr(self, "variant", None)
        name = f"{self.name}-{variant}" if variant else self.name  # type: ignore[attr-defined]
        return f"{name}/{rule}"

    def check_config(self, n: int, f: int) -> None:
        """The worker-side requirement (raises ``ValueError`` naming the field)."""
        if n < 3 * f + 1:
            raise ValueError(
                f"protocol.name: {self.name} needs n >= 3f + 1 workers, "  # type: ignore[attr-defined]
                f"got n={n}, f={f}"
            )
        q = self.gradient_quorum
        if q is not None and not f < q <= n:
            raise ValueError(f"protocol.gradient_quorum: must be in (f, n] = ({f}, {n}], got {q}")

    def rule_arity(self, n: int, f: int) -> tuple[int, int]:
        """Inputs and f of one aggregation at a server."""
        return (self.gradient_quorum or n - f), f


def _try_server_attack(attack: NodeAttackConfig, honest: int) -> None:
    """Run the servers' attack once on tiny models (``honest`` correct servers' models, at least
    3, with more coordinates than any integer option, which may be a coordinate index, up to
    100,000: the model is not known here), so that a bad option *value* is refused when the
    config is parsed: in a run, a ValueError would silently make the Byzantine servers silent
    (:meth:`ByzantineNodes.craft` reads it as "too little observed") and a TypeError would abort
    the run at its first step."""
    if attack.name == "silent":
        return
    from byzlearn.attacks._probe import probe_attack

    try:
        probe_attack(
            attack.name, attack.options, honest=max(honest, 3), f=1, max_dim=100_000, rule="median"
        )
    except (ValueError, TypeError) as exc:
        raise ValueError(f"server_attack.options: {' '.join(str(exc).split())}") from None


class ByzSGDOptions(ReplicatedOptions):
    """Config section ``protocol: {name: byzsgd, ...}``."""

    name: Literal["byzsgd"] = "byzsgd"
    variant: Literal["async", "sync"] = Field(
        "async", description="async: median of a quorum of models; sync: one filtered model"
    )
    slack: float = Field(1.0, ge=0, description="sync: distance filter slack (ModelFilter)")
    lipschitz_factor: float = Field(3.0, gt=0, description="sync: Lipschitz filter factor")


class ModelFilter:
    """The worker-side checks of a model read from one server (ByzSGD's sync variant, LiuBei).

    Each worker keeps the model it last read (``theta_prev``, step ``t_prev``), the norm of the
    gradient it computed there and its recent empirical Lipschitz coefficients. A model
    ``theta`` offered at step t passes when

    - *distance* (the rule-based filter): ``||theta - theta_prev|| <= (t - t_prev) lr_t
      (1 + slack) ||v_prev||``, ``v_prev`` the vector the worker sent at ``t_prev`` (its
      gradient, or what worker momentum or local steps made of it): one update moves the model
      by ``lr`` times the aggregate, and the aggregate of a robust rule stays within the honest
      vectors' norm, of which the worker's own is its estimate (at the first step the only model
      it can accept is the initial one, which it knows);
    - *Lipschitz*: with ``g`` its gradient at ``theta`` and ``g_prev`` its gradient at
      ``theta_prev`` (plain gradients, whatever it sent),
      ``k = ||g - g_prev|| / ||theta - theta_prev||`` is at most ``lipschitz_factor`` times the
      median of its last 25 accepted coefficients (accepted without the check while fewer than
      5 are known, and when ``theta = theta_prev``).
    """

    def __init__(self, *, slack: float = 1.0, lipschitz_factor: float = 3.0) -> None:
        self.slack = float(slack)
        self.factor = float(lipschitz_factor)

    def distance_ok(self, theta: torch.Tensor, state: dict[str, Any], t: int, lr: float) -> bool:
        dist = float((theta - state["theta"]).norm())
        if not math.isfinite(dist):
            return False
        norm = state["g_norm"]
        radius = 0.0 if norm is None else (t - state["t"]) * lr * (1 + self.slack) * norm
        return dist <= radius * (1 + 1e-6) + 1e-12

    def lipschitz(self, theta: torch.Tensor, g: torch.Tensor, state: dict[str, Any]) -> float:
        """The coefficient ``k`` against the worker's last model (NaN when it cannot be had)."""
        if state["g"] is None:
            return math.nan
        dx = float((theta - state["theta"]).norm())
        return float((g - state["g"]).norm()) / dx if dx > 0 else math.nan

    def lipschitz_ok(self, k: float, state: dict[str, Any]) -> bool:
        history = state["k"]
        if math.isnan(k) or len(history) < 5:
            return math.isnan(k) or math.isfinite(k)
        return k <= self.factor * float(np.median(history))

    @staticmethod
    def start(theta0: torch.Tensor) -> dict[str, Any]:
        """A worker's filter state before its first read: it knows the initial model."""
        return {"theta": theta0.clone(), "t": 0, "g": None, "g_norm": None, "k": []}

    def check(
        self,
        compute: ComputeWorkers,
        member: int,
        theta: torch.Tensor,
        state: dict[str, Any],
        t: int,
        lr: float,
    ) -> Literal["accepted", "distance", "lipschitz"]:
        """Whether ``member`` accepts ``theta`` at step t: ``"accepted"``, or the filter that
        rejected it (``"distance"`` needs no gradient; ``"lipschitz"`` computed one). On
        acceptance the state moves there (its gradient there, its coefficient), except
        ``g_norm``, which the caller sets from the vector it sends."""
        if not self.distance_ok(theta, state, t, lr):
            return "distance"
        g, _ = compute.gradients([member], theta, t)
        k = self.lipschitz(theta, g[0], state)
        if not self.lipschitz_ok(k, state):
            return "lipschitz"
        if math.isfinite(k):
            state["k"] = [*state["k"], k][-25:]
        state["g"], state["theta"], state["t"] = g[0], theta.clone(), t
        return "accepted"


class ReplicaWorkers:
    """The honest workers of the replicated-server protocols (a reactive group's handler).

    It buffers each member's models of a step until ``quorum`` came, reads one (see the module
    docstring: ``read="median"`` or ``"filtered"``), computes the member's vector there with
    :meth:`ComputeWorkers.submit`, and sends it to every server. Models of a step already
    answered are ignored (``ignored``).
    """

    def __init__(
        self,
        compute: ComputeWorkers,
        servers: Sequence[int],
        *,
        quorum: int,
        read: Literal["median", "filtered"] = "median",
        model_filter: ModelFilter | None = None,
        theta0: torch.Tensor | None = None,
    ) -> None:
        self.compute = compute
        self.servers = [int(s) for s in servers]
        self.quorum = int(quorum)
        self.read = read
        self.filter = model_filter or ModelFilter()
        self.pending: dict[tuple[int, int], list[Message]] = {}
        self.answered: dict[int, int] = {}  # member -> last step answered
        self.ignored = 0
        self.counts = {"accepted": 0, "rejected": 0, "fallback": 0}
        self.last_read: dict[int, torch.Tensor] = {}  # member -> the model it last computed at
        self.filters: dict[int, dict[str, Any]] = {}
        if read == "filtered":
            if theta0 is None:
                raise ValueError("a filtered read needs the initial model theta0")
            for member in compute.ids:
                self.filters[member] = ModelFilter.start(theta0)

    def handle(self, inbox: Sequence[Message], observed: Sequence[Message] = ()) -> list[Message]:
        for m in sorted(inbox, key=lambda m: (m.arrival, m.seq)):
            member = int(m.dest)  # type: ignore[arg-type]
            if m.kind != "model" or m.round <= self.answered.get(member, 0):
                self.ignored += 1
                continue
            self.pending.setdefault((member, m.round), []).append(m)
        ready = sorted(k for k, msgs in self.pending.items() if len(msgs) >= self.quorum)
        out: list[Message] = []
        for t in sorted({t for _, t in ready}):
            members = [member for member, step in ready if step == t]
            batches = [self._quorum(self.pending.pop((member, t))) for member in members]
            out.extend(self._answer(t, members, batches))
        return out

    def _quorum(self, msgs: list[Message]) -> list[Message]:
        """The first ``quorum`` models of a step (in arrival order), which the member reads;
        the others arrived after it answered, so they are ignored, as they are when they come
        in later calls (one call may bring more: a vectorised group gets every model in
        flight, so the read is the same as that of one call per message)."""
        self.ignored += max(0, len(msgs) - self.quorum)
        return msgs[: self.quorum]

    def _answer(self, t: int, members: list[int], batches: list[list[Message]]) -> list[Message]:
        lr = float(batches[0][0].meta.get("lr", 1.0))
        if self.read == "median":
            points = [_median([m.payload for m in msgs[: self.quorum]]) for msgs in batches]
        else:
            points = [
                self._filtered(t, member, msgs, lr)
                for member, msgs in zip(members, batches, strict=True)
            ]
        theta = torch.stack(points)
        vec, loss = self.compute.submit(members, theta, [t] * len(members), [lr] * len(members))
        out = []
        for i, (member, msgs) in enumerate(zip(members, batches, strict=True)):
            self.answered[member] = t
            self.last_read[member] = theta[i]
            trigger = msgs[min(self.quorum, len(msgs)) - 1]
            for server in self.servers:
                out.append(
                    Message(
                        kind="gradient",
                        payload=vec[i],
                        dest=server,
                        round=t,
                        meta={"loss": float(loss[i])},
                        sender=member,
                        reply_to=trigger.seq,
                    )
                )
            if self.read == "filtered":
                state = self.filters[member]
                state["g_norm"] = float(vec[i].norm())
        return out

    def _filtered(self, t: int, member: int, msgs: list[Message], lr: float) -> torch.Tensor:
        """The model a filtered read accepts (see :class:`ModelFilter`): its server's, else (a
        rejection, or no model from it: a timeout) the median of the quorum."""
        state = self.filters[member]
        by_server = {int(m.sender): m.payload for m in msgs if m.sender is not None}
        index = self.compute.indices[self.compute.row[member]]
        came = [s for s in server_order(self.servers, index, t) if s in by_server]
        if came:
            theta = by_server[came[0]]
            if self.filter.check(self.compute, member, theta, state, t, lr) == "accepted":
                self.counts["accepted"] += 1
                return theta
            self.counts["rejected"] += 1
        self.counts["fallback"] += 1
        chosen = _median([m.payload for m in msgs[: self.quorum]])
        state["g"], state["theta"], state["t"] = None, chosen.clone(), t
        return chosen

    def state_dict(self) -> dict[str, Any]:
        return {
            "pending": {
                f"{member}:{t}": [m.to_state() for m in msgs]
                for (member, t), msgs in self.pending.items()
            },
            "answered": dict(self.answered),
            "ignored": self.ignored,
            "counts": dict(self.counts),
            "filters": {
                member: {**state, "k": list(state["k"])} for member, state in self.filters.items()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending = {}
        for key, msgs in state["pending"].items():
            member, t = key.split(":")
            self.pending[(int(member), int(t))] = [Message.from_state(m) for m in msgs]
        self.answered = {int(k): int(v) for k, v in state["answered"].items()}
        self.ignored = int(state["ignored"])
        self.counts = {k: int(v) for k, v in state["counts"].items()}
        self.filters = {int(k): dict(v) for k, v in state["filters"].items()}


def server_order(servers: Sequence[int], index: int, t: int) -> list[int]:
    """The servers worker ``index`` reads from at step t, in order: server ``(index + t) mod
    n_ps`` first, then the next ones."""
    n = len(servers)
    return [servers[(index + t + k) % n] for k in range(n)]


def _median(models: Sequence[torch.Tensor]) -> torch.Tensor:
    """The coordinate-wise median of the models (a non-finite coordinate counts as missing);
    where no model has a finite value (every server diverged there), the first model's value,
    so that a diverged model stays diverged (the run is marked so) instead of failing here."""
    X = torch.stack(list(models))
    lost = ~torch.isfinite(X).any(0)
    if not bool(lost.any()):
        return agg.median(X, f=0)
    first = X[0, lost].clone()
    X[:, lost] = 0.0
    out = agg.median(X, f=0)
    out[lost] = first
    return out


class ReplicaServer(ParameterServer):
    """A correct server replica: the synchronous parameter server's round (its ``send_model``
    and ``collect``) plus the DMC gather phase (:meth:`share` and :meth:`contract`)."""

    def __init__(self, *args: Any, peers: Sequence[int] = (), quorum: int = 1, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.peers = [int(p) for p in peers if int(p) != self.node.id]
        self.model_quorum = int(quorum)

    def share(self, t: int) -> None:
        """Send the model to the other servers (kind ``server_model``)."""
        msg = Message(kind="server_model", round=t, version=self.version, payload=self.theta)
        self.node.multicast(msg, self.peers)

    def contract(self, t: int, deadline: float | None = None) -> int:
        """DMC: the model becomes the coordinate-wise median of its own and the first
        ``quorum - 1`` other servers' models; return how many others were used."""
        others = self.node.gather(t, self.model_quorum - 1, deadline, kind="server_model")
        models = [self.theta, *[m.payload for m in others]]
        self.theta = _median(models)
        return len(others)


class ReplicatedProtocol(Protocol):
    """The replicated-server protocols (see the module docstring). Node ids: the n workers, then
    the servers."""

    Options = ReplicatedOptions

    def __init__(
        self,
        servers: list[ReplicaServer],
        byzantine: ByzantineNodes,
        workers: WorkerSet,
        handler: ReplicaWorkers,
        options: ReplicatedOptions,
        server_ids: list[int],
        lr: Any,
    ) -> None:
        self.servers = servers
        self.byzantine = byzantine
        self.workers = workers
        self.handler = handler
        self.options = options
        self.server_ids = server_ids
        self.round = 0
        self.theta0 = handler.compute.model.flatten()
        self.lr = lr

    @classmethod
    def build(cls, world: World, engine: Engine) -> ReplicatedProtocol:
        c = world.config
        options: ReplicatedOptions = c.protocol  # type: ignore[assignment]
        worker_ids = engine.reserve("worker", c.n)
        server_ids = engine.reserve("server", options.servers)
        bad = set(byzantine_servers(options, c.seed))
        theta0 = world.model.flatten()
        model_filter = ModelFilter(
            slack=getattr(options, "slack", 1.0),
            lipschitz_factor=getattr(options, "lipschitz_factor", 3.0),
        )
        read = cls.read_mode(options)
        holder: list[ReplicaWorkers] = []

        def handler(compute: ComputeWorkers) -> ReplicaWorkers:
            holder.append(
                ReplicaWorkers(
                    compute,
                    server_ids,
                    quorum=options.quorum,
                    read=read,
                    model_filter=model_filter,
                    theta0=theta0,
                )
            )
            return holder[0]

        workers = build_workers(world, engine, ids=worker_ids, handler=handler)
        from byzlearn.experiments.schedules import learning_rate

        lr = learning_rate(c.optimizer, c.steps)
        momentum = c.optimizer.momentum if c.optimizer.momentum_at == "server" else 0.0
        servers: list[ReplicaServer] = []
        for k, sid in enumerate(server_ids):
            if k in bad:
                continue
            servers.append(
                ReplicaServer(
                    engine.driven(sid),
                    theta0,
                    workers.ids,
                    rule=c.rule.full_name,
                    f=c.declared_f,
                    rule_options=c.rule.options,
                    lr=lr,
                    momentum=momentum,
                    dampened=c.optimizer.dampened,
                    q=options.gradient_quorum or c.n - c.declared_f,
                    deadline=options.deadline,
                    on_missing=options.on_missing,
                    seed=c.seed,
                    events=world.events if not servers else Events(),
                    peers=server_ids,
                    quorum=options.quorum,
                )
            )
        coalition = ByzantineNodes(
            [engine.driven(server_ids[k], adversary=True) for k in sorted(bad)],
            options.server_attack,
            rule="median",  # what workers and the gather phase apply to models
            seed=c.seed,
            label="servers",
            fallback=theta0,
        )
        return cls(servers, coalition, workers, holder[0], options, server_ids, lr)

    @classmethod
    def read_mode(cls, options: ReplicatedOptions) -> Literal["median", "filtered"]:
        """How workers read the servers' models (median of a quorum, or one filtered)."""
        return "median"

    # ------------------------------------------------------------------ steps
    @property
    def worker_ids(self) -> list[int]:
        return list(self.workers.ids)

    @property
    def steps_done(self) -> int:
        return self.round

    @property
    def time(self) -> float:
        nodes = [s.node for s in self.servers] or self.byzantine.nodes
        return float(nodes[0].clock)

    def step(self) -> dict[str, Any]:
        t = self.round + 1
        worker_ids = self.workers.ids
        for server in self.servers:
            server.send_model(t)
        self.byzantine.send(
            t,
            "model",
            lambda _: worker_ids,
            observe=lambda m: m.kind == "model" and m.round == t,
            meta={"lr": float(self.lr(t))},
        )
        records = [server.collect(t) for server in self.servers]
        if not records:  # every server is Byzantine: the workers still compute what they read
            self.byzantine.nodes[0].recv(0)
        record = dict(records[0]) if records else {"round": t, "lr": float(self.lr(t))}
        record["servers_skipped"] = sum(1 for r in records if r.get("skipped"))
        gathered = t % self.options.gather_every == 0
        if gathered:
            for server in self.servers:
                server.share(t)
            ids = self.server_ids
            self.byzantine.send(
                t,
                "server_model",
                lambda me: [s for s in ids if s != me],
                observe=lambda m: m.kind == "server_model" and m.round == t,
                stage=1,
            )
            used = [server.contract(t, self.options.deadline) for server in self.servers]
            record["gather_models"] = min(used, default=0)
        record["gathered"] = gathered
        record["server_diameter"] = (
            diameter(torch.stack([s.theta for s in self.servers])) if self.servers else 0.0
        )
        if self.read_mode(self.options) == "filtered":
            record.update({f"reads_{k}": v for k, v in self.handler.counts.items()})
        record["time"] = self.time
        self.round = t
        return record

    def models(self) -> dict[str, torch.Tensor]:
        """Every correct server's model; with no correct server (the contrast of a single
        Byzantine server), the models the honest workers last computed at."""
        if self.servers:
            return {f"server{s.node.id}": s.theta for s in self.servers}
        read = self.handler.last_read
        if not read:
            return {"initial": self.theta0}
        return {f"read_by_worker{m}": read[m] for m in sorted(read)}

    def state_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "servers": [s.state_dict() for s in self.servers],
            "byzantine": self.byzantine.state_dict(),
            "workers": self.workers.state_dict(),
            "handler": self.handler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.round = int(state["round"])
        for server, saved in zip(self.servers, state["servers"], strict=True):
            server.load_state_dict(saved)
        self.byzantine.load_state_dict(state["byzantine"])
        self.workers.load_state_dict(state["workers"])
        self.handler.load_state_dict(state["handler"])


@register
class ByzSGDProtocol(ReplicatedProtocol):
    """ByzSGD (El Mhamdi, Guerraoui, Guirguis, Hoang, Rouault, "Genuinely Distributed Byzantine
    Machine Learning", PODC 2020): scatter with median reads, MDA at the servers, DMC gathers."""

    name = "byzsgd"
    Options = ByzSGDOptions

    @classmethod
    def read_mode(cls, options: ReplicatedOptions) -> Literal["median", "filtered"]:
        return "filtered" if getattr(options, "variant", "async") == "sync" else "median"


def byzantine_servers(options: ReplicatedOptions, seed: int) -> list[int]:
    """Indices (``0..servers-1``) of the Byzantine servers for ``seed``."""
    rng = np.random.default_rng([seed, _SEED_SERVERS])
    count = options.byzantine_server_count
    return sorted(int(i) for i in rng.choice(options.servers, size=count, replace=False))
