"""The ``local`` engine: every node in this process, an event-driven simulated clock.

Time. Every message carries its send time and arrival time on one simulated time line. A
driven node (a server, a peer) has its own clock, which :meth:`LocalEngine.recv` moves (to the
arrival of the q-th message taken, or to the deadline when fewer came in time) and
:meth:`LocalEngine.compute` advances by the node's compute time. A reactive node (a worker)
handles its messages in arrival order, one at a time: message m starts at
``max(arrival, busy_until)``; a message it answers (a reply's ``reply_to``) takes
``compute_time(node, m.round)``, one it only stores (a model it waits to have a quorum of) takes
none; the adversary is charged once per member and round. An answer leaves when the message it
answers is done, then travels ``link_delay(node, dest, round)`` (plus the sender's fault
delay). Compute times, link
delays, faults and lost coordinates come from a :class:`~byzlearn.engines.network.NetworkModel`
and are keyed on (seed, node, round): they do not depend on grouping or vectorisation.

Delivery. Messages for reactive nodes are handled in *waves*, when a driven node next receives
(so a multicast reaches a whole group at once): the honest groups first, each in one call for
all its pending messages when ``vectorise=True`` (the honest workers then run one batched
forward/backward) or one call per message otherwise, then the adversary (the Byzantine
coalition), whose answers are computed with the honest messages sent by the time they leave.
Answers for reactive nodes start the next wave. Because a reactive node's answers depend only on
what it received, handling it early does not change what the simulation computes; the
adversary's view is what has been sent by then among the messages already created (a message
that a driven node has not yet triggered is not in it). One limit (docs/runtime.md): a message
one reactive node sends to another, created in a later wave, that arrives before messages its
destination already handled is handled after them; no protocol of the library does this.

Late messages. A message that arrives after the deadline of a ``recv`` waiting for it stays in
flight (counted ``late``): a later ``recv`` may take it, or the protocol discards it (counted
``discarded``). Messages in flight, clocks, busy times and the adversary's view are part of
:meth:`LocalEngine.state_dict`, so a run resumed from a checkpoint equals an uninterrupted one.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from byzlearn.checks import check_int, check_real
from byzlearn.engines.base import (
    STATS,
    Handler,
    Match,
    Message,
    Node,
)
from byzlearn.engines.network import NetworkModel
from byzlearn.engines.nodes import NodeTable, node_id
from byzlearn.engines.topology import Complete, Topology

__all__ = ["LocalEngine"]


def _charged(replies: Sequence[Message]) -> set[int]:
    """The messages whose handling took compute time: those a computed reply answers."""
    return {r.reply_to for r in replies if r.reply_to is not None and r.computed}


# Waves of reactive messages handled in one recv before the engine gives up (reactive nodes
# answering each other forever would otherwise never let the driven node's recv return).
_MAX_WAVES = 10_000


@dataclass
class _Group:
    ids: list[int]
    handler: Handler
    adversary: bool


class LocalEngine(NodeTable):
    """In-process engine with a simulated, event-driven clock (see the module docstring).

    ``history``: honest messages per sender kept for the adversary's view (the latest one sent
    by a given time is what it observes).
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        vectorise: bool = True,
        network: NetworkModel | None = None,
        topology: Topology | None = None,
        history: int = 2,
    ) -> None:
        self.vectorise = bool(vectorise)
        if network is not None and not isinstance(network, NetworkModel):
            raise TypeError(f"network must be a NetworkModel, got {type(network).__name__}")
        self.network = network if network is not None else NetworkModel(seed=seed)
        self._init_nodes(topology or Complete(), history)
        self._pending: list[Message] = []
        self._charged: set[tuple[int | None, int]] = set()  # adversary (member, round) charged
        self._timers: set[int] = set()  # seqs of the alarms pending (not network messages)

    # ------------------------------------------------------------------ nodes
    def attach(self, ids: Sequence[int], handler: Handler, *, adversary: bool = False) -> None:
        # the adversary moves last in a wave
        self._register_group(_Group([node_id(i) for i in ids], handler, bool(adversary)))

    def driven(self, id: int, *, adversary: bool = False) -> Node:
        id = node_id(id)
        return self._register_driven(id, adversary, lambda: Node(self, id), 0.0)

    @property
    def stats(self) -> dict[str, int]:
        out = dict(self._stats)
        pending = len(self._pending) - len(self._timers)  # a timer is no message in flight
        out["in_flight"] = pending + sum(len(box) for box in self._mail.values())
        return out

    # ------------------------------------------------------------------ transport
    def send(self, sender: int, msg: Message) -> None:
        sender = self._sender(sender)
        self._stamp(msg, sender)
        msg.sent_at = self._clock[sender]
        if self._dispatch(msg):
            self._remember(msg)

    def multicast(self, sender: int, msg: Message, dests: Iterable[int]) -> None:
        """As many :meth:`send` calls, except that the adversary's memory copies only the
        messages it keeps (:meth:`._remember_last`): messages in flight wait for a delivery,
        so none is lost or changed before it copies them. (The steps of :meth:`send` are
        written out in the loop: a helper call per message took a fifth of the multicast.)"""
        sender = self._sender(sender)
        now = self._clock[sender]
        sent = []
        for dest in dests:
            copy = msg.to(dest)
            self._stamp(copy, sender)
            copy.sent_at = now
            if self._dispatch(copy):
                sent.append(copy)
        self._remember_last(sent)

    def _sender(self, sender: int) -> int:
        sender = node_id(sender)
        if sender not in self._driven:
            raise ValueError(f"node {sender} is not a driven node; reactive nodes answer")
        return sender

    def _dispatch(self, msg: Message) -> bool:
        """Put a stamped message (``sent_at`` set) in flight, applying topology and faults;
        False when it was blocked or dropped. The caller remembers the message for the
        adversary (:meth:`._remember`) when it left."""
        extra = self._admit(msg)
        if extra is None:
            return False
        assert msg.sender is not None and msg.dest is not None
        dest = int(msg.dest)
        link = self.network.link
        delay = (
            link.mean
            if link.dist == "constant"
            else self.network.link_delay(msg.sender, dest, msg.round)
        )
        msg.arrival = msg.sent_at + delay + extra
        (self._mail[dest] if dest in self._driven else self._pending).append(msg)
        return True

    def observe(self, node: int, match: Match | None = None) -> list[Message]:
        return self._observed(node_id(node), match)

    def _lose(self, msgs: Sequence[Message]) -> None:
        """Lose coordinates of the delivered messages' payloads (nothing, and no call per
        message, in the common case of a network that loses none)."""
        if self.network.coordinate_drop <= 0:
            return
        for msg in msgs:
            assert msg.sender is not None and msg.dest is not None
            msg.payload = self.network.lose_coordinates(
                msg.payload, msg.sender, msg.dest, msg.round, msg.kind
            )

    # ------------------------------------------------------------------ reactive nodes
    def _run_reactive(self) -> None:
        """Handle every message pending for reactive nodes, wave after wave."""
        waves = 0
        while self._pending:
            waves += 1
            if waves > _MAX_WAVES:
                raise RuntimeError(
                    f"reactive nodes kept messaging each other for {_MAX_WAVES} waves"
                )
            pending, self._pending = self._pending, []
            for group in self._groups:
                members = set(group.ids)
                inbox = [m for m in pending if m.dest in members]
                if inbox:
                    self._handle(group, inbox)

    def _schedule(self, inbox: list[Message], charged: set[int]) -> dict[int, float]:
        """Finish times of ``inbox`` (sorted by member, arrival), one message at a time per
        member: a message whose seq is in ``charged`` takes the member's compute time; the
        others (messages it only stores, e.g. models it waits to have a quorum of) take none."""
        finish: dict[int, float] = {}
        network = self.network
        fixed = network.constant_compute_time()
        for m in inbox:
            assert m.dest is not None
            start = max(m.arrival, self._busy[m.dest])
            if m.seq in charged:
                cost = network.compute_time(m.dest, m.round) if fixed is None else fixed
                finish[m.seq] = start + cost
                self._busy[m.dest] = finish[m.seq]
            else:  # taken as it comes; the node is not kept busy
                finish[m.seq] = start
        return finish

    def _handle(self, group: _Group, inbox: list[Message]) -> None:
        """Compute time is charged for the messages a computed reply answers (``reply_to``,
        ``computed``); for the adversary, once per member and round (it answers them
        together); never for a handler whose ``instant`` attribute is true (it only sends what
        it holds or crafts)."""
        inbox.sort(key=lambda m: (m.dest, m.arrival, m.seq))
        instant = bool(getattr(group.handler, "instant", False))
        self._lose(inbox)
        # timers are handled, not delivered (no network message)
        fired = self._timers.intersection(m.seq for m in inbox) if self._timers else set()
        self._timers -= fired
        self._stats["delivered"] += len(inbox) - len(fired)
        if group.adversary:
            first: dict[tuple[int | None, int], int] = {}
            for m in inbox:
                if (m.dest, m.round) not in self._charged and not instant:
                    first.setdefault((m.dest, m.round), m.seq)
            finish = self._schedule(inbox, set(first.values()))
            for m in inbox:  # the member's other messages of the round are answered with it
                if (m.dest, m.round) in first:
                    finish[m.seq] = max(finish[m.seq], finish[first[(m.dest, m.round)]])
            self._charged.update(first)
            if len(self._charged) > 100_000:  # rounds long past
                newest = max(r for _, r in self._charged)
                self._charged = {k for k in self._charged if k[1] >= newest - 10}
            for t in sorted(set(finish.values())):
                batch = [m for m in inbox if finish[m.seq] == t]
                self._emit(group, group.handler.handle(batch, self._view(time=t)), finish)
        elif self.vectorise:
            replies = group.handler.handle(inbox, [])
            finish = self._schedule(inbox, set() if instant else _charged(replies))
            self._emit(group, replies, finish)
        else:
            # one call per message in the vectorised call's order (member, arrival): the replies
            # are stamped in the same order, so equal arrivals break ties the same way
            for m in inbox:
                replies = group.handler.handle([m], [])
                charged = set() if instant else _charged(replies)
                self._emit(group, replies, self._schedule([m], charged))

    def alarm(self, nodes: Sequence[int], at: float, round: int, kind: str = "alarm") -> None:
        at = check_real(at, "an alarm's time")
        round = check_int(round, "an alarm's round", 0)
        ids = [node_id(node) for node in nodes]
        for node in ids:  # all checked before any is set
            if node not in self._group_of:
                raise ValueError(f"node {node} is not a reactive node")
        for node in ids:
            msg = Message(kind=kind, dest=node, round=round)
            self._stamp(msg, node)
            msg.sent_at = msg.arrival = at
            self._pending.append(msg)
            self._timers.add(msg.seq)
            self._stats["alarms"] += 1

    def settle(self) -> None:
        self._run_reactive()

    def compute(self, node: int, round: int) -> float:
        node = node_id(node)
        if node not in self._driven:
            raise ValueError(f"node {node} is not a driven node")
        round = check_int(round, "round", 0)
        self._clock[node] += self.network.compute_time(node, round)
        return self._clock[node]

    def _emit(self, group: _Group, replies: Sequence[Message], finish: dict[int, float]) -> None:
        members = set(group.ids)
        for reply in replies:
            if reply.sender not in members:
                self._stats["impostor"] += 1
                continue
            sender = int(reply.sender)
            self._stamp(reply, sender)
            reply.sent_at = finish.get(
                reply.reply_to if reply.reply_to is not None else -1, self._busy[sender]
            )
            if self._dispatch(reply):
                self._remember(reply)

    # ------------------------------------------------------------------ driven nodes
    def recv(
        self,
        dest: int,
        q: int = 1,
        match: Match | None = None,
        deadline: float | None = None,
    ) -> list[Message]:
        dest, q, deadline = self._recv_arguments(dest, q, deadline)
        self._run_reactive()
        now = self._clock[dest]
        limit = now + deadline if deadline is not None else math.inf
        box = self._mail[dest]
        candidates = sorted(
            (m for m in box if match is None or match(m)), key=lambda m: (m.arrival, m.seq)
        )
        taken = [m for m in candidates if m.arrival <= limit][:q]
        if len(taken) < q and deadline is not None:  # too few in time: wait out the deadline
            self._clock[dest] = limit
            for m in candidates:
                if m.arrival > limit and m.seq not in self._late:
                    self._late.add(m.seq)
                    self._stats["late"] += 1
        elif taken:  # the q-th arrival (without a deadline, nothing more can arrive)
            self._clock[dest] = max(now, taken[-1].arrival)
        self._lose(taken)
        return self._take(dest, taken)

    def discard(self, dest: int, match: Match) -> int:
        return self._discard(self._driven_id(dest), match)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "clock": dict(self._clock),
            "busy": dict(self._busy),
            "pending": [m.to_state() for m in self._pending],
            "mail": {i: [m.to_state() for m in box] for i, box in self._mail.items()},
            "seen": {i: [m.to_state() for m in kept] for i, kept in self._seen.items()},
            "late": sorted(self._late),
            "charged": sorted(self._charged),
            "timers": sorted(self._timers),
            "seq": self._seq,
            "stats": dict(self._stats),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, t in state["clock"].items():
            self._clock[int(i)] = float(t)
        for i, t in state["busy"].items():
            self._busy[int(i)] = float(t)
        self._pending = [Message.from_state(m) for m in state["pending"]]
        self._mail = {
            int(i): [Message.from_state(m) for m in box] for i, box in state["mail"].items()
        }
        for i in self._driven:
            self._mail.setdefault(i, [])
        self._seen = {int(i): [Message.from_state(m) for m in k] for i, k in state["seen"].items()}
        self._late = {int(s) for s in state["late"]}
        self._charged = {(int(d), int(r)) for d, r in state.get("charged", [])}
        self._timers = {int(s) for s in state.get("timers", [])}
        self._seq = int(state["seq"])
        self._stats = Counter({k: 0 for k in STATS})
        self._stats.update({k: int(v) for k, v in state["stats"].items()})
