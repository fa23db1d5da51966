"""A prototype's cost beside the library's median: transposed, sample-bracketed selection.

Usage (from the repository root; needs gcc and an AVX-512 CPU)::

    python benchmarks/column_select_prototype.py                 # n = 100, 200, 500, 1000
    python benchmarks/column_select_prototype.py --n 1000 --d 1e5 --inputs honest alie

``benchmarks/prototypes/column_select.c`` is a measurement prototype, not part of the library:
the coordinate-wise median of many rows by transposing 16 x 16 tiles into columns and narrowing
each column's candidates with brackets from a sorted sample (AVX-512 compress stores), then a
64-wire sorting network (its comments give the steps); a second variant does the first round
while it transposes. This script writes the C file's sorting networks, compiles it with gcc
into a temporary folder, checks that both variants' outputs equal
``byzlearn.aggregators.median``'s to the bit, and times them and the library in turns with the
floor (one streaming read, ``X.sum()``), one thread: time / floor, and the prototype's three
phases in time-stamp-counter ticks per value. Inputs: ``honest`` (standard normal),
``mean10`` (f rows at -10 x the honest mean), ``alie`` (f rows at the honest mean + 0.5 x its
deviation: ties near the median) and ``zeros`` (60 % of the rows zero on every second
coordinate: large tie bands). f = n // 5.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import at_least, check_memory, dimension

from byzlearn.machine import cpu_name

SOURCE = Path(__file__).resolve().parent / "prototypes" / "column_select.c"
INPUTS = ("honest", "mean10", "alie", "zeros")
_POINTER = ctypes.c_void_p


def bitonic_pairs(wires: int) -> list[tuple[int, int]]:
    """Compare-exchanges of Batcher's bitonic sort of ``wires`` (a power of two) values, as
    (receives the smaller, receives the larger)."""
    pairs = []
    k = 2
    while k <= wires:
        j = k >> 1
        while j > 0:
            for i in range(wires):
                partner = i ^ j
                if partner > i:
                    pairs.append((i, partner) if i & k == 0 else (partner, i))
            j >>= 1
        k <<= 1
    return pairs


def network_header() -> str:
    """``nets.h``: ``vsort32`` and ``vsort64``, the lane-wise bitonic networks, unrolled."""
    lines = []
    for wires in (32, 64):
        lines.append(f"static inline void vsort{wires}(__m512 *v) {{")
        lines += [f"    __m512 r{i} = v[{i}];" for i in range(wires)]
        for a, b in bitonic_pairs(wires):
            lines.append(
                f"    {{ __m512 t = _mm512_min_ps(r{a}, r{b}); "
                f"r{b} = _mm512_max_ps(r{a}, r{b}); r{a} = t; }}"
            )
        lines += [f"    v[{i}] = r{i};" for i in range(wires)]
        lines.append("}")
    return "\n".join(lines) + "\n"


def has_avx512() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512f" in flags and " avx512dq" in flags


def compiled(folder: Path) -> ctypes.CDLL:
    """The prototype, compiled with gcc (-O2 -march=native) in ``folder``."""
    (folder / "nets.h").write_text(network_header())
    library = folder / "column_select.so"
    command = [
        "gcc",
        "-O2",
        "-march=native",
        "-shared",
        "-fPIC",
        f"-I{folder}",
        str(SOURCE),
        "-o",
        str(library),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["gcc failed"])[-1]
        sys.exit(f"error: cannot compile {SOURCE.name}: {why}")
    return ctypes.CDLL(str(library))


class Prototype:
    """The compiled prototype's median of the columns of a float32 matrix, and its counters."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib

    def median(self, X: np.ndarray, fused: bool = False) -> np.ndarray:
        n, d = X.shape
        self.lib.set_fused(ctypes.c_int(int(fused)))
        padded = (n + 15) // 16 * 16
        out = np.empty(d, np.float32)
        colbuf = np.empty(256 * padded, np.float32)
        cand = np.empty(32 * padded, np.float32)
        scratch = np.empty(padded, np.float32)
        first = np.empty(256 * padded, np.float32)
        self.lib.median_columns(
            X.ctypes.data_as(_POINTER),
            ctypes.c_long(n),
            ctypes.c_long(d),
            out.ctypes.data_as(_POINTER),
            colbuf.ctypes.data_as(_POINTER),
            cand.ctypes.data_as(_POINTER),
            scratch.ctypes.data_as(_POINTER),
            first.ctypes.data_as(_POINTER),
        )
        return out

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        counts = np.zeros(4, np.int64)
        ticks = np.zeros(3, np.uint64)
        self.lib.take_stats(counts.ctypes.data_as(_POINTER), ticks.ctypes.data_as(_POINTER))
        return counts, ticks


def make_input(kind: str, n: int, d: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen)
    f = n // 5
    honest = X[f:]
    if kind == "mean10":
        X[:f] = -10 * honest.mean(0)
    elif kind == "alie":
        X[:f] = honest.mean(0) + 0.5 * honest.std(0)
    elif kind == "zeros":
        X[: n * 6 // 10, ::2] = 0.0
    return X


def median_times(fns: list, repeats: int) -> list[float]:
    """Median seconds of each of ``fns``, called in turns (one call of each per repeat), so that
    load from elsewhere hits them alike."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, kept in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            kept.append(time.perf_counter() - start)
    return [float(np.median(kept)) for kept in times]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=at_least(64), nargs="+", default=[100, 200, 500, 1000])
    parser.add_argument(
        "--d",
        type=dimension,
        default=None,
        help="dimension (default: 1e6 below 500 rows, 1e5 from 500)",
    )
    parser.add_argument("--inputs", nargs="+", choices=INPUTS, default=list(INPUTS))
    parser.add_argument("--repeats", type=at_least(1), default=5)
    args = parser.parse_args(argv)
    sizes = [(n, int(args.d) if args.d else (1_000_000 if n < 500 else 100_000)) for n in args.n]
    n, d = max(sizes, key=lambda size: size[0] * size[1])
    # float32 (n, d) inputs held at once: an input kind's, the next one's (made before the
    # first is let go), the library median's work
    check_memory(parser, 3 * 4 * n * d, f"n={n} x d={d}")
    if shutil.which("gcc") is None:
        sys.exit("error: this prototype needs gcc on the PATH")
    if not has_avx512():
        sys.exit("error: this prototype needs a CPU with AVX-512 (avx512f, avx512dq)")

    from byzlearn import aggregators as agg

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        proto = Prototype(compiled(Path(folder)))
        print(
            f"- machine: {platform.machine()}, {cpu_name()}; Python "
            f"{platform.python_version()}, torch {torch.__version__}; threads: 1"
        )
        print(f"- f = n // 5; median of {args.repeats} calls each, the four timed in turns")
        print()
        print(
            "| n | d | input | library / floor | prototype / floor | first round fused / floor "
            "| same outputs | ticks/value: transpose, rounds, final | the same, fused "
            "| rounds per 16 columns | second passes per column | columns sorted whole |"
        )
        print("|---:|---:|---|---:|---:|---:|---|---|---|---:|---:|---:|")
        for n in args.n:
            d = dict(sizes)[n]
            for kind in args.inputs:
                X = make_input(kind, n, d)
                Xn = X.numpy()
                f = n // 5
                library = agg.median(X, f=f).numpy()
                proto.stats()
                same = np.array_equal(proto.median(Xn), library)
                counts, ticks = proto.stats()
                same = same and np.array_equal(proto.median(Xn, fused=True), library)
                _, fused_ticks = proto.stats()
                floor, ours, theirs, fused = median_times(
                    [
                        X.sum,
                        functools.partial(agg.median, X, f=f),
                        functools.partial(proto.median, Xn),
                        functools.partial(proto.median, Xn, True),
                    ],
                    args.repeats,
                )
                phases = ", ".join(f"{t:.2f}" for t in ticks.astype(float) / (n * d))
                fused_phases = ", ".join(f"{t:.2f}" for t in fused_ticks.astype(float) / (n * d))
                print(
                    f"| {n} | {d:.0e} | {kind} | {ours / floor:.2f} | {theirs / floor:.2f} "
                    f"| {fused / floor:.2f} | {'yes' if same else 'NO'} | {phases} "
                    f"| {fused_phases} | {counts[1] / -(-d // 16):.2f} | {counts[0] / d:.3f} "
                    f"| {counts[3]} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
