"""The coordinate-wise statistics on a GPU, kernel by kernel, in one process: the generated
kernels of up to 64 rows (``_fused_cuda``: a coordinate's values in one thread's registers), the
kernel of sorted blocks (``_sorted_cuda``: ``tl.sort`` over blocks of coordinates, from 65 rows
in the library) in three shapes of its programs, and the blocked torch path (sort, then masked
float64 sums), for the median and Phocas (f = n / 5).

Usage (a machine with a CUDA device and Triton)::

    python benchmarks/cuda_select_variants.py            # n = 25-1000, d = 1e7 (1e6 from 500)
    TRITON_INTERPRET=1 python benchmarks/cuda_select_variants.py --small  # a check on a CPU

Prints, per shape, statistic and variant, the median time of 7 calls after a warm-up (the first
call compiles), over the median of ``X.sum()`` (one read of the input: the GPU target of issue 12
is 4x), and the largest difference from the torch path's output (on finite inputs no
coordinate is flagged; a variant that flags one says so). The sorted kernel's shapes are
(values per program, warps): the library's (8192, 8), and (4096, 4), (16384, 8).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from byzlearn.aggregators import _fused_cuda, _select, _sorted_cuda
from byzlearn.argtypes import at_least

SHAPES = [(25, 10**7), (50, 10**7), (64, 10**7), (65, 10**7), (100, 10**7), (200, 10**7),
          (500, 10**6), (1000, 10**6)]
SMALL_SHAPES = [(25, 32), (65, 32)]
STATS = [("median", _select.MEDIAN), ("phocas", _select.CLOSEST_TO_TRIMMED)]
SORTED_SHAPES = [(8192, 8), (4096, 4), (16384, 8)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _generated(X, rows, stat, drop, out):
    flags = torch.empty(X.shape[1], dtype=torch.int8, device=X.device)
    return _fused_cuda.launch_generated(X, rows, stat, drop, out, flags), flags


def _sorted(X, rows, stat, drop, out, values, warps):
    flags = torch.empty(X.shape[1], dtype=torch.int8, device=X.device)
    before = (_sorted_cuda.VALUES_PER_PROGRAM, _sorted_cuda.NUM_WARPS)
    _sorted_cuda.VALUES_PER_PROGRAM, _sorted_cuda.NUM_WARPS = values, warps
    try:
        ok = _sorted_cuda.launch_statistic(X, rows, stat, drop, out, flags, _fused_cuda.launch,
                                           _fused_cuda.interpreted())
    finally:
        _sorted_cuda.VALUES_PER_PROGRAM, _sorted_cuda.NUM_WARPS = before
    return ok, flags


def _variants(X, rows, stat, drop, sorted_shapes) -> list:
    """(label, run(out) -> (launched, flags or None)) for each kernel that takes these rows."""

    def torch_path(out):
        _select._torch_path(X, rows, stat, drop, 1, out)
        return None, None

    variants = [("torch path", torch_path)]
    if rows.numel() <= _fused_cuda.MAX_ROWS:
        variants.append(("generated", lambda out: _generated(X, rows, stat, drop, out)))
    for values, warps in sorted_shapes:
        variants.append((f"sorted {values}x{warps}",
                         lambda out, v=values, w=warps: _sorted(X, rows, stat, drop, out, v, w)))
    return variants


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true",
                        help="tiny shapes on the CPU under TRITON_INTERPRET=1 (a check)")
    parser.add_argument("--repeats", type=at_least(1), default=7)
    args = parser.parse_args(argv)
    if args.small:
        if not _fused_cuda.interpreted():
            print("error: --small needs TRITON_INTERPRET=1", file=sys.stderr)
            return 2
        device, shapes, repeats = torch.device("cpu"), SMALL_SHAPES, 1
        sorted_shapes = SORTED_SHAPES[:1]  # the interpreter's tl.sort takes seconds a program
    else:
        if not torch.cuda.is_available():
            print("error: no CUDA device is available to torch here", file=sys.stderr)
            return 2
        device, shapes, repeats = torch.device("cuda"), SHAPES, args.repeats
        sorted_shapes = SORTED_SHAPES
    if not _fused_cuda.triton_available():
        print("error: Triton is not installed", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (interpreter)"
    print(f"device: {name}; torch {torch.__version__}")
    print("| n | d | statistic | variant | ms | / X.sum() | max abs diff vs torch path |")
    print("| ---: | ---: | --- | --- | ---: | ---: | ---: |")
    for n, d in shapes:
        X = torch.randn(n, d, device=device)
        rows = torch.arange(n, device=device)
        floor = timed(lambda X=X: float(X.sum()), device, repeats)
        for stat_name, stat in STATS:
            drop = n // 5
            base = torch.empty(d, dtype=X.dtype, device=device)
            for label, run in _variants(X, rows, stat, drop, sorted_shapes):
                out = base if label == "torch path" else torch.empty_like(base)
                ok, flags = run(out)
                if ok is False:
                    failure = (_sorted_cuda.FAILED or _fused_cuda._FAILED or ["?"])[0]
                    print(f"| {n} | {d:.0e} | {stat_name} | {label} | failed: {failure[:100]} "
                          "| | |", flush=True)
                    _sorted_cuda.FAILED.clear()
                    _fused_cuda._FAILED.clear()
                    continue
                t = timed(lambda run=run, out=out: run(out), device, repeats)
                flagged = 0 if flags is None else int(flags.sum())
                diff = float((out - base).abs().max())
                note = f" ({flagged} flagged)" if flagged else ""
                print(f"| {n} | {d:.0e} | {stat_name} | {label} | {t * 1e3:.2f} | "
                      f"{t / floor:.2f} | {diff:.1e}{note} |", flush=True)
        del X
    return 0


if __name__ == "__main__":
    sys.exit(main())
