"""Minimum-diameter averaging, exact, by a fixed-parameter vertex-cover search.

Choosing the (n - f)-subset of least diameter is choosing f inputs to remove so that every
remaining pair is within the diameter t. For a threshold t, the pairs farther apart than t form a
"conflict graph"; a subset of diameter <= t exists iff that graph has a vertex cover of size <= f.
Vertex cover with budget f is solved exactly by branching on a maximum-degree vertex v (either v is
removed, or all its neighbours are) with the forced-move rule "a vertex of degree > budget must be
removed"; this explores at most O(1.62^f) branches, independent of C(n, f). A binary search over
the sorted pairwise distances finds the least feasible t. Only n x n matrices are touched.

The search runs compiled on bitsets (:mod:`.._cover`: a degree is a popcount over ceil(n / 64)
words; the same branches in the same order as :func:`_cover`, which stays as the path where
numba is missing and as the tests' reference): 0.3-3 us a branch from 200 to 1000 inputs
against 15-25 us at 25-200 inputs and about 1-2 ms at 1000 in Python (n = 200, f = 40, Gaussian
rows: 43 ms against 2.2 s; n = 300, f = 60: 2.9 s against 224 s).

Limit. The search is exponential in f in the worst case, so it stops with ``ValueError`` after
``max_branches`` branches (default 2 000 000: at most 0.7 s at n = 200, 1.6 s at 500, 5.7 s at
1000): within that budget it is guaranteed to finish for f <= 22 at any n <= 1000 (a search
with budget k branches at most N(k) = 1 + N(k - 1) + N(k - 2) times, N(0) = 1, N(1) = 2, the
two branches removing one vertex and at least two, so about 1.17 x 1.62^(k + 1): 75 024 for
k = 22; the binary search over the at most 499 502 thresholds visits 19: 1.43 million);
beyond, typical inputs still finish fast (f = 40, n = 200: 14 000 branches), adversarial ones
may not. (The bound of the earlier default, f <= 19 within 200 000 branches, undercounted:
N(19) x 19 = 336 000.)
``approximate=True`` replaces the search by a
2-approximation in O(n^2 log n): for each input x_i the n - f inputs closest to it (itself
included) lie within the radius r_i of x_i, so their diameter is at most 2 r_i; an optimal subset
S* contains some x_i with all of S* within diam(S*) of it, so min_i r_i <= diam(S*). The rule
keeps, among the 16 inputs of least radius, the neighbourhood of least diameter (at most twice the
optimum).
"""

from __future__ import annotations

import numpy as np
import torch

from byzlearn.aggregators import _cover as _cover_kernel
from byzlearn.aggregators._gram import Inputs
from byzlearn.aggregators._registry import Combination, equal_weights, register

# Branches the exact search may explore before it gives up (see the module docstring; 200 000
# before the search was compiled, a few seconds in Python at 25 inputs).
MAX_BRANCHES = 2_000_000
# f up to which the exact search always finishes within MAX_BRANCHES (n <= 1000): N(f)
# branches per threshold times 19 thresholds (the module docstring).
EXACT_F = 22
# Branches of the search on the Gram matrix of the first blocks of the pass, when the output is
# guessed there (._speculate): past them no guess is made. Measured on 1e5 coordinates (about
# 25 us a branch in Python, under 1 us compiled): 25 rows, f = 5, 18-32 branches; 50 rows,
# f = 10, 40-112; 100 rows, f = 20, 72 under the Gaussian attack, 226 for rows of distinct
# spreads, 403 for rows alike.
GUESS_BRANCHES = 200
# Candidate centres (least radius) whose neighbourhoods the approximation compares.
_APPROX_CANDIDATES = 16


def _exhausted(limit: int, n: int, f: int) -> ValueError:
    return ValueError(
        f"mda: the exact search for the (n - f)-subset of least diameter exceeded "
        f"max_branches={limit} branches (n={n}, f={f}); it grows like "
        f"1.62^f and is guaranteed within {MAX_BRANCHES} branches for f <= {EXACT_F} "
        "only. Pass approximate=True for the 2-approximation (docs/aggregators.md), or "
        "a larger max_branches"
    )


class _Budget:
    """Counts the branches of the exact search; raises past the limit."""

    def __init__(self, limit: int, n: int, f: int) -> None:
        self.left = int(limit)
        self.limit, self.n, self.f = int(limit), n, f

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise _exhausted(self.limit, self.n, self.f)


def _cover(
    adj: np.ndarray, active: np.ndarray, budget: int, spent: _Budget | None = None
) -> list[int] | None:
    """A vertex cover of the graph induced by ``active`` with <= ``budget`` vertices, or None.

    ``adj`` must be symmetric (the branching reads neighbours by rows and degrees by sums).
    """
    if spent is not None:
        spent.spend()
    sub = adj & active[None, :] & active[:, None]
    deg = sub.sum(axis=1)
    if not deg.any():
        return []
    if budget == 0:
        return None
    edges = int(deg.sum()) // 2
    v = int(np.argmax(deg))
    if deg[v] == 1:  # a matching: one endpoint per edge
        return None if edges > budget else [int(i) for i in _matching_cover(sub)]
    if edges > budget * int(deg[v]):  # each removal covers at most deg[v] edges
        return None
    inner = active.copy()
    inner[v] = False
    rest = _cover(adj, inner, budget - 1, spent)
    if rest is not None:
        return [v, *rest]
    if deg[v] > budget:
        return None
    nbrs = np.nonzero(sub[v])[0]
    inner = active.copy()
    inner[nbrs] = False
    rest = _cover(adj, inner, budget - len(nbrs), spent)
    return None if rest is None else [*map(int, nbrs), *rest]


def _matching_cover(sub: np.ndarray) -> list[int]:
    i, j = np.nonzero(np.triu(sub))
    return list(np.minimum(i, j))


def min_diameter_subset(
    D: np.ndarray, f: int, max_branches: int = MAX_BRANCHES
) -> tuple[np.ndarray, float]:
    """Indices of an (n - f)-subset of least diameter (squared distances ``D``) and its diameter.

    Rows at infinite distance (non-finite inputs) are always removed first. When a feasible cover
    has fewer than f vertices, the remaining removals take the inputs farthest (by summed squared
    distance) from the kept set, which cannot raise the diameter.
    """
    n = D.shape[0]
    # Distances from a Gram matrix may differ in the last bit between D[i, j] and D[j, i]; an
    # asymmetric conflict graph breaks the vertex-cover search (degrees and neighbour lists
    # disagree), so work on the symmetric upper bound.
    D = np.maximum(D, D.T)
    iu = np.triu_indices(n, 1)
    finite = D[iu][np.isfinite(D[iu])]
    thresholds = np.unique(np.concatenate([[0.0], finite]))
    best = _least_cover(D, thresholds, f, max_branches)
    if best is None:
        raise ValueError(
            f"mda: no {n - f} inputs are all at finite distance from each other "
            "(more than f inputs hold non-finite values)"
        )
    removed = set(best)
    while len(removed) < f:
        kept = np.array([i for i in range(n) if i not in removed])
        far = kept[np.argmax(D[np.ix_(kept, kept)].sum(axis=1))]
        removed.add(int(far))
    keep = np.array(sorted(set(range(n)) - removed))
    diameter = float(D[np.ix_(keep, keep)].max()) if keep.size > 1 else 0.0
    return keep, diameter


def _least_cover(
    D: np.ndarray, thresholds: np.ndarray, f: int, max_branches: int, compiled: bool = True
) -> list[int] | None:
    """The cover (at most f inputs) of the least of ``thresholds`` (ascending) whose conflict
    graph ``threshold < D`` has one, by binary search; None when none has. ``ValueError`` past
    ``max_branches`` branches of the searches together. Compiled on bitsets
    (:func:`._cover.least_cover`, the same branches in the same order) where numba runs;
    ``compiled=False``: the search of :func:`_cover` (the tests' reference)."""
    n = D.shape[0]
    if compiled and _cover_kernel.available():
        budget = min(int(max_branches), 2**62)  # (an int64 in the kernel: ample)
        cover, size = _cover_kernel.least_cover(
            np.ascontiguousarray(D, dtype=np.float64), thresholds, int(f), budget
        )
        if size == _cover_kernel.EXHAUSTED:
            raise _exhausted(int(max_branches), n, f)
        return None if size == _cover_kernel.NO_COVER else [int(i) for i in cover[:size]]
    lo, hi = 0, len(thresholds) - 1
    best: list[int] | None = None
    all_active = np.ones(n, dtype=bool)
    spent = _Budget(max_branches, n, f)
    while lo <= hi:
        mid = (lo + hi) // 2
        cover_ = _cover(thresholds[mid] < D, all_active, f, spent)
        if cover_ is None:
            lo = mid + 1
        else:
            best, hi = cover_, mid - 1
    return best


def approximate_subset(D: np.ndarray, f: int) -> tuple[np.ndarray, float]:
    """An (n - f)-subset whose diameter is at most twice the least (squared distances ``D``;
    the guarantee is on distances, so at most 4 times on squared ones), and its diameter.

    Rows at infinite distance (non-finite inputs) are removed first (at most f of them). Among
    the ``_APPROX_CANDIDATES`` inputs with the least radius (distance to their (n - f)-th closest,
    themselves included), the neighbourhood (those n - f inputs, ties by index) of least diameter
    wins; ties go to the lower centre.
    """
    n = D.shape[0]
    D = np.maximum(D, D.T)
    finite_rows = np.isfinite(D).sum(axis=1)
    good = np.flatnonzero(finite_rows == finite_rows.max())
    if good.size < n - f:
        raise ValueError(
            f"mda: no {n - f} inputs are all at finite distance from each other "
            "(more than f inputs hold non-finite values)"
        )
    m = n - f
    Dg = D[np.ix_(good, good)].copy()
    np.fill_diagonal(Dg, -1.0)  # each input is its own first neighbour
    order = np.argsort(Dg, axis=1, kind="stable")[:, :m]
    radius = np.take_along_axis(Dg, order[:, -1:], axis=1)[:, 0]
    candidates = np.argsort(radius, kind="stable")[:_APPROX_CANDIDATES]
    best: tuple[int, np.ndarray] | None = None
    best_diameter = np.inf
    for c in candidates:
        members = np.sort(order[c])
        sub = Dg[np.ix_(members, members)]
        diameter = float(sub.max()) if members.size > 1 else 0.0
        tie = best is not None and diameter == best_diameter and c < best[0]
        if best is None or diameter < best_diameter or tie:
            best, best_diameter = (int(c), members), diameter
    assert best is not None
    return good[best[1]], max(best_diameter, 0.0)


@register(
    "mda",
    min_n=lambda f: 2 * f + 1,
    requirement="n >= 2f + 1",
    selects=True,
    guessable=True,
    guess_options=(("max_branches", GUESS_BRANCHES),),
)
def mda(
    inputs: Inputs, f: int, *, approximate: bool = False, max_branches: int = MAX_BRANCHES
) -> Combination:
    r"""Minimum-diameter averaging: the average of the (n - f)-subset of least diameter,
    ``argmin_{|S| = n - f} max_{i, j in S} ||x_i - x_j||``, found exactly.

    Reference: El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed Learning in
    Byzantium", ICML 2018 (as "Brute"); El Mhamdi et al., "Collaborative Learning in the Jungle",
    NeurIPS 2021. Requirement: n >= 2f + 1. Cost: one Gram pass + an exact search on the n x n
    distance matrix that grows like 1.62^f (not C(n, f)), compiled on bitsets; n = 25, f = 5
    takes about 30 us. Ties between subsets of equal diameter are broken by the search order.

    Limit: the exact search raises ``ValueError`` after ``max_branches`` branches (default
    2 000 000, a few seconds at most; always enough for f <= 22 at n <= 1000, see :mod:`.mda`).
    ``approximate=True`` uses the 2-approximation instead (:func:`approximate_subset`: the
    neighbourhood of least diameter among those of the 16 inputs of least radius; its diameter
    is at most twice the optimum), O(n^2 log n).
    """
    D = inputs.sqdist().numpy()
    if approximate:
        keep, _ = approximate_subset(D, f)
    else:
        if isinstance(max_branches, bool) or not isinstance(max_branches, (int, np.integer)):
            raise TypeError(f"mda: max_branches must be an int, got {type(max_branches).__name__}")
        if max_branches < 1:
            raise ValueError(f"mda: max_branches must be >= 1, got {max_branches}")
        keep, _ = min_diameter_subset(D, f, max_branches)
    if bool(inputs.bad[torch.as_tensor(keep)].any()):  # n = 1: a lone row has no distances
        raise ValueError("mda: every input it would keep holds non-finite values")
    alpha = equal_weights(inputs.n, keep)
    return Combination(inputs=inputs, alpha=alpha, kept=torch.as_tensor(keep))
