"""Topologies: who may talk to whom.

A topology answers :meth:`Topology.allows` for a (sender, receiver) pair and lists a node's
:meth:`Topology.neighbours`. :class:`Complete` (every pair; the default of every engine) suits
parameter-server protocols. The graphs (:class:`Ring`, :class:`RandomRegular`,
:class:`ErdosRenyi`, :class:`Explicit`) are undirected graphs over a given set of node ids (the
peers of a decentralised protocol); a pair involving a node outside that set is always allowed,
so servers or observers added to the same engine are not cut off. Random graphs are drawn with
keyed randomness from their ``seed``: the same seed gives the same graph.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from byzlearn import keyed
from byzlearn.checks import check_int, check_real

__all__ = [
    "MAX_LINKS",
    "MAX_REGULAR_EDGES",
    "Complete",
    "ErdosRenyi",
    "Explicit",
    "Graph",
    "RandomRegular",
    "Ring",
    "Topology",
]

#: the most links (node pairs) a graph is built from: a ring's or random regular graph's edges,
#: the pairs an Erdos-Renyi draw considers (the graph is built in memory when a run starts)
MAX_LINKS = 1_000_000
#: the most edges of a random regular graph (drawn one at a time: about 10 s at this cap)
MAX_REGULAR_EDGES = 100_000


def _check_links(what: str, links: int, noun: str = "links", most: int = MAX_LINKS) -> None:
    """Refuse a graph built from more than ``most`` links (one clear line)."""
    if links > most:
        raise ValueError(f"{what} makes {links:,} {noun}, at most {most:,}")


class Topology:
    """Base class: who may send to whom."""

    def allows(self, sender: int, receiver: int) -> bool:
        """Whether ``sender`` may send to ``receiver``."""
        raise NotImplementedError

    def neighbours(self, node: int, among: Iterable[int]) -> list[int]:
        """The nodes of ``among`` (other than ``node``) that ``node`` may send to."""
        return [j for j in among if j != node and self.allows(node, j)]

    def describe(self) -> str:
        """A short label, e.g. ``ring(8)``."""
        return type(self).__name__.lower()


class Complete(Topology):
    """Every node may talk to every node."""

    def allows(self, sender: int, receiver: int) -> bool:
        return True


class Graph(Topology):
    """An undirected graph over ``ids``; pairs involving other nodes are allowed."""

    def __init__(self, ids: Sequence[int], edges: Iterable[tuple[int, int]]) -> None:
        # int() would make 0.5 node 0 and "a" a confusing error
        self.ids = [check_int(i, "topology: a node id") for i in ids]
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("topology: node ids must be distinct")
        members = set(self.ids)
        self.adjacency: dict[int, set[int]] = {i: set() for i in self.ids}
        for edge in edges:
            try:
                a, b = edge
            except (TypeError, ValueError):
                raise ValueError(f"topology: an edge is a pair of node ids, got {edge!r}") from None
            a, b = (
                check_int(a, "topology: a node id in an edge"),
                check_int(b, "topology: a node id in an edge"),
            )
            if a not in members or b not in members:
                raise ValueError(
                    f"topology: edge ({a}, {b}) names a node outside {sorted(members)}"
                )
            if a == b:
                raise ValueError(f"topology: self-loop on node {a}")
            self.adjacency[a].add(b)
            self.adjacency[b].add(a)

    def allows(self, sender: int, receiver: int) -> bool:
        if sender == receiver:
            return True
        if sender not in self.adjacency or receiver not in self.adjacency:
            return True
        return receiver in self.adjacency[sender]

    def degree(self, node: int) -> int:
        """Number of neighbours of ``node`` in the graph."""
        return len(self.adjacency[int(node)])

    def edges(self) -> list[tuple[int, int]]:
        """The edges ``(a, b)`` with ``a < b``, sorted."""
        return sorted((a, b) for a, nb in self.adjacency.items() for b in nb if a < b)

    def connected(self) -> bool:
        """Whether the graph is connected."""
        if not self.ids:
            return True
        seen, stack = {self.ids[0]}, [self.ids[0]]
        while stack:
            for b in self.adjacency[stack.pop()]:
                if b not in seen:
                    seen.add(b)
                    stack.append(b)
        return len(seen) == len(self.ids)

    def describe(self) -> str:
        return f"{type(self).__name__.lower()}({len(self.ids)})"


class Explicit(Graph):
    """The graph with exactly the given edges."""


class Ring(Graph):
    """Each node linked to the next ``k`` nodes on each side (``k = 1``: a cycle)."""

    def __init__(self, ids: Sequence[int], k: int = 1) -> None:
        ids = list(ids)
        n = len(ids)
        k = check_int(k, "ring: k", 1)
        _check_links(f"ring: n={n}, k={k}", n * min(k, n // 2))
        # offsets s and n - s link the same pairs: beyond n // 2 a larger k adds no edge (and
        # k = 10**9 must not loop a billion times)
        edges = {
            (min(ids[i], ids[(i + s) % n]), max(ids[i], ids[(i + s) % n]))
            for i in range(n)
            for s in range(1, min(k, n // 2) + 1)
            if ids[i] != ids[(i + s) % n]
        }
        super().__init__(ids, edges)


class ErdosRenyi(Graph):
    """Each pair linked independently with probability ``p`` (keyed on ``seed``)."""

    def __init__(self, ids: Sequence[int], p: float, seed: int = 0) -> None:
        p = check_real(p, "erdos_renyi: p", 0.0, 1.0)
        seed = check_int(seed, "erdos_renyi: seed", 0)
        ids = list(ids)
        n = len(ids)
        _check_links(f"erdos_renyi: n={n}", n * (n - 1) // 2, "candidate links (node pairs)")
        first, second = np.triu_indices(n, 1)  # the pairs i < j, row by row
        u = keyed.uniform((seed, "topology", "erdos_renyi", n), len(first))
        kept = u < p
        pairs = zip(first[kept].tolist(), second[kept].tolist(), strict=True)
        super().__init__(ids, [(ids[i], ids[j]) for i, j in pairs])


class RandomRegular(Graph):
    """A random ``degree``-regular graph (Steger-Wormald pairing with restarts, keyed on seed).

    Stubs (``degree`` per node) are paired at random, a pair being accepted when it joins two
    distinct nodes not yet linked; a dead end restarts the draw. Needs ``n * degree`` even and
    ``degree < n``. A graph denser than half (``2 degree > n``) is the complement of a random
    ``(n - 1 - degree)``-regular one: near the complete graph, pairing stubs dead-ends almost
    every draw (200 draws found no 22-regular graph on 24 nodes for some seeds, and took minutes
    for 297-regular on 300).
    """

    def __init__(self, ids: Sequence[int], degree: int, seed: int = 0) -> None:
        ids = list(ids)
        n = len(ids)
        degree = check_int(degree, "random_regular: degree")
        seed = check_int(seed, "random_regular: seed", 0)
        if not 0 <= degree < max(n, 1) or (n * degree) % 2:
            raise ValueError(
                f"random_regular: needs 0 <= degree < n and n * degree even, got n={n}, "
                f"degree={degree}"
            )
        what = f"random_regular: n={n}, degree={degree}"
        _check_links(what, n * degree // 2, "edges", MAX_REGULAR_EDGES)
        dense = 2 * degree > n
        drawn = n - 1 - degree if dense else degree
        for attempt in range(200):
            edges = _pair_stubs(n, drawn, keyed.seed_of((seed, "topology", "regular", attempt)))
            if edges is not None:
                if dense:
                    edges = {(a, b) for a in range(n) for b in range(a + 1, n)} - edges
                super().__init__(ids, [(ids[a], ids[b]) for a, b in sorted(edges)])
                return
        raise ValueError(f"random_regular: no simple {degree}-regular graph found for n={n}")


def _pair_stubs(n: int, degree: int, seed: int) -> set[tuple[int, int]] | None:
    """One Steger-Wormald draw: the edge set, or None at a dead end."""
    rng = np.random.default_rng(seed)
    stubs = list(np.repeat(np.arange(n), degree))
    edges: set[tuple[int, int]] = set()
    while stubs:
        for _ in range(100):
            i, j = rng.choice(len(stubs), size=2, replace=False)
            a, b = int(stubs[i]), int(stubs[j])
            pair = (min(a, b), max(a, b))
            if a != b and pair not in edges:
                edges.add(pair)
                for k in sorted((int(i), int(j)), reverse=True):
                    stubs.pop(k)
                break
        else:
            return None
    return edges
