"""The engine contract every protocol is written against.

Nodes. Every role is a node with an id allocated by the engine (:meth:`Engine.reserve`): the
protocol decides which roles exist and in which order their ids are allocated, never the
engine. A node is either

- *driven*: a :class:`Node` handle through which the protocol acts as that node (a server, a
  peer): it sends, multicasts and receives with :meth:`Node.recv` / :meth:`Node.gather`; or
- *reactive*: a member of a group attached with a :class:`Handler` (workers): the engine calls
  the handler with the messages delivered to its members, and sends what it returns. One call
  may carry several messages per member, each with its own round, version and model. A group
  attached with ``adversary=True`` is the Byzantine coalition: it runs after the honest groups
  and observes the honest messages sent so far (:meth:`Handler.handle`'s ``observed``).

Messages. ``sender`` and ``role`` are stamped by the engine from registration: a driven node can
only send as itself, and a message a handler returns under an id that is not one of its group's
members is an *impostor*: dropped and counted (``stats["impostor"]``). :meth:`Message.reply`
builds the answer to a message (sender, destination, round and version filled in). A
:class:`~byzlearn.engines.topology.Topology` says who may talk to whom (complete by default);
messages along a missing edge are dropped and counted (``stats["blocked"]``).

Time. One primitive, ``recv(dest, q, match, deadline)``: the first ``q`` messages for ``dest``
that satisfy ``match``, in arrival order, or those that arrived within ``deadline`` seconds of
``dest``'s clock; the clock then stands at the q-th arrival, or at the deadline when fewer came.
Messages that miss a deadline stay in flight: a later ``recv`` may still take them, or the
protocol discards them (:meth:`Node.discard`); either way they are counted (``late``,
``discarded``), never lost silently. :meth:`Node.gather` is ``recv`` for one round and kind.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import torch

from byzlearn.checks import check_real
from byzlearn.engines.topology import Complete, Topology

__all__ = [
    "STATS",
    "Complete",
    "Engine",
    "Handler",
    "Match",
    "Message",
    "Node",
    "Topology",
    "check_deadline",
    "match_all",
]

Match = Callable[["Message"], bool]

# Counters every engine keeps (``Engine.stats``).
STATS = (
    "sent",  # messages handed to the network (topology and faults not yet applied)
    "bytes",  # payload bytes of the messages sent
    "delivered",  # messages taken by a recv or handled by a reactive node
    "dropped",  # lost to a fault of the sender (crash, omission)
    "blocked",  # along an edge the topology does not have
    "impostor",  # returned by a handler under an id that is not its own
    "late",  # arrived after a deadline they were waited for (whether taken later or discarded)
    "discarded",  # removed from flight by the protocol (stale rounds) before being taken
    "alarms",  # local timers fired on reactive nodes (not network messages)
)


@dataclass
class Message:
    """A message between nodes.

    ``kind`` says what the payload is (``"model"``, ``"gradient"``, ...); ``round`` the protocol
    round or step it belongs to; ``version`` the model version it was computed from; ``meta``
    small JSON-able extras (a loss, a learning rate). ``sender``, ``role``, ``seq``,
    ``sent_at`` and ``arrival`` are set by the engine when the message is sent.

    From a reactive node, ``reply_to`` names the message it reacts to (it leaves once that one
    is handled) and ``computed`` says whether producing it took the node's compute time (a
    gradient: yes; forwarding a model it holds, asking for one: no).
    """

    kind: str = ""
    payload: Any = None
    dest: int | None = None
    round: int = 0
    version: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    sender: int | None = None
    role: str = ""
    seq: int = -1
    reply_to: int | None = None
    sent_at: float = 0.0
    arrival: float = 0.0
    computed: bool = True

    def reply(self, payload: Any, *, kind: str | None = None, **meta: Any) -> Message:
        """The answer to this message: from its destination back to its sender, same round and
        version, ``kind`` (default: this message's kind) and ``meta``."""
        return Message(
            kind=self.kind if kind is None else kind,
            payload=payload,
            dest=self.sender,
            round=self.round,
            version=self.version,
            meta=dict(meta),
            sender=self.dest,
            reply_to=self.seq,
        )

    def to(self, dest: int) -> Message:
        """A copy addressed to ``dest`` (the payload is shared, not copied; the engine checks
        ``dest`` when the copy is sent)."""
        return Message(self.kind, self.payload, dest, self.round, self.version, dict(self.meta))

    def copy(self) -> Message:
        """A shallow copy (same payload object)."""
        new = object.__new__(Message)  # the fields as they are, without __init__'s arguments
        new.__dict__.update(self.__dict__)  # (the engine copies every honest message it sends)
        return new

    @property
    def nbytes(self) -> int:
        """Bytes of the payload (tensors; 0 for anything else)."""
        p = self.payload
        return p.nbytes if isinstance(p, torch.Tensor) else 0

    # ------------------------------------------------------------------ checkpoints
    def to_state(self) -> dict[str, Any]:
        """Plain data (tensors, numbers, strings) for a ``weights_only`` checkpoint."""
        return {f: getattr(self, f) for f in _FIELDS}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Message:
        """Inverse of :meth:`to_state`; a field of the wrong kind (a checkpoint from elsewhere:
        a str round, a list as destination) is a ``ValueError`` here, not a failure deep inside
        the round that handles the message."""
        if not isinstance(state, dict) or not set(state) <= set(_FIELDS):
            raise ValueError(f"a saved message must be a mapping of {', '.join(_FIELDS)}")
        for name, value in state.items():
            if name == "payload":  # anything a checkpoint holds
                continue
            check, expected = _FIELD_CHECKS[name]
            if not check(value):
                raise ValueError(f"a saved message's {name} is not {expected}: {value!r:.80}")
        return cls(**state)


_FIELDS = tuple(f.name for f in fields(Message))


def _is_int(value: Any, low: int | None = None) -> bool:
    return type(value) is int and (low is None or value >= low)


def _is_time(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


# what each saved field of a message but its payload may hold, and its description for the
# error (meta: any mapping a checkpoint holds)
_FIELD_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "kind": (lambda v: isinstance(v, str), "a str"),
    "dest": (lambda v: v is None or _is_int(v, 0), "a node id (an int >= 0) or None"),
    "round": (lambda v: _is_int(v, 0), "an int >= 0"),
    "version": (_is_int, "an int"),
    "meta": (lambda v: isinstance(v, dict), "a mapping"),
    "sender": (lambda v: v is None or _is_int(v, 0), "a node id (an int >= 0) or None"),
    "role": (lambda v: isinstance(v, str), "a str"),
    "seq": (lambda v: _is_int(v, -1), "an int >= -1"),
    "reply_to": (lambda v: v is None or _is_int(v), "an int or None"),
    "sent_at": (_is_time, "a time (a number >= 0)"),
    "arrival": (_is_time, "a time (a number >= 0)"),
    "computed": (lambda v: isinstance(v, bool), "a bool"),
}


class Handler(Protocol):
    """The behaviour of a group of reactive nodes (e.g. all honest workers)."""

    def handle(self, inbox: Sequence[Message], observed: Sequence[Message]) -> list[Message]:
        """Answer the messages delivered to the group's members.

        ``inbox`` holds every message delivered in this call, ordered by (member, arrival); a
        member may have several, each with its own round, version and payload. ``observed``
        is empty for honest groups; for the adversary it holds, for each honest node, the
        latest message it had sent by the time the adversary's answers leave. Return the
        messages to send (usually ``m.reply(...)``); the engine checks that each names one of
        the group's members as sender. A simulated engine charges a member's compute time for
        each message a reply answers (``reply_to``), and none when the handler has a true
        ``instant`` attribute (it only forwards or crafts what it holds).
        """
        ...


class Engine(ABC):
    """Where nodes run and how their messages travel (see the module docstring)."""

    # ------------------------------------------------------------------ nodes
    @abstractmethod
    def reserve(self, role: str, count: int) -> list[int]:
        """Allocate ``count`` new node ids playing ``role``."""

    @abstractmethod
    def attach(self, ids: Sequence[int], handler: Handler, *, adversary: bool = False) -> None:
        """Make the reserved nodes ``ids`` reactive, handled by ``handler``."""

    @abstractmethod
    def driven(self, id: int, *, adversary: bool = False) -> Node:
        """The handle through which the protocol acts as the reserved node ``id``.

        ``adversary=True`` makes it a Byzantine node acting on its own (a Byzantine server or
        peer): its messages are not shown to the adversary as honest ones, and it may
        :meth:`observe` what honest nodes sent."""

    def add_node(self, role: str, *, adversary: bool = False) -> Node:
        """Reserve one node playing ``role`` and return its handle."""
        return self.driven(self.reserve(role, 1)[0], adversary=adversary)

    def add_group(
        self, role: str, count: int, handler: Handler, *, adversary: bool = False
    ) -> list[int]:
        """Reserve ``count`` nodes playing ``role``, handled by ``handler``; return their ids."""
        ids = self.reserve(role, count)
        self.attach(ids, handler, adversary=adversary)
        return ids

    @abstractmethod
    def nodes(self, role: str | None = None) -> list[int]:
        """Ids of the nodes playing ``role`` (all nodes for ``None``), sorted."""

    @abstractmethod
    def role_of(self, id: int) -> str:
        """The role node ``id`` was registered with."""

    @property
    @abstractmethod
    def topology(self) -> Topology:
        """Who may talk to whom."""

    @abstractmethod
    def set_topology(self, topology: Topology) -> None:
        """Replace the topology (complete by default)."""

    # ------------------------------------------------------------------ transport
    @abstractmethod
    def send(self, sender: int, msg: Message) -> None:
        """Send ``msg`` from the driven node ``sender`` (use :meth:`Node.send`)."""

    def multicast(self, sender: int, msg: Message, dests: Iterable[int]) -> None:
        """Send a copy of ``msg`` (:meth:`Message.to`, one payload, shared) from ``sender`` to
        each of ``dests``, in order: what as many :meth:`send` calls do (use
        :meth:`Node.multicast`). Engines may do the shared bookkeeping once."""
        for dest in dests:
            self.send(sender, msg.to(dest))

    @abstractmethod
    def recv(
        self,
        dest: int,
        q: int = 1,
        match: Match | None = None,
        deadline: float | None = None,
    ) -> list[Message]:
        """The first ``q`` messages for ``dest`` satisfying ``match`` (see the module docstring);
        without a deadline, fewer when no more can arrive."""

    @abstractmethod
    def observe(self, node: int, match: Match | None = None) -> list[Message]:
        """What the Byzantine node ``node`` (driven with ``adversary=True``) sees: for each
        honest sender, the latest message satisfying ``match`` that it has sent so far (the
        omniscient adversary of the literature). The node's clock moves to the send time of
        the latest message returned (it acts once it has seen what it uses)."""

    @abstractmethod
    def discard(self, dest: int, match: Match) -> int:
        """Remove the messages for ``dest`` satisfying ``match`` from flight; return how many."""

    def alarm(self, nodes: Sequence[int], at: float, round: int, kind: str = "alarm") -> None:
        """Fire a local timer on each reactive node of ``nodes`` at time ``at``: the node's
        handler gets ``Message(kind=kind, round=round)`` from itself, arriving at ``at``. A timer
        is not a network message: no link delay, topology or fault applies, and it is counted in
        ``stats["alarms"]``, not ``sent``. Protocols that assume synchrony (rounds that start at
        known times, timeouts) start their reactive roles with alarms."""
        raise NotImplementedError(f"the {type(self).__name__} engine has no alarms")

    def settle(self) -> None:
        """Deliver everything that can be delivered now: reactive nodes handle their messages
        (and answer each other) until none is pending. Protocols whose roles are all reactive
        (started by :meth:`alarm`) step with it."""
        raise NotImplementedError(f"the {type(self).__name__} engine cannot settle")

    @abstractmethod
    def compute(self, node: int, round: int) -> float:
        """The driven node ``node`` computes for ``round`` (a peer's gradient): a simulated
        engine moves its clock by its compute time; a real one has nothing to do (the time
        passed). Return its clock."""

    @abstractmethod
    def now(self, node: int) -> float:
        """The local clock of node ``node``."""

    @property
    def clock(self) -> float:
        """The latest time any node has reached (a driven node's clock, a reactive node's busy
        time)."""
        return max((self.now(i) for i in self.nodes()), default=0.0)

    @property
    @abstractmethod
    def stats(self) -> dict[str, int]:
        """The counters of :data:`STATS` so far, plus ``in_flight``."""

    def start(self) -> None:  # noqa: B027 - optional hook
        """Get ready to deliver ahead of the first delivery (which does it otherwise): an
        engine whose nodes run elsewhere starts them here, so that a plan the machines cannot
        hold (too few CPUs for the actors) fails before a run writes anything. Nothing to do
        for an engine that runs every node in this process."""

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """State needed to resume deterministically (plain data and tensors only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore :meth:`state_dict`."""


def match_all(*conditions: Match | None) -> Match:
    """A predicate true when every given condition is (``None`` conditions are ignored)."""
    active = [c for c in conditions if c is not None]
    if len(active) == 1:
        return active[0]
    if len(active) == 2:  # (a gather's round and kind) two calls, without a generator
        first, second = active
        return lambda m: first(m) and second(m)
    return lambda m: all(c(m) for c in active)


class Node:
    """The handle of a driven node: the protocol acts as node ``id`` through it."""

    def __init__(self, engine: Engine, id: int) -> None:
        self.engine = engine
        self.id = int(id)
        self.role = engine.role_of(self.id)

    def __repr__(self) -> str:
        return f"Node(id={self.id}, role={self.role!r})"

    @property
    def clock(self) -> float:
        """This node's local time."""
        return self.engine.now(self.id)

    def send(self, msg: Message) -> None:
        """Send ``msg`` (to ``msg.dest``) as this node."""
        self.engine.send(self.id, msg)

    def multicast(self, msg: Message, dests: Iterable[int]) -> None:
        """Send a copy of ``msg`` to each of ``dests`` (one payload, shared)."""
        self.engine.multicast(self.id, msg, dests)

    def recv(
        self, q: int = 1, match: Match | None = None, deadline: float | None = None
    ) -> list[Message]:
        """``engine.recv(self.id, q, match, deadline)``."""
        return self.engine.recv(self.id, q, match, deadline)

    def gather(
        self,
        round: int,
        q: int,
        deadline: float | None = None,
        *,
        kind: str | None = None,
        match: Match | None = None,
    ) -> list[Message]:
        """The first ``q`` messages of ``round`` (and ``kind``) for this node; see ``recv``."""

        def of_round(m: Message) -> bool:  # round and kind in one test per message
            return m.round == round and (kind is None or m.kind == kind)

        return self.recv(q, of_round if match is None else match_all(of_round, match), deadline)

    def discard(self, match: Match) -> int:
        """Discard in-flight messages for this node satisfying ``match`` (counted)."""
        return self.engine.discard(self.id, match)

    def compute(self, round: int) -> float:
        """``engine.compute(self.id, round)``: local work that takes this node's compute time."""
        return self.engine.compute(self.id, round)

    def observe(self, match: Match | None = None) -> list[Message]:
        """``engine.observe(self.id, match)`` (Byzantine nodes only)."""
        return self.engine.observe(self.id, match)


def check_deadline(deadline: float | None) -> float | None:
    """Validate a relative deadline (``None``, or a finite number >= 0)."""
    return None if deadline is None else check_real(deadline, "deadline", 0)
