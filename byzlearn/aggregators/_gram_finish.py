"""The n x n work that follows every CPU Gram pass, compiled.

After the pass over the d coordinates (:mod:`._gram_kernel`), a distance-based rule needs a few
small statistics of the (n + 1) x (n + 1) matrix ``aug``: its bad rows zeroed, the squared
distances ``D_ij = G_ii + G_jj - 2 G_ij`` (clamped at 0, +inf to and from bad rows, a zero
diagonal: :meth:`._gram.Inputs.sqdist`), the two scales of the precision check (the lower
median of the good rows' centred squared norms and a distance between honest rows:
:func:`distances`, :func:`._gram.cancellation_prone`) and, on a sample or after a
cancellation-prone pass, the central row (least sum of squared distances to its closest half).
As torch and numpy calls on matrices of 10-50 rows these took 0.4-0.6 ms per rule call, a
sizeable part of a rule on inputs of a few million values (Krum on 25 x 1e5 float32: 2.5 ms
against a 0.19 ms read of the input; ``docs/performance.md``). Compiled, they take
microseconds; the central row sorts every row's closest half at once in numpy
(:func:`central_row`).

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
    computes them, the lower median over the good rows of their centred squared norms, and the
    distance scale of the good rows: the lower median over them of each one's lower median
    distance to the others (a NaN distance counted as +inf; 0 and 0 with fewer than two good
    rows).

    The distance scale is what the precision check compares the rounding of the Gram entries
    with (:func:`._gram.cancellation_prone`). With an honest majority it is a distance between
    honest rows, whatever the others send: more than half of each honest row's distances go to
    honest rows, and honest rows are more than half of the rows. The lower median of all the
    pairwise distances was not: with nearly half the rows one far vector (f = 282 of 576 rows
    sending 200 times a Gaussian vector) the pairs between identical rows (zeros) and those
    between honest and attacking rows outnumber the honest pairs, the median is a distance to
    the far vector, the check passed a pass centred on chunk means that the far rows had dragged,
    and the honest distances were off by 0.2-1.4 %."""
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
        Dg = D[np.ix_(good, good)]
        others = Dg[~np.eye(good.size, dtype=bool)].reshape(good.size, good.size - 1)
        others = np.where(np.isnan(others), np.inf, others)  # (a NaN counts as +inf)
        rows = np.partition(others, (good.size - 2) // 2, axis=1)[:, (good.size - 2) // 2]
        medians[0] = np.partition(norms, (norms.size - 1) // 2)[(norms.size - 1) // 2]
        medians[1] = np.partition(rows, (rows.size - 1) // 2)[(rows.size - 1) // 2]


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
        good = np.int64(0)  # (not a literal: see _gram_kernel's "Literal arguments")
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
        # the distance scale: each good row's lower median distance to the other good rows,
        # then the lower median of those (see distances)
        norms = np.empty(good)
        rows = np.empty(good)
        others = np.empty(good - 1)
        a = 0
        for i in range(n):
            if bad[i]:
                continue
            v = aug[i, i]
            norms[a] = v if v == v else np.inf
            b = np.int64(0)  # not the literal 0: numba would compile _kth_smallest for it too
            for j in range(n):
                if j != i and not bad[j]:
                    v = D[i, j]
                    others[b] = v if v == v else np.inf  # (a NaN counts as +inf)
                    b += 1
            rows[a] = _kth_smallest(others, b, (good - 2) // 2)
            a += 1
        medians[0] = _kth_smallest(norms, good, (good - 1) // 2)
        medians[1] = _kth_smallest(rows, good, (good - 1) // 2)

    # Hoare's selection rounds of :func:`_kth_smallest` before it sorts what is left.
    _SELECTION_ROUNDS = 64

    @njit(boundscheck=False, cache=True, nogil=True)
    def _kth_smallest(a, m, k):  # pragma: no cover (compiled)
        """The k-th smallest of a[:m] (no NaN), reordering a[:m] in place (Hoare's selection
        on the middle value of three; after 64 rounds the rest is sorted by insertion): a row's
        median without the copy ``np.partition`` makes, which cost 4 -> 18 us at 25 rows. Plain
        loops, no numpy sort or partition: numba's implementations of those compile in about
        10 s, which every first call of a distance-based rule paid."""
        lo = 0
        hi = m - 1
        rounds = 0
        while lo < hi:
            rounds += 1
            if rounds > _SELECTION_ROUNDS:  # a slowly shrinking range: sort what is left
                for i in range(lo + 1, hi + 1):
                    v = a[i]
                    j = i - 1
                    while j >= lo and a[j] > v:
                        a[j + 1] = a[j]
                        j -= 1
                    a[j + 1] = v
                break
            mid = (lo + hi) // 2
            x, y, z = a[lo], a[mid], a[hi]
            pivot = max(min(x, y), min(max(x, y), z))
            i = lo
            j = hi
            while i <= j:
                while a[i] < pivot:
                    i += 1
                while pivot < a[j]:
                    j -= 1
                if i <= j:
                    t = a[i]
                    a[i] = a[j]
                    a[j] = t
                    i += 1
                    j -= 1
            if k <= j:
                hi = j
            elif k >= i:
                lo = i
            else:
                break  # j < k < i: a[k] equals the pivot, in place
        return a[k]
