"""Generated numba kernels: one sorting network per row count, unrolled on scalar locals.

A sorting network is a fixed list of compare-exchanges, so for a given number of rows it can be
written out as straight-line code on that many local variables. Placed in a loop over
coordinates, that code vectorises across coordinates (each SIMD lane sorts one coordinate's
values with branch-free min/max), which a loop over a runtime list of row pairs does much less
well: each compare-exchange then loads and stores two buffer rows.

:func:`kernel` writes that code for 8, 10, 12, 16 or 25 rows (fewer rows are padded with +inf, which
sorts last; the pairs come from :func:`byzlearn.aggregators._select.sorting_network`, in the
order of Batcher's recursion from 17 rows on, with each row loaded right before its first
compare-exchange and stored right after its last: :func:`network_body`), compiles it with numba
and keeps it. The
source goes to a cache folder (``$BYZLEARN_CACHE`` or ``~/.cache/byzlearn``) so numba's on-disk
cache keeps the machine code between processes; where that folder cannot be written, the kernel is
compiled in memory for this process only.

The kernel reads blocks of ``LANES`` coordinates from the chosen rows, maps each non-finite value
to +inf (missing values sort last), sorts, stores the sorted block, and hands it to
:func:`byzlearn.aggregators._select.block_statistic`. (Counting the finite values in the same loop,
in an integer array, stops the compiler from vectorising it; the statistic counts them instead.)

More than 25 rows are sorted in groups by the same unrolled code, each group written straight into
its own slot of a larger buffer, and the sorted slots merged by bitonic merge passes
(:mod:`._bitonic`, planned by :func:`plan`): each pass loads 16 buffer rows into vector registers,
runs up to four stages of the merge on them and stores them once, so a row is loaded and stored
ceil(log2(2p) / 4) times per merge level instead of once per compare-exchange (the loop over the
pairs of Batcher's odd-even merge that this replaced). Passes that only move padding are dropped
at planning time. Against that loop, one thread, float32, in one process: 0.8 to 0.9 times the
time at 50 rows, about 0.5 at 200 and 0.4 to 0.5 at 500 and 1000 rows (docs/aggregators.md).
On blocks whose values are all finite the median and the trimmed mean take :func:`exact_passes`
(the last merge level sorts only around the positions they read): 5-17 % faster again.

From 3 groups on (:data:`PREFETCH_MIN_GROUPS`, ``Plan.ahead``) the kernel prefetches the rows
of the next group (the next part's first group after the last) before it sorts a group: from
memory, a hundred rows or more are more streams than the hardware prefetchers follow. On an
AVX-512 Xeon, one thread, d = 1e6, with and without it in one process (the same outputs): the
kernel at 64, 75, 100, 150, 200 and 256 rows took 0.82-0.93 of the time for the median, the
trimmed mean, MeaMed and Phocas (100 rows: 85 -> 73 ns per coordinate for the median, the
floor 28); at 51 rows (groups of 13) 0.98-1.01; at 300 rows 1.01-1.07, and at 1000 rows
(d = 3e5 and 1e6) 1.00-1.05, where the merge passes take most of the time: so it stopped at
256 rows until the plans of 256 or more buffer rows (float64: 512) took their blocks in
halves (:meth:`Plan.part`, where the measurements are), with which it pays there too; whole
blocks with the prefetch from 257 rows were slower (2026-12-07, a 2-core Xeon: 3.55-3.72
floors against 3.43-3.50 without it at 500 x 1e5).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from byzlearn.aggregators import _bitonic, _branchfree, _simd, _two_lists

LANES = 256
# Buffer rows are LANES + ROW_PAD values long: rows of exactly 1 KB (256 float32) put every
# fourth row of a merge pass in the same L1 cache sets (addresses 4 KB apart). The merge passes
# alone, one thread, the same sorted groups in buffers at 8 alignments (EPYC, Zen 3): 200 rows
# 39-47 -> 33 us per block, 500 rows 149-159 -> 126-128, 1000 rows 488-497 -> 329-335 (8 values
# of padding; 16: 32-33, 127-130, 348-356; 64: 36-37, 142-144, 380-389).
ROW_PAD = 8
_GENERATOR_VERSION = 22
# The grouped kernel prefetches (into L2, by software) the rows of the group it sorts next while
# it sorts one, for plans of at least PREFETCH_MIN_GROUPS groups: from memory, some hundred rows
# are more streams at once than the hardware prefetchers follow (a group of 25 rows of one block
# took about 14 ns per coordinate from 100 rows on, 10.5 at 25 and 50 rows; 8 from the L3
# cache). Measured on an AVX-512 Xeon and a 2-core Xeon, one thread: see the module docstring.
PREFETCH_MIN_GROUPS = 3
# Whether the fused kernels of 26 to 64 rows merge the sorted groups in registers
# (:func:`._fused.merges_in_registers`), which then takes every statistic there, the median and
# the trimmed mean too, and the plain kernel merges instead of taking the two sorted lists (the
# same bits on both paths). Measured on an AVX-512 Xeon only (32 vector registers; 2026-12-06,
# one thread, d = 1e6, time over one read, in one process: the median two lists -> merged 1.47
# -> 1.08 at 30 rows, 1.71 -> 1.40 at 50, the trimmed mean 2.70 -> 1.79, 2.46 -> 1.74; the plain
# kernel at d = 6e4, 50 rows: 1.27 -> 1.06 ms and 1.72 -> 1.17 ms); hosts with 16 (AVX2) keep
# the two lists, measured faster than the buffer's merge on an AMD EPYC.
REGISTER_MERGE = _simd.vector_bytes() >= 64


def _source(size: int, pairs: np.ndarray, part: int = LANES) -> str:
    """Kernel source: groups of up to ``size`` rows sorted by the unrolled network, then merged.

    Each block of ``LANES`` coordinates (the unit of ``blk0``, ``blk1`` and ``first_bad``) is
    taken in parts of ``part`` coordinates (:meth:`Plan.part`), one after the other:
    ``starts[g]:starts[g + 1]`` are the positions in ``rows`` of group g; its sorted values go
    straight to buffer rows ``g * slot ...`` (group rows beyond its count read +inf). The buffer
    rows listed in ``pad`` are set to +inf, then the bitonic passes ``kinds``, ``passes``
    (:func:`._bitonic.run_passes`) merge the sorted groups; one group and no passes is the
    plain unrolled kernel. On a part whose values are all finite the passes ``exact_kinds``,
    ``exact_passes`` run instead: a last merge level that sorts only around the positions the
    statistic reads (see :func:`exact_passes`; the full passes where it needs them all). With
    ``ahead`` (:attr:`Plan.ahead`), before it sorts a group the kernel prefetches the rows of the
    group it sorts next, in this part or (after the last group) the next one of its range.
    ``first_bad[blk]`` is the first coordinate of the block short of values (the first part's
    that has one), or -1.
    """
    assert LANES % part == 0
    lines = [
        '"""Generated by byzlearn.aggregators._sortnet; do not edit."""',
        "import numpy as np",
        "from numba import njit",
        "from byzlearn.aggregators._bitonic import run_passes",
        "from byzlearn.aggregators._branchfree import hi, lo, pick",
        "from byzlearn.aggregators._select import block_statistic",
        "from byzlearn.aggregators._simd import prefetch, wide",
        "from byzlearn.aggregators._two_lists import two_list_block",
        "",
        "",
        "@njit(cache=True, error_model='numpy', boundscheck=False, nogil=True)",
        "def kernel(X, rows, big, stat, drop, min_k, out, first_bad, blk0, blk1,",
        "           starts, slot, wires, pad, kinds, passes, exact_kinds, exact_passes,",
        "           two_lists, ahead):",
        "    wide()",
        "    d = X.shape[1]",
        "    row_step = X.strides[0] // X.itemsize",
        "    column_step = X.strides[1] // X.itemsize",
        "    line = max(1, 64 // X.itemsize)",
        "    n = rows.shape[0]",
        "    inf = big[0]",
        "    merged = starts.shape[0] > 2",
        f"    stop = min(d, blk1 * {LANES})",
        f"    buf = np.empty((wires, {part + ROW_PAD}), dtype=X.dtype)",
        f"    work = np.empty((4, {part}), dtype=np.float64)",
        "    col = np.empty(wires, dtype=np.float64)",
        f"    ranks = np.empty((5, {part}), dtype=X.dtype)",
        f"    sums = np.empty((2, {part}), dtype=np.float64)",
        "    for blk in range(blk0, blk1):",
        "        bad = -1",
        f"        for c0 in range(blk * {LANES}, min(d, (blk + 1) * {LANES}), {part}):",
        "            j0 = np.uint64(c0)",
        f"            w = min({part}, d - c0)",
        "            for g in range(starts.shape[0] - 1):",
        "                g0 = starts[g]",
        "                count = starts[g + 1] - g0",
        "                s0 = np.uint64(g * slot)",
    ]
    # Row indices, not row views: reads from one array keep the compiler's runtime alias checks
    # (writes to buf against every array read) few enough for it to vectorise. Padding rows
    # read the group's first row and are replaced by +inf (``live{r}`` is False for them).
    for r in range(size):
        lines += [
            f"                live{r} = {r} < count",
            f"                i{r} = rows[g0 + {r}] if live{r} else rows[g0]",
        ]
    lines += [
        "                if ahead:",  # the next group's rows: this part's, or the next part's first
        "                    ng = g + 1",
        "                    nxt = c0",
        "                    if ng == starts.shape[0] - 1:",
        "                        ng = 0",
        f"                        nxt = c0 + {part}",
        "                    if nxt < stop:",
        f"                        lim = min({part}, d - nxt)",
        "                        for r in range(starts[ng], starts[ng + 1]):",
        "                            base = rows[r] * row_step + nxt * column_step",
        "                            for q in range(0, lim, line):",
        "                                prefetch(X, base + q * column_step)",
        "                for j in range(np.uint64(w)):",
    ]

    def load(r: int) -> list[str]:
        return [f"a{r} = X[i{r}, j0 + j]", f"a{r} = pick((abs(a{r}) < inf) & live{r}, a{r}, inf)"]

    body = network_body(pairs, size, load, lambda r: [f"buf[s0 + np.uint64({r}), j] = a{r}"])
    lines += ["                    " + line for line in body]
    lines += [
        "            if not merged:",
        "                first = block_statistic(",
        "                    buf[:n], w, stat, drop, min_k, out, c0, work, col",
        "                )",
        "            else:",
        "                for q in range(pad.shape[0]):",
        "                    row = buf[pad[q]]",
        "                    for j in range(w):",
        "                        row[j] = inf",
        # the part's values are all finite when each group's last (largest) value is
        "                finite = True",
        "                for g in range(starts.shape[0] - 1):",
        "                    top = buf[g * slot + starts[g + 1] - starts[g] - 1]",
        "                    for j in range(w):",
        "                        finite &= top[j] < inf",
        "                done = False",
        "                if finite and two_lists:",  # the median or trimmed mean of the two groups
        "                    na = starts[1]",
        "                    done = two_list_block(buf, slot, na, n - na, stat, drop, w, out, c0,",
        "                                          ranks, sums)",
        "                first = -1",
        "                if not done:",
        "                    if finite:",
        f"                        run_passes(buf, exact_kinds, exact_passes, w, {part})",
        "                    else:",
        f"                        run_passes(buf, kinds, passes, w, {part})",
        "                    first = block_statistic(",
        "                        buf[:n], w, stat, drop, min_k, out, c0, work, col",
        "                    )",
        "            if bad < 0:",
        "                bad = first",
        "        first_bad[blk] = bad",
        "",
    ]
    return "\n".join(lines)


def network_lines(pairs: np.ndarray) -> list[str]:
    """The compare-exchanges of ``pairs`` on the locals a0, a1, ...: branch-free selects written
    as calls of :mod:`._branchfree`'s ``lo`` and ``hi`` (a third of the compile time of
    conditional expressions, the same code once LLVM inlines them); the order of equal values,
    e.g. zeros of opposite sign, is fixed by their exact expressions."""
    lines = []
    for a, b in pairs.tolist():
        lines += [f"t = lo(a{a}, a{b})", f"a{b} = hi(a{a}, a{b})", f"a{a} = t"]
    return lines


# From this many rows on the unrolled networks run depth first (more values than the 16 vector
# registers of an AVX2 core hold; see :func:`network_body`).
DEPTH_FIRST_FROM = 17


def unrolled_pairs(size: int) -> np.ndarray:
    """The compare-exchanges of the ``size``-row kernels, in the order they are written: Batcher's
    stage order up to 16 rows, his recursion's order (the same network, the same bits) from
    :data:`DEPTH_FIRST_FROM` rows on."""
    from byzlearn.aggregators._select import sorting_network, sorting_network_depth_first

    if size >= DEPTH_FIRST_FROM:
        return sorting_network_depth_first(size)
    return sorting_network(size)


def network_body(
    pairs: np.ndarray,
    size: int,
    load: Callable[[int], list[str]],
    store: Callable[[int], list[str]] | None = None,
) -> list[str]:
    """The lines of one coordinate's sort on the locals a0 .. a{size - 1}: ``load(r)`` sets a{r}
    (row r's value), :func:`network_lines` sorts, ``store(r)`` writes a{r} out (with None the
    sorted locals are left to the lines that follow).

    Up to 16 rows every load comes first and every store last. From :data:`DEPTH_FIRST_FROM`
    rows on (``pairs`` in depth-first order, :func:`unrolled_pairs`) each row is loaded right
    before the first compare-exchange that reads it and stored right after the last one that
    writes it: the early merges then hold few values, where 25 loads first kept all 25 live
    (more than the 16 registers of AVX2: the compiler spilled about one value per comparator).
    On an AMD EPYC (Zen 3, AVX2), A/B in one process against Batcher's stage order with the
    loads first: the 25-row fused median 0.70-0.80 of the time, the trimmed mean 0.91-0.94,
    Phocas 0.83-0.87, MeaMed 0.81-0.98 (1.2-1.4 in two of eight runs); the grouped kernel at 100
    rows (groups of 25, then the merge) 0.79-0.87, at 200 rows 0.94. At 16 rows the same
    reordering took 1.3-1.4 times as long (16 values fit the registers with Batcher's order),
    at 10 rows the same time."""
    if size < DEPTH_FIRST_FROM:
        stores = [line for r in range(size) for line in store(r)] if store else []
        return [line for r in range(size) for line in load(r)] + network_lines(pairs) + stores
    last_use = {}
    for index, (a, b) in enumerate(pairs.tolist()):
        last_use[a] = last_use[b] = index
    lines: list[str] = []
    loaded: set[int] = set()
    for index, (a, b) in enumerate(pairs.tolist()):
        for r in (a, b):
            if r not in loaded:
                lines += load(r)
                loaded.add(r)
        lines += network_lines(np.array([[a, b]]))
        if store:
            lines += [line for r in (a, b) if last_use[r] == index for line in store(r)]
    for r in range(size):  # rows no compare-exchange touches (padding left out of ``pairs``)
        if r not in loaded:
            lines += load(r) + (store(r) if store else [])
    return lines


def _cache_dir() -> Path:
    return Path(os.environ.get("BYZLEARN_CACHE", Path.home() / ".cache" / "byzlearn")) / "kernels"


def _load_from_file(name: str, source: str) -> Callable | None:
    try:
        folder = _cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.py"
        # bytes, not text: a damaged file that is not UTF-8 is rewritten, not a decode error
        if not path.is_file() or path.read_bytes() != source.encode():
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                fh.write(source.encode())
            os.replace(tmp, path)
    except OSError:
        return None
    spec = importlib.util.spec_from_file_location(f"byzlearn_kernels_{name}", path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.kernel


def compiled_from_file(prefix: str, source: str, salt: bytes = b"") -> Callable | None:
    """The function ``kernel`` of the generated ``source`` loaded from a file of the cache folder
    named by ``prefix`` and a digest of the source and ``salt``, or None where that folder cannot
    be written (Triton, which reads a function's source from its file, needs the file)."""
    digest = hashlib.sha1(source.encode() + salt).hexdigest()[:12]
    return _load_from_file(f"{prefix}_{digest}", source)


def _load_in_memory(source: str) -> Callable:
    namespace: dict = {}
    exec(compile(source.replace("cache=True", "cache=False"), "<byzlearn sortnet>", "exec"),
         namespace)
    return namespace["kernel"]


# Unrolled networks are compiled for these row counts only (n rows use the smallest size >= n,
# padded with +inf). Compile time grows fast with the size (about 12 s at 25 rows per dtype,
# about 5 s at 16, minutes at 64) and every size is compiled for float32 and float64, so there
# are five: 8 (cheap), 10 and 12 (the federations of about ten clients: at n = 9 to 12 the
# 12-row network's 42 compare-exchanges instead of the padded 16-row network's 63 made the four
# coordinate-wise rules 7-16 % faster at d = 1e6; at n = 9 and 10 the 10-row network's 32
# instead of 42 another 4-9 %, in-process A/B at n = 10: median 2.12 -> 1.93 floors, trimmed
# mean 2.46 -> 2.28, MeaMed 3.35 -> 3.15, Phocas 3.23 -> 3.10; same outputs), 16 (Bulyan's
# theta = n - 2f = 15 selected rows at n = 25, f = 5: padding them to 25 cost a third more time)
# and 25 (the n = 25 of the papers' setups, unpadded). Larger n are sorted in groups of 16 or 25
# rows by the same kernels and the groups merged (see :func:`plan`).
SIZES = (8, 10, 12, 16, 25)

# Coordinates per part of a block (:meth:`Plan.part`): the plans of at least PART_WIRES[itemsize]
# buffer rows take each block in parts of HALF_PART coordinates, the others in one part. (The
# merge passes run once per part: with the bitonic passes a whole block of 256 was as fast as or
# faster than runs of 128 and 64 coordinates from 50 to 1000 rows on an AVX-512 core, runs of 16
# and 32 1.5 to 2 times slower; the parts shrink the buffer as well.)
PART_WIRES = {4: 256, 8: 512}
HALF_PART = LANES // 2


def size_for(n: int) -> int | None:
    """The unrolled kernel size used for n rows, or None when n is larger than every size."""
    return next((size for size in SIZES if n <= size), None)


@dataclass(frozen=True)
class Plan:
    """How :func:`kernel` sorts n rows: groups of at most ``size`` rows (``starts``), each in a
    ``slot`` of buffer rows, the ``pad`` rows set to +inf, then the merge passes (``kinds``,
    ``passes``: see :mod:`._bitonic`)."""

    size: int
    starts: np.ndarray
    slot: int
    wires: int
    pad: np.ndarray
    kinds: np.ndarray
    passes: np.ndarray

    @staticmethod
    def blocks(d: int) -> int:
        """Blocks of ``LANES`` coordinates covering d coordinates (the kernel's blocks)."""
        return (d + LANES - 1) // LANES

    def loads(self) -> int:
        """Buffer rows the merge loads (and stores) per block: its cost, roughly."""
        return sum(1 << (int(kind) // 2 + 1) for kind in self.kinds)

    def run(self, X, rows, big, stat, drop, min_k, out, first_bad, blk0, blk1) -> None:
        """The statistic of blocks blk0..blk1-1 of X's rows ``rows`` (see :func:`kernel`)."""
        n = int(self.starts[-1])
        exact_kinds, exact_table = exact_passes(n, read_positions(n, stat, drop))
        kernel(self.size, self.part(X.itemsize))(
            X, rows, big, stat, drop, min_k, out, first_bad, blk0, blk1,
            self.starts, self.slot, self.wires, self.pad, self.kinds, self.passes,
            exact_kinds, exact_table, self.two_lists(stat, drop, min_k), self.ahead,
        )

    def part(self, itemsize: int) -> int:
        """Coordinates the kernel sorts, merges and reduces at a time for values of ``itemsize``
        bytes: :data:`HALF_PART` for the plans of ``PART_WIRES[itemsize]`` buffer rows or more
        (float32 from 256, i.e. from 129 rows; float64 from 512, from 257 rows), else a whole
        block (``LANES``).

        With halves the buffer is half as large (float32, 256 wires: 136 KB instead of 270;
        1024 wires: 544 KB instead of 1.1 MB) while the next group's rows are prefetched into the
        same L2 cache. On a 2-core Xeon (one thread, time over one read, f = n / 5, medians of 7,
        alternated twice, the same outputs), float32, halves against whole blocks: the median
        2.69-2.82 -> 2.48-2.57 at 200 x 1e6 (the trimmed mean 2.91-2.94 -> 2.64-2.67, Phocas
        3.06-3.08 -> 2.83-2.90), 4.60-4.66 -> 4.12-4.25 at 1000 x 1e5; the kernel's group sorts
        alone (no merge) 1.6 -> 1.3 at 200 rows. Parts of 64 were slower at 200 rows (3.40-3.50),
        as were halves at 128 rows (2.19-2.21 against 2.08). Float64, against the commit before
        (ms): halves at 150 and 200 rows 2-5 % slower (200 x 5e5: 208-221 against 205-215), at
        500 and 1000 rows faster (500 x 5e4: 55.9-58.4 against 59.3-69.5; 1000 x 5e4: 145-150
        against 154-163), hence halves from 512 wires there."""
        return HALF_PART if self.wires >= PART_WIRES.get(itemsize, PART_WIRES[8]) else LANES

    @property
    def ahead(self) -> bool:
        """Whether the kernel prefetches each group's next group while it sorts one
        (:data:`PREFETCH_MIN_GROUPS`)."""
        return self.starts.size - 1 >= PREFETCH_MIN_GROUPS

    def two_lists(self, stat: int, drop: int, min_k: int) -> bool:
        """Whether the kernel takes the statistic of its finite blocks from the two sorted
        groups without merging them (:mod:`._two_lists`): on hosts that do not merge in
        registers (:data:`REGISTER_MERGE`)."""
        n = int(self.starts[-1])
        if REGISTER_MERGE or not _two_lists.applies(n, stat, drop) or min_k > n:
            return False
        return self.starts.size == 3 and int(self.starts[1]) == _two_lists.split(n)[0]


def read_positions(n: int, stat: int, drop: int) -> tuple[int, ...] | None:
    """The sorted positions the statistic reads exactly from a block of n finite values, or None
    when it reads them in order (the mean, a window shorter than the trimmed part). The median
    reads its one or two middle positions; the trimmed mean the ends of its range (it clamps to
    them) and sums the positions between, for which the right set of values suffices; MeaMed
    and Phocas (window of m = n - drop values holding the core [drop, m)) their centre's
    positions, the two tails [0, drop] and [m - 1, n) where the window's ends may fall, and sum
    the core as a set; n - 1 is the last finite position, which the statistic checks. (For
    MeaMed and Phocas this saved 2-5 % from n = 50 to 500, in-process A/B, same outputs.)"""
    from byzlearn.aggregators._select import (
        CLOSEST_TO_MEDIAN,
        CLOSEST_TO_TRIMMED,
        MEDIAN,
        TRIMMED,
    )

    middle = ((n - 1) // 2, n // 2)
    if stat == MEDIAN:
        return (*middle, n - 1)
    if stat == TRIMMED and n - 2 * drop >= 1:
        return (drop, n - drop - 1, n - 1)
    m = n - drop
    if stat in (CLOSEST_TO_MEDIAN, CLOSEST_TO_TRIMMED) and drop <= m and m >= 1:
        centre = middle if stat == CLOSEST_TO_MEDIAN else (drop, m - 1)
        tails = set(range(drop + 1)) | set(range(m - 1, n))
        return tuple(sorted(tails | set(centre)))
    return None


def _merge_plan(n: int, size: int) -> Plan:
    """Groups of at most ``size`` rows (sizes differing by at most one) in slots of the next
    power of two, merged by bitonic merge passes on all the slots (:mod:`._bitonic`).

    The passes only need each slot sorted, which the unrolled network does, with +inf after
    the group's values. Passes that cannot move a value are dropped (tracking which buffer rows
    surely hold +inf: :func:`._bitonic.pruned_passes`), and only the unwritten rows that a kept
    pass reads are set to +inf.
    """
    slot, wires, starts, surely_inf, written = _layout(n, size)
    kinds, passes, read = _bitonic.pruned_passes(wires, slot, surely_inf)
    pad = np.flatnonzero(read & ~written).astype(np.int64)
    return Plan(size, starts, slot, wires, pad, kinds, passes)


def _layout(n: int, size: int) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """Groups of at most ``size`` rows in slots: (slot, wires, starts, the wires that surely
    hold +inf before the merge, the wires the group sort writes)."""
    from byzlearn.aggregators._select import next_power_of_two

    slot = next_power_of_two(size)
    groups = -(-n // size)
    counts = [n // groups + (1 if g < n % groups else 0) for g in range(groups)]
    wires = slot * next_power_of_two(groups)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    surely_inf = np.ones(wires, dtype=bool)
    written = np.zeros(wires, dtype=bool)
    for g, count in enumerate(counts):
        surely_inf[g * slot : g * slot + count] = False
        written[g * slot : g * slot + size] = True
    return slot, wires, starts, surely_inf, written


@functools.lru_cache(maxsize=256)
def exact_passes(n: int, positions: tuple[int, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    """The merge passes of :func:`plan`'s n rows for a block of finite values when only
    ``positions`` must hold their exact ranks (:func:`read_positions`): the last merge level
    sorts on only into the blocks holding one of them (:func:`._bitonic.merge_passes`); the
    plan's own passes when ``positions`` is None or n needs no merge."""
    full = plan(n)
    if positions is None or full.kinds.size == 0:
        return full.kinds, full.passes
    slot, wires, _, surely_inf, _ = _layout(n, full.size)
    kinds, table, _ = _bitonic.pruned_passes(wires, slot, surely_inf, positions)
    return kinds, table


@functools.lru_cache(maxsize=64)
def plan(n: int) -> Plan:
    """The plan for n rows: one unrolled network up to 25 rows; beyond, groups of 16 or 25 rows
    (whichever leaves the merge fewer rows to load) merged in the kernel."""
    small = size_for(n)
    if small is not None:
        none = np.empty(0, dtype=np.int64)
        starts = np.array([0, n], dtype=np.int64)
        table = np.empty((0, _bitonic.PASS_WIRES), dtype=np.int64)
        return Plan(small, starts, small, small, none, none, table)
    return min((_merge_plan(n, size) for size in (16, 25)), key=Plan.loads)


@functools.cache
def kernel(size: int, part: int = LANES) -> Callable:
    """The compiled (single-threaded) kernel for groups of up to ``size`` rows, blocks taken in
    parts of ``part`` coordinates."""
    source = _source(size, unrolled_pairs(size), part)
    select = sys.modules["byzlearn.aggregators._select"]
    helpers = (select, _bitonic, _branchfree, _two_lists, _simd)
    return compiled(f"sortnet_{size}_{part}_v{_GENERATOR_VERSION}", source, helpers)


def compiled(prefix: str, source: str, helpers: tuple) -> Callable:
    """The function ``kernel`` of the generated ``source``, compiled through a file in the cache
    folder (numba's disk cache then keeps its machine code between processes), or in memory
    where that folder cannot be written. numba's disk cache checks only the kernel's own file,
    not the functions it calls: the file name holds a digest of the source and of the modules
    ``helpers`` it calls into, so a changed helper never runs stale code."""
    code = b"".join(Path(str(m.__file__)).read_bytes() for m in helpers)
    return compiled_from_file(prefix, source, code) or _load_in_memory(source)
