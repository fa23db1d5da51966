"""The Triton Gram pass on a GPU, kernel alone: variants of its tile arithmetic and schedules.

For each shape (n rows of d float32 values, the -10 x mean attack in the first n / 5 rows,
centred on the last row) it times variants of the kernel of
``byzlearn/aggregators/_gram_cuda.py`` and compares each one's Gram matrix with the exact one
(float64 on the device):

- ``where``: the centred tile built by two nested ``tl.where`` (the kernel until 2026-12-04);
- ``fma``: the tile as ``x - c m`` (c = 1 on the rows, -1 on the centre's slot, 0 below), the
  product by ``tl.dot`` in "tf32x3" (three TF32 products);
- ``hi-lo``: each value split once into a TF32 head and a tail; the heads' product and the
  heads-tails product (two TF32 products), the latter's transpose added on the host; variants:
  ``hi-lo in-kernel transpose`` (the transpose added in the kernel), ``hi-lo ieee
  tails`` (the heads-tails product in float32 on the CUDA cores), ``heads only`` (no tails),
  ``hi-lo cvt.rna head`` (the head by PTX's conversion instruction instead of integer
  arithmetic on its bits; compiled code only), and ``tails' sizes`` (no products: the sum of
  |a - hi| per row, whose "error" column is its ratio to the same sum computed by torch, 1.0
  where the kernel's tails are what they should be). On an H200 (2026-12-04) every hi-lo variant
  was off by 1e-4, as far as ``heads only``: these two look for where its tails go;
- diagnostics: ``loads only`` (the same loads, row sums instead of products: what the load
  pattern reads) and ``tf32`` (one TF32 product).

Usage (a machine with a CUDA device and Triton):  python benchmarks/cuda_gram_tuning.py
  --variants fma,hi-lo   the variants to time (default: all)
  --grid                 every variant over tile widths 32/64/128, 4/8 warps, 1/3/4 stages
                         (else the library's schedule), then chunks of 4096 and 65536 columns
  --profile              Krum and the geometric median as the library runs them (torch.profiler)
  --budget S             stop after S seconds (each row is printed as it comes)
  --small                tiny shapes, to check the script (TRITON_INTERPRET=1 runs it on a CPU)
Each time is the median of 9 launches after one warm-up (CUDA events); "reads" is the time over
one ``X.sum()`` of the same input; "error" is the largest |G - G_exact| / sqrt(G_ii G_jj).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import torch

SOURCE = '''
import triton
import triton.language as tl


@triton.jit
def kernel(X, rows, n_rows, stride, M, d, partial, CHUNK: tl.constexpr, BLOCK_K: tl.constexpr,
           SLOTS: tl.constexpr, PRECISION: tl.constexpr, MODE: tl.constexpr):
    pid = tl.program_id(0)
    r = tl.arange(0, SLOTS)
    is_row = r < n_rows
    is_centre = r == n_rows
    c = tl.where(is_row, 1.0, tl.where(is_centre, -1.0, 0.0))
    index = tl.load(rows + r, mask=is_row, other=0)
    base = X + index[:, None] * stride
    heads = tl.full((SLOTS, SLOTS), 0.0, tl.float32)
    cross = tl.full((SLOTS, SLOTS), 0.0, tl.float32)
    start = pid.to(tl.int64) * CHUNK
    for k0 in range(0, CHUNK, BLOCK_K):
        j = start + k0 + tl.arange(0, BLOCK_K)
        inside = j < d
        m = tl.load(M + j, mask=inside, other=0.0)
        x = tl.load(base + j[None, :], mask=is_row[:, None] & inside[None, :], other=0.0)
        if MODE == 0:
            a = tl.where(is_row[:, None], x - m[None, :],
                         tl.where(is_centre[:, None], m[None, :], 0.0))
        else:
            a = x - c[:, None] * m[None, :]
        if MODE == 2:
            heads = heads + tl.sum(a, axis=1)[:, None]
        elif MODE >= 3:
            if MODE == 8:  # the head by the conversion instruction, rounding to nearest
                hi = tl.inline_asm_elementwise("cvt.rna.tf32.f32 $0, $1;", "=r,f", [a],
                                               dtype=tl.uint32, is_pure=True,
                                               pack=1).to(tl.float32, bitcast=True)
            else:
                hi = ((a.to(tl.uint32, bitcast=True) + 0x1000) & 0xFFFFE000).to(tl.float32,
                                                                                 bitcast=True)
            if MODE == 7:  # the tails' sizes, no products: |a - hi| summed per row
                heads = heads + tl.sum(tl.abs(a - hi), axis=1)[:, None]
            else:
                heads = tl.dot(hi, tl.trans(hi), heads, input_precision="tf32")
            if MODE == 7:
                pass
            elif MODE == 5:
                cross = tl.dot(hi, tl.trans(a - hi), cross, input_precision="ieee")
            elif MODE != 6:
                cross = tl.dot(hi, tl.trans(a - hi), cross, input_precision="tf32")
        else:
            heads = tl.dot(a, tl.trans(a), heads, input_precision=PRECISION)
    if MODE == 4:
        heads = heads + (cross + tl.trans(cross))
        cross = cross * 0.0
    out = partial + pid.to(tl.int64) * 2 * SLOTS * SLOTS + r[:, None] * SLOTS + r[None, :]
    tl.store(out, heads)
    tl.store(out + SLOTS * SLOTS, cross)
'''

# name: (MODE, tl.dot precision where the mode uses one)
VARIANTS = {
    "where": (0, "tf32x3"),
    "fma": (1, "tf32x3"),
    "hi-lo": (3, ""),
    "hi-lo in-kernel transpose": (4, ""),
    "hi-lo ieee tails": (5, ""),
    "heads only": (6, ""),
    "hi-lo cvt.rna head": (8, ""),
    "tails' sizes": (7, ""),
    "tf32": (1, "tf32"),
    "loads only": (2, "tf32x3"),
}
SHAPES = [(25, 100_000_000), (10, 100_000_000), (50, 20_000_000), (100, 10_000_000)]
GRID = [(k, w, s) for k in (32, 64, 128) for w in (4, 8) for s in (1, 3, 4)]


def cuda_time(fn: Callable[[], object], repeats: int = 9) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def centred_blocks(X: torch.Tensor, rows: torch.Tensor, centre: torch.Tensor,
                   dtype: torch.dtype) -> Iterator[torch.Tensor]:
    """[X[rows] - centre; centre] in ``dtype``, block of columns by block of columns."""
    for j0 in range(0, X.shape[1], 1 << 24):
        m = centre[j0:j0 + (1 << 24)].to(dtype)
        yield torch.cat([X[rows, j0:j0 + (1 << 24)].to(dtype) - m, m[None]])


def exact_gram(X: torch.Tensor, rows: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """The float64 Gram matrix of [X[rows] - centre; centre], in blocks of columns."""
    G = torch.zeros(rows.numel() + 1, rows.numel() + 1, dtype=torch.float64, device=X.device)
    for A in centred_blocks(X, rows, centre, torch.float64):
        G += A @ A.T
    return G


class Shape:
    """One input and the launches of the kernel's variants on it."""

    def __init__(self, run: Callable, n: int, d: int, device: str, timer: Callable) -> None:
        self.run, self.n, self.d, self.timer = run, n, d, timer
        self.X = torch.randn(n, d, device=device)
        self.X[: n // 5] = -10 * self.X[n // 5:].mean(0)
        self.rows = torch.arange(n - 1, device=device)  # centred on the last row
        self.k = n - 1
        self.slots = max(16, 1 << self.k.bit_length())
        self.exact = exact = exact_gram(self.X, self.rows, self.X[n - 1])
        norms = exact.diagonal().clamp_min(exact.diagonal().max() * 1e-12).sqrt()
        self.scale = norms[:, None] * norms[None, :]
        self.floor = timer(lambda: self.X.sum())

    def tail_sizes(self) -> float:
        """The sum of |a - hi| over the centred rows and the centre, hi being a rounded to TF32
        by the kernel's bit arithmetic, computed by torch in blocks of columns."""
        total = 0.0
        for A in centred_blocks(self.X, self.rows, self.X[self.n - 1], torch.float32):
            hi = ((A.view(torch.int32) + 0x1000) & -0x2000).view(torch.float32)
            total += float((A - hi).abs().double().sum())
        return total

    def measure(self, name: str, block_k: int, warps: int, stages: int,
                chunk: int = 16384) -> float | None:
        mode, precision = VARIANTS[name]
        programs = (self.d + chunk - 1) // chunk
        partial = torch.empty(programs, 2, self.slots, self.slots, device=self.X.device)

        def call() -> None:
            self.run[(programs,)](self.X, self.rows, self.k, self.X.stride(0), self.X[self.n - 1],
                                  self.d, partial, CHUNK=chunk, BLOCK_K=block_k,
                                  SLOTS=self.slots, PRECISION=precision or "tf32", MODE=mode,
                                  num_warps=warps, num_stages=stages)

        row = f"| {self.n} | {self.d:.0e} | {name} | {block_k} | {warps} | {stages} | {chunk} |"
        try:
            t = self.timer(call)
        except Exception as err:  # out of shared memory, a compiler error: report, go on
            print(f"{row} failed: {type(err).__name__} {str(err)[:80]} | | |", flush=True)
            return None
        heads, cross = partial.double().sum(0)
        if mode == 7:
            error = float(heads[: self.k + 1, 0].sum() / self.tail_sizes())
        else:
            G = (heads + cross + cross.T)[: self.k + 1, : self.k + 1]
            error = float(((G - self.exact).abs() / self.scale).max())
        reads = t / self.floor if self.floor else 0.0
        print(f"{row} {t * 1e3:.2f} | {reads:.2f} | {error:.1e} |", flush=True)
        return t


def library_schedule(slots: int) -> tuple[int, int, int]:
    from byzlearn.aggregators import _gram_cuda

    return (_gram_cuda.BLOCK_K, *_gram_cuda.schedule(slots))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--grid", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--budget", type=float, default=600.0)
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    names = [v.strip() for v in args.variants.split(",")] if args.variants else []
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        print(f"error: unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)}",
              file=sys.stderr)
        return 2
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.small:
        print("error: no CUDA device is available to torch here", file=sys.stderr)
        return 2
    from byzlearn.aggregators import _sortnet

    run = _sortnet.compiled_from_file("gram_cuda_tuning", SOURCE)
    if run is None:
        print("error: the kernel's source file could not be written", file=sys.stderr)
        return 2
    timer = cuda_time if device == "cuda" else (lambda fn, repeats=1: (fn(), 0.0)[1])
    t_start = time.perf_counter()
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}; "
          f"torch {torch.__version__}", flush=True)
    print("| n | d | variant | K | warps | stages | chunk | ms | reads | error |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", flush=True)
    for n, d in [(25, 40_000), (10, 20_000)] if args.small else SHAPES:
        shape = Shape(run, n, d, device, timer)
        schedules = GRID[:2] if args.small else GRID
        for name in names:
            best = None
            for block_k, warps, stages in schedules if args.grid else [
                    library_schedule(shape.slots)]:
                if time.perf_counter() - t_start > args.budget:
                    break
                if block_k == 128 and shape.slots >= 128:
                    continue
                t = shape.measure(name, block_k, warps, stages)
                if t is not None and (best is None or t < best[0]):
                    best = (t, block_k, warps, stages)
            if args.grid and best is not None:
                for chunk in (4096, 65536):
                    shape.measure(name, *best[1:], chunk=chunk)
        del shape
    if device == "cuda" and args.profile:
        profile_rules()
    return 0


def profile_rules() -> None:
    """Krum and the geometric median as the library runs them: wall time, kernel time, top
    kernels (torch.profiler), at 25 x 1e7 and 25 x 1e8."""
    import byzlearn.aggregators as agg

    for n, d in [(25, 10_000_000), (25, 100_000_000)]:
        X = torch.randn(n, d, device="cuda")
        X[: n // 5] = -10 * X[n // 5:].mean(0)
        for rule in ("krum", "geometric_median"):
            fn = agg.get(rule)
            fn(X, f=n // 5)
            torch.cuda.synchronize()
            walls = []
            for _ in range(5):
                t0 = time.perf_counter()
                fn(X, f=n // 5)
                torch.cuda.synchronize()
                walls.append(time.perf_counter() - t0)
            activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            with torch.profiler.profile(activities=activities) as prof:
                for _ in range(3):
                    fn(X, f=n // 5)
                torch.cuda.synchronize()
            print(f"\n## {rule} at {n} x {d:.0e}: wall median {statistics.median(walls) * 1e3:.2f} "
                  "ms (5 calls); profile of 3 calls:", flush=True)
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18,
                                            max_name_column_width=60), flush=True)
        del X


if __name__ == "__main__":
    sys.exit(main())
