"""Byzantine nodes that act on their own: Byzantine servers and Byzantine peers.

Byzantine *workers* only answer (they are a reactive group, :class:`~byzlearn.protocols.workers.
ByzantineWorkers`). A Byzantine server or peer starts messages itself, so it is a driven node
registered with ``adversary=True``: it sees what honest nodes sent through
:meth:`~byzlearn.engines.Node.observe` (for each honest sender, its latest matching message: the
omniscient adversary), and the coalition crafts what each of its members sends:

- ``silent``: nothing (a crash from the start; the receivers' timeouts and quorums apply);
- any attack of :mod:`byzlearn.attacks` applied to the honest vectors it observed (models for
  servers and peers: ``gaussian`` is garbage, ``alie`` a model just inside the honest spread, a
  rule-aware attack is told the rule the receivers use);
- ``equivocate: true``: a different vector per receiver: receivers alternate between the attack
  vector ``a`` and its reflection ``2 mu - a`` through the honest mean ``mu``
  (:class:`~byzlearn.attacks.Equivocation`, ``alternate``), which pulls correct replicas apart.

An attack with a running state (mimic) keeps it here, so checkpoints carry it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from pydantic import BaseModel, Field, field_validator, model_validator

from byzlearn import keyed
from byzlearn.engines.base import Message, Node
from byzlearn.protocols.base import STRICT_OPTIONS

__all__ = ["ByzantineNodes", "NodeAttackConfig"]


class NodeAttackConfig(BaseModel):
    """What Byzantine servers (or peers) send: ``silent``, or an attack with its options."""

    model_config = STRICT_OPTIONS

    name: str = Field("gaussian", description="silent, or an attack of byzlearn.attacks")
    options: dict[str, Any] = Field(default_factory=dict)
    equivocate: bool = Field(False, description="a different vector to each receiver")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        if v == "silent":
            return v
        import byzlearn.attacks as atk

        if v not in atk.names() and v not in atk.aliases():
            raise ValueError(f"unknown attack {v!r} (known: silent, {', '.join(atk.names())})")
        return v

    @model_validator(mode="after")
    def _options(self) -> NodeAttackConfig:
        if self.name == "silent":
            if self.options or self.equivocate:
                raise ValueError("options: a silent node sends nothing; it takes no options")
            return self
        import byzlearn.attacks as atk

        allowed = atk.spec(self.name).config_options
        unknown = sorted(set(self.options) - set(allowed))
        if unknown:
            raise ValueError(
                f"options: {self.name} has no option {unknown[0]!r} "
                f"(valid options: {', '.join(allowed) or 'none'})"
            )
        return self


class ByzantineNodes:
    """A coalition of Byzantine driven nodes (see the module docstring).

    ``rule`` is the rule the receivers apply to what they get (told to rule-aware attacks);
    ``label`` keys the coalition's randomness apart from other coalitions of the same run;
    ``fallback`` is the vector it attacks when it observed no honest one (the public initial
    model, for a server that is the only one).
    """

    def __init__(
        self,
        nodes: Sequence[Node],
        attack: NodeAttackConfig,
        *,
        rule: str | Callable[..., torch.Tensor] = "median",
        rule_options: dict[str, Any] | None = None,
        seed: int = 0,
        label: str = "nodes",
        fallback: torch.Tensor | None = None,
        ids: Sequence[int] | None = None,
    ) -> None:
        self.nodes = list(nodes)
        # reactive Byzantine nodes (no handles; they use craft) are named by their ids
        self.ids = [n.id for n in self.nodes] if ids is None else [int(i) for i in ids]
        self.config = attack
        self.rule = rule
        self.rule_options = dict(rule_options or {})
        self.seed = int(seed)
        self.label = label
        self.fallback = fallback  # what it attacks when it saw no honest vector (a public model)
        self.silent = 0  # steps in which the coalition sent nothing
        self.attack: Callable[..., torch.Tensor] | None = None
        self.options: dict[str, Any] = {}
        self.state: Any = None
        if attack.name != "silent":
            import byzlearn.attacks as atk

            self.attack = atk.get(attack.name)
            self.options, self.state = atk.spec(attack.name).start(attack.options)

    def craft(
        self, seen: Sequence[torch.Tensor], t: int, stage: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """One vector per member, crafted from the honest vectors ``seen`` (the ``fallback``
        when it saw none), and the honest mean the attacks use (:func:`byzlearn.attacks.
        honest_mean`); ``None``: silent this time."""
        if seen:
            honest = torch.stack(list(seen))
        elif self.fallback is not None:  # no honest node to watch (a single Byzantine server)
            honest = self.fallback[None]
        else:
            honest = None
        if self.attack is None or honest is None:
            self.silent += 1
            return None
        extra: dict[str, Any] = {}
        try:
            # a running state refuses vectors it cannot learn from (every one non-finite, as in
            # a diverged run): it is kept as it was, and the coalition is silent this time
            if self.state is not None:
                self.state = self.state.observe(honest)
                extra["state"] = self.state
            byz = self.attack(
                honest,
                f=len(self.ids),
                rule=self.rule,
                rule_options=self.rule_options,
                generator=keyed.generator((self.seed, self.label, t, stage)),
                **self.options,
                **extra,
            )
        except ValueError:  # too little observed for this attack (e.g. ALIE with one vector)
            self.silent += 1
            return None
        # the attacks' own honest mean: the reflection 2 mu - a (equivocation) is then exact
        from byzlearn.attacks import honest_mean

        return byz.to(honest.dtype), honest_mean(honest)

    def send(
        self,
        t: int,
        kind: str,
        receivers: Callable[[int], Sequence[int]],
        *,
        observe: Callable[[Message], bool],
        stage: int = 0,
        meta: dict[str, Any] | None = None,
    ) -> int:
        """Every member sends ``kind`` messages of round ``t`` to ``receivers(member id)``,
        crafted from the honest messages satisfying ``observe``; return the messages sent."""
        if not self.nodes:
            return 0
        seen: list[Message] = []
        for node in self.nodes:  # each member observes (its clock moves to what it saw)
            seen = node.observe(observe)
        crafted = self.craft([m.payload for m in seen], t, stage)
        if crafted is None:
            return 0
        byz, mean = crafted
        sent = 0
        for j, node in enumerate(self.nodes):
            for r, dest in enumerate(receivers(node.id)):
                vec = self.for_receiver(byz[j], mean, r)
                msg = Message(kind=kind, payload=vec, dest=int(dest), round=t)
                msg.meta.update(meta or {})
                node.send(msg)
                sent += 1
        return sent

    def for_receiver(self, crafted: torch.Tensor, mean: torch.Tensor, r: int) -> torch.Tensor:
        """What the r-th receiver gets: ``crafted``, or with equivocation ``crafted`` and its
        reflection ``2 mean - crafted`` alternately."""
        if not self.config.equivocate:
            return crafted
        from byzlearn.attacks import Equivocation

        return [crafted, 2 * mean - crafted][Equivocation("alternate").choose(r, 2)]

    def state_dict(self) -> dict[str, Any]:
        state = None
        if self.state is not None:
            state = {f.name: getattr(self.state, f.name) for f in dataclasses.fields(self.state)}
        return {"attack_state": state, "silent": self.silent}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("attack_state")
        if saved is not None and self.state is not None:
            self.state = type(self.state)(**saved)
        self.silent = int(state.get("silent", 0))
