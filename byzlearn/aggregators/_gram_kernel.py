"""The CPU Gram pass as numba kernels: centre, multiply and accumulate, one read of the data.

For a block of coordinates ``j0:j1`` and a set of *active* rows, the kernels return the centred
Gram statistics of the block: ``C C^T`` (C the active rows minus the centre ``m``), ``C m`` and
``|m|^2``, in float64 (the caller lays them out as the (n + 1) x (n + 1) Gram matrix of
``[X - 1 m^T; m]``, rows outside the active set being zero). The centre of each chunk is a given
vector (a central input row, or a centre passed by the rule), or the mean of the rows whose chunk
is finite; when a given centre is not finite on a chunk (a central row missing values there), that
chunk falls back to the mean. Any per-chunk centre gives valid statistics: the centre of the whole
matrix is then the vector made of the chunk centres.

Small n (:func:`gram_blocks`): for each pass over ``tile_lanes(rows, nbytes)`` coordinates (two
chunks of ``LANES``; four from 28 rows on and for an input that fits in the last-level cache,
off AMD's Zen cores) the kernel

1. writes the centred active rows, chunk by chunk (each chunk centred on its own ``m``), into a
   small buffer ``C`` (padded with zero rows to a multiple of 3, of 4 from ``BIG_TILE_ROWS`` rows
   on, AVX-512 hosts only: :func:`padded_rows`; 64-byte aligned; it stays in the
   L1/L2 cache), adding ``c_i . m`` and ``|m|^2`` on the way, and flags the rows holding a
   non-finite value in the block (their buffer rows are zeroed: they are missing, the caller
   marks them bad);
2. adds the products of 3 x 3 tiles of rows of ``C`` (4 x 4 from ``BIG_TILE_ROWS`` buffer rows
   on) to the Gram matrix: only tiles on or above the diagonal, and of the diagonal tiles only
   their upper triangle (6 products of 9, 10 of 16), so about half the products of a general
   matrix product; a last group of one or two rows (3 x 3 tiles) is multiplied by 3 x 1 or
   3 x 2 tiles, never with the padding rows; meanwhile it prefetches
   the next pass's coordinates of every active row, so that the memory read overlaps the
   products (it does at 25 rows; from about 50 rows on, where the tiles load from L2, hardly:
   see docs/aggregators.md).

Up to ``FUSED_MAX_ROWS`` buffer rows and on a given centre, steps 1 and 2 are one: the tiles
load the rows themselves and subtract the centre in registers (:func:`_add_centred_tiles`; on
cores whose vector additions issue on pipes of their own (AMD Zen), up to
``LONG_SPAN_MAX_ROWS`` active rows in whole groups of 3, each tile runs over a span of
``FUSED_SPAN`` coordinates and no software prefetch is issued, :func:`_add_centred_long_tiles`),
a span with a non-finite value or an overflowing product going through the buffer as above (a
long span in spans of the buffer's width, up to its end). On a given centre, either way, the
later spans of a block leave out the rows flagged so far (the caller reads none of their
entries): NaN rows, an attack, cost no products after the span that finds them
(:func:`_buffer_span_of`).

A 3 x 3 tile keeps nine accumulators and six rows' values in registers and its inner loop
vectorises across coordinates (512-bit vectors where the CPU has them, see :mod:`._simd`); the
sums of a pass are in the input precision (256 to 1024 coordinates; a long span's tiles sum 512
at a time), then added in float64.

Large n (:func:`centre_block`): the centred block is written to a buffer and its Gram matrix is a
BLAS ``syrk`` (numpy's ``C @ C.T``), which runs at close to the machine's GEMM rate once rows are
many enough for the tiles to lose their advantage (``BLAS_MIN_ROWS``).

Threads: the kernels release the GIL, so :func:`gram_blocks` runs blocks on ``threads`` Python
threads at once; each block has its own partial matrix (summed in a fixed order by the caller, so
the result does not depend on the number of threads). A partial holding a non-finite value (a
product that overflowed the input precision) is redone by the caller's float64 slow path.

Indexing note: numba wraps negative indices, and when it cannot prove an index is non-negative
the vectoriser emits gathers. The loops below therefore index 1-D row views from 0.

Literal arguments: numba compiles a compiled callee once per argument type, and a constant
argument (``0``, ``True``, or a variable that starts as one before a loop changes it) has its own
literal type, so a kernel called with ``0`` by one caller and a run-time ``j0`` by another was
compiled twice, with all its callees (and a ``Literal[int](0)`` variable that a loop later widens
to ``int64`` compiles the callee for both). Calls between kernels therefore pass run-time values
(``np.int64(0)``, ``np.bool_(True)``) where a literal would stand: a first call of Krum on a cold
cache compiled 132 functions, 85 after this and the plain-loop selection of
:mod:`._gram_finish`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from byzlearn.aggregators._threads import in_parallel

try:  # numba is a dependency, but keep a working fallback if it cannot load
    from numba import njit

    from byzlearn.aggregators._simd import prefetch, prefetch_run, wide
except ImportError:  # pragma: no cover
    njit = None  # type: ignore[assignment]

from byzlearn.aggregators._simd import (
    SUM_MIN_COLUMNS_PER_THREAD,
    in_last_level_cache,
    separate_add_pipes,
    sum_plan,
    vector_bytes,
)

LANES = 256
TILE = 3
# Whether the host is one of AMD's Zen cores (vector additions on pipes of their own), and
# whether it has AVX-512 (32 vector registers of 64 bytes): each asked of llvmlite once (about
# 20 and 75 us a query), for the choices below that depend on them.
_ZEN = separate_add_pipes()
_AVX512 = vector_bytes() >= 64
# Coordinates per pass of the tiles: two chunks (512) below 28 buffer rows, four (1024) from 28 rows
# on (off AMD's Zen cores: ``_WIDE_WHEN_MANY``), where the buffer is in L2 anyway (1.5 MB at 383
# rows; beyond, ``BAND_BYTES``). Longer passes amortise each tile's reductions (float32 sums of
# 512 or 1024 products, then added in float64).
# Each row is centred in one loop per pass (its chunks' centres side by side). Measured in the Gram
# pass (medoid, f = n/5, d = 1e6, one AVX-512 core, A/B in one process, min of 5-7): on a host
# with a 48 KB L1 and a 2 MB L2, 512 -> 1024: 34 rows 22.5 -> 24.3 ms, 50 rows 40.5 -> 42.2, 64 rows
# 58.3 -> 57.0, 75 rows 74.7 -> 70.1, 100 rows 122 -> 111, 200 rows 419 -> 393, 340 rows 1220
# -> 1169 (on a hot buffer of 102 rows the 3 x 3 tiles ran at 56 G useful multiply-adds/s at
# 512, 64 G at 1024); 256 -> 512 from 19 to 32 rows, which earlier took one chunk to keep the
# buffer in a 32 KB L1: 20 rows 12.2 -> 11.3 ms, 25 rows 15.0 -> 13.8 (d = 1e7: 145 -> 139),
# 30 rows 19.9 -> 18.2 (the earlier host measured 1.61 -> 1.65 reads of X at 25 rows; 4-12 %
# against 2.5 %, so one rule for both). Earlier, on that host, 256 -> 512: 5 rows 2.31 -> 1.95
# reads of X, 10 rows 1.99 -> 1.84, 16 rows 1.76 -> 1.66; against one chunk of 256 and an
# unaligned buffer: 50 rows 2.2-2.6 -> 2.1-2.2, 100 rows 4.3-4.5 -> 3.2-3.4, 200 rows 8.9-9.2
# -> 6.6-7.2. Later (2026-12-06, the same kind of Xeon, after the tiles began to prefetch the
# next pass), 512 -> 1024 from 28 buffer rows, where the tiles read the rows centred into the
# buffer (the fused tiles below take up to ``FUSED_MAX_ROWS``): end to end, time / X.sum() in
# turns, one thread, d = 1e6, the two settings in separate processes alternated three times
# (medians of three turns each): Krum 30 rows 3.63-3.89 -> 3.40-3.44, 40 rows 3.73-3.87 ->
# 3.38-3.61, 50 rows 3.67-3.86 -> 3.22-3.75, 60 rows 3.39-3.95 -> 3.12-3.56; the geometric
# median 30 rows 4.79-4.90 -> 4.38-4.40, 60 rows 4.78-4.86 -> 4.34-4.58; Multi-Krum 3 % (its
# weighted sum unchanged); d = 4e6, 50 rows, Krum 2.56-2.64 -> 2.36-2.45 (the same outputs; the
# geometric median within 2.4e-7). Up to 27 rows the fused tiles stay at 512 (25 x 1e7: Krum
# 1.55 -> 1.71 at 1024, in one process); 2048 lost from 100 rows on (200 rows: Krum 5.73 ->
# 7.28); the fused tiles up to 51 rows instead of 27 were no faster here (28-52 rows, three
# alternations: Krum 3.12-3.81 against 3.15-4.12).
# Below 28 buffer rows, an input that fits in the last-level cache takes 1024 too (off AMD's Zen
# cores, where it was not measured; ``tile_lanes``' ``nbytes``): there the tiles compute rather than
# wait for memory, and longer passes halve what the tiles pay once per pass (reductions, float64
# additions, loop set-up); from memory 1024 loses (10 x 1e7: Krum 1.51-1.69 -> 1.70-1.88 floors;
# 25 x 1e7 above), so larger inputs keep 512. A block's Gram statistics came out the same bits at
# either width (25 x 4810, centred on a row and on chunk means); the blocks' bounds, a multiple of
# the width, may move (the geometric median then within a unit of float32). On the same Xeon (300 MB
# L3), one thread, the two widths alternated three times in one process, time / X.sum(), Krum,
# Multi-Krum, the geometric median: 5 x 1e6 2.97-3.01 -> 2.57-2.69, 3.52-3.63 -> 3.16-3.29,
# 3.79-4.07 -> 3.66-3.73; 10 x 1e6 2.31-2.33 -> 2.25-2.28, 2.95-3.01 -> 2.86-3.00,
# 3.32-3.38 -> 3.23-3.36; 16 x 1e6 2.35-2.38 -> 2.30-2.31; 25 x 1e6 2.85-2.89 -> 2.66-2.67,
# 3.59-3.66 -> 3.42-3.50, 3.86-3.93 -> 3.68-3.86; 10 x 2e5 4.22-4.42 -> 4.10-4.11; an MLP's
# 25 x 4810 gradients (the small path's buffer), Krum 148-151 -> 142-148 us, Multi-Krum
# 158-159 -> 151-156 us; 25 x 2.5e6 (250 MB) 2.60-2.72 -> 2.54-2.55; 25 x 3.5e6 (350 MB, beyond the
# L3) 2.22-2.25 either way.
_TILE_LANES_WIDE = 2 * LANES
_TILE_LANES_WIDEST = 4 * LANES
_MANY_ROWS = 28
# Alignment of the tile buffer: a 512-bit load that straddles two cache lines costs two, and
# numba's own allocations are only 32-byte aligned. With the buffer 64-byte aligned the tiles
# run at 54 G multiply-adds/s instead of 38 G on a hot 99-row buffer (sgemm: about 83 G); in the
# Gram pass: 4.7 -> 4.1 floors at 100 rows, 8.9 -> 7.4 at 200.
_ALIGN = 64
# From this many active rows on, the products go to BLAS (syrk) instead of the tiles. First 384
# (measured with 3 x 3 tiles, one core, in reads of X: tiles 9.0 against syrk 10.9 at 256 rows,
# 11.5 against 11.8 at 350, 17.0 against 15.4 at 500). Since 2026-12-06 the 4 x 4 tiles run in
# bands (``BAND_BYTES``) beyond 384 rows; Krum at d = 1e5, one thread, the syrk and the tiles
# alternated three times in one process (ms): 384 rows 111.0-113.5 against 112.2-113.8, 400
# rows 138.8-139.9 against 118.9-122.8, 450 rows 154.6-157.7 against 150.3-152.5, 500 rows
# 190.9-198.5 against 182.1-187.6, 550 rows 224.6-226.9 against 218.1-224.2, but 600 rows
# 260.7-270.5 against 276.2-286.7 and 700 rows 340.4-358.3 against 390.8-401.4 (OpenBLAS's
# syrk gains with the row count: 77 G useful multiply-adds/s at 500 x 8192, 90 G at 700).
BLAS_MIN_ROWS = 576 if _AVX512 else 384  # measured on AVX-512 only: others keep 384
# The 4 x 4 tiles take the buffer's rows in bands of this many bytes (384 rows of 1024 float32
# values): each band's rows against every row up to them, so that the rows a tile streams stay in
# the 2 MB L2 cache whatever the row count. Fewer rows than a band: one band, the loop as before. On
# hot buffers of 1024 coordinates, in bands of 256 rows against none (useful multiply-adds/s): 700
# rows 87 against 58 G, 1000 rows 89 against 42 G (the syrk: 90 and 91 G; 77 G at 500 rows, where
# the tiles took 93-95 G either way); bands of 256 rows also at 260-383 rows were 0-5 % slower end
# to end (Krum 300 x 2e5: 131-136 -> 138-141 ms), so the band holds all rows up to the old BLAS
# threshold.
BAND_BYTES = 3 << 19
# The tiles prefetch the next pass's coordinates of every row while the buffer holds at most this
# many bytes (256 rows of 1024 float32 values): beyond, the buffer and the next pass no longer
# both fit the 2 MB L2 and the prefetched lines are evicted before use. Krum, one thread, with
# the prefetch against without (separate processes alternated twice, ms; 2026-12-06, AVX-512
# Xeon): 200 x 1e6 248.0-248.7 against 269.4-277.2, 260 x 3e5 150.3-152.7 against 150.9-151.6,
# 300 x 2e5 133.9-134.9 against 130.4-134.2, 380 x 1e5 108.7-110.1 against 103.2-104.1, 400 x
# 1e5 116.1-119.8 against 111.4, 500 x 1e5 179.5-181.3 against 172.6, 500 x 6e5 (1.2 GB, from
# memory) 1105-1109 against 1074-1090.
PREFETCH_MAX_BUFFER_BYTES = 1 << 20 if _AVX512 else 1 << 62  # (AVX-512 only, as above)
# Up to this many buffer rows, the Gram pass centres the rows in the tiles' registers
# (:func:`_add_centred_tiles`) instead of writing them centred into the buffer and reading them
# back: 7 loads, 6 subtractions and 9 multiply-adds per step of a 3 x 3 tile instead of 6 loads
# and 9, but no centring loop (a load, a subtraction, a store and two multiply-adds per value).
# Gram pass on a central row, one thread, float32, A/B in one process against X.sum() in
# turns on a 2-core AMD EPYC (Zen 3, AVX2; its subtractions issue beside the multiply-adds):
# d = 1e6, 5 rows 1.86 -> 1.43 floors, 16 rows 2.69 -> 2.18, 20 rows 2.68 -> 2.59, 25 rows
# 2.78 -> 2.70, but 30 rows 2.98 -> 3.12 and 40 rows 3.30 -> 3.78 (each tile then reads rows
# 4 MB apart, one page each, where the buffer is a few pages); d = 1e7: 10 rows 2.12 -> 1.68,
# 25 rows 2.77 -> 2.65. On an AVX-512 Xeon, where the subtractions take the multiply-adds'
# ports (15 instead of 9 operations per step of a tile), it is faster too (the same A/B,
# spans of 512, the centre row not among the active rows; the same bits): d = 1e6, 10 rows
# 1.82-1.94 -> 1.56-1.77 floors, 13 rows 2.00-2.40 -> 1.69-1.87, 16 rows 2.32-2.47 ->
# 2.01-2.14, 20 rows 3.21-3.39 -> 2.48-2.73, 25 rows 2.06-2.15 -> 1.92-2.05, 28 rows 2.10-2.19
# -> 1.98-2.00; d = 1e7, 25 rows 1.64-1.71 -> 1.49-1.60, 13 and 16 rows the same (1.31-1.46
# against 1.29-1.41), 10 rows 1.24-1.30 -> 1.32-1.38. So every host centres in registers
# (``FUSED``); the long spans below only on cores with separate addition pipes
# (:func:`._simd.separate_add_pipes`, ``FUSED_LONG``): on the Xeon they were slower from
# memory (d = 1e7: 10 rows 1.32-1.36 -> 1.35-1.41, 13 rows 1.29-1.33 -> 1.49-1.77, 16 rows
# 1.30-1.41 -> 1.72-1.79 floors).
FUSED_MAX_ROWS = 27
# From BIG_TILE_ROWS buffer rows on, 4 x 4 tiles (16 accumulators, 8 loads per step) instead of
# 3 x 3 (9 and 6): the tiles then read a quarter less from the L2 cache, where the next chunk of
# the rows streams in meanwhile. First from 128 rows (Gram pass, A/B in one process, one AVX-512
# core with a 2 MB L2, d = 1e6, 1024 coordinates per pass, 3 x 3 -> 4 x 4: 100 rows 104 -> 103
# ms, 150 rows 215 -> 208, 200 rows 376 -> 342, 300 rows 841 -> 770, 380 rows 1425 -> 1279; 512
# per pass: 113 -> 107, 234 -> 225, 399 -> 373, 884 -> 815, 1461 -> 1346). Later (2026-12-06,
# the same kind of Xeon, 48 KB L1, 2 MB L2), from the first buffer row past the fused tiles on,
# where the 32 vector registers of AVX-512 hold the 16 accumulators and 5 loaded rows: on a hot
# 64-byte aligned buffer of 1024 coordinates the 3 x 3 tiles ran at 71-76 G useful
# multiply-adds/s from 48 to 128 rows, the 4 x 4 at 99-103 G (torch's sgemm 110-113 G); end
# to end (`benchmarks/aggregators.py --scale-n`, both settings in turns, twice, time / (Gram
# bound + floor)): Krum 32 rows 1.56-1.60 -> 1.47-1.51, 50 rows 1.49 -> 1.45-1.46, 64 rows
# 1.37-1.40 -> 1.32-1.33, 100 rows 1.35-1.38 -> 1.23-1.24; Multi-Krum and the geometric median
# 2-9 % likewise. Hosts with 16 vector registers (AVX2), where 21 live vectors spill, keep
# 3 x 3 at every row count the tiles take (up to ``BLAS_MIN_ROWS``): until 2026-12-08 they took
# 4 x 4 from 128 rows, unmeasured there; on a 2-core AMD EPYC (Zen 3, AVX2, 512 KB L2), Krum,
# one thread, 4 x 4 against 3 x 3 in separate processes alternated twice (ms, medians of five):
# 132 x 1e6 466-580 against 335-405, 200 x 1e6 1131-1284 against 807-909, 300 x 3e5 791-950
# against 530-711 (hot buffers: see docs/performance.md, 2026-12-08).
BIG_TILE = 4
BIG_TILE_ROWS = FUSED_MAX_ROWS + 1 if _AVX512 else 1 << 62
# ``_gram_block``'s ``mode``: the buffer, fused spans of the buffer's width, or long ones too.
BUFFER, FUSED, FUSED_LONG = 0, 1, 2
FUSED_CENTRING = FUSED_LONG if _ZEN else FUSED
# Up to LONG_SPAN_MAX_ROWS active rows, in whole groups of 3, the tiles that centre in
# registers take spans of FUSED_SPAN coordinates without software prefetch
# (:func:`_add_centred_long_tiles`): each tile reads its rows in runs of 16 KB, which the
# hardware prefetchers follow, and sums FUSED_TERMS coordinates at a time in the input precision
# (the buffer path's float32 sums: 512 coordinates), adding those sums in float64. Other row
# counts keep spans of 512 with the next span prefetched by software during the tiles
# (:func:`_add_centred_tiles`). `_gram_block` on a central row, float32, d = 1e6 from memory,
# one thread, the commit before and this one alternated twice in one process on a 2-core AMD
# EPYC (Zen 3), ms per 1e6 coordinates: 9 active rows 3.26 -> 2.80-2.83, 12 rows 4.32-4.33 ->
# 3.99-4.06, 15 rows 6.52 -> 5.71-5.73; Krum on 10 x 1e7, end to end: 43.0-43.5 -> 39.0-39.7
# ms. Long spans were slower from 16 rows (Krum at 17 x 1e7 78-84 -> 86-89 ms, 25 x 1e7
# 137-140 -> 143-155; spans of 1024 or 2048 at 25 rows 151-156) and, with their one- or
# two-row tiles, at 13 and 14 rows (Krum at 14 x 1e7 62.8-63.6 -> 67.0-69.6 ms); long spans
# whose float32 sums ran over the whole span (512 terms a lane, eight times the buffer
# path's) took 25 rows 13.7 -> 12.4 ms per 1e6 coordinates in the pass alone, not taken.
FUSED_SPAN = 4096
LONG_SPAN_MAX_ROWS = 15
FUSED_TERMS = 512
# Coordinates per chunk of the row statistics' accumulators.
_SUM_LANES = 256
# On AMD's Zen cores the row statistics take one chunk per pass and the largest magnitude as an
# unsigned integer maximum of the bit patterns (:func:`_row_stats_by_chunk`; the same bits):
# one read of 25 x 1e7 float32 values, one thread, in one process against X.sum() in turns on a
# 2-core EPYC (Zen 3): 2.01-2.02 -> 1.37-1.39 floors, 2.55-2.56 -> 1.98-2.02 with SignGuard's
# sign counts at a tenth of the coordinates. There the four-chunk pass with the float maximum
# (:func:`_row_stats`, measured faster on an AVX-512 Xeon) kept the maximum's compare and
# select; one chunk per pass with that select took 2.8 floors, four with the integer maximum
# 2.1-2.2. Elsewhere (not measured on this change) the four-chunk pass stays.
ROW_STATS_BY_CHUNK = _ZEN
# Float32 values per cache line: the prefetch stride (float64 rows prefetch every other line
# twice, harmlessly).
_LINE = 16
# Reassociation (vectorised reductions) and contraction (FMA) only: the other fast-math flags
# let the compiler assume there are no NaN/Inf, and a block's non-finite values must be seen.
_FLAGS = {"reassoc", "contract"}


def padded_rows(n: int) -> int:
    """Rows of the tile buffer: n active rows, zero rows up to a multiple of 3, or of 4 where
    that reaches ``BIG_TILE_ROWS`` (the kernel then takes 4 x 4 tiles)."""
    rows = max(TILE, -(-n // TILE) * TILE)
    return rows if rows < BIG_TILE_ROWS else -(-n // BIG_TILE) * BIG_TILE


if njit is not None:
    _padded_rows = njit(cache=True, inline="always")(padded_rows)


def tile_lanes(rows: int, nbytes: int | None = None) -> int:
    """Coordinates per pass of the tiles for this many buffer rows (a multiple of LANES), on an
    input of ``nbytes`` bytes where given: off AMD's Zen cores the widest from ``_MANY_ROWS``
    buffer rows on, or for an input in the last-level cache (see ``_TILE_LANES_WIDE``)."""
    if (rows >= _MANY_ROWS and _WIDE_WHEN_MANY) or (nbytes is not None and _wide_in_cache(nbytes)):
        return _TILE_LANES_WIDEST
    return _TILE_LANES_WIDE


# Whether ``_MANY_ROWS`` buffer rows or more take the widest passes on this host: not on AMD's
# Zen cores, whose 512 KB L2 cache holds a buffer of 1024 float32 coordinates only up to 128
# rows (and 512 were faster from 50 rows on too). The tiles alone on a hot 64-byte aligned
# buffer, one thread, a 2-core EPYC (Zen 3), useful multiply-adds/s: 1024 coordinates 24-25 G
# from 64 to 380 rows, 512 coordinates 27-32 G from 64 to 300 rows (torch's sgemm 25-35 G);
# end to end, Krum, the two widths alternated four times in one process (ms, min-median):
# 50 x 1e6 59-60 -> 53-55, 100 x 1e6 187-191 -> 174-182, 150 x 1e6 414-416 -> 396-398, 200 x
# 1e6 740-845 -> 760-769; a second run 150 x 1e6 436-457 -> 401-441, 200 x 1e6 681-754 ->
# 680-713, the geometric median 2-4 % likewise, 30 rows the same (2026-12-08).
_WIDE_WHEN_MANY = not _ZEN


# Whether an input in the last-level cache takes the widest passes on this host (not on AMD's
# Zen cores; see ``_TILE_LANES_WIDE``).
_WIDE_WHEN_CACHED = not _ZEN


def _wide_in_cache(nbytes: int) -> bool:
    """Whether fewer than ``_MANY_ROWS`` buffer rows take the widest passes on an input of
    ``nbytes`` bytes: where it fits in the last-level cache (:data:`_WIDE_WHEN_CACHED`)."""
    return _WIDE_WHEN_CACHED and in_last_level_cache(nbytes) is True


def aligned_zeros(shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """A C-contiguous zero array whose data starts on a ``_ALIGN``-byte boundary."""
    itemsize = np.dtype(dtype).itemsize
    count = shape[0] * shape[1]
    raw = np.zeros(count + _ALIGN // itemsize, dtype=dtype)
    skip = (-raw.ctypes.data % _ALIGN) // itemsize
    return raw[skip : skip + count].reshape(shape)


if njit is not None:

    @njit(boundscheck=False, error_model="numpy", cache=True, nogil=True, inline="always")
    def _prefetch_share(Xf, rows, d, next0, lines, share, t, c):  # pragma: no cover (compiled)
        """Prefetch ``share`` cache lines of the next pass (``lines`` per active row, from
        coordinate ``next0`` on), from line c of active row t on, as runs of consecutive lines
        of one row, one prefetch per step of a counted loop; returns the next (t, c). The tile
        kernels call it once per tile, so that the next pass streams in while they multiply."""
        while share > 0 and t < rows.shape[0]:
            take = min(share, lines - c)
            base = rows[t] * d + next0 + c * _LINE
            for q in range(take):
                prefetch(Xf, base + q * _LINE)
            share -= take
            c += take
            if c == lines:
                c = 0
                t += 1
        return t, c

    @njit(fastmath=_FLAGS, boundscheck=False, error_model="numpy", cache=True, nogil=True,
          inline="always")
    def _add_short_tile(C, I, J, q, acc):  # pragma: no cover (compiled)
        """:func:`_add_tiles`' tile of rows I:I+3 of C against a last group J holding ``q`` (1
        or 2) rows: 3 x q products (on the diagonal, I == J, the q rows' upper triangle), none
        with the padding rows."""
        zero = C.dtype.type(0)
        x0 = C[I]
        y0 = C[J]
        y1 = C[J + 1]
        if I == J and q == 1:
            b00 = zero
            for k in range(C.shape[1]):
                b00 += x0[k] * x0[k]
            acc[I, I] += b00
        elif I == J:
            b00 = b01 = b11 = zero
            for k in range(C.shape[1]):
                u0 = x0[k]
                u1 = y1[k]
                b00 += u0 * u0
                b01 += u0 * u1
                b11 += u1 * u1
            acc[I, I] += b00
            acc[I, I + 1] += b01
            acc[I + 1, I + 1] += b11
        elif q == 1:
            x1 = C[I + 1]
            x2 = C[I + 2]
            a00 = a10 = a20 = zero
            for k in range(C.shape[1]):
                v0 = y0[k]
                a00 += x0[k] * v0
                a10 += x1[k] * v0
                a20 += x2[k] * v0
            acc[I, J] += a00
            acc[I + 1, J] += a10
            acc[I + 2, J] += a20
        else:
            x1 = C[I + 1]
            x2 = C[I + 2]
            a00 = a01 = a10 = a11 = a20 = a21 = zero
            for k in range(C.shape[1]):
                u0 = x0[k]
                u1 = x1[k]
                u2 = x2[k]
                v0 = y0[k]
                v1 = y1[k]
                a00 += u0 * v0
                a01 += u0 * v1
                a10 += u1 * v0
                a11 += u1 * v1
                a20 += u2 * v0
                a21 += u2 * v1
            acc[I, J] += a00
            acc[I, J + 1] += a01
            acc[I + 1, J] += a10
            acc[I + 1, J + 1] += a11
            acc[I + 2, J] += a20
            acc[I + 2, J + 1] += a21

    @njit(fastmath=_FLAGS, boundscheck=False, error_model="numpy", cache=True, nogil=True)
    def _add_tiles(C, acc, Xf, rows, next0, d, lines):  # pragma: no cover (compiled)
        """acc[I:I+3, J:J+3] += C[I:I+3] C[J:J+3]^T for the 3 x 3 tiles with J >= I (on the
        diagonal tiles, their upper triangle only: the caller reads the upper triangle).

        Meanwhile, prefetch ``lines`` cache lines of every active row from coordinate ``next0``
        on (the next chunk), spread over the tiles.
        """
        wide()
        R = C.shape[0]
        zero = C.dtype.type(0)
        total = rows.shape[0] * lines
        tiles = (R // 3) * (R // 3 + 1) // 2
        per_tile = (total + tiles - 1) // tiles
        # the row and line of the next prefetch. Each tile issues its share as runs of
        # consecutive lines of one row (_prefetch_share): against one prefetch per step of a
        # loop that tested the count and the row's end at each line (the same prefetches in
        # the same order), the Gram pass at 25 x 1e7 float32, one thread, took 100-104 instead
        # of 111-115 ms (89-91 instead of 105-106 on data in the L2 cache; gram_parts.py times
        # the parts). That per-line loop had to be written out in each tile kernel (as a numba
        # call, even inline="always", it cost 4-12 ms of a 15 ms pass at 25 rows); the counted
        # loop as a helper gives the same bits and time as written out (A/B in one process on
        # a Zen 3 core, 10 to 128 rows of 1e6 and 25 of 1e7, within 1 %).
        t = c = 0
        na = rows.shape[0]  # the rows from na on are padding: their products are not read
        for I in range(0, R, 3):
            for J in range(I, R, 3):
                t, c = _prefetch_share(Xf, rows, d, next0, lines, per_tile, t, c)
                if na < J + 3:  # the last group holds one or two rows: none with the padding
                    _add_short_tile(C, I, J, na - J, acc)
                    continue
                if I == J:  # a diagonal tile: its upper triangle only (6 products, not 9)
                    b00 = b01 = b02 = b11 = b12 = b22 = zero
                    x0 = C[I]
                    x1 = C[I + 1]
                    x2 = C[I + 2]
                    for k in range(C.shape[1]):
                        u0 = x0[k]
                        u1 = x1[k]
                        u2 = x2[k]
                        b00 += u0 * u0
                        b01 += u0 * u1
                        b02 += u0 * u2
                        b11 += u1 * u1
                        b12 += u1 * u2
                        b22 += u2 * u2
                    acc[I, J] += b00
                    acc[I, J + 1] += b01
                    acc[I, J + 2] += b02
                    acc[I + 1, J + 1] += b11
                    acc[I + 1, J + 2] += b12
                    acc[I + 2, J + 2] += b22
                    continue
                a00 = a01 = a02 = a10 = a11 = a12 = a20 = a21 = a22 = zero
                x0 = C[I]
                x1 = C[I + 1]
                x2 = C[I + 2]
                y0 = C[J]
                y1 = C[J + 1]
                y2 = C[J + 2]
                for k in range(C.shape[1]):
                    u0 = x0[k]
                    u1 = x1[k]
                    u2 = x2[k]
                    v0 = y0[k]
                    v1 = y1[k]
                    v2 = y2[k]
                    a00 += u0 * v0
                    a01 += u0 * v1
                    a02 += u0 * v2
                    a10 += u1 * v0
                    a11 += u1 * v1
                    a12 += u1 * v2
                    a20 += u2 * v0
                    a21 += u2 * v1
                    a22 += u2 * v2
                acc[I, J] += a00
                acc[I, J + 1] += a01
                acc[I, J + 2] += a02
                acc[I + 1, J] += a10
                acc[I + 1, J + 1] += a11
                acc[I + 1, J + 2] += a12
                acc[I + 2, J] += a20
                acc[I + 2, J + 1] += a21
                acc[I + 2, J + 2] += a22

    @njit(boundscheck=False, cache=True, nogil=True, inline="always")
    def _row_or_first(rows, t):  # pragma: no cover (compiled)
        """The input row of buffer row t: rows[t], or rows[0] for the padding rows."""
        return rows[t] if t < rows.shape[0] else rows[0]

    @njit(fastmath=_FLAGS, boundscheck=False, error_model="numpy", cache=True, nogil=True,
          inline="always")
    def _add_centred_short_diagonal(x0, x1, mm, w, p, I, part, dpart):
        # pragma: no cover (compiled)
        """:func:`_add_centred_tiles`' diagonal tile of a last group holding ``p`` (1 or 2)
        rows x0 (x1): their products and dots only, none with the padding rows, added to part
        and dpart."""
        zero = x0.dtype.type(0)
        if p == 1:
            b00 = e0 = zero
            for k in range(w):
                mk = mm[k]
                u0 = x0[k] - mk
                b00 += u0 * u0
                e0 += u0 * mk
            part[I, I] += b00
            dpart[I] += e0
            return
        b00 = b01 = b11 = e0 = e1 = zero
        for k in range(w):
            mk = mm[k]
            u0 = x0[k] - mk
            u1 = x1[k] - mk
            b00 += u0 * u0
            b01 += u0 * u1
            b11 += u1 * u1
            e0 += u0 * mk
            e1 += u1 * mk
        part[I, I] += b00
        part[I, I + 1] += b01
        part[I + 1, I + 1] += b11
        dpart[I] += e0
        dpart[I + 1] += e1

    @njit(fastmath=_FLAGS, boundscheck=False, error_model="numpy", cache=True, nogil=True,
          inline="always")
    def _add_centred_short_tile(x0, x1, x2, y0, y1, mm, w, q, I, J, part):
        # pragma: no cover (compiled)
        """:func:`_add_centred_tiles`' tile of the three rows x0, x1, x2 against a last group
        holding ``q`` (1 or 2) rows y0 (y1): 3 x q products, none with the padding rows, added
        to part."""
        zero = x0.dtype.type(0)
        if q == 1:
            a00 = a10 = a20 = zero
            for k in range(w):
                mk = mm[k]
                v0 = y0[k] - mk
                a00 += (x0[k] - mk) * v0
                a10 += (x1[k] - mk) * v0
                a20 += (x2[k] - mk) * v0
            part[I, J] += a00
            part[I + 1, J] += a10
            part[I + 2, J] += a20
            return
        a00 = a01 = a10 = a11 = a20 = a21 = zero
        for k in range(w):
            mk = mm[k]
            u0 = x0[k] - mk
            u1 = x1[k] - mk
            u2 = x2[k] - mk
            v0 = y0[k] - mk
            v1 = y1[k] - mk
            a00 += u0 * v0
            a01 += u0 * v1
            a10 += u1 * v0
            a11 += u1 * v1
            a20 += u2 * v0
            a21 += u2 * v1
        part[I, J] += a00
        part[I, J + 1] += a01
        part[I + 1, J] += a10
        part[I + 1, J + 1] += a11
        part[I + 2, J] += a20
        part[I + 2, J + 1] += a21

    @njit(fastmath=_FLAGS, boundscheck=False, error_model="numpy", cache=True, nogil=True)
    def _add_centred_tiles(X, rows, m, s0, w, R, part, dpart, Xf, next0, d, lines):
        # pragma: no cover (compiled)
        """:func:`_add_tiles` on the rows centred in registers: part[I, J] (float64) = the
        sum, in the input precision, over the span ``s0:s0 + w`` of (x_I - m)(x_J - m) for the
        3 x 3 tiles with J >= I (the upper triangle of the diagonal tiles), and dpart[t] = the
        sum of (x_t - m) m, where x_t = X[rows[t]] (buffer rows t >= len(rows), the padding,
        read row rows[0] in a group's loads; a last group of one or two rows takes shorter
        tiles, which multiply no padding row and add to zeroed entries; the padding's entries
        are not used). The same products as
        centring into the buffer first (the same float subtraction), without writing and
        reading that buffer; the next pass's lines are prefetched as there. The sums' order
        may differ from the buffer path's (the last, partial span; the dots), within
        rounding."""
        wide()
        na = rows.shape[0]
        zero = X.dtype.type(0)
        total = na * lines
        tiles = (R // 3) * (R // 3 + 1) // 2
        per_tile = (total + tiles - 1) // tiles
        t = c = 0
        mm = m[s0 : s0 + w]
        last = na - na % 3  # a last group of one or two rows: its short tiles add to zeros
        if last < na:
            part[:, last:] = 0.0
            dpart[last:] = 0.0
        for I in range(0, R, 3):
            r0 = rows[I]
            r1 = _row_or_first(rows, I + 1)
            r2 = _row_or_first(rows, I + 2)
            x0 = X[r0, s0 : s0 + w]
            x1 = X[r1, s0 : s0 + w]
            x2 = X[r2, s0 : s0 + w]
            for J in range(I, R, 3):
                t, c = _prefetch_share(Xf, rows, d, next0, lines, per_tile, t, c)
                if I == J and na < I + 3:  # the last group, one or two rows: no padding
                    _add_centred_short_diagonal(x0, x1, mm, w, na - I, I, part, dpart)
                    continue
                if I == J:
                    b00 = b01 = b02 = b11 = b12 = b22 = e0 = e1 = e2 = zero
                    for k in range(w):
                        mk = mm[k]
                        u0 = x0[k] - mk
                        u1 = x1[k] - mk
                        u2 = x2[k] - mk
                        b00 += u0 * u0
                        b01 += u0 * u1
                        b02 += u0 * u2
                        b11 += u1 * u1
                        b12 += u1 * u2
                        b22 += u2 * u2
                        e0 += u0 * mk
                        e1 += u1 * mk
                        e2 += u2 * mk
                    part[I, J] = b00
                    part[I, J + 1] = b01
                    part[I, J + 2] = b02
                    part[I + 1, J + 1] = b11
                    part[I + 1, J + 2] = b12
                    part[I + 2, J + 2] = b22
                    dpart[I] = e0
                    dpart[I + 1] = e1
                    dpart[I + 2] = e2
                    continue
                q0 = rows[J]
                q1 = _row_or_first(rows, J + 1)
                q2 = _row_or_first(rows, J + 2)
                y0 = X[q0, s0 : s0 + w]
                y1 = X[q1, s0 : s0 + w]
                y2 = X[q2, s0 : s0 + w]
                if na < J + 3:  # against the last group's one or two rows: no padding
                    _add_centred_short_tile(x0, x1, x2, y0, y1, mm, w, na - J, I, J, part)
                    continue
                a00 = a01 = a02 = a10 = a11 = a12 = a20 = a21 = a22 = zero
                for k in range(w):
                    mk = mm[k]
                    u0 = x0[k] - mk
                    u1 = x1[k] - mk
                    u2 = x2[k] - mk
                    v0 = y0[k] - mk
                    v1 = y1[k] - mk
                    v2 = y2[k] - mk
                    a00 += u0 * v0
                    a01 += u0 * v1
                    a02 += u0 * v2
                    a10 += u1 * v0
                    a11 += u1 * v1
                    a12 += u1 * v2
                    a20 += u2 * v0
                    a21 += u2 * v1
                    a22 += u2 * v2
                part[I, J] = a00
                part[I, J + 1] = a01
                part[I, J + 2] = a02
                part[I + 1, J] = a10
                part[I + 1, J + 1] = a11
                part[I + 1, J + 2] = a12
                part[I + 2, J] = a20
                part[I + 2, J + 1] = a21
                part[I + 2, J + 2] = a22

    @njit(fastmath=_FLAGS, boundscheck=False, error_model="numpy", cache=True, nogil=True)
    def _add_centred_long_tiles(X, rows, m, s0, w, R, part, dpart):
        # pragma: no cover (compiled)
        """:func:`_add_tiles` on the rows centred in registers: part[I, J] (float64, zeroed
        first) = the sum over the span ``s0:s0 + w`` of (x_I - m)(x_J - m) for the 3 x 3 tiles
        with J >= I (the upper triangle of the diagonal tiles), and dpart[t] = the sum of
        (x_t - m) m, where x_t = X[rows[t]] (buffer rows t >= len(rows), the padding, read row
        rows[0] in a group's loads; a last group of one or two rows takes shorter tiles, which
        multiply no padding row; the padding's entries are not used). Each tile runs over the
        whole span, ``FUSED_TERMS`` coordinates at a time: those sums in the input precision
        (as the buffer path's), added in float64. The same products as centring into the
        buffer first (the same float subtraction), without writing and reading that buffer,
        and without software prefetch (see ``FUSED_SPAN``). The sums' order may differ from
        the buffer path's (the float64 additions; the dots), within rounding."""
        wide()
        na = rows.shape[0]
        zero = X.dtype.type(0)
        part[:] = 0.0
        dpart[:] = 0.0
        mm = m[s0 : s0 + w]
        for I in range(0, R, 3):
            x0 = X[rows[I], s0 : s0 + w]
            x1 = X[_row_or_first(rows, I + 1), s0 : s0 + w]
            x2 = X[_row_or_first(rows, I + 2), s0 : s0 + w]
            for J in range(I, R, 3):
                if I == J and na < I + 3:  # the last group, one or two rows: no padding
                    for c0 in range(0, w, FUSED_TERMS):
                        c1 = min(w, c0 + FUSED_TERMS)
                        _add_centred_short_diagonal(x0[c0:c1], x1[c0:c1], mm[c0:c1], c1 - c0,
                                                    na - I, I, part, dpart)
                    continue
                if I == J:  # a diagonal tile: its upper triangle only (6 products, not 9)
                    for c0 in range(0, w, FUSED_TERMS):
                        c1 = min(w, c0 + FUSED_TERMS)
                        u0s = x0[c0:c1]
                        u1s = x1[c0:c1]
                        u2s = x2[c0:c1]
                        ms = mm[c0:c1]
                        b00 = b01 = b02 = b11 = b12 = b22 = e0 = e1 = e2 = zero
                        for k in range(c1 - c0):
                            mk = ms[k]
                            u0 = u0s[k] - mk
                            u1 = u1s[k] - mk
                            u2 = u2s[k] - mk
                            b00 += u0 * u0
                            b01 += u0 * u1
                            b02 += u0 * u2
                            b11 += u1 * u1
                            b12 += u1 * u2
                            b22 += u2 * u2
                            e0 += u0 * mk
                            e1 += u1 * mk
                            e2 += u2 * mk
                        part[I, J] += b00
                        part[I, J + 1] += b01
                        part[I, J + 2] += b02
                        part[I + 1, J + 1] += b11
                        part[I + 1, J + 2] += b12
                        part[I + 2, J + 2] += b22
                        dpart[I] += e0
                        dpart[I + 1] += e1
                        dpart[I + 2] += e2
                    continue
                y0 = X[rows[J], s0 : s0 + w]
                y1 = X[_row_or_first(rows, J + 1), s0 : s0 + w]
                y2 = X[_row_or_first(rows, J + 2), s0 : s0 + w]
                if na < J + 3:  # against the last group's one or two rows: no padding
                    for c0 in range(0, w, FUSED_TERMS):
                        c1 = min(w, c0 + FUSED_TERMS)
                        _add_centred_short_tile(x0[c0:c1], x1[c0:c1], x2[c0:c1], y0[c0:c1],
                                                y1[c0:c1], mm[c0:c1], c1 - c0, na - J, I, J,
                                                part)
                    continue
                for c0 in range(0, w, FUSED_TERMS):
                    c1 = min(w, c0 + FUSED_TERMS)
                    u0s = x0[c0:c1]
                    u1s = x1[c0:c1]
                    u2s = x2[c0:c1]
                    v0s = y0[c0:c1]
                    v1s = y1[c0:c1]
                    v2s = y2[c0:c1]
                    ms = mm[c0:c1]
                    a00 = a01 = a02 = a10 = a11 = a12 = a20 = a21 = a22 = zero
                    for k in range(c1 - c0):
                        mk = ms[k]
                        u0 = u0s[k] - mk
                        u1 = u1s[k] - mk
                        u2 = u2s[k] - mk
                        v0 = v0s[k] - mk
                        v1 = v1s[k] - mk
                        v2 = v2s[k] - mk
                        a00 += u0 * v0
                        a01 += u0 * v1
                        a02 += u0 * v2
                        a10 += u1 * v0
                        a11 += u1 * v1
                        a12 += u1 * v2
                        a20 += u2 * v0
                        a21 += u2 * v1
                        a22 += u2 * v2
                    part[I, J] += a00
                    part[I, J + 1] += a01
                    part[I, J + 2] += a02
                    part[I + 1, J] += a10
                    part[I + 1, J + 1] += a11
                    part[I + 1, J + 2] += a12
                    part[I + 2, J] += a20
                    part[I + 2, J + 1] += a21
                    part[I + 2, J + 2] += a22

    @njit(fastmath=_FLAGS, boundscheck=False, error_model="numpy", cache=True, nogil=True)
    def _add_tiles4(C, acc, Xf, rows, next0, d, lines):  # pragma: no cover (compiled)
        """:func:`_add_tiles` with 4 x 4 tiles, for buffers of ``BIG_TILE_ROWS`` rows or more
        (a multiple of 4): 16 products per 8 loads instead of 9 per 6, so that the tiles draw
        less on the L2 cache while the next chunk streams in. Diagonal tiles: their upper
        triangle only (10 products of 16). The rows go in bands of ``BAND_BYTES``: the tiles of
        rows J0:J1 against every row up to J1, band after band (each tile once, its sums as
        without bands)."""
        wide()
        R = C.shape[0]
        zero = C.dtype.type(0)
        total = rows.shape[0] * lines
        tiles = (R // 4) * (R // 4 + 1) // 2
        per_tile = (total + tiles - 1) // tiles
        t = c = 0  # the row and line of the next prefetch, as in _add_tiles
        band = max(4, BAND_BYTES // (C.shape[1] * C.itemsize) // 4 * 4)
        for J0 in range(0, R, band):  # the rows J0:J1 against every row up to them
            J1 = min(R, J0 + band)
            for I in range(0, J1, 4):
                x0 = C[I]
                x1 = C[I + 1]
                x2 = C[I + 2]
                x3 = C[I + 3]
                for J in range(max(I, J0), J1, 4):
                    t, c = _prefetch_share(Xf, rows, d, next0, lines, per_tile, t, c)
                    if I == J:
                        b00 = b01 = b02 = b03 = b11 = b12 = b13 = b22 = b23 = b33 = zero
                        for k in range(C.shape[1]):
                            u0 = x0[k]
                            u1 = x1[k]
                            u2 = x2[k]
                            u3 = x3[k]
                            b00 += u0 * u0
                            b01 += u0 * u1
                            b02 += u0 * u2
                            b03 += u0 * u3
                            b11 += u1 * u1
                            b12 += u1 * u2
                            b13 += u1 * u3
                            b22 += u2 * u2
                            b23 += u2 * u3
                            b33 += u3 * u3
                        acc[I, J] += b00
                        acc[I, J + 1] += b01
                        acc[I, J + 2] += b02
                        acc[I, J + 3] += b03
                        acc[I + 1, J + 1] += b11
                        acc[I + 1, J + 2] += b12
                        acc[I + 1, J + 3] += b13
                        acc[I + 2, J + 2] += b22
                        acc[I + 2, J + 3] += b23
                        acc[I + 3, J + 3] += b33
                        continue
                    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = zero
                    a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = zero
                    y0 = C[J]
                    y1 = C[J + 1]
                    y2 = C[J + 2]
                    y3 = C[J + 3]
                    for k in range(C.shape[1]):
                        u0 = x0[k]
                        u1 = x1[k]
                        u2 = x2[k]
                        u3 = x3[k]
                        v = y0[k]
                        a00 += u0 * v
                        a10 += u1 * v
                        a20 += u2 * v
                        a30 += u3 * v
                        v = y1[k]
                        a01 += u0 * v
                        a11 += u1 * v
                        a21 += u2 * v
                        a31 += u3 * v
                        v = y2[k]
                        a02 += u0 * v
                        a12 += u1 * v
                        a22 += u2 * v
                        a32 += u3 * v
                        v = y3[k]
                        a03 += u0 * v
                        a13 += u1 * v
                        a23 += u2 * v
                        a33 += u3 * v
                    acc[I, J] += a00
                    acc[I, J + 1] += a01
                    acc[I, J + 2] += a02
                    acc[I, J + 3] += a03
                    acc[I + 1, J] += a10
                    acc[I + 1, J + 1] += a11
                    acc[I + 1, J + 2] += a12
                    acc[I + 1, J + 3] += a13
                    acc[I + 2, J] += a20
                    acc[I + 2, J + 1] += a21
                    acc[I + 2, J + 2] += a22
                    acc[I + 2, J + 3] += a23
                    acc[I + 3, J] += a30
                    acc[I + 3, J + 1] += a31
                    acc[I + 3, J + 2] += a32
                    acc[I + 3, J + 3] += a33

    @njit(fastmath=_FLAGS, boundscheck=False, error_model="numpy", cache=True, nogil=True)
    def _chunk_centre(X, rows, centre, use_centre, k0, w, m):  # pragma: no cover (compiled)
        """Write the centre of the chunk ``k0:k0+w`` into m[:w] (zeros after): the given
        centre when it is finite there, else the mean of the active rows finite there. Returns
        False when a given centre was not finite there."""
        wide()
        zero = X.dtype.type(0)
        for k in range(m.shape[0]):
            m[k] = zero
        ok = False
        if use_centre:
            cr = centre[k0 : k0 + w]
            s = zero
            for k in range(w):
                s += cr[k] * zero  # NaN when a value is not finite
            ok = s == zero
            if ok:
                for k in range(w):
                    m[k] = cr[k]
        if not ok:
            count = 0
            for t in range(rows.shape[0]):
                xr = X[rows[t], k0 : k0 + w]
                s = zero
                for k in range(w):
                    s += xr[k] * zero
                if s == zero:
                    for k in range(w):
                        m[k] += xr[k]
                    count += 1
            if count > 0:
                inv = 1.0 / count
                for k in range(w):
                    m[k] *= inv
        return ok or not use_centre

    @njit(fastmath=_FLAGS, boundscheck=False, error_model="numpy", cache=True, nogil=True)
    def _centre_rows(X, rows, k0, w, m, C, c0, dots, nonfinite):  # pragma: no cover (compiled)
        """C[t, c0:c0+w] = X[rows[t], k0:k0+w] - m[:w]; dots[t] += c_t . m; flag (and zero)
        the rows holding a non-finite value (the products of the others stay exact)."""
        wide()
        zero = X.dtype.type(0)
        for t in range(rows.shape[0]):
            xr = X[rows[t], k0 : k0 + w]
            cr = C[t, c0 : c0 + w]
            s = zero
            dt = zero
            for k in range(w):
                x = xr[k]
                s += x * zero  # NaN when x is not finite (overflow of x - m is not missing)
                v = x - m[k]
                cr[k] = v
                dt += v * m[k]
            if s == zero:
                dots[t] += dt
            else:
                nonfinite[t] = True
                for k in range(w):
                    cr[k] = zero

    @njit(fastmath=_FLAGS, boundscheck=False, error_model="numpy", cache=True, nogil=True)
    def _square_sum(m, w):  # pragma: no cover (compiled)
        wide()
        s = m.dtype.type(0)
        for k in range(w):
            s += m[k] * m[k]
        return s

    @njit(fastmath=_FLAGS, boundscheck=False, error_model="numpy", cache=True, nogil=True)
    def _centre_squares(centre, j0, j1, total):  # pragma: no cover (compiled)
        """``total`` plus the squares of the given centre over ``j0:j1``, chunk by chunk, and
        whether every chunk's sum is finite (where one is not, the chunk centres on the mean)."""
        finite = True
        for k0 in range(j0, j1, LANES):
            s = _square_sum(centre[k0:], min(LANES, j1 - k0))
            finite = finite and np.isfinite(s)
            total += s
        return total, finite

    @njit(fastmath=_FLAGS, boundscheck=False, error_model="numpy", cache=True, nogil=True)
    def _centre_span(X, rows, centre, use_centre, j0, j1, m, C, dots, msq, flags):
        # pragma: no cover (compiled)
        """C[t, :j1 - j0] = X[rows[t], j0:j1] - m: the centre of each chunk of ``LANES``
        coordinates written side by side into m (at least j1 - j0 values, rounded up to whole
        chunks), then each row centred in one loop over the span (one reduction per row, not
        per chunk); statistics and flags as :func:`_gram_block`.

        With a given centre (a central input row, in the Gram pass of all but small inputs)
        that is finite on the whole span, and whose chunks' squares sum to finite values, the
        rows are centred on the centre's span itself: one loop over it for the squares, instead
        of clearing m, testing the chunk, copying it into m and summing its squares, chunk by
        chunk (four loops of ``LANES`` per chunk, whatever the number of rows). The same values
        and sums, to the bit, as the chunk loop below, which every other span takes. Gram pass
        of d = 1e6 float32 coordinates centred on a row, one AVX-512 core, A/B in one process:
        5 rows 1.67-1.76 -> 1.30-1.41 ms, 10 rows 3.04-3.29 -> 2.66-3.01, 25 rows 10.8-11.6 ->
        10.6-11.4, 50 rows equal."""
        wide()
        if use_centre:
            total, finite = _centre_squares(centre, j0, j1, msq[0])
            if finite:
                msq[0] = total
                _centre_rows(X, rows, j0, j1 - j0, centre[j0:j1], C, 0, dots, flags)
                return
        for k0 in range(j0, j1, LANES):
            w = min(LANES, j1 - k0)
            mk = m[k0 - j0 : k0 - j0 + LANES]
            if not _chunk_centre(X, rows, centre, use_centre, k0, w, mk):
                flags[-1] = True
            msq[0] += _square_sum(mk, w)
        _centre_rows(X, rows, j0, j1 - j0, m, C, 0, dots, flags)

    @njit(fastmath=_FLAGS, boundscheck=False, error_model="numpy", cache=True, nogil=True)
    def _fused_span(X, sub, place, centre, s0, s1, acc, dots, msq, part, dpart, Xf, d, lines,
                    long):  # pragma: no cover (compiled)
        """The span ``s0:s1`` of :func:`_gram_block` for the active rows ``sub`` (at positions
        ``place`` among them, increasing), centred on the given centre in the tiles' registers
        (:func:`_add_centred_tiles` prefetching ``lines`` of the next span, or ``long``:
        :func:`_add_centred_long_tiles`), when the centre's chunks are finite (their squares summed
        as :func:`_centre_span` does) and every row's sums over the span are finite; returns
        False, having changed nothing, otherwise (a row holding a non-finite value, a product
        that overflowed: the caller takes the span through the buffer, which flags and zeroes
        such rows)."""
        total, finite = _centre_squares(centre, s0, s1, msq[0])
        if not finite:
            return False
        ns = sub.shape[0]
        R = _padded_rows(ns)
        if long:
            _add_centred_long_tiles(X, sub, centre, s0, s1 - s0, R, part, dpart)
        else:
            _add_centred_tiles(X, sub, centre, s0, s1 - s0, R, part, dpart, Xf, s1, d, lines)
        for t in range(ns):
            if not (np.isfinite(part[t, t]) and np.isfinite(dpart[t])):
                return False
        msq[0] = total
        _add_at(acc, dots, part, dpart, place)
        return True

    @njit(fastmath=_FLAGS, boundscheck=False, error_model="numpy", cache=True, nogil=True)
    def _buffer_tiles(C, filled, w, acc, Xf, rows, next0, d, lines):
        # pragma: no cover (compiled)
        """The tiles' products of the buffer C added to acc, its first ``filled`` rows holding a
        span of w coordinates (the rest of those rows is zeroed first; the rows after them are
        padding): 4 x 4 tiles from ``BIG_TILE_ROWS`` buffer rows (a multiple of 4, see
        padded_rows), else 3 x 3."""
        zero = C.dtype.type(0)
        if w < C.shape[1]:
            for t in range(filled):
                cr = C[t]
                for k in range(w, C.shape[1]):
                    cr[k] = zero
        if C.shape[0] >= BIG_TILE_ROWS:
            _add_tiles4(C, acc, Xf, rows, next0, d, lines)
        else:
            _add_tiles(C, acc, Xf, rows, next0, d, lines)

    @njit(boundscheck=False, cache=True, nogil=True)
    def _add_at(acc, dots, part, dpart, place):  # pragma: no cover (compiled)
        """Add a span's sums over some of the active rows (positions ``place``, increasing) to
        the block's: part's upper triangle (where the tiles wrote; place keeps it upper) and
        dpart."""
        for i in range(place.shape[0]):
            ai = acc[place[i]]
            pi = part[i]
            for j in range(i, place.shape[0]):
                ai[place[j]] += pi[j]
            dots[place[i]] += dpart[i]

    @njit(fastmath=_FLAGS, boundscheck=False, error_model="numpy", cache=True, nogil=True)
    def _buffer_span_of(X, sub, place, centre, s0, s1, m, C, acc, dots, msq, flags, Xf, d,
                        lines):  # pragma: no cover (compiled)
        """The span ``s0:s1`` of :func:`_gram_block` through the buffer for the active rows
        ``sub`` only (at positions ``place`` among them, increasing; a given centre): centred
        into the first buffer rows (the rows after them up to the tiles' multiple keep what they
        held: their products go to entries that are not added), the tiles' sums into a zeroed
        matrix that is then added at those positions (the same additions into acc as tiles
        over all the rows), dots and flags likewise."""
        ns = sub.shape[0]
        R = _padded_rows(ns)
        dsub = np.zeros(ns)
        fsub = np.zeros(ns + 1, dtype=np.bool_)
        _centre_span(X, sub, centre, np.bool_(True), s0, s1, m, C, dsub, msq, fsub)
        sums = np.zeros((R, R))
        _buffer_tiles(C[:R], ns, s1 - s0, sums, Xf, sub, s1, d, lines)
        _add_at(acc, dots, sums, dsub, place)
        for i in range(ns):
            flags[place[i]] |= fsub[i]
        flags[-1] |= fsub[-1]

    @njit(fastmath=_FLAGS, boundscheck=False, error_model="numpy", cache=True, nogil=True)
    def _gram_block(X, rows, centre, use_centre, j0, j1, acc, dots, msq, flags, C, mode=BUFFER,
                    srows=None, sweights=None, sout=None):  # pragma: no cover (compiled)
        """Add the block ``j0:j1``'s centred statistics of the active ``rows`` to acc (upper 3 x 3
        or 4 x 4 tiles), dots (``c_t . m``) and msq[0] (``|m|^2``); flags[t] for active rows
        holding a non-finite value, flags[-1] when the given centre is not finite somewhere.
        ``C`` is the (padded rows x tile width) buffer, 64-byte aligned (see
        :func:`aligned_zeros`). ``mode`` ``FUSED`` or ``FUSED_LONG`` (the caller passes
        ``FUSED_CENTRING``): on a given centre, up to ``FUSED_MAX_ROWS`` buffer rows, centre the
        rows in the tiles' registers (:func:`_fused_span`; with ``FUSED_LONG`` in long spans
        where the active rows allow) wherever a span allows it; after a span that does not, on
        without the rows flagged so far (the entries of a flagged row are not read), or
        through the buffer for the rest of the block where none was flagged. ``srows`` (with
        ``sweights``, ``sout``): also write ``sum_t sweights[t] X[srows[t]]`` into
        ``sout[j0:j1]``, span by span while the span is in the cache (:func:`_rows_sum`: the
        bits of :func:`weighted_sum`)."""
        wide()
        d = X.shape[1]
        Xf = X.reshape(-1)
        width = C.shape[1]
        m = np.zeros(width, dtype=X.dtype)  # the centres of the pass's chunks, side by side
        R = C.shape[0]
        fuse = mode != BUFFER and use_centre and R <= FUSED_MAX_ROWS and rows.shape[0] > 0
        prefetch_next = R * width * C.itemsize <= PREFETCH_MAX_BUFFER_BYTES
        # (the fused tiles' flag: after a span they could not take, only where that span
        # flagged new rows)
        part = np.zeros((R, R))  # a fused span's sums (float64)
        dpart = np.zeros(R)
        na = rows.shape[0]
        sub = rows  # the rows the fused spans take, at positions place among the active rows
        place = np.arange(na)
        flagged = 0
        # the spans' sums of the rows srows, written up to coordinate ``summed``
        sums = np.zeros(max(width, FUSED_SPAN) if srows is not None else 0)
        summed = j0
        # a fused span that failed is taken again through the buffer, up to ``buffered``;
        # ``found``: whether those buffer spans flagged a row
        buffered = j0
        found = False
        s0 = j0
        # few rows in whole groups of 3: long fused spans, no software prefetch (FUSED_SPAN)
        long = mode == FUSED_LONG and na <= LONG_SPAN_MAX_ROWS and na % 3 == 0
        span = FUSED_SPAN if long else width
        while s0 < j1:
            fused = fuse and s0 >= buffered
            s1 = min(j1, s0 + width)  # a span of the buffer (and of the fused tiles, but long)
            end = min(j1, s0 + span) if fused else s1
            if srows is not None and end > summed:
                _rows_sum(X, srows, sweights, sout, summed, end - summed, sums)
                summed = end
            lines = 0  # the next span's lines, prefetched during the tiles (but long ones)
            if s1 < j1 and prefetch_next:
                lines = (min(width, j1 - s1) + _LINE - 1) // _LINE
            if fused:
                if _fused_span(X, sub, place, centre, s0, end, acc, dots, msq, part, dpart,
                               Xf, d, 0 if long else lines, long):
                    s0 = end
                    continue
                buffered = end
                found = False
            if sub.shape[0] < na:
                _buffer_span_of(X, sub, place, centre, s0, s1, m, C, acc, dots, msq, flags,
                                Xf, d, lines)
            else:
                _centre_span(X, rows, centre, use_centre, s0, s1, m, C, dots, msq, flags)
                _buffer_tiles(C, na, s1 - s0, acc, Xf, rows, s1, d, lines)
            s0 = s1
            if use_centre:
                # A row holding a non-finite value is bad for the whole matrix (the caller
                # reads none of its entries): the later spans leave out the rows flagged so
                # far (NaN rows, an attack: fewer products; centred in the tiles, a NaN row
                # would fail every fused span, each one then taken twice). Once the buffer
                # has taken a failed fused span again: where it flagged no row (an overflow,
                # a centre that is not finite), the rest of the block goes through the buffer.
                count = 0
                for t in range(na):
                    count += flags[t]
                if count > flagged and count < na:
                    place = np.flatnonzero(~flags[:na])
                    sub = rows[place]
                found = found or count > flagged
                flagged = count
                if fuse and s0 >= buffered:
                    fuse = found and count < na

    @njit(fastmath=_FLAGS, boundscheck=False, error_model="numpy", cache=True, nogil=True)
    def _centre_into(X, rows, centre, use_centre, j0, j1, C, dots, msq, flags):
        # pragma: no cover (compiled)
        """Write the centred block ``X[rows, j0:j1] - m`` into C (na x (j1 - j0)); statistics
        and flags as :func:`_gram_block`."""
        m = np.zeros(-(-(j1 - j0) // LANES) * LANES, dtype=X.dtype)  # the chunks' centres
        _centre_span(X, rows, centre, use_centre, j0, j1, m, C, dots, msq, flags)

    @njit(boundscheck=False, error_model="numpy", cache=True, nogil=True)
    def _gather_chunks(X, starts, width, out):  # pragma: no cover (compiled)
        """out[i, q * width : (q + 1) * width] = X[i, starts[q] : starts[q] + width]."""
        wide()
        for i in range(X.shape[0]):
            for q in range(starts.shape[0]):
                src = X[i, starts[q] : starts[q] + width]
                dst = out[i, q * width : (q + 1) * width]
                for k in range(width):
                    dst[k] = src[k]

    @njit(fastmath=_FLAGS, boundscheck=False, error_model="numpy", cache=True, nogil=True,
          inline="always")
    def _rows_sum(X, rows, weights, out, k0, w, acc, ahead=0):  # pragma: no cover (compiled)
        """out[k0:k0 + w] = sum_t weights[t] X[rows[t], k0:k0 + w], summed in acc (float64, at
        least w values), the rows added in order, four per load and store of the sums (the
        same operations as one at a time, so the same bits whatever the chunks). ``ahead``:
        prefetch that many coordinates of each row after the chunk (the next chunk) just
        before the row's values are added (see :func:`._simd.prefetched_sums`)."""
        m = rows.shape[0]
        d = X.shape[1]
        for k in range(w):
            acc[k] = 0.0
        t = 0
        while t + 4 <= m:
            for u in range(4):
                prefetch_run(X, rows[t + u] * d + k0 + w, ahead)
            a0, a1, a2, a3 = weights[t], weights[t + 1], weights[t + 2], weights[t + 3]
            x0 = X[rows[t], k0 : k0 + w]
            x1 = X[rows[t + 1], k0 : k0 + w]
            x2 = X[rows[t + 2], k0 : k0 + w]
            x3 = X[rows[t + 3], k0 : k0 + w]
            for k in range(w):
                s01 = (acc[k] + a0 * np.float64(x0[k])) + a1 * np.float64(x1[k])
                acc[k] = (s01 + a2 * np.float64(x2[k])) + a3 * np.float64(x3[k])
            t += 4
        while t < m:
            prefetch_run(X, rows[t] * d + k0 + w, ahead)
            a = weights[t]
            xr = X[rows[t], k0 : k0 + w]
            for k in range(w):
                acc[k] += a * np.float64(xr[k])
            t += 1
        o = out[k0 : k0 + w]
        for k in range(w):
            o[k] = acc[k]

    @njit(fastmath=_FLAGS, boundscheck=False, error_model="numpy", cache=True, nogil=True)
    def _weighted_sum(X, rows, weights, out, b0, b1, end, cols, prefetched=False):
        # pragma: no cover (compiled)
        """out[j] = sum_t weights[t] X[rows[t], j] for the chunks b0..b1-1 of ``cols``
        coordinates below ``end`` (:func:`_rows_sum`; ``prefetched``: each row's next chunk
        prefetched as its current one is added)."""
        wide()
        acc = np.zeros(cols)
        for b in range(b0, b1):
            k0 = b * cols
            w = min(cols, end - k0)
            ahead = min(cols, end - k0 - w) if prefetched else 0  # the next chunk
            _rows_sum(X, rows, weights, out, k0, w, acc, ahead)

    @njit(fastmath=_FLAGS, boundscheck=False, error_model="numpy", cache=True, nogil=True)
    def _row_stats(X, r0, r1, sq, largest, cols, starts, signs):  # pragma: no cover (compiled)
        """Rows r0..r1-1: sq[i] = sum of squares (float64 across chunks), largest[i] = max |x|
        (NaN when the row holds a NaN or an infinity), and signs[i] = the positive, zero and
        negative values at the (sorted) coordinates ``cols``. One sequential read of each row;
        the reductions run element-wise on chunk-sized accumulators (vectorised loops), then
        across them; the signs are counted after each stretch of 64 chunks (64 KB of a float32
        row, still in the L2 cache), over the sampled coordinates of the stretch,
        ``cols[starts[b0]:starts[b1]]`` for its chunks b0..b1-1 (one branch-free loop).

        Four chunks pass per load and store of the accumulators (the same additions in the
        same order: one read of 25 x 1e7 float32 values 90-93 -> 77-78 ms, against 70 for
        ``X.sum()``; one chunk per pass stored three accumulators per vector of values). A NaN
        shows in the sum of squares (its terms are >= 0, so no other NaN arises there), an
        infinity in the largest magnitude: no third accumulator."""
        wide()
        d = X.shape[1]
        zero = X.dtype.type(0)
        s = np.zeros(_SUM_LANES, dtype=X.dtype)
        tally = np.zeros(3, dtype=np.int64)  # the row's positive, zero, negative sampled values
        top = np.zeros(_SUM_LANES, dtype=X.dtype)
        for i in range(r0, r1):
            row = X[i]
            total = 0.0
            tally[:] = 0
            for k in range(_SUM_LANES):
                top[k] = zero
            for k0 in range(0, d, _SUM_LANES * 64):
                for k in range(_SUM_LANES):
                    s[k] = zero
                stop = min(d, k0 + _SUM_LANES * 64)
                c0 = k0
                while c0 + 4 * _SUM_LANES <= stop:
                    p0 = row[c0 : c0 + _SUM_LANES]
                    p1 = row[c0 + _SUM_LANES : c0 + 2 * _SUM_LANES]
                    p2 = row[c0 + 2 * _SUM_LANES : c0 + 3 * _SUM_LANES]
                    p3 = row[c0 + 3 * _SUM_LANES : c0 + 4 * _SUM_LANES]
                    for k in range(_SUM_LANES):
                        v0 = p0[k]
                        v1 = p1[k]
                        v2 = p2[k]
                        v3 = p3[k]
                        t = s[k] + v0 * v0
                        t = t + v1 * v1
                        t = t + v2 * v2
                        s[k] = t + v3 * v3
                        a0 = abs(v0)
                        a1 = abs(v1)
                        a2 = abs(v2)
                        a3 = abs(v3)
                        m = top[k]
                        m = a0 if a0 > m else m
                        m = a1 if a1 > m else m
                        m = a2 if a2 > m else m
                        top[k] = a3 if a3 > m else m
                    c0 += 4 * _SUM_LANES
                while c0 < stop:
                    w = min(_SUM_LANES, stop - c0)
                    part = row[c0 : c0 + w]
                    for k in range(w):
                        v = part[k]
                        a = abs(v)
                        s[k] += v * v
                        top[k] = a if a > top[k] else top[k]
                    c0 += w
                # the signs at the sampled coordinates of this stretch (still in the L2 cache)
                total = _close_stretch(row, cols, starts, k0, stop, s, tally, total)
            t = zero
            for k in range(_SUM_LANES):
                t = top[k] if top[k] > t else t
            _store_row(i, total, t, tally, sq, largest, signs)

    @njit(boundscheck=False, error_model="numpy", cache=True, nogil=True, inline="always")
    def _sampled_signs(row, cols, qa, qb):  # pragma: no cover (compiled)
        """The positive, zero and negative values of ``row`` at ``cols[qa:qb]`` (int32: a
        stretch's counts; one branch-free loop)."""
        zero = row.dtype.type(0)
        p32 = np.int32(0)
        z32 = np.int32(0)
        n32 = np.int32(0)
        for q in range(qa, qb):
            v = row[cols[q]]
            p32 += np.int32(v > zero)
            z32 += np.int32(v == zero)
            n32 += np.int32(v < zero)
        return p32, z32, n32

    @njit(fastmath=_FLAGS, boundscheck=False, error_model="numpy", cache=True, nogil=True,
          inline="always")
    def _close_stretch(row, cols, starts, k0, stop, s, tally, total):
        # pragma: no cover (compiled)
        """End of the stretch k0:stop of the row statistics: the signs at its sampled
        coordinates added to tally, and total plus its accumulators s (returned)."""
        last = (stop + _SUM_LANES - 1) // _SUM_LANES
        p32, z32, n32 = _sampled_signs(row, cols, starts[k0 // _SUM_LANES], starts[last])
        tally[0] += p32
        tally[1] += z32
        tally[2] += n32
        for k in range(_SUM_LANES):
            total += s[k]
        return total

    @njit(boundscheck=False, error_model="numpy", cache=True, nogil=True, inline="always")
    def _store_row(i, total, t, tally, sq, largest, signs):  # pragma: no cover (compiled)
        """Row i's statistics: an infinity is the largest magnitude; a NaN makes the sum of
        squares NaN (so the largest magnitude is NaN for both)."""
        sq[i] = total
        largest[i] = t if t < np.inf and total == total else np.nan
        for c in range(3):
            signs[i, c] = tally[c]

    @njit(fastmath=_FLAGS, boundscheck=False, error_model="numpy", cache=True, nogil=True)
    def _row_stats_by_chunk(X, Xbits, magnitude, r0, r1, sq, largest, cols, starts, signs):
        # pragma: no cover (compiled)
        """:func:`_row_stats` one chunk per pass, the largest magnitude as the largest of the
        values' bit patterns with the sign bit cleared (``Xbits``: X viewed as unsigned
        integers of its width, ``magnitude[0]`` the mask of the other bits): an unsigned
        integer maximum, where a float maximum is a compare and a select, and for a NaN a
        pattern above the infinity's. The same additions in the same order as
        :func:`_row_stats` (chunk after chunk, lane by lane), so the same bits."""
        wide()
        d = X.shape[1]
        zero = X.dtype.type(0)
        s = np.zeros(_SUM_LANES, dtype=X.dtype)
        tally = np.zeros(3, dtype=np.int64)  # the row's positive, zero, negative sampled values
        top = np.zeros(_SUM_LANES, dtype=Xbits.dtype)
        keep = magnitude[0]
        as_float = np.zeros(1, dtype=X.dtype)
        for i in range(r0, r1):
            row = X[i]
            bits = Xbits[i]
            total = 0.0
            tally[:] = 0
            for k in range(_SUM_LANES):
                top[k] = 0
            for k0 in range(0, d, _SUM_LANES * 64):
                for k in range(_SUM_LANES):
                    s[k] = zero
                stop = min(d, k0 + _SUM_LANES * 64)
                for c0 in range(k0, stop, _SUM_LANES):
                    w = min(_SUM_LANES, stop - c0)
                    part = row[c0 : c0 + w]
                    pattern = bits[c0 : c0 + w]
                    for k in range(w):
                        v = part[k]
                        s[k] += v * v
                        top[k] = max(top[k], pattern[k] & keep)
                total = _close_stretch(row, cols, starts, k0, stop, s, tally, total)
            most = top[0]
            for k in range(_SUM_LANES):
                most = max(most, top[k])
            as_float.view(Xbits.dtype)[0] = most
            t = as_float[0]  # NaN when a NaN's pattern was the largest
            _store_row(i, total, t, tally, sq, largest, signs)

    @njit(boundscheck=False, error_model="numpy", cache=True, nogil=True)
    def _sign_counts(X, rows, cols, t0, t1, counts):  # pragma: no cover (compiled)
        """counts[t] = (#positive, #zero, #negative) of X[rows[t], cols] for t0..t1-1, and
        counts[t, 3] = 1 when one of those values is not finite."""
        for t in range(t0, t1):
            row = X[rows[t]]
            pos = 0
            zer = 0
            neg = 0
            bad = 0
            for q in range(cols.shape[0]):
                v = row[cols[q]]
                pos += 1 if v > 0 else 0
                zer += 1 if v == 0 else 0
                neg += 1 if v < 0 else 0
                bad += 0 if abs(v) < np.inf else 1
            counts[t, 0] = pos
            counts[t, 1] = zer
            counts[t, 2] = neg
            counts[t, 3] = 1 if bad else 0


# Values per step of the missing-value count of a flagged row (a vectorised loop, then the test
# that ends the row's count early).
_COUNT_LANES = 4096

if njit is not None:

    @njit(fastmath=_FLAGS, boundscheck=False, error_model="numpy", cache=True, nogil=True)
    def rows_within_budget(X, flagged, budget, limit):  # pragma: no cover (compiled)
        """Whether a ``flagged`` row of X misses at most ``budget`` coordinates (non-finite
        values) and holds no finite value above ``limit`` in magnitude: a lossy row, whose
        missing values the float64 path imputes. Each row is counted in steps of
        ``_COUNT_LANES`` values (vectorised) and dropped as soon as its count passes the budget
        or a huge value shows up, so a NaN row costs a read of about ``budget`` values."""
        wide()
        n, d = X.shape
        for i in range(n):
            if not flagged[i]:
                continue
            row = X[i]
            count = 0
            lossy = True
            for k0 in range(0, d, _COUNT_LANES):
                part = row[k0 : min(d, k0 + _COUNT_LANES)]
                missing = 0
                huge = 0
                for k in range(part.shape[0]):
                    a = abs(part[k])
                    finite = a < np.inf  # False for NaN and the infinities
                    missing += 0 if finite else 1
                    huge += 1 if finite & (a > limit) else 0
                count += missing
                if huge > 0 or count > budget:
                    lossy = False
                    break
            if lossy and count > 0:
                return True
        return False


def row_stats(
    X: np.ndarray, threads: int, cols: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: the sum of squares (float64), the largest magnitude (NaN when the row holds a
    NaN or an infinity) and the counts of positive, zero and negative values at the sorted
    coordinates ``cols`` ((n, 3) int64; zeros without cols), in one read of each row, rows
    split over ``threads`` threads."""
    n = X.shape[0]
    sq = np.empty(n)
    largest = np.empty(n)
    cols = np.zeros(0, dtype=np.int64) if cols is None else np.ascontiguousarray(cols, np.int64)
    # the sampled coordinates of chunk b are cols[starts[b]:starts[b + 1]] (counts per stretch
    # of 64 chunks fit int32)
    chunk_starts = np.arange(0, X.shape[1] + _SUM_LANES, _SUM_LANES, dtype=np.int64)
    starts = np.searchsorted(cols, chunk_starts).astype(np.int64)
    signs = np.zeros((n, 3), dtype=np.int64)
    if ROW_STATS_BY_CHUNK:
        unsigned = np.uint32 if X.dtype == np.float32 else np.uint64
        magnitude = np.array([np.iinfo(unsigned).max >> 1], dtype=unsigned)
        Xbits = X.view(unsigned)
        in_parallel(
            lambda r0, r1: _row_stats_by_chunk(
                X, Xbits, magnitude, r0, r1, sq, largest, cols, starts, signs
            ),
            n,
            threads,
        )
    else:
        in_parallel(
            lambda r0, r1: _row_stats(X, r0, r1, sq, largest, cols, starts, signs), n, threads
        )
    return sq, largest, signs


def sign_counts(X: np.ndarray, rows: np.ndarray, cols: np.ndarray, threads: int) -> np.ndarray:
    """(len(rows), 4) int64: the positive, zero and negative values of ``X[rows][:, cols]`` per
    row, and 1 in the last column for rows where one of those values is not finite."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    cols = np.ascontiguousarray(cols, dtype=np.int64)
    counts = np.zeros((rows.size, 4), dtype=np.int64)
    in_parallel(lambda t0, t1: _sign_counts(X, rows, cols, t0, t1, counts), rows.size, threads)
    return counts


@functools.lru_cache(maxsize=64)
def all_rows(n: int) -> np.ndarray:
    """``arange(n)`` as int64, made once per n: the kernels' row index when they take every
    row (read only by them; writeable, as numba compiles read-only arrays apart)."""
    return np.arange(n, dtype=np.int64)


def used_rows(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows with a non-zero weight (increasing) and their weights: the terms that
    :func:`weighted_sum` adds, in its order (the output written during a Gram pass and the one
    summed afterwards take the same ones, so the same bits)."""
    rows = np.flatnonzero(weights)
    return rows, weights[rows]


def weighted_sum(
    X: np.ndarray,
    rows: np.ndarray,
    weights: np.ndarray,
    threads: int,
    out: np.ndarray | None = None,
    end: int | None = None,
) -> np.ndarray:
    """``sum_t weights[t] X[rows[t]]`` (d,) in X's dtype, one read of the rows used: chunks of
    coordinates summed in float64 (in row order), on ``threads`` threads; into ``out`` when
    given (C-contiguous, X's dtype); only its first ``end`` coordinates when given."""
    d = X.shape[1] if end is None else end
    if out is None:
        out = np.empty(X.shape[1], dtype=X.dtype)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    weights = np.ascontiguousarray(weights, dtype=np.float64)
    # the chunks' width, and whether the next chunk is prefetched, for this host and input
    # (the same bits either way)
    cols, prefetched = sum_plan(rows.shape[0], X.nbytes)
    chunks = -(-d // cols)
    in_parallel(
        lambda b0, b1: _weighted_sum(X, rows, weights, out, b0, b1, d, cols, prefetched),
        chunks,
        threads,
        SUM_MIN_COLUMNS_PER_THREAD // cols,
    )
    return out


def gather_chunks(X: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """The columns ``starts[q] .. starts[q] + width - 1`` of X, chunk after chunk, as a new
    (n, len(starts) * width) array: the sample of the Gram pass's central row. One compiled copy
    of each row's chunks in order: 0.11, 0.24 and 0.99 ms for 64 chunks of 256 of 10, 25 and
    100 rows of 1e6 float32 values not in cache, against 0.30, 0.61 and 2.15 ms for torch's
    ``index_select`` of the same columns (which gathers value by value)."""
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    out = np.empty((X.shape[0], starts.shape[0] * width), dtype=X.dtype)
    _gather_chunks(X, starts, width, out)
    return out


def available(X: np.ndarray) -> bool:
    """Whether the kernel handles this array (C-contiguous float32/float64, numba present)."""
    return (
        njit is not None
        and X.ndim == 2
        and X.dtype in (np.float32, np.float64)
        and X.flags.c_contiguous
    )


def layout(n: int, rows: np.ndarray, G: np.ndarray, dots: np.ndarray, msq: float) -> np.ndarray:
    """The (n + 1) x (n + 1) Gram matrix of ``[X - 1 m^T; m]`` from the statistics of the active
    rows (``rows``, int64; G: their upper-triangular or full product matrix; only its upper
    triangle is read)."""
    full = np.zeros((n + 1, n + 1))
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    if njit is None:  # pragma: no cover
        na = rows.shape[0]
        upper = np.triu(G[:na, :na])
        full[np.ix_(rows, rows)] = upper + np.triu(upper, 1).T
    else:
        _mirror_into(full, rows, G)
    full[rows, n] = dots
    full[n, rows] = dots
    full[n, n] = msq
    return full


if njit is not None:

    @njit(boundscheck=False, error_model="numpy", cache=True, nogil=True)
    def _mirror_into(full, rows, G):  # pragma: no cover (compiled)
        """full[rows[a], rows[b]] = full[rows[b], rows[a]] = G[a, b] for a <= b (one pass over
        the upper triangle, instead of numpy's triangle copies and fancy-index assignment)."""
        for a in range(rows.shape[0]):
            ra = rows[a]
            for b in range(a, rows.shape[0]):
                v = G[a, b]
                full[ra, rows[b]] = v
                full[rows[b], ra] = v


@dataclass
class BlockStats:
    """The centred Gram statistics of one block of coordinates, as the kernel leaves them.

    ``acc``: the products of the centred active rows (upper triangle of ``acc[:na, :na]``, na
    the number of active rows; zeros elsewhere), ``dots``: ``c_t . m`` per active row, ``msq``:
    ``|m|^2``; ``nonfinite``: the active rows holding a non-finite value there (their entries
    are zero); ``centre_missing``: whether the given centre was not finite somewhere in the
    block (those chunks were centred on the mean). :func:`layout` turns the statistics (or a
    sum of them over blocks: the layout is linear) into the (n + 1) x (n + 1) Gram matrix.
    """

    acc: np.ndarray
    dots: np.ndarray
    msq: float
    nonfinite: np.ndarray
    centre_missing: bool

    def finite(self) -> bool:
        """Whether no product overflowed the input precision (else: redo the block)."""
        na = self.dots.shape[0]
        return bool(
            np.isfinite(self.acc[:na, :na]).all()
            and np.isfinite(self.dots).all()
            and np.isfinite(self.msq)
        )


def gram_blocks(
    X: np.ndarray,
    blocks: list[tuple[int, int]],
    centre: np.ndarray | None,
    threads: int,
    rows: np.ndarray | None = None,
    sums: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> list[BlockStats]:
    """Per block, the statistics (:class:`BlockStats`) of the Gram matrix of
    ``[X[:, j0:j1] - m; m]`` over the active ``rows`` (default: all; the others get zero
    entries, e.g. the centre row itself, whose centred values are zero).

    ``m`` is ``centre[j0:j1]`` when given (the mean, chunk by chunk, where it is not finite), else
    the mean of the active rows over each chunk of ``LANES`` coordinates. Blocks run on
    ``threads`` threads. The caller sums the blocks' statistics and lays them out once
    (:func:`layout`), instead of building an (n + 1) x (n + 1) matrix per block.

    ``sums = (srows, weights, out)``: the blocks also write ``sum_t weights[t] X[srows[t]]``
    into their coordinates of ``out`` (X's dtype), the bits of :func:`weighted_sum`, while
    each span of the rows is in the cache (a speculative output: :mod:`._speculate`).
    """
    n = X.shape[0]
    rows = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    use_centre = centre is not None
    c = np.ascontiguousarray(centre, dtype=X.dtype) if use_centre else np.zeros(1, X.dtype)
    R = padded_rows(rows.shape[0])
    width = tile_lanes(R, X.nbytes)

    def one(block: tuple[int, int]) -> BlockStats:
        acc = np.zeros((R, R))
        dots = np.zeros(rows.shape[0])
        msq = np.zeros(1)
        flags = np.zeros(rows.shape[0] + 1, dtype=np.bool_)
        C = aligned_zeros((R, width), X.dtype)
        args = (X, rows, c, use_centre, block[0], block[1], acc, dots, msq, flags, C)
        if sums is None:
            _gram_block(*args, FUSED_CENTRING)
        else:
            _gram_block(*args, FUSED_CENTRING, *sums)
        return BlockStats(acc, dots, float(msq[0]), rows[flags[:-1]], bool(flags[-1]))

    parts: list = [None] * len(blocks)

    def run(b0: int, b1: int) -> None:
        for k in range(b0, b1):
            parts[k] = one(blocks[k])

    in_parallel(run, len(blocks), threads)
    return parts


def centre_block(
    X: np.ndarray,
    j0: int,
    j1: int,
    centre: np.ndarray | None,
    rows: np.ndarray,
    out: np.ndarray,
) -> tuple[np.ndarray, float, np.ndarray, bool]:
    """Write ``X[rows, j0:j1] - m`` into ``out`` (len(rows) x (j1 - j0), C-contiguous) and
    return ``(C m, |m|^2, rows holding a non-finite value, given centre not finite somewhere)``
    (see :func:`gram_blocks`); the caller multiplies ``out @ out.T`` (BLAS)."""
    rows = np.asarray(rows, dtype=np.int64)
    use_centre = centre is not None
    c = np.ascontiguousarray(centre, dtype=X.dtype) if use_centre else np.zeros(1, X.dtype)
    dots = np.zeros(rows.shape[0])
    msq = np.zeros(1)
    flags = np.zeros(rows.shape[0] + 1, dtype=np.bool_)
    _centre_into(X, rows, c, use_centre, j0, j1, out, dots, msq, flags)
    return dots, float(msq[0]), rows[flags[:-1]], bool(flags[-1])
