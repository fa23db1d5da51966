"""Node behaviours for protocols: crash, omission, delay and equivocation.

Each behaviour is a small frozen dataclass, validated on construction, that answers the protocol's
question for a node at step (round) ``t``:

    behaviour.reply(t, node=i) -> int | None
        ``None``: the node sends nothing for step t; otherwise the delay, in steps, after which
        its step-t message arrives (0: on time, k: with the messages of step t + k).
    behaviour.replies(t, node=i) -> bool       # reply(t) is not None

and :class:`Equivocation` also answers "what does receiver r get" (:meth:`Equivocation.choose`,
:meth:`Equivocation.vector_for`). Everything is a pure function of the dataclass fields and the
arguments (randomised behaviours derive their draw from ``(seed, node, step[, receiver])``), so a
run is reproducible and the answers do not depend on the order of the questions.
Steps, nodes and receivers are non-negative integers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from byzlearn.attacks._checks import choice, integer, real


def _step(step: object, what: str = "step") -> int:
    return integer("behaviour", what, step, minimum=0)


@dataclass(frozen=True)
class Behaviour:
    """Base class: a node that always replies on time."""

    def reply(self, step: int, node: int = 0) -> int | None:
        """``None`` when the node sends nothing for ``step``, else the delay in steps."""
        _step(step)
        _step(node, "node")
        return 0

    def replies(self, step: int, node: int = 0) -> bool:
        """Whether the node sends a message for ``step`` (possibly late)."""
        return self.reply(step, node) is not None


@dataclass(frozen=True)
class Reliable(Behaviour):
    """A correct node: replies at every step, on time."""


@dataclass(frozen=True)
class Crash(Behaviour):
    """Crash at step ``step``: replies on time at steps ``t < step``, never from ``step`` on.

    ``Crash(0)`` never replies. Crash failures are the benign end of the fault spectrum
    (Lynch, *Distributed Algorithms*, 1996); the engines simulate them, protocols must survive.
    """

    step: int

    def __post_init__(self) -> None:
        integer("Crash", "step", self.step, minimum=0)

    def reply(self, step: int, node: int = 0) -> int | None:
        step = _step(step)
        _step(node, "node")
        return 0 if step < self.step else None


@dataclass(frozen=True)
class Omission(Behaviour):
    """Omission: at each step the node independently sends nothing with ``probability``.

    The draw for ``(node, step)`` is ``u = numpy.random.default_rng([seed, node, step]).random()``;
    the node omits when ``u < probability`` (so 0 never omits, 1 always omits), otherwise replies
    on time. Reference: send-omission failures (Hadzilacos, 1984; Lynch, 1996).
    """

    probability: float
    seed: int = 0

    def __post_init__(self) -> None:
        p = real("Omission", "probability", self.probability)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Omission: probability must be in [0, 1], got {p}")
        integer("Omission", "seed", self.seed, minimum=0)

    def reply(self, step: int, node: int = 0) -> int | None:
        step, node = _step(step), _step(node, "node")
        u = np.random.default_rng([self.seed, node, step]).random()
        return None if u < self.probability else 0


@dataclass(frozen=True)
class Delay(Behaviour):
    """Delay: the node's step-t message arrives ``steps`` steps late (with step ``t + steps``).

    ``Delay(0)`` is a correct node. A synchronous protocol that waits only for step t drops late
    messages; an asynchronous one (e.g. Kardam) sees them as stale gradients of staleness
    ``steps``. Reference: Damaskinos et al., "Asynchronous Byzantine Machine Learning (the case
    of SGD)", ICML 2018 (staleness).
    """

    steps: int

    def __post_init__(self) -> None:
        integer("Delay", "steps", self.steps, minimum=0)

    def reply(self, step: int, node: int = 0) -> int | None:
        _step(step)
        _step(node, "node")
        return self.steps


@dataclass(frozen=True)
class Equivocation(Behaviour):
    """Equivocation: a Byzantine node sends different vectors to different receivers.

    The node prepares ``k`` candidate vectors (e.g. an attack and its opposite) and receiver
    ``r`` gets candidate ``choose(r, k)``:

    * ``"alternate"`` (default): ``r mod k``;
    * ``"split"``: contiguous blocks, ``floor(r * k / num_receivers)`` (needs ``num_receivers``);
    * ``"random"``: ``numpy.random.default_rng([seed, step, r]).integers(k)``.

    It always replies on time. Reference: equivocation in Byzantine broadcast (Lamport, Shostak,
    Pease, 1982); it matters once servers are replicated or peers gossip (ByzSGD, PODC 2020).
    """

    mode: str = "alternate"
    seed: int = 0

    def __post_init__(self) -> None:
        choice("Equivocation", "mode", self.mode, ("alternate", "split", "random"))
        integer("Equivocation", "seed", self.seed, minimum=0)

    def choose(
        self, receiver: int, count: int, *, num_receivers: int | None = None, step: int = 0
    ) -> int:
        """Index (in ``[0, count)``) of the candidate vector that ``receiver`` gets."""
        receiver = _step(receiver, "receiver")
        count = integer("Equivocation", "count", count, minimum=1)
        step = _step(step)
        if self.mode == "alternate":
            return receiver % count
        if self.mode == "random":
            return int(np.random.default_rng([self.seed, step, receiver]).integers(count))
        if num_receivers is None:
            raise ValueError("Equivocation: mode 'split' needs num_receivers")
        num_receivers = integer("Equivocation", "num_receivers", num_receivers, minimum=1)
        if receiver >= num_receivers:
            raise ValueError(
                f"Equivocation: receiver {receiver} is outside [0, num_receivers={num_receivers})"
            )
        return receiver * count // num_receivers

    def vector_for(
        self,
        receiver: int,
        vectors: torch.Tensor | np.ndarray | Sequence,
        *,
        num_receivers: int | None = None,
        step: int = 0,
    ):
        """The candidate for ``receiver``: a row of ``vectors`` (a ``(k, d)`` stack or a
        sequence of k vectors)."""
        count = len(vectors)
        if count == 0:
            raise ValueError("Equivocation: vectors holds no candidate")
        return vectors[self.choose(receiver, count, num_receivers=num_receivers, step=step)]


__all__ = ["Behaviour", "Crash", "Delay", "Equivocation", "Omission", "Reliable"]
