"""What every engine keeps the same way: the table of nodes (ids by role, reactive groups,
driven handles, Byzantine driven nodes), the topology, the clocks, and the bookkeeping of a
message on its way out (stamping, the topology and faults, counters, the adversary's memory)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

from byzlearn.checks import check_int
from byzlearn.engines.base import STATS, Engine, Match, Message, Node, check_deadline
from byzlearn.engines.network import NetworkModel
from byzlearn.engines.topology import Complete, Topology

__all__ = ["NodeTable", "node_id"]


def node_id(value: object) -> int:
    """``value`` as a node id: an int (a numpy integer too), never a bool, a float or a str,
    which ``int()`` would turn into another node's id (2.5 into 2) or a confusing error."""
    if type(value) is int:  # the common case, one test
        return value
    return check_int(value, "a node id")


def _topology(topology: object) -> Topology:
    """``topology`` if it is a :class:`Topology` (a wrong value would fail at the first send)."""
    if not isinstance(topology, Topology):
        raise TypeError(
            f"topology must be a Topology (Complete(), Ring(ids), ...), "
            f"got {type(topology).__name__}"
        )
    return topology


class NodeTable(Engine):
    """An engine base holding the node table and the message bookkeeping both engines share.

    ``reserve`` hands out ids in order; a node is reactive (in ``_group_of``) or driven (in
    ``_driven``), never both; ``now`` is a driven node's clock or a reactive node's busy time.
    :meth:`_stamp` sets a message's sender, role and sequence number; :meth:`_admit` counts it
    and applies the topology and the sender's faults; :meth:`_remember` keeps the last
    ``history`` honest messages per sender for the adversary's :meth:`_view`. Subclasses call
    :meth:`_init_nodes` in ``__init__`` and write the rest of the contract (delivery, time)."""

    network: NetworkModel
    _topology: Topology
    _roles: dict[int, str]
    _groups: list[Any]
    _group_of: dict[int, Any]
    _driven: dict[int, Node]
    _byzantine: set[int]
    _clock: dict[int, float]
    _busy: dict[int, float]
    _mail: dict[int, list[Message]]
    _seen: dict[int, list[Message]]
    _late: set[int]
    _seq: int
    _stats: Counter[str]
    _has_adversary: bool
    _history: int

    def _init_nodes(self, topology: Topology, history: int = 2) -> None:
        self._topology = _topology(topology)
        self._roles = {}
        self._groups = []
        self._group_of = {}
        self._driven = {}
        self._byzantine = set()  # driven nodes acting for the adversary
        self._clock = {}
        self._busy = {}
        self._mail = {}
        self._seen = {}
        self._late = set()
        self._seq = 0
        self._stats = Counter({k: 0 for k in STATS})
        self._has_adversary = False
        self._history = max(1, int(history))

    # ------------------------------------------------------------------ nodes
    def reserve(self, role: str, count: int) -> list[int]:
        if not isinstance(role, str) or not role:
            raise ValueError(f"a role must be a non-empty string, got {role!r}")
        count = check_int(count, "count", 0)
        start = len(self._roles)
        ids = list(range(start, start + count))
        for i in ids:
            self._roles[i] = role
        return ids

    def _check_free(self, id: int) -> None:
        if id not in self._roles:
            raise ValueError(f"node {id} was not reserved")
        if id in self._group_of or id in self._driven:
            raise ValueError(f"node {id} is already registered")

    def _register_group(self, group: Any) -> None:
        """Make ``group``'s members (all free, checked first) reactive; the adversary's group
        goes last in :attr:`_groups`."""
        for i in group.ids:
            self._check_free(i)
        self._has_adversary = self._has_adversary or group.adversary
        for i in group.ids:
            self._group_of[i] = group
            self._busy[i] = 0.0
        self._groups.append(group)
        self._groups.sort(key=lambda g: g.adversary)

    def _register_driven(
        self, id: int, adversary: bool, handle: Callable[[], Node], clock: float
    ) -> Node:
        """Register the driven node ``id`` with ``handle()`` and its starting ``clock`` (the
        first time), or check that a second registration asks for the same kind."""
        if id not in self._driven:
            self._check_free(id)
            self._driven[id] = handle()
            self._clock[id] = clock
            self._mail[id] = []
            if adversary:
                self._byzantine.add(id)
                self._has_adversary = True
        elif adversary != (id in self._byzantine):
            kind = "an honest" if adversary else "a Byzantine"
            raise ValueError(f"node {id} is already registered as {kind} node")
        return self._driven[id]

    def nodes(self, role: str | None = None) -> list[int]:
        return sorted(i for i, r in self._roles.items() if role is None or r == role)

    def role_of(self, id: int) -> str:
        try:
            return self._roles[node_id(id)]
        except KeyError:
            raise ValueError(f"unknown node {id}") from None

    @property
    def topology(self) -> Topology:
        return self._topology

    def set_topology(self, topology: Topology) -> None:
        self._topology = _topology(topology)

    def now(self, node: int) -> float:
        node = node_id(node)
        if node in self._clock:
            return self._clock[node]
        if node in self._busy:
            return self._busy[node]
        raise ValueError(f"unknown node {node}")

    # ------------------------------------------------------------------ messages
    def _stamp(self, msg: Message, sender: int) -> None:
        msg.sender = sender
        msg.role = self._roles[sender]
        msg.seq = self._seq
        self._seq += 1

    def _admit(self, msg: Message) -> float | None:
        """Count a stamped message as sent and apply the topology and the sender's faults:
        the sender's extra delay, or ``None`` when the message is blocked or dropped (counted).
        Its destination must be a registered node.

        Called for every message: the common case (every edge allowed, a sender without a
        fault behaviour) takes no call into the topology or the network model."""
        dest = msg.dest
        if type(dest) is not int:  # (an int: the common case, one test)
            if dest is None:
                raise ValueError("message has no destination")
            # 1.5 or "1" would reach node 1's queue but never match it: lost silently
            dest = msg.dest = check_int(dest, "message destination", 0)
        if type(msg.round) is not int or msg.round < 0:  # the round keys the message's draws
            msg.round = check_int(msg.round, "message round", 0)
        if dest not in self._driven and dest not in self._group_of:
            raise ValueError(f"message to unknown or unregistered node {dest}")
        sender = msg.sender
        assert sender is not None
        stats = self._stats
        stats["sent"] += 1
        payload = msg.payload
        if isinstance(payload, torch.Tensor):
            stats["bytes"] += payload.nbytes
        if type(self._topology) is not Complete and not self._topology.allows(sender, dest):
            stats["blocked"] += 1
            return None
        if sender not in self.network.faults:
            return 0.0
        extra = self.network.fault_delay(sender, msg.round)
        if extra is None:
            stats["dropped"] += 1
        return extra

    def _remember(self, msg: Message) -> None:
        """Keep honest messages (as sent, before losses) for the adversary's view (only when
        there is an adversary)."""
        if not self._has_adversary:
            return
        sender = msg.sender
        assert sender is not None
        group = self._group_of.get(sender)
        if (group is not None and group.adversary) or sender in self._byzantine:
            return
        kept = self._seen.get(sender)
        if kept is None:
            kept = self._seen[sender] = []
        kept.append(msg.copy())
        if len(kept) > self._history:
            del kept[: -self._history]

    def _remember_last(self, msgs: list[Message]) -> None:
        """:meth:`_remember` each of ``msgs`` (sent in this order by one sender) that the memory
        keeps: the last ``history`` of them, since each later one pushes an earlier one out.
        A multicast to n nodes then makes ``history`` copies instead of n."""
        for msg in msgs[-self._history :]:
            self._remember(msg)

    def _view(self, match: Match | None = None, time: float = math.inf) -> list[Message]:
        """For each honest sender, its latest message (satisfying ``match``) sent by ``time``."""
        view = []
        for sender in sorted(self._seen):
            latest = None  # the latest by (sent_at, seq); a loop, not a list and a keyed max
            for m in self._seen[sender]:
                if m.sent_at > time or (match is not None and not match(m)):
                    continue
                if latest is None or (m.sent_at, m.seq) > (latest.sent_at, latest.seq):
                    latest = m
            if latest is not None:
                view.append(latest)
        return view

    def _observed(self, node: int, match: Match | None) -> list[Message]:
        """What the Byzantine driven node ``node`` sees now (copies); its clock moves to the
        latest send time among them."""
        if node not in self._byzantine:
            raise ValueError(f"node {node} is not a Byzantine driven node; it cannot observe")
        view = [m.copy() for m in self._view(match)]
        if view:
            self._clock[node] = max(self._clock[node], max(m.sent_at for m in view))
        return view

    # ------------------------------------------------------------------ mailboxes
    def _driven_id(self, dest: int) -> int:
        dest = node_id(dest)
        if dest not in self._driven:
            raise ValueError(f"node {dest} is not a driven node")
        return dest

    def _recv_arguments(
        self, dest: int, q: int, deadline: float | None
    ) -> tuple[int, int, float | None]:
        """``recv``'s arguments checked: a driven node, ``q >= 0``, a valid deadline."""
        dest = self._driven_id(dest)
        return dest, check_int(q, "q", 0), check_deadline(deadline)

    def _take(self, dest: int, taken: list[Message]) -> list[Message]:
        """Remove ``taken`` from ``dest``'s mailbox (delivered, no longer late)."""
        chosen = {m.seq for m in taken}
        self._mail[dest] = [m for m in self._mail[dest] if m.seq not in chosen]
        self._late.difference_update(chosen)
        self._stats["delivered"] += len(taken)
        return taken

    def _discard(self, dest: int, match: Match) -> int:
        """Remove the messages for ``dest`` satisfying ``match`` from its mailbox (counted)."""
        box = self._mail[dest]
        gone = {m.seq for m in box if match(m)}
        if gone:
            self._mail[dest] = [m for m in box if m.seq not in gone]
            self._late.difference_update(gone)
            self._stats["discarded"] += len(gone)
        return len(gone)
