"""What every engine keeps the same way: the table of nodes (ids by role, reactive groups,
driven handles), the topology, and the clocks."""

from __future__ import annotations

from typing import Any

from byzlearn.engines.base import Engine, Node
from byzlearn.engines.topology import Topology

__all__ = ["NodeTable"]


class NodeTable(Engine):
    """An engine base holding the node table: ``reserve`` hands out ids in order, a node is
    reactive (in ``_group_of``) or driven (in ``_driven``), never both; ``now`` is a driven
    node's clock or a reactive node's busy time. Subclasses set the attributes in ``__init__``
    (:meth:`_init_nodes`) and write the rest of the contract."""

    _topology: Topology
    _roles: dict[int, str]
    _group_of: dict[int, Any]
    _driven: dict[int, Node]
    _clock: dict[int, float]
    _busy: dict[int, float]

    def _init_nodes(self, topology: Topology) -> None:
        self._topology = topology
        self._roles = {}
        self._group_of = {}
        self._driven = {}
        self._clock = {}
        self._busy = {}

    def reserve(self, role: str, count: int) -> list[int]:
        if not isinstance(role, str) or not role:
            raise ValueError(f"a role must be a non-empty string, got {role!r}")
        if int(count) < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        start = len(self._roles)
        ids = list(range(start, start + int(count)))
        for i in ids:
            self._roles[i] = role
        return ids

    def _check_free(self, id: int) -> None:
        if id not in self._roles:
            raise ValueError(f"node {id} was not reserved")
        if id in self._group_of or id in self._driven:
            raise ValueError(f"node {id} is already registered")

    def nodes(self, role: str | None = None) -> list[int]:
        return sorted(i for i, r in self._roles.items() if role is None or r == role)

    def role_of(self, id: int) -> str:
        try:
            return self._roles[int(id)]
        except KeyError:
            raise ValueError(f"unknown node {id}") from None

    @property
    def topology(self) -> Topology:
        return self._topology

    def set_topology(self, topology: Topology) -> None:
        self._topology = topology

    def now(self, node: int) -> float:
        node = int(node)
        if node in self._clock:
            return self._clock[node]
        if node in self._busy:
            return self._busy[node]
        raise ValueError(f"unknown node {node}")
