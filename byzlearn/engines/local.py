"""The ``local`` engine: every node in this process, a simulated clock, deterministic under a seed.

Delivery is lazy: messages sent to registered nodes wait until someone gathers; then each group
handles its inbox. With ``vectorise=True`` a group gets its whole inbox in one call (the honest
workers then run one batched forward/backward for all of them); with ``vectorise=False`` it is
called once per member (the plain per-worker loop, kept as the reference and benchmark baseline).
Omniscient groups (the Byzantine coalition) always run last, as one call, and observe the replies
the other groups sent in the same delivery.

Simulated time: a reply leaves its node ``compute_time`` after the request arrived and arrives
``link_delay`` later. Faults (for tests and fault-injection studies): ``faults`` maps a node id to
a behaviour of :mod:`byzlearn.attacks.behaviours` (anything with ``reply(step, node) -> int |
None``): ``None`` drops the node's reply of that round (crash, omission); ``k > 0`` delays it by
``k * step_time`` (a synchronous server that stops waiting sees it as stale next round).
``coordinate_drop`` turns each coordinate of a tensor payload into NaN with that probability (a
lossy link).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from byzlearn.engines.base import Engine, Group, Message

__all__ = ["LocalEngine"]


@dataclass
class _Entry:
    ids: list[int]
    role: str
    group: Group
    omniscient: bool


class LocalEngine(Engine):
    """In-process engine with a simulated clock (see the module docstring)."""

    def __init__(
        self,
        *,
        seed: int = 0,
        vectorise: bool = True,
        compute_time: float | Mapping[int, float] = 1.0,
        link_delay: float = 0.0,
        coordinate_drop: float = 0.0,
        faults: Mapping[int, Any] | None = None,
        step_time: float = 1.0,
    ) -> None:
        self.vectorise = vectorise
        self._compute_time = compute_time
        self._link_delay = float(link_delay)
        self._coordinate_drop = float(coordinate_drop)
        self._faults = dict(faults or {})
        self._step_time = float(step_time)
        self._entries: list[_Entry] = []
        self._owner: dict[int, _Entry] = {}
        self._pending: list[Message] = []
        self._mailbox: list[Message] = []
        self._clock = 0.0
        self._rng = torch.Generator().manual_seed(int(seed))
        self.dropped = 0  # stale or faulty messages discarded so far

    # ------------------------------------------------------------------ registration
    def add_group(
        self, ids: Sequence[int], role: str, group: Group, *, omniscient: bool = False
    ) -> None:
        entry = _Entry([int(i) for i in ids], role, group, omniscient)
        for i in entry.ids:
            if i in self._owner:
                raise ValueError(f"node {i} is already registered")
            self._owner[i] = entry
        # non-omniscient groups first: the adversary moves last
        self._entries.append(entry)
        self._entries.sort(key=lambda e: e.omniscient)

    def nodes(self, role: str) -> list[int]:
        return sorted(i for e in self._entries if e.role == role for i in e.ids)

    @property
    def clock(self) -> float:
        return self._clock

    # ------------------------------------------------------------------ transport
    def send(self, msg: Message) -> None:
        if msg.dest is None:
            raise ValueError("message has no destination")
        msg.sent_at = self._clock
        msg.arrival = msg.sent_at + self._link_delay
        (self._pending if msg.dest in self._owner else self._mailbox).append(msg)

    def _compute(self, node: int) -> float:
        ct = self._compute_time
        return float(ct.get(node, 1.0)) if isinstance(ct, Mapping) else float(ct)

    def _faulty(self, reply: Message) -> bool:
        """Apply the sender's behaviour: True when the reply is lost, else delay it."""
        fault = self._faults.get(reply.sender)
        if fault is None:
            return False
        delay = fault.reply(reply.round, reply.sender)
        if delay is None:
            return True
        reply.arrival += float(delay) * self._step_time
        return False

    def _lossy(self, reply: Message) -> None:
        if self._coordinate_drop > 0 and isinstance(reply.payload, torch.Tensor):
            mask = torch.rand(reply.payload.shape, generator=self._rng) < self._coordinate_drop
            reply.payload = reply.payload.masked_fill(mask, float("nan"))

    def _deliver(self) -> None:
        """Let every group handle the messages waiting for its members."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        observed: list[Message] = []
        for entry in self._entries:
            members = set(entry.ids)
            inbox = sorted((m for m in pending if m.dest in members), key=lambda m: m.dest)
            if not inbox:
                continue
            arrival = {m.dest: m.arrival for m in inbox}
            if entry.omniscient or self.vectorise:
                replies = entry.group.handle(inbox, observed if entry.omniscient else [])
            else:
                replies = [r for m in inbox for r in entry.group.handle([m], [])]
            for reply in replies:
                reply.sent_at = arrival.get(reply.sender, self._clock) + self._compute(reply.sender)
                reply.arrival = reply.sent_at + self._link_delay
                if self._faulty(reply):
                    self.dropped += 1
                    continue
                if not entry.omniscient:  # the adversary sees what was sent, before losses
                    observed.append(Message(**reply.__dict__))
                self._lossy(reply)
                self._mailbox.append(reply)

    def gather(self, dest: int, round: int, q: int, deadline: float | None = None) -> list[Message]:
        self._deliver()
        mine = [m for m in self._mailbox if m.dest == dest]
        self._mailbox = [m for m in self._mailbox if m.dest != dest]
        stale = [m for m in mine if m.round != round]
        self.dropped += len(stale)
        current = sorted((m for m in mine if m.round == round), key=lambda m: (m.arrival, m.sender))
        if deadline is not None:
            cutoff = self._clock + float(deadline)
            current = [m for m in current if m.arrival <= cutoff]
        taken, rest = current[:q], current[q:]
        self._mailbox.extend(rest)  # may still be gathered for this round; stale afterwards
        if taken:
            self._clock = max(self._clock, max(m.arrival for m in taken))
        elif deadline is not None:
            self._clock += float(deadline)
        return taken

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"clock": self._clock, "rng": self._rng.get_state(), "dropped": self.dropped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._clock = float(state["clock"])
        self._rng.set_state(state["rng"])
        self.dropped = int(state["dropped"])
