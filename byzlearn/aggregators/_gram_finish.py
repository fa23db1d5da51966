"""The n x n work that follows every CPU Gram pass, compiled.

After the pass over the d coordinates (:mod:`._gram_kernel`), a distance-based rule needs a few
small statistics of the (n + 1) x (n + 1) matrix ``aug``: its bad rows zeroed, the squared
distances ``D_ij = G_ii + G_jj - 2 G_ij`` (clamped at 0, +inf to and from bad rows, a zero
diagonal: :meth:`._gram.Inputs.sqdist`), the two medians of the precision check (the lower
median of the good rows' centred squared norms and of their distances:
:func:`._gram.cancellation_prone`) and, on a sample or after a cancellation-prone pass, the
central row (least sum of squared distances to its closest half). As torch and numpy calls on
matrices of 10-50 rows these took 0.4-0.6 ms per rule call, a sizeable part of a rule on
inputs of a few million values (Krum on 25 x 1e5 float32: 2.5 ms against a 0.19 ms read of
the input; ``docs/performance.md``). Compiled, they take microseconds; the central row
sorts every row's closest half at once in numpy (:func:`central_row`).

No fast-math: every operation and its rounding is that of the torch code it replaces
(``(G_ii + G_jj) - 2 G_ij`` in float64), so the distances and the choices made on them are
those of :func:`._gram.sqdist_from_gram`; ``tests/aggregators/test_gram_finish.py`` compares
them with plain numpy.
"""

from __future__ import annotations

import numpy as np

try:
    from numba import njit
except ImportError:  # pragma: no cover
    njit = None  # type: ignore[assignment]


def mask_bad(aug: np.ndarray, bad: np.ndarray) -> None:
    """In place: flag the rows whose squared norm is not finite (sums that overflowed across
    blocks) in ``bad`` (n,), then zero the rows and columns of every bad row in ``aug``
    ((n + 1) x (n + 1), C-contiguous float64)."""
    if njit is None:  # pragma: no cover
        n = bad.shape[0]
        bad |= ~np.isfinite(np.diagonal(aug)[:n])
        keep = np.append(~bad, True)
        aug[~(keep[:, None] & keep[None, :])] = 0.0
        return
    _mask_bad(aug, bad)


def distances(aug: np.ndarray, bad: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``(D, norm_median, distance_median)`` from the centred Gram matrix in the first n rows
    and columns of ``aug`` (n = len(bad)): the squared distances as :meth:`._gram.Inputs.sqdist`
    computes them, and the lower medians over the good rows of their centred squared norms and
    of their pairwise distances (0 and 0 with fewer than two good rows)."""
    n = bad.shape[0]
    D = np.empty((n, n))
    medians = np.zeros(2)
    if njit is None:  # pragma: no cover
        _fill_distances_numpy(aug, bad, D, medians)
    else:
        fill_distances(aug, bad, D, medians)
    return D, float(medians[0]), float(medians[1])


def central_row(D: np.ndarray, bad: np.ndarray) -> int:
    """A row near the bulk: the least sum of squared distances to its closest half (the
    ``max(1, (good + 1) // 2)`` smallest entries of its row of D, its own zero included, summed
    in increasing order); bad rows are never chosen, ties go to the lowest index. D as
    :func:`distances` returns it (+inf to and from bad rows).

    numpy's vectorised partition and sort of all rows at once, then each row's sorted half summed
    from left to right (``cumsum``, strictly sequential): the same scores, to the bit, as a loop
    that sorts each row's half and adds it up, and faster than that loop compiled (10 rows 10 ->
    9 us, 25 rows 29 -> 12, 100 rows 0.30 -> 0.05 ms, 1000 rows 32 -> 4.3 ms; at 1000 rows it
    was 3-5 % of Krum's time, run on the sample of every large input)."""
    good = np.flatnonzero(~bad)
    if good.size == 0:
        return 0
    half = max(1, (good.size + 1) // 2)
    rows = D if good.size == bad.shape[0] else D[good]
    closest = np.partition(rows, half - 1, axis=1)[:, :half]
    closest.sort(axis=1)
    scores = np.cumsum(closest, axis=1)[:, -1]
    if not np.isnan(scores).any():
        return int(good[np.argmin(scores)])  # the first of equal least scores
    best = 0  # a NaN score (a NaN distance): the first good row unless a later one is less
    for i in range(1, good.size):
        if scores[i] < scores[best]:
            best = i
    return int(good[best])


def _fill_distances_numpy(aug, bad, D, medians):  # pragma: no cover (numba missing)
    n = bad.shape[0]
    diag = np.diagonal(aug)[:n]
    D[:] = (diag[:, None] + diag[None, :]) - 2.0 * aug[:n, :n]
    D[D < 0.0] = 0.0
    D[bad, :] = np.inf
    D[:, bad] = np.inf
    np.fill_diagonal(D, 0.0)
    good = np.flatnonzero(~bad)
    if good.size >= 2:
        norms = diag[good]
        pairs = D[np.ix_(good, good)][np.triu_indices(good.size, 1)]
        medians[0] = np.partition(norms, (norms.size - 1) // 2)[(norms.size - 1) // 2]
        medians[1] = np.partition(pairs, (pairs.size - 1) // 2)[(pairs.size - 1) // 2]


if njit is not None:

    @njit(boundscheck=False, error_model="numpy", cache=True, nogil=True)
    def _mask_bad(aug, bad):  # pragma: no cover (compiled)
        n = bad.shape[0]
        for i in range(n):
            if not np.isfinite(aug[i, i]):
                bad[i] = True
        for i in range(n):
            if bad[i]:
                for j in range(n + 1):
                    aug[i, j] = 0.0
                    aug[j, i] = 0.0

    @njit(boundscheck=False, error_model="numpy", cache=True, nogil=True)
    def fill_distances(aug, bad, D, medians):  # pragma: no cover (compiled)
        """:func:`distances` into D (n x n) and medians (2,); callable from compiled code."""
        n = bad.shape[0]
        good = 0
        for i in range(n):
            if not bad[i]:
                good += 1
        for i in range(n):
            for j in range(n):
                if i == j:
                    D[i, j] = 0.0
                elif bad[i] or bad[j]:
                    D[i, j] = np.inf
                else:
                    v = (aug[i, i] + aug[j, j]) - 2.0 * aug[i, j]
                    D[i, j] = 0.0 if v < 0.0 else v  # (torch's clamp: NaN stays NaN)
        medians[0] = 0.0
        medians[1] = 0.0
        if good < 2:
            return
        # D is exactly symmetric, so the lower median of its off-diagonal entries (each
        # distance twice) is the lower median of the distances i < j
        norms = np.empty(good)
        pairs = np.empty(good * (good - 1) // 2)
        a = 0
        b = 0
        for i in range(n):
            if bad[i]:
                continue
            norms[a] = aug[i, i]
            a += 1
            for j in range(i + 1, n):
                if not bad[j]:
                    pairs[b] = D[i, j]
                    b += 1
        medians[0] = np.partition(norms, (good - 1) // 2)[(good - 1) // 2]
        medians[1] = np.partition(pairs, (b - 1) // 2)[(b - 1) // 2]
