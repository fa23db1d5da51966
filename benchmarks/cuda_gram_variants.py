"""The Gram pass on a GPU, variant by variant, in one process: Krum (one Gram pass over the
input and a row copy) and the geometric median (the pass, then a weighted sum of the rows) with
the torch pass (subtract, then cuBLAS per block of 2^28 values) and the Triton pass of
``byzlearn/aggregators/_gram_cuda.py`` (its tile shapes and schedules, kernel alone:
``benchmarks/cuda_gram_tuning.py``).

Usage (a machine with a CUDA device and Triton):  python benchmarks/cuda_gram_variants.py
Prints, per shape and variant, the median time of 7 calls after a warm-up, over the median of
``X.sum()`` (one read of the input), and the largest difference from the torch pass's output.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

import byzlearn.aggregators as agg
from byzlearn.aggregators import _fused_cuda, _gram_cuda

SHAPES = [(25, 100_000_000), (50, 20_000_000), (100, 10_000_000)]
VARIANTS = [("torch pass", False), ("triton pass", True)]  # name, Triton pass on


def timed(fn, repeats: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    if not torch.cuda.is_available():
        print("error: no CUDA device is available to torch here", file=sys.stderr)
        return 2
    original = _gram_cuda.gram_pass
    print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}")
    print("| n | d | rule | variant | ms | / X.sum() | max abs diff vs torch pass |")
    print("| ---: | ---: | --- | --- | ---: | ---: | ---: |")
    for n, d in SHAPES:
        X = torch.randn(n, d, device="cuda")
        X[: n // 5] = -10 * X[n // 5 :].mean(0)  # the -10 x mean attack
        floor = timed(lambda X=X: float(X.sum()))
        f = n // 5
        for rule in ["krum", "geometric_median"]:
            base = None
            for name, on in VARIANTS:
                _gram_cuda.gram_pass = original if on else (lambda *a, **k: None)
                out = agg.get(rule)(X, f=f)
                t = timed(lambda rule=rule, X=X, f=f: agg.get(rule)(X, f=f))
                if _fused_cuda._FAILED:  # the launch failed and the torch pass ran: say so
                    print(f"| {n} | {d:.0e} | {rule} | {name} | failed: "
                          f"{_fused_cuda._FAILED[0][:100]} | | |", flush=True)
                    _fused_cuda._FAILED.clear()
                    continue
                base = out if base is None else base
                diff = float((out - base).abs().max())
                print(f"| {n} | {d:.0e} | {rule} | {name} | {t * 1e3:.1f} | {t / floor:.2f} "
                      f"| {diff:.1e} |", flush=True)
        del X
    _gram_cuda.gram_pass = original
    return 0


if __name__ == "__main__":
    sys.exit(main())
