"""The small engine interface every protocol is written against.

A protocol only ever does three things with an engine:

- :meth:`Engine.send` one message to one node, or :meth:`Engine.broadcast` it to every node of a
  role;
- :meth:`Engine.gather` "the first ``q`` replies of round ``t`` addressed to me, or whatever
  arrived by the deadline". Replies tagged with another round are stale and dropped, never mixed.

Nodes are registered in *groups* (:meth:`Engine.add_group`): a group handles the messages
delivered to its members and returns their replies. An in-process engine may call a whole group
at once (so simulated honest workers can be vectorised); a distributed engine (Ray, later) calls
each member where it lives. A group registered as ``omniscient`` (the Byzantine coalition) runs
after the others of its round and observes every reply they sent, as the adversary of the
Byzantine model does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Engine", "Group", "Message"]


@dataclass
class Message:
    """A message between nodes.

    ``sender`` and ``dest`` are node ids, ``role`` the role the sender plays (``"server"``,
    ``"worker"``), ``round`` the protocol round it belongs to and ``version`` the model version it
    was computed from. ``sent_at``/``arrival`` are times on the engine's clock.
    """

    sender: int
    role: str
    round: int
    version: int
    payload: Any
    dest: int | None = None
    sent_at: float = 0.0
    arrival: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)


class Group(Protocol):
    """A set of nodes handled together (e.g. all honest workers)."""

    def handle(self, inbox: Sequence[Message], observed: Sequence[Message]) -> list[Message]:
        """Reply to the messages delivered to this group's nodes.

        ``inbox`` holds at most one message per member (ordered by member id); ``observed`` is
        the replies of the non-omniscient groups of the same round when the group is omniscient,
        else empty. Replies must set ``sender``, ``dest``, ``round`` and ``version``.
        """
        ...


class Engine(ABC):
    """Where roles run and how their messages travel."""

    @abstractmethod
    def add_group(
        self, ids: Sequence[int], role: str, group: Group, *, omniscient: bool = False
    ) -> None:
        """Register the nodes ``ids`` playing ``role``, handled by ``group``."""

    @abstractmethod
    def send(self, msg: Message) -> None:
        """Send ``msg`` to ``msg.dest``."""

    def broadcast(self, msg: Message, role: str) -> None:
        """Send a copy of ``msg`` to every node registered with ``role``."""
        for dest in self.nodes(role):
            self.send(Message(**{**msg.__dict__, "dest": dest}))

    @abstractmethod
    def nodes(self, role: str) -> list[int]:
        """Ids of the nodes registered with ``role``."""

    @abstractmethod
    def gather(self, dest: int, round: int, q: int, deadline: float | None = None) -> list[Message]:
        """The first ``q`` replies of ``round`` addressed to ``dest`` (fewer if the deadline,
        relative to now, passes first). Replies of other rounds are dropped."""

    @property
    @abstractmethod
    def clock(self) -> float:
        """The engine's current time (simulated or wall-clock seconds)."""

    def state_dict(self) -> dict[str, Any]:
        """State needed to resume deterministically."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore :meth:`state_dict`."""
