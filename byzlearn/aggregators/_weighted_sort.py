"""Median and trimmed mean of a few distinct rows with multiplicities, by a sorting network.

After NNM most mixed rows coincide (the honest rows' neighbourhoods are the same n - f inputs):
the n' mixed values of a coordinate are ``nu`` distinct rows ``U[q]``, row q counted
``weights[q]`` times (e.g. n = 25, f = 5 on honest inputs: one row 20 times and 5 rows once). The
statistic of the n' values is that of the weighted multiset: sort the nu (value, weight) pairs of
each coordinate (Batcher's network for nu inputs, compare-exchanges on blocks of coordinates,
the weight following its value), then walk the sorted values with the running weight ``P``:
value v of weight w occupies the positions ``[P, P + w)`` of the sorted n' values, so the trimmed
mean keeps ``max(0, min(P + w, hi) - max(P, lo))`` copies of it (positions ``[lo, hi) =
[drop, k - drop)``), and the median is the mean of the values at positions ``(k - 1) // 2`` and
``k // 2``. Equal values are interchangeable, so ties need no rule. The kept sum is in float64,
the result clamped to the values at the first and last kept positions (as the selection
kernel's means). About nu log^2 nu compare-exchanges per coordinate instead of the n' log^2 n' of
sorting all mixed rows. When one row's copies cover the kept positions wherever the other rows'
values fall (weight w >= hi and k - w <= lo; e.g. the 20 honest rows' common mix at n = 25,
f = 5, whose copies hold positions [5, 20) in any order), the statistic is that row's value,
copied without sorting (the same value the sort gives: the mean of equal values, clamped to
them).
"""

from __future__ import annotations

import numpy as np

from byzlearn.aggregators._sortnet import LANES

try:  # numba is a dependency, but keep a working fallback if it cannot load
    from numba import njit

    from byzlearn.aggregators._simd import wide

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    _HAVE_NUMBA = False

# Distinct rows up to which the network path is used. Measured on one AVX-512 core, n' = 25,
# per block of 8192 coordinates: 15-25 % faster than sorting the 25 mixed rows at nu = 6 to 8,
# about 4x at nu = 2 (and faster than ranking each distinct value with nu^2 comparisons at every
# nu up to 6), 1.5x slower at nu = 12.
MAX_DISTINCT = 8



def covering_row(weights: np.ndarray, trimmed: bool, drop: int) -> int:
    """The distinct row whose copies hold every kept position wherever the other rows' values
    fall (weight w >= hi and k - w <= lo, positions [lo, hi) kept), or -1: the statistic is that
    row's value at every coordinate (the rule :func:`weighted_statistic` applies per block)."""
    k = float(np.sum(weights))
    lo = float(drop) if trimmed else (k - 1.0) // 2.0
    hi = k - drop if trimmed else k // 2.0 + 1.0
    for q, w in enumerate(np.asarray(weights, dtype=np.float64).tolist()):
        if w >= hi and k - w <= lo:
            return q
    return -1


if _HAVE_NUMBA:

    @njit(fastmath={"reassoc", "contract"}, boundscheck=False, error_model="numpy", cache=True,
          nogil=True)
    def weighted_statistic(U, nu, weights, pairs, stat, drop, cover, out):  # pragma: no cover
        """Median (stat 0) or ``drop``-trimmed mean (stat 1) per column of the multiset where
        row q of U (q < nu) appears weights[q] times, into out; ``pairs``: a sorting network
        for nu inputs; ``cover``: :func:`covering_row` of the weights (that row is copied, no
        sort), or -1. Returns False (out undefined) when a value is not finite."""
        wide()
        w = U.shape[1]
        k = 0.0
        for q in range(nu):
            k += weights[q]
        lo = np.float32(drop) if stat == 1 else np.float32((k - 1.0) // 2.0)
        hi = np.float32(k - drop) if stat == 1 else np.float32(k // 2.0 + 1.0)
        last = hi - np.float32(1.0)
        V = np.empty((nu, LANES), dtype=U.dtype)
        W = np.empty((nu, LANES), dtype=np.float32)
        P = np.empty(LANES, dtype=np.float32)
        tot = np.empty(LANES)
        fst = np.empty(LANES, dtype=U.dtype)
        lst = np.empty(LANES, dtype=U.dtype)
        zero = U.dtype.type(0)
        for k0 in range(0, w, LANES):
            m = min(LANES, w - k0)
            bad = zero
            for q in range(nu):
                src = U[q, k0 : k0 + m]
                vq = V[q]
                wq = W[q]
                a = np.float32(weights[q])
                for j in range(m):
                    x = src[j]
                    bad += x * zero  # NaN when x is not finite
                    vq[j] = x
                    wq[j] = a
            if bad != zero:
                return False
            if cover >= 0:  # its copies hold every kept position: the statistic itself
                src = V[cover]
                o = out[k0 : k0 + m]
                for j in range(m):
                    o[j] = src[j]
                continue
            for p in range(pairs.shape[0]):
                va = V[pairs[p, 0]]
                vb = V[pairs[p, 1]]
                wa = W[pairs[p, 0]]
                wb = W[pairs[p, 1]]
                for j in range(m):
                    x = va[j]
                    y = vb[j]
                    s = x <= y
                    u = wa[j]
                    t = wb[j]
                    va[j] = x if s else y
                    vb[j] = y if s else x
                    wa[j] = u if s else t
                    wb[j] = t if s else u
            for j in range(m):
                tot[j] = 0.0
                fst[j] = zero
                lst[j] = zero
            # W[q] := the end of row q's positions (running weight); row q spans [W[q-1], W[q])
            for q in range(1, nu):
                wp = W[q - 1]
                wq = W[q]
                for j in range(m):
                    wq[j] += wp[j]
            for q in range(nu):
                vq = V[q]
                ends = W[q]
                starts = W[q - 1] if q > 0 else P
                for j in range(m):
                    p0 = starts[j] if q > 0 else np.float32(0.0)
                    e = ends[j]
                    a = p0 if p0 > lo else lo
                    b = e if e < hi else hi
                    take = b - a if b > a else np.float32(0.0)
                    v = vq[j]
                    tot[j] += np.float64(v) * np.float64(take)
                    fst[j] = v if (p0 <= lo) & (lo < e) else fst[j]
                    lst[j] = v if (p0 <= last) & (last < e) else lst[j]
            o = out[k0 : k0 + m]
            if stat == 1:
                span = np.float64(hi - lo)
                for j in range(m):
                    r = tot[j] / span
                    r = r if r > fst[j] else fst[j]
                    o[j] = r if r < lst[j] else lst[j]
            else:
                for j in range(m):
                    a = np.float64(fst[j])
                    b = np.float64(lst[j])
                    med = 0.5 * (a + b)
                    o[j] = med if np.isfinite(med) else 0.5 * a + 0.5 * b
        return True
