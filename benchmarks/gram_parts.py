"""Where the CPU Gram pass spends its time: the pass with data from memory and from cache, and
its two steps alone.

Usage (from the repository root)::

    python benchmarks/gram_parts.py                                  # n = 25, d = 1e7
    python benchmarks/gram_parts.py --n 10 25 50 --d 1e6 --widths 256 512 1024

For each n (rows, f = n // 5) and pass width (coordinates per pass of the tiles; default: the
library's ``tile_lanes``), one thread, float32 standard normal values plus 3 (so that centring
matters), the pass centred on row 0 as after the library's choice of a central row:

- ``floor``: ``X.sum()``, one streaming read of the input;
- ``pass``: ``_gram_kernel.gram_blocks`` over the whole input (the data comes from memory);
- ``pass, buffer``: the same with every span centred into the buffer and read back, where the
  library centres the rows in the tiles' registers (up to ``FUSED_MAX_ROWS`` buffer rows,
  ``FUSED_CENTRING``): the two are the same beyond;
- ``pass, hot``: the same number of coordinates, but passes over a slice of the input that
  stays in the L2 cache (``--hot-kib`` of it; the kernel of one block, ``_gram_block``, called
  from a compiled loop), so no memory stall can show: if it is as slow as ``pass``, the pass is
  bound by its own work, not by the read;
- ``centring, hot`` and ``tiles, hot``: the buffer path's two steps alone on that slice
  (:func:`_centre_span` writing the centred rows into the tile buffer; :func:`_buffer_tiles`,
  the tiles of products, 3 x 3 or from ``BIG_TILE_ROWS`` buffer rows 4 x 4, without
  prefetches), each called from a compiled loop; ``tiles and
  prefetches, hot``: the tiles with the pass's prefetches of the next coordinates of every row
  (lines already in cache: the cost of the instructions);
- ``weighted sum, n - f rows`` and ``f rows``: the compiled weighted sum that forms the output
  of the rules that average rows (Multi-Krum, MDA, CGE: n - f rows; the geometric median and
  centred clipping: all n);
- ``row stats`` and ``row stats, signs``: the filters' one read of every row
  (:func:`_gram_kernel.row_stats`: sums of squares, largest magnitudes, on AMD's Zen cores one
  chunk per pass, ``ROW_STATS_BY_CHUNK``), the second with the signs of a sorted random tenth of
  the coordinates counted (SignGuard's default ``coordinate_fraction``).

Times are the minimum of ``--repeats`` runs, each part timed in turns with the others; the table
gives milliseconds and the ratio to the floor. The tile steps apply below ``BLAS_MIN_ROWS``
(576 on AVX-512, 384 elsewhere) rows; more rows take BLAS, which this script does not split.
"""

from __future__ import annotations

import argparse
import functools
import platform
import time
from collections.abc import Callable

import numpy as np
from _common import at_least, check_memory, dimension


@functools.cache
def _compiled_loops():
    """The compiled loops that call the two steps (compiled once per process)."""
    from numba import njit

    from byzlearn.aggregators import _gram_kernel as gk

    @njit(nogil=True)
    def centring(X, rows, centre, spans, m, C, dots, msq, flags):  # pragma: no cover
        for q in range(spans.shape[0]):
            s0 = spans[q]
            gk._centre_span(X, rows, centre, True, s0, s0 + C.shape[1], m, C, dots, msq, flags)

    @njit(nogil=True)
    def passes(X, rows, centre, laps, acc, dots, msq, flags, C, fuse):  # pragma: no cover
        for _ in range(laps):
            gk._gram_block(X, rows, centre, True, 0, X.shape[1], acc, dots, msq, flags, C, fuse)

    @njit(nogil=True)
    def tiles(C, acc, X, rows, passes, lines):  # pragma: no cover
        Xf = X.reshape(-1)
        for _ in range(passes):
            gk._buffer_tiles(C, rows.shape[0], C.shape[1], acc, Xf, rows, 0, X.shape[1], lines)

    return passes, centring, tiles


def _best(parts: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Each part run once to warm up, then ``repeats`` rounds of all parts in turns; the
    minimum time of each, in milliseconds."""
    for run in parts.values():
        run()
    best = dict.fromkeys(parts, np.inf)
    for _ in range(repeats):
        for name, run in parts.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: seconds * 1e3 for name, seconds in best.items()}


def measure(n: int, d: int, width: int | None, hot_kib: int, repeats: int) -> dict[str, float]:
    """The parts' times (ms) for an (n, d) input at one pass width (None: the library's)."""
    from byzlearn.aggregators import _gram_kernel as gk

    saved = gk._TILE_LANES_WIDE, gk._TILE_LANES_WIDEST
    if width is not None:  # gram_blocks reads the width from these at each call
        gk._TILE_LANES_WIDE = gk._TILE_LANES_WIDEST = width
    try:
        return _measure(n, d, hot_kib, repeats)
    finally:
        gk._TILE_LANES_WIDE, gk._TILE_LANES_WIDEST = saved


def _measure(n: int, d: int, hot_kib: int, repeats: int) -> dict[str, float]:
    import torch

    from byzlearn.aggregators import _gram
    from byzlearn.aggregators import _gram_kernel as gk

    rows = np.arange(1, n, dtype=np.int64)
    R = gk.padded_rows(rows.size)
    X = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32) + 3
    W = gk.tile_lanes(R, X.nbytes)  # the library's width for this input
    blocks = _gram.column_blocks(d, _gram.kernel_block_size(n, rows.size, X.nbytes))
    T = torch.from_numpy(X)
    hot_cols = max(W, min(hot_kib * 1024 // (4 * n), d) // W * W)  # within the input
    H = np.ascontiguousarray(X[:, :hot_cols])
    laps = max(1, d // hot_cols)
    spans = np.tile(np.arange(0, hot_cols, W, dtype=np.int64), laps)
    C = gk.aligned_zeros((R, W), np.float32)
    C[: rows.size] = np.random.default_rng(1).standard_normal((rows.size, W))
    passes, centring, tiles = _compiled_loops()
    stats = (np.zeros(W, np.float32), C.copy(), np.zeros(rows.size), np.zeros(1))
    flags = np.zeros(rows.size + 1, dtype=np.bool_)
    keep = np.arange(n - n // 5)
    sampled = np.sort(np.random.default_rng(2).choice(d, size=max(1, d // 10), replace=False))
    parts = {
        "floor": lambda: T.sum(),
        "pass": lambda: gk.gram_blocks(X, blocks, X[0], 1, rows),
        "pass, buffer": lambda: _through_buffer(gk, X, blocks, rows),
        "pass, hot": lambda: passes(
            H, rows, H[0], laps, np.zeros((R, R)), *stats[2:], flags, C, gk.FUSED_CENTRING
        ),
        "centring, hot": lambda: centring(H, rows, H[0], spans, *stats, flags),
        "tiles, hot": lambda: tiles(C, np.zeros((R, R)), H, rows, spans.size, 0),
        "tiles and prefetches, hot": lambda: tiles(
            C, np.zeros((R, R)), H, rows, spans.size, W // 16
        ),
        "weighted sum, n - f rows": lambda: gk.weighted_sum(
            X, keep, np.full(keep.size, 1 / keep.size), 1
        ),
        "weighted sum, f rows": lambda: (
            gk.weighted_sum(X, np.arange(n // 5) + keep.size, np.full(n // 5, 1.0), 1)
            if n // 5
            else None
        ),
        "row stats": lambda: gk.row_stats(X, 1),
        "row stats, signs": lambda: gk.row_stats(X, 1, sampled),
    }
    times = _best(parts, repeats)
    scale = d / (laps * hot_cols)  # the hot parts covered laps * hot_cols coordinates
    for name in ("pass, hot", "centring, hot", "tiles, hot", "tiles and prefetches, hot"):
        times[name] *= scale
    times["width"] = W
    return times


def _through_buffer(gk, X, blocks, rows) -> None:
    """The pass with every span centred into the buffer, wherever the library would centre
    in the tiles' registers."""
    saved = gk.FUSED_CENTRING
    gk.FUSED_CENTRING = gk.BUFFER
    try:
        gk.gram_blocks(X, blocks, X[0], 1, rows)
    finally:
        gk.FUSED_CENTRING = saved


def _ms(value: float) -> str:
    """Milliseconds to one decimal, or three significant digits below 10 ms."""
    return f"{value:.1f}" if value >= 10 else f"{value:.3g}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=at_least(4), nargs="+", default=[25])
    parser.add_argument("--d", type=dimension, default=1e7)
    parser.add_argument("--widths", type=at_least(16), nargs="+", default=[None])
    parser.add_argument("--hot-kib", type=at_least(64), default=1024)
    parser.add_argument("--repeats", type=at_least(1), default=5)
    args = parser.parse_args(argv)
    if any(w is not None and w % 256 for w in args.widths):
        parser.error("--widths must be multiples of 256 (the chunk of the centring)")
    from byzlearn.aggregators import _gram_kernel as gk

    if max(args.n) >= gk.BLAS_MIN_ROWS:
        parser.error(f"--n must be under {gk.BLAS_MIN_ROWS} (more rows take BLAS)")
    d = int(args.d)
    for n in args.n:  # the hot parts take at least one pass width of the input
        for width in args.widths:
            W = width or gk.tile_lanes(gk.padded_rows(n - 1), n * d * 4)
            if d < W:
                parser.error(f"--d must be at least the pass width, {W} at n={n}")
    n = max(args.n)
    # the float32 input and its draw (a copy), and SignGuard's sample: a permutation of d int64
    check_memory(parser, 2 * 4 * n * d + 9 * d, f"n={n} x d={d}")
    import numba
    import torch

    from byzlearn.machine import cpu_name

    torch.set_num_threads(1)
    print(f"- machine: {platform.machine()}, {cpu_name()}; one thread")
    print(
        f"- python / torch / numba: {platform.python_version()} / {torch.__version__} / "
        f"{numba.__version__}; float32, d = {d:.3g}, centred on a row, L2 slice "
        f"{args.hot_kib} KiB"
    )
    print()
    names = [
        "pass",
        "pass, buffer",
        "pass, hot",
        "centring, hot",
        "tiles, hot",
        "tiles and prefetches, hot",
        "weighted sum, n - f rows",
        "weighted sum, f rows",
        "row stats",
        "row stats, signs",
    ]
    print(
        "| n | width | floor (ms) | " + " | ".join(f"{name} (ms, / floor)" for name in names) + " |"
    )
    print("|---:|---:|---:|" + "---:|" * len(names))
    for n in args.n:
        for width in args.widths:
            t = measure(n, d, width, args.hot_kib, args.repeats)
            cells = [f"{_ms(t[name])} ({t[name] / t['floor']:.2f})" for name in names]
            print(f"| {n} | {t['width']} | {_ms(t['floor'])} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
