"""The statistic taken in registers, right after the sorting network (up to 25 rows, large d;
the median and the trimmed mean up to 50).

The plain kernel of :mod:`._sortnet` stores each sorted block of 256 coordinates and hands it to
:func:`._select.block_statistic`, which reads it back, row by row, in several float64 passes over
the block's columns (the centre, the sums, the window, the clamp). For up to 25 rows the
sorted values of 16 coordinates are still in vector registers when the network ends: this
module generates, per row count n, statistic, ``drop`` and dtype, a kernel whose loop over the
coordinates goes on from the network straight into the statistic and writes only the output.
``python benchmarks/aggregators.py --scale-n --scale-values 10 25 --rules median trimmed_mean
meamed phocas bulyan`` (one thread, float32, d = 1e6, f = n / 5), the code before and after
alternated twice, time over one read of the input: at n = 10 the median 2.25-2.34 -> 1.23-1.24,
the trimmed mean 2.62-2.67 -> 1.44-1.47, MeaMed 3.28-3.35 -> 1.97-1.98, Phocas 3.32-3.42 ->
1.90-1.93; at n = 25 1.61-1.87 -> 1.21-1.22, 1.90-2.16 -> 1.26-1.31, 2.47-2.63 -> 1.54-1.68,
2.46-2.67 -> 1.65-1.71, Bulyan (its 15-row second phase) 21.1-21.7 -> 18.3-18.6 ms.

Same bits: the generated statistic is ``_select._full_block``'s arithmetic, operation for
operation and in the same order (sums from 0.0 in row order, the centre, the window's steps,
the mean by the reciprocal for float32, the clamps), on the same sorted values (the same
network code, :func:`._sortnet.network_lines`). That path is only valid on a block whose n
values are all finite in every column and whose means did not overflow; the kernel checks both
for every coordinate and stops at the first block where one fails, which the plain kernel then
redoes (:func:`run`), so every output is the plain kernel's, wherever its block took it.
Rows that hold no finite value at all (a NaN attack) are left out first (:func:`rows_with_values`:
the statistic of each coordinate is the same without them); where missing values are scattered
(lossy links) every block may fail: after a failure the plain kernel takes the next 16 blocks,
twice as many after each failure that comes at once, so such inputs pay for one fused block in
many.

From 26 to 64 rows (and Bulyan's second phase on as many selected rows) the kernel sorts the
plain kernel's groups by its network into locals and merges them in registers
(:func:`_merged_body`): the plain kernel's own merge passes, comparator for comparator, so the
same values at every position and the same bits. That is on hosts with AVX-512
(:data:`._sortnet.REGISTER_MERGE`); elsewhere the median and the trimmed mean of 26 to 50 rows
take the statistic from the two sorted lists without a merge (:mod:`._two_lists`, whose
vectorised twin the plain kernel then runs on its finite blocks: the same bits) and the other
statistics the plain kernel. One thread, float32, d = 1e6, f = n / 5, time over one read,
against the plain kernel in one process (medians of three turns): MeaMed 3.59 -> 1.92 floors
at 26 rows, 4.71 -> 2.24 at 33, 3.79 -> 2.66 at 40, 3.70 -> 2.51 at 45, 3.26 -> 2.49 at 49,
2.74-3.28 -> 2.58-3.07 at 50, 3.11 -> 1.95 at 56; Phocas 3.62 -> 1.96, 4.63 -> 2.14, 3.87 ->
2.19, 3.56 -> 2.21, 3.09 -> 2.25, 3.36-3.41 -> 2.20-2.29, 3.52 -> 2.08; the median at 56 and
64 rows 2.80 -> 1.38 and 2.25 -> 1.35, the trimmed mean 3.03 -> 1.53 and 2.81 -> 1.63 (at 30
and 50 rows, against the two lists: the median 1.47 -> 1.08 and 1.71 -> 1.40, the trimmed mean
2.70 -> 1.79 and 2.46 -> 1.74); Bulyan (its second phase on 30, 39, 48, 60 selected rows)
5.23 -> 3.88 floors at n = 50, 5.79 -> 4.15 at 63, 5.33 -> 4.66 at 70, 5.44 -> 4.91 at 100.
These kernels take 2 s (26 rows) to 7 s (50 rows) and 15 s (64 rows) to compile, once per row
count, statistic, drop and dtype (then numba's disk cache keeps them).

Each (n, statistic, drop, dtype) is a kernel of its own (0.6 to 1.9 s to compile from 10 to 25
rows, its selects written as :mod:`._branchfree` calls; numba's disk cache keeps it between
processes, as for the plain kernels), so the
path is taken only from :data:`MIN_COLUMNS` coordinates on, where the call is worth it: models
of a few thousand parameters keep the plain kernel, shared by every statistic and drop.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable

import numpy as np

from byzlearn.aggregators import _bitonic, _branchfree, _simd, _sortnet, _two_lists
from byzlearn.aggregators._threads import in_parallel

try:  # numba is a dependency, but keep a working fallback if it cannot load
    from numba import njit

    from byzlearn.aggregators._simd import wide

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    _HAVE_NUMBA = False

# Fewest coordinates for which the fused kernel is used (and compiled).
MIN_COLUMNS = 1 << 16
# Blocks the plain kernel takes after a block the fused kernel could not take.
_RETRY_BLOCKS = 16
_GENERATOR_VERSION = 7
# Most rows whose sorted groups the fused kernels merge in registers (64 wires: from 51 rows
# four groups of 16; the plain kernel against the fused one at 56 rows, the median 2.80 -> 1.38
# floors, the trimmed mean 3.03 -> 1.53, MeaMed 3.11 -> 1.95, Phocas 3.52 -> 2.08; at 64 rows
# 2.25 -> 1.35, 2.81 -> 1.63, 2.71 -> 2.50, 2.71 -> 1.93; each kernel there 10-15 s to compile).
MERGED_MAX_ROWS = 64


def applies(n: int, stat: int, drop: int, min_k: int, d: int, dtype: np.dtype) -> bool:
    """Whether the fused kernel takes n rows of d float32 or float64 coordinates (``dtype``: a
    numpy dtype) for this statistic (else the plain kernel): n values must be enough for
    ``min_k`` and for what the statistic needs (:func:`._select.checked_min_k`)."""
    from byzlearn.aggregators._select import checked_min_k

    if d < max(1, MIN_COLUMNS) or dtype not in (np.float32, np.float64):
        return False
    if min_k < 1:
        return False
    # beyond one network: where the plain kernel takes the same two lists (the same bits), or
    # the groups merged in registers
    if _sortnet.size_for(n) is None and not (
        _sortnet.plan(n).two_lists(stat, drop, min_k) or merges_in_registers(n)
    ):
        return False
    return checked_min_k(stat, drop, min_k, "fused") <= n


def merges_in_registers(n: int) -> bool:
    """Whether the fused kernel of n rows merges the sorted groups in registers
    (:func:`_merged_body`), for every statistic: on hosts that do
    (:data:`._sortnet.REGISTER_MERGE`, where the plain kernel takes no two lists either), from
    more rows than one network sorts up to :data:`MERGED_MAX_ROWS`."""
    fits = _sortnet.size_for(n) is None and n <= MERGED_MAX_ROWS
    return _sortnet.REGISTER_MERGE and fits


def _value(r: int) -> str:
    return f"np.float64(a{r})"


def _sum_lines(a: int, b: int) -> list[str]:
    """acc = the float64 sum of sorted positions a..b-1, from 0.0, in order (``_sum_rows``)."""
    return ["acc = 0.0"] + [f"acc = acc + {_value(r)}" for r in range(a, b)]


def _mean_lines(m: int, recip: bool, low: str, high: str) -> list[str]:
    """o = acc / m clamped to [low, high] (``_mean`` and the clamps of ``_full_block``), and
    ``fine`` False where the mean overflowed."""
    mean = f"acc * {1.0 / m!r}" if recip else f"acc / {m}"
    return [
        f"r = {mean}",
        "fine = fine & np.isfinite(r)",
        f"r = pick(r > {low}, r, {low})",
        f"o = pick(r < {high}, r, {high})",
    ]


def statistic_lines(n: int, stat: int, drop: int, recip: bool) -> list[str]:
    """The statistic of the sorted locals a0..a{n-1} (all finite) into ``o`` (float64), and
    ``fine`` False where ``_full_block`` would redo a column (a sum overflowed). The twin of
    ``_select._full_block``: the same operations in the same order."""
    from byzlearn.aggregators._select import (
        CLOSEST_TO_MEDIAN,
        CLOSEST_TO_TRIMMED,
        MEAN,
        MEDIAN,
        TRIMMED,
        window_span,
    )

    lines = ["fine = True"]
    m = n - drop
    if stat == MEAN:
        return lines + _sum_lines(0, n) + _mean_lines(n, recip, _value(0), _value(n - 1))
    if stat in (TRIMMED, CLOSEST_TO_TRIMMED):
        lines += _sum_lines(drop, n - drop)
        # Phocas' centre is divided, never taken by the reciprocal (see _select._mean)
        centre_recip = recip and stat == TRIMMED
        lines += _mean_lines(n - 2 * drop, centre_recip, _value(drop), _value(n - drop - 1))
        if stat == TRIMMED:
            return lines
        lines.append("c = o")
    else:
        if n % 2 == 1:
            lines.append(f"c = {_value(n // 2)}")
        else:
            lines += [
                f"x = {_value(n // 2 - 1)}",
                f"y = {_value(n // 2)}",
                "med = 0.5 * (x + y)",
                "c = pick(np.isfinite(med), med, 0.5 * x + 0.5 * y)",
            ]
        if stat == MEDIAN:
            return [*lines, "o = c"]
        if drop <= m:
            lines += _sum_lines(drop, m)
    if drop <= m:  # the window holds the core [drop, m): one step per position i < drop
        lines += [f"low = {_value(0)}", f"high = {_value(m - 1)}"]
        for i in range(drop):
            lines += [
                f"u = {_value(i)}",
                f"v = {_value(i + m)}",
                "closer = (c - u) > (v - c)",
                "acc = acc + pick(closer, v, u)",
                f"low = pick(closer, {_value(i + 1)}, low)",
                "high = pick(closer, v, high)",
            ]
        return lines + _mean_lines(m, recip, "low", "high")
    # A window shorter than the trimmed part (Bulyan's second phase): its start s moves past
    # each position i of the span that can move it (first .. stop - 1) where the test holds,
    # and those positions are a prefix of the span (both sides of the test are monotone in i,
    # and so is their float64 rounding). So its values w_k = a_{s + k} are picked along the
    # span in the input's precision, one select per value and position, and summed from 0.0 in
    # order (as _window_mean sums col[s:s + m]); its ends are w_0 and w_{m - 1}. (The earlier
    # form counted s in float64 and tested every position of the span against it: at 15 rows,
    # drop 10, the 25-row x 1e7 Bulyan's second phase took 1.5 floors, most of it there.)
    first, stop = window_span(n, drop) if stat == CLOSEST_TO_MEDIAN else (0, drop)
    lines += [f"w{k} = a{first + k}" for k in range(m)]
    for i in range(first, stop):
        lines.append(f"closer = (c - {_value(i)}) > ({_value(i + m)} - c)")
        lines += [f"w{k} = pick(closer, a{i + 1 + k}, w{k})" for k in range(m)]
    lines += ["acc = 0.0"] + [f"acc = acc + np.float64(w{k})" for k in range(m)]
    return lines + _mean_lines(m, recip, "np.float64(w0)", f"np.float64(w{m - 1})")


def _source(n: int, stat: int, drop: int, recip: bool, merged: bool = False) -> str:
    """Kernel source: for blocks blk0..blk1-1, load the n rows ``rows`` (non-finite -> +inf),
    sort by the unrolled network of ``size_for(n)`` rows (without its pairs on the +inf padding
    rows, which move nothing; beyond one network, the groups merged in registers with
    ``merged``, :func:`_merged_body`, else two groups, :func:`_two_group_body`), take
    the statistic, write it; return the first block where a coordinate is missing a value or
    overflows (its outputs are then incomplete), or blk1."""
    lanes = _sortnet.LANES
    head = [
        '"""Generated by byzlearn.aggregators._fused; do not edit."""',
        "import numpy as np",
        "from numba import njit",
        "from byzlearn.aggregators._branchfree import hi, lo, pick",
        "from byzlearn.aggregators._simd import wide",
        "",
        "",
        "@njit(cache=True, error_model='numpy', boundscheck=False, nogil=True)",
        "def kernel(X, rows, big, out, first_bad, blk0, blk1):",
        "    wide()",
        "    d = X.shape[1]",
        "    inf = big[0]",
        "    zero = X.dtype.type(0)",
        "    one = X.dtype.type(1)",
    ]
    head += [f"    i{r} = rows[{r}]" for r in range(n)]
    head += [
        "    for blk in range(blk0, blk1):",
        f"        j0 = np.uint64(blk * {lanes})",
        f"        w = min({lanes}, d - blk * {lanes})",
        "        ok = True",
        "        for j in range(np.uint64(w)):",
    ]

    if _sortnet.size_for(n) is None:
        body = (_merged_body if merged else _two_group_body)(n, stat, drop, recip)
    else:
        body = _sorted_lines(0, n)
        body += statistic_lines(n, stat, drop, recip)
        body += ["out[j0 + j] = o", f"ok &= (a{n - 1} < inf) & fine"]
    tail = [
        "        if not ok:",
        "            return blk",
        "        first_bad[blk] = -1",
        "    return blk1",
        "",
    ]
    return "\n".join(head + ["            " + line for line in body] + tail)


def _sorted_lines(first: int, count: int, name: str = "a", size: int | None = None) -> list[str]:
    """The lines that load rows first .. first + count - 1 (the locals ``i{r}``; non-finite
    values -> +inf) into the locals {name}0 .. {name}{count - 1} and sort them with the unrolled
    network of ``size`` rows (default ``size_for(count)``; :func:`._sortnet.unrolled_pairs`).

    The plain kernel sorts count rows with that network, rows count.. holding +inf: a
    compare-exchange touching such a row leaves both values as they are (the +inf rows stay
    +inf: a larger row only ever meets another +inf), so the network without those pairs, in
    the same order, leaves the same bits in rows 0..count-1 (at 20 of 25 rows: 103
    compare-exchanges instead of 140)."""
    size = size or _sortnet.size_for(count)
    assert size is not None and count <= size

    def load(r: int) -> list[str]:  # rows beyond count: +inf padding
        if r >= count:
            return [f"a{r} = inf"]
        return [f"a{r} = X[i{first + r}, j0 + j]", f"a{r} = pick(abs(a{r}) < inf, a{r}, inf)"]

    pairs = _sortnet.unrolled_pairs(size)
    lines = _sortnet.network_body(pairs[pairs[:, 1] < count], size, load)
    if name == "a":
        return lines
    return [re.sub(r"\ba(\d+)\b", name + r"\1", line) for line in lines]


def _two_group_body(n: int, stat: int, drop: int, recip: bool) -> list[str]:
    """The median or trimmed mean of n rows, more than one network sorts (26 to 50:
    :mod:`._two_lists`): the plain kernel's two groups (the first ceil(n / 2) rows, the others)
    sorted by its network into the locals a0 .. and b0 .., and the statistic taken from the
    two sorted lists without a merge (:func:`._two_lists.statistic_lines`, the twin of the
    plain kernel's :func:`._two_lists.two_list_block`: the same bits). A block where a value is
    not finite or a mean overflows goes to the plain kernel."""
    na, nb = _two_lists.split(n)
    size = _sortnet.plan(n).size
    lines = _sorted_lines(0, na, size=size) + _sorted_lines(na, nb, "b", size=size)
    lines += _two_lists.statistic_lines(n, stat, drop, recip)
    return [*lines, "out[j0 + j] = o", f"ok &= (a{na - 1} < inf) & (b{nb - 1} < inf) & fine"]


def _merged_body(n: int, stat: int, drop: int, recip: bool) -> list[str]:
    """The statistic of n rows, more than one network sorts (where :func:`merges_in_registers`):
    the plain kernel's groups (:func:`._sortnet.plan`) sorted by its network into locals, then
    its merge, comparator for comparator, on those locals instead of its buffer: the passes
    that give the positions the statistic reads their exact ranks
    (:func:`._sortnet.exact_passes`), each comparator as the pass's (``b < a ? b : a`` low,
    ``a > b ? a : b`` high: equal values, zeros of opposite sign, stay where they are), a
    comparator with a wire that surely holds +inf (the slots' padding) written as nothing or
    as a swap of names; then :func:`statistic_lines` on the merged positions: the same values
    at every position, hence the same bits. A block where a value is not finite or a mean
    overflows goes to the plain kernel."""
    plan = _sortnet.plan(n)
    kinds, table = _sortnet.exact_passes(n, _sortnet.read_positions(n, stat, drop))
    wire = ["inf"] * plan.wires  # the local holding each wire ("inf": surely +inf)
    lines: list[str] = []
    for g in range(plan.starts.size - 1):
        first, count = int(plan.starts[g]), int(plan.starts[g + 1] - plan.starts[g])
        lines += _sorted_lines(first, count, f"g{g}w", size=plan.size)
        wire[g * plan.slot : g * plan.slot + count] = [f"g{g}w{r}" for r in range(count)]
    for a, b in _bitonic.comparators(kinds, table):
        x, y = wire[a], wire[b]
        if y == "inf":
            continue
        if x == "inf":
            wire[a], wire[b] = y, x
            continue
        low, high = f"pick({y} < {x}, {y}, {x})", f"pick({x} > {y}, {x}, {y})"
        lines += [f"t = {low}", f"{y} = {high}", f"{x} = t"]
    assert "inf" not in wire[:n]
    lines += [f"a{r} = {wire[r]}" for r in range(n)]
    lines += statistic_lines(n, stat, drop, recip)
    return [*lines, "out[j0 + j] = o", f"ok &= (a{n - 1} < inf) & fine"]


@functools.cache
def kernel(n: int, stat: int, drop: int, recip: bool, merged: bool = False) -> Callable:
    """The compiled fused kernel (single-threaded) for n rows; ``recip``: float32 inputs;
    ``merged``: beyond one network, the groups merged in registers (else the two lists)."""
    source = _source(n, stat, drop, recip, merged)
    kind = "_merged" if merged else ""
    name = f"fused_{n}_{stat}_{drop}_{int(recip)}{kind}_v{_GENERATOR_VERSION}"
    helpers = (sys.modules[__name__], _simd, _branchfree, _two_lists)
    return _sortnet.compiled(name, source, helpers)


if _HAVE_NUMBA:

    @njit(cache=True, nogil=True, error_model="numpy", boundscheck=False)
    def _holds_a_value(row):  # pragma: no cover (compiled)
        """Whether the row holds a finite value: a vectorised OR over chunks of 4096 values,
        stopping after the first chunk that holds one (an exit per value does not vectorise:
        on a NaN row of 1e7 float32 values 5.1 ms that way, 3.1 ms this way, numpy's sum of
        it 2.3 ms)."""
        wide()
        d = row.shape[0]
        inf = np.inf
        for j0 in range(0, d, 4096):
            found = False
            for j in range(j0, min(d, j0 + 4096)):
                found |= abs(row[j]) < inf
            if found:
                return True
        return False

    @njit(cache=True, nogil=True)
    def _rows_with_values(X, rows):  # pragma: no cover (compiled)
        keep = np.empty(rows.shape[0], dtype=np.int64)
        k = 0
        for i in range(rows.shape[0]):
            row = X[rows[i]]
            if np.isfinite(row[0]) or _holds_a_value(row):
                keep[k] = rows[i]
                k += 1
        return keep[:k]

    @njit(cache=True, nogil=True)
    def _values_in(X, rows, j0, j1, found):  # pragma: no cover (compiled)
        """found[i] = whether X[rows[i], j0:j1] holds a finite value."""
        for i in range(rows.shape[0]):
            found[i] = _holds_a_value(X[rows[i], j0:j1])


# From this many coordinates on, the rows whose first value is missing are checked by all the
# threads, each over its share of the coordinates: on a NaN attack's rows the check is the only
# single-threaded read of the coordinate-wise rules (5 NaN rows of 25, d = 1e7: 15 ms of a
# median's 67 on two threads).
SPLIT_CHECK_COLUMNS = 1 << 20


def rows_with_values(X: np.ndarray, rows: np.ndarray, threads: int = 1) -> np.ndarray:
    """``rows`` without the rows of X that hold no finite value (a NaN attack's whole rows).

    Every value of such a row is missing, so the statistic of each coordinate is the same
    without it, to the bit (the kernel works on the k finite values of each coordinate); the
    fused kernel then takes the other rows, where every block would otherwise fall back. Only
    rows whose first value is not finite are read further (each costs about 1/n of a read of
    X): in one compiled call (the mixed rows ask once per block of 8192 coordinates), or, on
    ``threads`` > 1 and from :data:`SPLIT_CHECK_COLUMNS` coordinates on, by every thread over
    its share of the coordinates."""
    if not _HAVE_NUMBA or X.shape[1] == 0:
        return rows
    d = X.shape[1]
    if threads <= 1 or d < SPLIT_CHECK_COLUMNS:
        return _rows_with_values(X, rows)
    suspects = rows[~np.isfinite(X[rows, 0])]
    if suspects.size == 0:
        return rows
    found = np.zeros((threads, suspects.size), dtype=np.bool_)

    def check(t0: int, t1: int) -> None:
        for t in range(t0, t1):
            _values_in(X, suspects, d * t // threads, d * (t + 1) // threads, found[t])

    in_parallel(check, threads, threads)
    empty = suspects[~found.any(axis=0)]
    return rows[~np.isin(rows, empty)]


def kernel_for(
    X: np.ndarray,
    rows: np.ndarray,
    stat: int,
    drop: int,
    min_k: int,
    d: int,
    plain: Callable,
    threads: int = 1,
) -> tuple[np.ndarray, Callable]:
    """The rows and the kernel that take the statistic of X's ``rows`` (d coordinates in all):
    :func:`run` on the rows that hold a value where the fused kernel applies to them, else
    ``plain`` on all of them; ``threads``: for the check of the rows (:func:`rows_with_values`)."""
    if applies(rows.size, stat, drop, min_k, d, X.dtype):
        kept = rows_with_values(X, rows, threads)
        if applies(kept.size, stat, drop, min_k, d, X.dtype):
            return kept, run
    return rows, plain


def run(
    X: np.ndarray,
    rows: np.ndarray,
    big: np.ndarray,
    stat: int,
    drop: int,
    min_k: int,
    out: np.ndarray,
    first_bad: np.ndarray,
    blk0: int,
    blk1: int,
) -> None:
    """The statistic of blocks blk0..blk1-1 (as :meth:`._sortnet.Plan.run`, same outputs): the
    fused kernel where it applies, the plain kernel from each block where it stops."""
    from byzlearn.aggregators._select import MEAN, MEDIAN

    n = rows.shape[0]
    # one kernel for every drop where the statistic does not use it
    used = 0 if stat in (MEDIAN, MEAN) else drop
    fused = kernel(n, stat, used, X.dtype == np.float32, merges_in_registers(n))
    plan = _sortnet.plan(n)
    retry = _RETRY_BLOCKS
    blk = blk0
    while blk < blk1:
        stopped = fused(X, rows, big, out, first_bad, blk, blk1)
        if stopped >= blk1:
            return
        end = min(blk1, stopped + retry)
        plan.run(X, rows, big, stat, drop, min_k, out, first_bad, stopped, end)
        retry = retry * 2 if stopped == blk else _RETRY_BLOCKS
        blk = end
