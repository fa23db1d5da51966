"""Minimum-diameter averaging, exact, by a fixed-parameter vertex-cover search.

Choosing the (n - f)-subset of least diameter is choosing f inputs to remove so that every
remaining pair is within the diameter t. For a threshold t, the pairs farther apart than t form a
"conflict graph"; a subset of diameter <= t exists iff that graph has a vertex cover of size <= f.
Vertex cover with budget f is solved exactly by branching on a maximum-degree vertex v (either v is
removed, or all its neighbours are) with the forced-move rule "a vertex of degree > budget must be
removed"; this explores at most O(1.62^f) branches, independent of C(n, f). A binary search over
the sorted pairwise distances finds the least feasible t. Only n x n matrices are touched.
"""

from __future__ import annotations

import numpy as np
import torch

from byzlearn.aggregators._gram import Inputs
from byzlearn.aggregators._registry import Combination, register


def _cover(adj: np.ndarray, active: np.ndarray, budget: int) -> list[int] | None:
    """A vertex cover of the graph induced by ``active`` with <= ``budget`` vertices, or None.

    ``adj`` must be symmetric (the branching reads neighbours by rows and degrees by sums).
    """
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
    rest = _cover(adj, inner, budget - 1)
    if rest is not None:
        return [v, *rest]
    if deg[v] > budget:
        return None
    nbrs = np.nonzero(sub[v])[0]
    inner = active.copy()
    inner[nbrs] = False
    rest = _cover(adj, inner, budget - len(nbrs))
    return None if rest is None else [*map(int, nbrs), *rest]


def _matching_cover(sub: np.ndarray) -> list[int]:
    i, j = np.nonzero(np.triu(sub))
    return list(np.minimum(i, j))


def min_diameter_subset(D: np.ndarray, f: int) -> tuple[np.ndarray, float]:
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
    lo, hi = 0, len(thresholds) - 1
    best: list[int] | None = None
    all_active = np.ones(n, dtype=bool)
    while lo <= hi:
        mid = (lo + hi) // 2
        cover = _cover(thresholds[mid] < D, all_active, f)
        if cover is None:
            lo = mid + 1
        else:
            best, hi = cover, mid - 1
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


@register("mda", min_n=lambda f: 2 * f + 1, requirement="n >= 2f + 1", selects=True)
def mda(inputs: Inputs, f: int) -> Combination:
    r"""Minimum-diameter averaging: the average of the (n - f)-subset of least diameter,
    ``argmin_{|S| = n - f} max_{i, j in S} ||x_i - x_j||``, found exactly.

    Reference: El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed Learning in
    Byzantium", ICML 2018 (as "Brute"); El Mhamdi et al., "Collaborative Learning in the Jungle",
    NeurIPS 2021. Requirement: n >= 2f + 1. Cost: one Gram pass + an exact search on the n x n
    distance matrix that grows like 1.62^f (not C(n, f)); n = 25, f = 5 takes milliseconds.
    Ties between subsets of equal diameter are broken by the search order.
    """
    keep, _ = min_diameter_subset(inputs.sqdist().numpy(), f)
    if bool(inputs.bad[torch.as_tensor(keep)].any()):  # n = 1: a lone row has no distances
        raise ValueError("mda: every input it would keep holds non-finite values")
    alpha = torch.zeros(inputs.n, dtype=torch.float64)
    alpha[torch.as_tensor(keep)] = 1.0 / len(keep)
    return Combination(inputs=inputs, alpha=alpha, kept=torch.as_tensor(keep))
