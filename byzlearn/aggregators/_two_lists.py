"""The median and the trimmed mean of two sorted groups, without merging them (26 to 50 rows).

Beyond the 25 rows one unrolled network sorts, the kernels sort the rows in two groups (the first
ceil(n / 2) rows and the others, :func:`._sortnet.plan`) and, where every value of a block is
finite, take the median and the trimmed mean straight from the two sorted lists a and b instead
of merging them (the bitonic merge passes of :mod:`._bitonic`):

- the value of rank p (from 0) of the union is the minimum over i of max(a_{i-1}, b_{p-i})
  (i values from a, p + 1 - i from b; the terms without a_{i-1} or b_{p-i} are the other one):
  any such p + 1 values have a largest value at least that of rank p, and the split of the
  merged sort reaches it. 2 x (n / 2 + 1) selects per rank, against a merge's n log2(n) / 2
  compare-exchanges;
- the median is ``_select._full_block``'s: the middle value, or ``0.5 * (x + y)`` of the two
  middle ones in float64 (halves first where that overflows);
- the trimmed mean of the values of ranks drop .. n - drop - 1: with L and U the values of those
  two ranks, its values are those strictly between L and U, plus L taken c_L = #{v <= L} - drop
  times and U the remaining m - #{L < v < U} - c_L times (m = n - 2 drop; all m of them L when
  L == U), summed in float64: the values between in row order (a's rows, then b's) into two
  sums by row index mod 2, then ``(s0 + s1) + c_L L + c_U U``; divided by m (times
  the reciprocal for float32, as ``_select._mean``) and clamped to [L, U]. A block where that
  mean is not finite (float64 inputs near the largest value) is merged and handed to
  ``_select.block_statistic`` instead, by both twins.

Two twins compute it, operation for operation and in the same order, so to the same bits: the
generated lines of the fused kernel (:func:`statistic_lines`, one coordinate in registers) and
:func:`two_list_block`, vectorised over a block's columns, which the plain kernel calls on its
finite blocks (:mod:`._sortnet`). The minimum of the rank is a chain there and a balanced tree in
the generated lines: both return the rightmost of the terms equal to the minimum (``lo`` keeps its
second argument on ties, and the tree keeps the terms' order), so the same bits, the sign of a
zero included. The trimmed mean's sum is not the merged sort's (which adds the middle values in
rank order): the same where the float64 sum is exact, as it is for float32 values whose
magnitudes span less than about 2^23; otherwise within float64 rounding.
"""

from __future__ import annotations

import numpy as np

try:
    from numba import njit

    from byzlearn.aggregators._branchfree import hi, lo, pick
    from byzlearn.aggregators._simd import wide

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    _HAVE_NUMBA = False

# The statistics taken this way (``_select.MEDIAN``, ``_select.TRIMMED``; numbered here to keep
# this module free of imports from _select, which imports it through _sortnet).
_MEDIAN, _TRIMMED = 0, 1
# The row counts: more than one network (25 rows) sorts, at most two networks' worth.
FIRST, LAST = 26, 50


def applies(n: int, stat: int, drop: int) -> bool:
    """Whether n rows of finite values take the two-list statistic ``stat`` (dropping ``drop``
    on each side for the trimmed mean)."""
    if not FIRST <= n <= LAST:
        return False
    return stat == _MEDIAN or (stat == _TRIMMED and n - 2 * drop >= 1 and drop >= 0)


def split(n: int) -> tuple[int, int]:
    """The sizes of the two groups (the plan's: the first group takes the odd row)."""
    return (n + 1) // 2, n // 2


# ------------------------------------------------------------------ generated lines (fused)
def rank_lines(target: str, p: int, na: int, nb: int) -> list[str]:
    """``target`` = the value of rank p of the sorted locals a0 .. a{na - 1}, b0 .. b{nb - 1}: the
    minimum over i of max(a_{i-1}, b_{p-i}), as a balanced tree of ``lo`` (a chain of 25
    dependent selects waited on each: 0.6 reads of the input at 50 rows, the tree about 0.3)."""
    terms = []
    for i in range(max(0, p + 1 - nb), min(na, p + 1) + 1):
        if i == 0:
            terms.append(f"b{p}")
        elif i == p + 1:
            terms.append(f"a{p}")
        else:
            terms.append(f"hi(a{i - 1}, b{p - i})")
    lines = []
    level = 0
    while len(terms) > 1:
        pairs = [terms[k : k + 2] for k in range(0, len(terms), 2)]
        names = [f"{target}_{level}_{k}" for k in range(len(pairs))]
        lines += [
            f"{name} = lo({pair[0]}, {pair[1]})" if len(pair) == 2 else f"{name} = {pair[0]}"
            for name, pair in zip(names, pairs, strict=True)
        ]
        terms = names
        level += 1
    return [*lines, f"{target} = {terms[0]}"]


def _values(na: int, nb: int) -> list[str]:
    return [f"a{i}" for i in range(na)] + [f"b{i}" for i in range(nb)]


def statistic_lines(n: int, stat: int, drop: int, recip: bool) -> list[str]:
    """The statistic of the sorted locals a0 .., b0 .. (all finite; :func:`split`) into ``o``
    (float64), and ``fine`` False where :func:`two_list_block` would redo the column (a mean
    that is not finite). ``zero`` and ``one`` are locals of the input's dtype (the counts are
    taken in it: exact up to 2^24, and half the vector work of float64 counts for float32)."""
    na, nb = split(n)
    if stat == _MEDIAN:
        if n % 2 == 1:
            return [*rank_lines("x", n // 2, na, nb), "o = np.float64(x)", "fine = True"]
        return [
            *rank_lines("x", n // 2 - 1, na, nb),
            *rank_lines("y", n // 2, na, nb),
            "xl = np.float64(x)",
            "yl = np.float64(y)",
            "med = 0.5 * (xl + yl)",
            "o = pick(np.isfinite(med), med, 0.5 * xl + 0.5 * yl)",
            "fine = True",
        ]
    m = n - 2 * drop
    lines = [*rank_lines("low", drop, na, nb), *rank_lines("high", n - drop - 1, na, nb)]
    lines += ["s0 = 0.0", "s1 = 0.0", "cin = zero", "cle = zero"]
    for q, v in enumerate(_values(na, nb)):
        lines += [
            f"inside = ({v} > low) & ({v} < high)",
            f"s{q % 2} = s{q % 2} + np.float64(pick(inside, {v}, zero))",
            "cin = cin + pick(inside, one, zero)",
            f"cle = cle + pick({v} <= low, one, zero)",
        ]
    mean = f"total * {1.0 / m!r}" if recip else f"total / {m}"
    return [
        *lines,
        "lf = np.float64(low)",
        "hf = np.float64(high)",
        f"nl = np.float64(cle) - {float(drop)!r}",
        f"nh = ({float(m)!r} - np.float64(cin)) - nl",
        "total = s0 + s1",
        "total = total + nl * lf",
        "total = total + nh * hf",
        f"total = pick(lf < hf, total, {float(m)!r} * lf)",
        f"r = {mean}",
        "fine = np.isfinite(r)",
        "r = pick(r > lf, r, lf)",
        "o = pick(r < hf, r, hf)",
    ]


# ------------------------------------------------------------------ the vectorised twin (plain)
if _HAVE_NUMBA:

    @njit(cache=True, error_model="numpy", boundscheck=False)
    def _rank_into(buf, b0, na, nb, p, w, x, spare):  # pragma: no cover (compiled)
        """x[j] = the value of rank p of column j of the sorted rows 0 .. na - 1 and
        b0 .. b0 + nb - 1 of buf (the chain of :func:`rank_lines`' minimum, same bits).

        The running minimum goes back and forth between x and ``spare``: written in place
        (``x[j] = lo(x[j], t)``), LLVM turned it into a masked store of t where t is smaller,
        ``vmaskmovps``, microcoded on AMD cores (2.9 us per 256 columns and 24 terms on a Zen 3
        core, against 0.9 us this way)."""
        wide()
        i0 = max(0, p + 1 - nb)
        i1 = min(na, p + 1)
        # the terms i0 .. i1 are written to dst, src, dst, ...: the last one to x
        dst = x if (i1 - i0) % 2 == 0 else spare
        src = spare if (i1 - i0) % 2 == 0 else x
        for i in range(i0, i1 + 1):
            left = buf[b0 + p] if i == 0 else buf[i - 1]  # b_p alone, or a_{i-1}
            right = buf[p] if i == p + 1 else buf[b0 + p - i]  # a_p alone, or b_{p-i}
            alone = i == 0 or i == p + 1
            if i == i0:
                for j in range(w):
                    dst[j] = left[j] if alone else hi(left[j], right[j])
            else:
                for j in range(w):
                    dst[j] = lo(src[j], left[j] if alone else hi(left[j], right[j]))
            src, dst = dst, src

    @njit(cache=True, error_model="numpy", boundscheck=False)
    def _trimmed_sums(buf, b0, na, nb, w, low, high, sums, cin, cle):  # pragma: no cover
        """The sums and counts of :func:`statistic_lines`' trimmed mean, column by column."""
        wide()
        zero = buf.dtype.type(0)
        one = buf.dtype.type(1)
        for k in range(2):
            for j in range(w):
                sums[k, j] = 0.0
        for j in range(w):
            cin[j] = zero
            cle[j] = zero
        for q in range(na + nb):
            row = buf[q] if q < na else buf[b0 + q - na]
            acc = sums[q % 2]
            for j in range(w):
                v = row[j]
                inside = (v > low[j]) & (v < high[j])
                acc[j] = acc[j] + np.float64(pick(inside, v, zero))
                cin[j] = cin[j] + pick(inside, one, zero)
                cle[j] = cle[j] + pick(v <= low[j], one, zero)

    @njit(cache=True, error_model="numpy", boundscheck=False)
    def two_list_block(buf, b0, na, nb, stat, drop, w, out, j0, ranks, sums):
        # pragma: no cover (compiled)
        """out[j0 + j] = the median (stat 0) or the trimmed mean (stat 1) of column j of the
        sorted rows 0 .. na - 1 and b0 .. b0 + nb - 1 of buf, all finite: the arithmetic of
        :func:`statistic_lines`. Returns False where a mean is not finite (float64 values near
        the largest): the caller then merges the block and takes ``_select.block_statistic``,
        as the fused kernel hands such a block to it. ``ranks`` (5 x w,
        buf's dtype: the ranks, the counts, a spare row) and ``sums`` (2 x w, float64) are scratch
        space."""
        wide()
        n = na + nb
        recip = buf.itemsize == 4
        o = out[j0 : j0 + w]
        x = ranks[0]
        y = ranks[1]
        spare = ranks[4]
        if stat == 0:
            if n % 2 == 1:
                _rank_into(buf, b0, na, nb, n // 2, w, x, spare)
                for j in range(w):
                    o[j] = np.float64(x[j])
                return True
            _rank_into(buf, b0, na, nb, n // 2 - 1, w, x, spare)
            _rank_into(buf, b0, na, nb, n // 2, w, y, spare)
            for j in range(w):
                xl = np.float64(x[j])
                yl = np.float64(y[j])
                med = 0.5 * (xl + yl)
                o[j] = pick(np.isfinite(med), med, 0.5 * xl + 0.5 * yl)
            return True
        m = n - 2 * drop
        inv = 1.0 / m
        _rank_into(buf, b0, na, nb, drop, w, x, spare)
        _rank_into(buf, b0, na, nb, n - drop - 1, w, y, spare)
        cin = ranks[2]
        cle = ranks[3]
        _trimmed_sums(buf, b0, na, nb, w, x, y, sums, cin, cle)
        fine = True
        for j in range(w):
            lf = np.float64(x[j])
            hf = np.float64(y[j])
            nl = np.float64(cle[j]) - np.float64(drop)
            nh = (np.float64(m) - np.float64(cin[j])) - nl
            total = sums[0, j] + sums[1, j]
            total = total + nl * lf
            total = total + nh * hf
            total = pick(lf < hf, total, np.float64(m) * lf)
            r = total * inv if recip else total / m
            fine &= np.isfinite(r)
            r = pick(r > lf, r, lf)
            o[j] = pick(r < hf, r, hf)
        return fine
