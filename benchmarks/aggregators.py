"""Benchmark of the aggregation rules against the memory floor and the fastest plain references.

Usage (from the repository root)::

    python benchmarks/aggregators.py --d 1e7 --threads 1            # n = 25, f = 5, all inputs
    python benchmarks/aggregators.py --d 1e7 --threads 2 --no-reference
    python benchmarks/aggregators.py --d 1e6 --inputs honest nan --rules median krum
    python benchmarks/aggregators.py --scale-n                       # n = 10 ... 1000, f = n / 5
    python benchmarks/aggregators.py --quick                         # smoke test

Per input kind, thread count and rule the script times (medians; after one warm-up run that also
compiles numba's kernels):

- ``ours``: ``byzlearn.aggregators.get(rule)(X, f)``;
- ``floor``: the fastest one-pass read of the same X: the faster of ``X.sum()`` and a compiled
  read (numba, one sequential pass over the rows, on the same threads), timed *in turns* with the
  rule (floor, rule, floor, rule, ...); ``ours/floor`` is the median of the per-pair ratios;
- ``X.sum(0)`` (the floor of earlier versions, kept for continuity), timed in the same turns;
- ``ref``: the fastest plain implementation of the rule in a few lines (``np.partition``, a
  float64 Gram matrix by BLAS on column blocks, ``np.sort`` on blocks for the window rules), see
  ``REFERENCES``; the script checks it gives the same result and exits with status 1 otherwise;
- ``peak MB``: the most memory above the input seen during one call (sampled): the larger of
  the growth of the resident set and, where glibc tells it (``mallinfo2``), of the bytes malloc
  has handed out, so that an output placed in memory freed earlier (resident already) counts.

Input kinds (rows: n - f honest ``mu + s_i noise_i``, s_i in [0.8, 1.2], then f Byzantine):
``honest`` (all n honest), ``mean10`` (the demo's attack, -10 x the honest mean), ``gauss200``
(one Gaussian vector of sigma 200, sent by all f), ``alie`` (mu - z sigma of the honest rows,
z from n and f as in the paper), ``nan`` (f rows of NaN).

``--scale-n``: n in {10, 25, 50, 100, 200, 500, 1000}, f = n / 5, d = 1e6 (1e5 from n = 500),
honest input, one thread; coordinate-wise rules against the floor (target 3x), distance-based
ones against the Gram's compute bound (n^2 d / 2 multiply-adds at the sgemm rate, measured
before each n, the best of the run; printed) plus the floor (target 1.5x). See
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import itertools
import math
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from _common import (
    MAX_THREADS,
    at_least,
    check_memory,
    dimension,
    non_negative,
    parse_with_quick,
    refused,
)

COORDINATEWISE = ("average", "median", "trimmed_mean", "meamed", "phocas")
DISTANCE_BASED = (
    "krum",
    "multi_krum",
    "medoid",
    "geometric_median",
    "mda",
    "centered_clipping",
    "cge",
    "bulyan",
)
FILTERS = ("caf", "dnc", "signguard")
COMPOSED = ("nnm+trimmed_mean", "nnm+krum", "bucketing+median")
ALL_RULES = COORDINATEWISE + DISTANCE_BASED + FILTERS + COMPOSED
INPUT_KINDS = ("honest", "mean10", "gauss200", "alie", "nan")
# Targets at n = 25, f = 5, d = 1e7, float32, one thread (ratio to the floor).
TARGET = {
    "median": 2.0,
    "trimmed_mean": 2.0,
    "meamed": 2.5,
    "phocas": 2.5,
    **{rule: 3.0 for rule in DISTANCE_BASED if rule != "bulyan"},
    "bulyan": 4.0,
    "nnm+trimmed_mean": 4.0,
    "signguard": 4.0,
}
TARGET_D = 10_000_000
SCALE_N = (10, 25, 50, 100, 200, 500, 1000)
SCALE_RULES = COORDINATEWISE[1:] + DISTANCE_BASED  # the robust ones (not the average)
SCALE_TARGET = {"coordinate-wise": 3.0, "distance-based": 1.5}
BUCKET_SEED = 0
RANDOM_SEED = 0  # dnc / signguard draw fresh coordinates by default; fixed here to be repeatable
RTOL = {"float32": 2e-5, "float64": 1e-9}
REF_BLOCK = 1 << 18  # columns per block of the coordinate-wise references (bounded memory)
MAX_REPEATS = 100


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def make_inputs(kind: str, n: int, f: int, d: int, dtype: str, seed: int, device: str = "cpu"):
    """The (n, d) input of one kind (see the module docstring), as a torch tensor made on
    ``device`` (on a GPU by its own generator: other values than on the CPU, same kind)."""
    import torch

    from byzlearn.attacks.gradient import alie_z

    tdtype = getattr(torch, dtype)
    g = torch.Generator(device=device).manual_seed(seed)
    X = torch.empty(n, d, dtype=tdtype, device=device)
    h = n - f if kind != "honest" else n
    step = 1 << 22
    for j0 in range(0, d, step):  # in blocks: bounded float temporaries
        j1 = min(d, j0 + step)
        block = torch.randn(n, j1 - j0, generator=g, dtype=tdtype, device=device)
        mu = torch.randn(j1 - j0, generator=g, dtype=tdtype, device=device)
        scales = torch.linspace(0.8, 1.2, h, dtype=tdtype, device=device)
        block[:h].mul_(scales[:, None]).add_(mu)
        if kind == "mean10":
            block[h:] = -10.0 * block[:h].mean(0)
        elif kind == "gauss200":
            block[h:] = 200.0 * block[h : h + 1]
        elif kind == "alie" and f > 0:
            block[h:] = block[:h].mean(0) - alie_z(n, f) * block[:h].std(0)
        elif kind == "nan":
            block[h:] = float("nan")
        X[:, j0:j1] = block
    return X


# --------------------------------------------------------------------------------------------
# The floor: a compiled one-pass read
# --------------------------------------------------------------------------------------------
_READ = None


def compiled_read(X) -> float:
    """Sum of all values of X, one sequential pass over its rows (numba; rows split over
    torch's thread count, the GIL released)."""
    global _READ
    import torch

    from byzlearn.aggregators._threads import in_parallel

    if X.device.type != "cpu":  # on a GPU the floor is X.sum(), the one read torch compiles
        return float(X.sum())

    if _READ is None:
        from numba import njit

        # not cached on disk: the cache would name the module the script was imported as (the
        # tests import it under another name), and loading it as __main__ would then fail
        @njit(fastmath=True, nogil=True)
        def read_rows(A, r0, r1, out):
            for i in range(r0, r1):
                row = A[i]
                s = A.dtype.type(0)
                for k in range(row.shape[0]):
                    s += row[k]
                out[i] = s

        _READ = read_rows
    A = X.numpy()
    out = np.zeros(A.shape[0], dtype=A.dtype)
    in_parallel(lambda r0, r1: _READ(A, r0, r1, out), A.shape[0], torch.get_num_threads())
    return float(np.nansum(out))


# --------------------------------------------------------------------------------------------
# References: the fastest plain implementation in a few lines, float64 where it matters
# --------------------------------------------------------------------------------------------
def _finite_rows(X: np.ndarray) -> np.ndarray:
    """Rows without a non-finite value (the NaN kind has whole NaN rows: removing them is the
    same as skipping the missing values per coordinate)."""
    return np.flatnonzero(np.isfinite(X).all(axis=1))


def _by_blocks(fn: Callable[[np.ndarray], np.ndarray], X: np.ndarray) -> np.ndarray:
    out = np.empty(X.shape[1], dtype=X.dtype)
    for j0 in range(0, X.shape[1], REF_BLOCK):
        out[j0 : j0 + REF_BLOCK] = fn(X[:, j0 : j0 + REF_BLOCK])
    return out


def ref_average(X, f):
    return np.nanmean(X, axis=0) if X.dtype == np.float64 else np.mean(X[_finite_rows(X)], 0)


def ref_median(X, f):
    Y = X[_finite_rows(X)]
    n = Y.shape[0]
    if n % 2:
        return _by_blocks(lambda B: np.partition(B, n // 2, axis=0)[n // 2], Y)

    def even(B):
        P = np.partition(B, (n // 2 - 1, n // 2), axis=0)
        return (0.5 * (P[n // 2 - 1].astype(np.float64) + P[n // 2])).astype(B.dtype)

    return _by_blocks(even, Y)


def ref_trimmed_mean(X, f):
    Y = X[_finite_rows(X)]
    n = Y.shape[0]
    return _by_blocks(
        lambda B: np.partition(B, (f, n - f - 1), axis=0)[f : n - f].mean(0, dtype=np.float64), Y
    )


def _window(S: np.ndarray, c: np.ndarray, m: int) -> np.ndarray:
    """Per column of the sorted S, the mean of the m values closest to c (ties towards the
    smaller value: the window [s, s + m) moves right while the left end is strictly farther)."""
    n = S.shape[0]
    S64 = S.astype(np.float64)
    s = np.zeros(S.shape[1], dtype=np.int64)
    for _ in range(n - m):
        i = np.arange(S.shape[1])
        move = (s < n - m) & ((c - S64[s, i]) > (S64[np.minimum(s + m, n - 1), i] - c))
        s += move
    csum = np.concatenate([np.zeros((1, S.shape[1])), np.cumsum(S64, axis=0)])
    i = np.arange(S.shape[1])
    return (csum[s + m, i] - csum[s, i]) / m


def ref_meamed(X, f):
    Y = X[_finite_rows(X)]
    n = Y.shape[0]

    def one(B):
        S = np.sort(B, axis=0)
        upper = S[n // 2].astype(np.float64)
        c = upper if n % 2 else 0.5 * (S[n // 2 - 1] + upper)
        return _window(S, c, n - f)

    return _by_blocks(one, Y)


def ref_phocas(X, f):
    Y = X[_finite_rows(X)]
    n = Y.shape[0]

    def one(B):
        S = np.sort(B, axis=0)
        return _window(S, S[f : n - f].mean(0, dtype=np.float64), n - f)

    return _by_blocks(one, Y)


def ref_sqdist(X: np.ndarray) -> np.ndarray:
    """Squared distances from a float64 Gram matrix of the rows centred per column block (BLAS
    on blocks of 2^18 columns); rows holding a non-finite value are infinitely far."""
    good = _finite_rows(X)
    n = X.shape[0]
    G = np.zeros((good.size, good.size))
    for j0 in range(0, X.shape[1], REF_BLOCK):
        B = X[good, j0 : j0 + REF_BLOCK].astype(np.float64)
        B -= B.mean(axis=0)
        G += B @ B.T
    diag = np.diag(G)
    Dg = np.maximum(diag[:, None] + diag[None, :] - 2 * G, 0.0)
    D = np.full((n, n), np.inf)
    D[np.ix_(good, good)] = Dg
    np.fill_diagonal(D, 0.0)
    return D


def _krum_order(D: np.ndarray, f: int) -> np.ndarray:
    n = D.shape[0]
    k = max(1, n - f - 2)
    Dn = D.copy()
    np.fill_diagonal(Dn, np.inf)
    scores = np.sort(Dn, axis=1)[:, :k].sum(axis=1)
    return np.argsort(scores, kind="stable")


def _mean_rows(X: np.ndarray, rows) -> np.ndarray:
    w = np.zeros(X.shape[0])
    w[list(rows)] = 1.0 / len(rows)
    return _weighted(X, w)


def _weighted(X: np.ndarray, w: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(w)
    out = np.zeros(X.shape[1])
    for i in rows:
        out += w[i] * X[i].astype(np.float64)
    return out.astype(X.dtype)


def ref_krum(X, f):
    return X[_krum_order(ref_sqdist(X), f)[0]].copy()


def ref_multi_krum(X, f):
    return _mean_rows(X, _krum_order(ref_sqdist(X), f)[: X.shape[0] - f])


def _medoid_index(D: np.ndarray) -> int:
    good = np.isfinite(D).sum(axis=1) == np.isfinite(D).sum(axis=1).max()
    sums = np.sqrt(D[:, good]).sum(axis=1)
    sums[~good] = np.inf
    return int(np.argmin(sums))


def ref_medoid(X, f):
    return X[_medoid_index(ref_sqdist(X))].copy()


def ref_cge(X, f):
    norms = np.array([np.dot(r.astype(np.float64), r.astype(np.float64)) for r in X])
    norms[~np.isfinite(norms)] = np.inf
    return _mean_rows(X, np.argsort(norms, kind="stable")[: X.shape[0] - f])


def ref_geometric_median(X, f):
    """Smoothed Weiszfeld on the float64 distances (z = sum_i a_i x_i: ||z - x_i||^2 from the
    squared distances), from the mean, the library's stopping rule; then one weighted sum."""
    D = ref_sqdist(X)
    good = np.isfinite(D).sum(axis=1) == np.isfinite(D).sum(axis=1).max()
    Dg = D[np.ix_(good, good)]
    scale = float(np.median(np.sqrt(Dg[Dg > 0])))
    a = np.full(int(good.sum()), 1.0 / good.sum())
    for _ in range(1000):
        # ||z - x_i||^2 = sum_j a_j D_ij - a^T D a / 2
        dist = np.sqrt(np.maximum(Dg @ a - 0.5 * a @ Dg @ a, 0.0))
        beta = 1.0 / np.maximum(dist, 1e-9 * scale)
        new = beta / beta.sum()
        step = new - a
        a = new
        if math.sqrt(max(-0.5 * step @ Dg @ step, 0.0)) <= 1e-8 * scale:
            break
    w = np.zeros(X.shape[0])
    w[good] = a
    return _weighted(X, w)


def ref_mda(X, f):
    """All C(n, f) subsets (enumerated with itertools; n <= 25 only)."""
    D = ref_sqdist(X)
    n = X.shape[0]
    if math.comb(n, f) > 200_000:
        raise NotImplementedError("C(n, f) too large for the brute-force reference")
    best, best_diam = None, np.inf
    for keep in itertools.combinations(range(n), n - f):
        diam = D[np.ix_(keep, keep)].max()
        if diam < best_diam:
            best, best_diam = keep, diam
    return _mean_rows(X, best)


def ref_centered_clipping(X, f):
    D = ref_sqdist(X)
    v = _medoid_index(D)
    dist = np.sqrt(D[v])
    finite = np.sort(dist[np.isfinite(dist)])
    tau = float(finite[(finite.size - 1) // 2])  # the lower median, as torch's median
    w = np.where(np.isfinite(dist), np.minimum(1.0, tau / np.maximum(dist, 1e-300)), 0.0) / len(X)
    w[v] += 1.0 - w.sum()  # v + mean_i (x_i - v) c_i
    return _weighted(X, w)


def ref_bulyan(X, f):
    D = ref_sqdist(X)
    n = X.shape[0]
    theta, beta = n - 2 * f, n - 4 * f
    remaining, chosen = list(range(n)), []
    for _ in range(theta):
        sub = D[np.ix_(remaining, remaining)]
        chosen.append(remaining.pop(int(_krum_order(sub, f)[0])))
    S = X[sorted(chosen)]

    def one(B):
        Bs = np.sort(B, axis=0)
        c = Bs[theta // 2].astype(np.float64) if theta % 2 else 0.5 * (
            Bs[theta // 2 - 1] + Bs[theta // 2].astype(np.float64)
        )
        return _window(Bs, c, beta)

    return _by_blocks(one, S)


def _nnm_matrix(D: np.ndarray, f: int) -> np.ndarray:
    n = D.shape[0]
    Dn = D.copy()
    np.fill_diagonal(Dn, -1.0)
    idx = np.argsort(Dn, axis=1, kind="stable")[:, : n - f]
    M = np.zeros((n, n))
    np.put_along_axis(M, idx, 1.0 / (n - f), axis=1)
    return M


def _mix(X: np.ndarray, M: np.ndarray) -> np.ndarray:
    """M X by float64 BLAS on column blocks; rows of M that mix a row holding a non-finite
    value give NaN rows (missing, as in the library)."""
    bad = ~np.isfinite(X).all(axis=1)
    missing = (M[:, bad] != 0).any(axis=1)
    Y = np.full((M.shape[0], X.shape[1]), np.nan, dtype=X.dtype)
    Mg = M[~missing][:, ~bad]
    Xg = X[~bad]
    for j0 in range(0, X.shape[1], REF_BLOCK):
        Y[~missing, j0 : j0 + REF_BLOCK] = Mg @ Xg[:, j0 : j0 + REF_BLOCK].astype(np.float64)
    return Y


def ref_nnm_trimmed_mean(X, f):
    return ref_trimmed_mean(_mix(X, _nnm_matrix(ref_sqdist(X), f)), f)


def ref_nnm_krum(X, f):
    Y = _mix(X, _nnm_matrix(ref_sqdist(X), f))
    return Y[_krum_order(ref_sqdist(Y), f)[0]].copy()


def ref_bucketing_median(X, f):
    import torch

    n = X.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(BUCKET_SEED)).numpy()
    Y = np.stack([X[perm[b : b + 2]].mean(0) for b in range(0, n, 2)])
    return ref_median(Y[_finite_rows(Y)], f)


REFERENCES: dict[str, Callable] = {
    "average": ref_average,
    "median": ref_median,
    "trimmed_mean": ref_trimmed_mean,
    "meamed": ref_meamed,
    "phocas": ref_phocas,
    "krum": ref_krum,
    "multi_krum": ref_multi_krum,
    "medoid": ref_medoid,
    "geometric_median": ref_geometric_median,
    "mda": ref_mda,
    "centered_clipping": ref_centered_clipping,
    "cge": ref_cge,
    "bulyan": ref_bulyan,
    "nnm+trimmed_mean": ref_nnm_trimmed_mean,
    "nnm+krum": ref_nnm_krum,
    "bucketing+median": ref_bucketing_median,
}
OPTIONS: dict[str, dict] = {
    "bucketing+median": {"seed": BUCKET_SEED},
    "dnc": {"seed": RANDOM_SEED},
    "signguard": {"seed": RANDOM_SEED},
}


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------
def kind_of(rule: str) -> str:
    if rule in COORDINATEWISE:
        return "coordinate-wise"
    if rule in DISTANCE_BASED:
        return "distance-based"
    return "filter" if rule in FILTERS else "composed"


# The device the inputs live on (``--device``); on CUDA every timing waits for the GPU.
DEVICE = "cpu"


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    if DEVICE != "cpu":
        import torch

        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (every field a ``size_t``)."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]


def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    """glibc's ``mallinfo2`` (2.33 and later), or None where the C library has none."""
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (AttributeError, OSError):
        return None
    fn.restype = _MallInfo2
    fn.argtypes = []
    return fn


_MALLINFO2 = _mallinfo2()


def heap_in_use() -> int | None:
    """Bytes malloc has handed out and not taken back, in every arena (``mallinfo2``: ordinary
    blocks plus mmapped ones), or None without glibc's ``mallinfo2``."""
    if _MALLINFO2 is None:
        return None
    info = _MALLINFO2()
    return int(info.uordblks) + int(info.hblkhd)


class PeakMemory:
    """The most memory above the level at entry, sampled every 0.5 ms: the larger of the growth
    of the resident set and of the bytes malloc has handed out (:func:`heap_in_use`; an output
    placed in freed memory that is still resident leaves the resident set as it was). On CUDA:
    the largest device memory torch allocated above the level at entry."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = False

    @staticmethod
    def rss() -> int:
        if DEVICE != "cpu":
            import torch

            return int(torch.cuda.max_memory_allocated())
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    @staticmethod
    def heap() -> int | None:
        return heap_in_use() if DEVICE == "cpu" else None

    def __enter__(self) -> PeakMemory:
        if DEVICE != "cpu":
            import torch

            torch.cuda.reset_peak_memory_stats()
        self.base = self.rss()
        self.heap_base = self.heap()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        self.peak = max(self.peak, self.rss() - self.base)
        heap = self.heap()
        if heap is not None and self.heap_base is not None:
            self.peak = max(self.peak, heap - self.heap_base)

    def _run(self) -> None:
        while not self._stop:
            self._sample()
            time.sleep(0.0005)

    def __exit__(self, *exc) -> None:
        self._stop = True
        self._thread.join()
        self._sample()


@dataclass
class Row:
    kind: str
    threads: int
    rule: str
    ours_s: float
    floor_s: float
    sum0_s: float
    ratio: float  # median over pairs of ours / floor
    ratio_sum0: float
    ratios: list[float] = field(default_factory=list)
    peak_mb: float | None = None
    ref_s: float | None = None
    max_diff: float | None = None
    tolerance: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def agrees(self) -> bool:
        return self.max_diff is None or self.max_diff <= (self.tolerance or 0.0)


def paired(
    fn: Callable[[], object], X, repeats: int, min_time: float
) -> tuple[float, float, float, float, float, list[float]]:
    """Time fn, the floor (the faster of X.sum() and the compiled read) and X.sum(0) in turns."""
    ours, floors, sums0 = [], [], []
    while len(ours) < repeats or (sum(ours) < min_time and len(ours) < MAX_REPEATS):
        read = timed(lambda: compiled_read(X))[0]
        total = timed(X.sum)[0]
        floors.append(min(read, total))
        sums0.append(timed(lambda: X.sum(0))[0])
        ours.append(timed(fn)[0])
    ratios = [a / b for a, b in zip(ours, floors, strict=True)]
    ratios0 = [a / b for a, b in zip(ours, sums0, strict=True)]
    return (
        statistics.median(ours),
        statistics.median(floors),
        statistics.median(sums0),
        statistics.median(ratios),
        statistics.median(ratios0),
        ratios,
    )


def finite_scale(Xn: np.ndarray) -> float:
    """The largest magnitude among the finite rows (the reference check's tolerance scale)."""
    return float(np.nanmax(np.abs(Xn[np.isfinite(Xn).all(axis=1)]))) if Xn.size else 1.0


def bench_rule(rule, X, Xn, f, kind, threads, args, scale: float = 1.0) -> Row:
    """Time ``rule`` on X against the floor; check it against its reference (tolerance
    relative to ``scale``, see :func:`finite_scale`)."""
    import torch

    import byzlearn.aggregators as agg

    impl = agg.get(rule)
    opts = OPTIONS.get(rule, {})
    try:
        _, ours = timed(lambda: impl(X, f, **opts))  # warm-up (compilation) + checked output
    except ValueError as exc:  # e.g. bucketing + median with f NaN rows: by design
        row = Row(kind, threads, rule, math.nan, math.nan, math.nan, math.nan, math.nan)
        row.notes.append(f"ValueError: {str(exc)[:70]}")
        return row
    with PeakMemory() as mem:
        impl(X, f, **opts)
    ours_s, floor_s, sum0_s, ratio, ratio0, ratios = paired(
        lambda: impl(X, f, **opts), X, args.repeats, args.min_time
    )
    row = Row(kind, threads, rule, ours_s, floor_s, sum0_s, ratio, ratio0, ratios)
    row.peak_mb = mem.peak / 2**20
    ref = REFERENCES.get(rule)
    if args.no_reference or ref is None:
        return row
    try:
        with torch.no_grad():
            ref_s, expected = timed(lambda: ref(Xn, f))
    except NotImplementedError as exc:
        row.notes.append(f"ref: {exc}")
        return row
    row.ref_s = ref_s
    ours_np = ours.cpu().numpy().astype(np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    row.tolerance = RTOL[args.dtype] * max(1.0, scale)
    diff = np.abs(ours_np - expected)
    diff[np.isnan(ours_np) & np.isnan(expected)] = 0.0
    bad = np.flatnonzero(~(diff <= row.tolerance))
    if 0 < bad.size <= 1000 and rule in COORDINATEWISE:
        # near-ties (two values equally close to the centre up to rounding): redo in float64
        redo = ref(Xn[:, bad].astype(np.float64), f)
        diff[bad] = np.abs(ours_np[bad] - redo)
        row.notes.append(f"{bad.size} coord(s) rechecked in float64")
    row.max_diff = float(diff.max())
    return row


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def load_average() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "unknown"


def machine_facts(args) -> list[tuple[str, str]]:
    import numba
    import torch

    from byzlearn.machine import cpu_name, memory

    cpu, mem = cpu_name(), memory()
    return [
        ("cpu", cpu),
        ("cores", str(os.cpu_count())),
        ("memory", mem),
        ("load average (1/5/15 min) at start", load_average()),
        ("python / torch / numba / numpy", f"{platform.python_version()} / {torch.__version__} / "
         f"{numba.__version__} / {np.__version__}"),
        ("dtype", args.dtype),
        ("device", "cpu" if args.device == "cpu" else torch.cuda.get_device_name()),
        ("date", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")),
    ]


def _ms(s: float | None) -> str:
    return "-" if s is None or (isinstance(s, float) and math.isnan(s)) else f"{s * 1e3:.1f}"


def _target(row: Row, d: int) -> str:
    t = TARGET.get(row.rule)
    if t is None or math.isnan(row.ratio):
        return "-"
    ok = row.ratio <= t
    mark = "yes" if ok else "NO"
    return f"<= {t:g}: {mark}" if d >= TARGET_D else f"<= {t:g}: ({mark.lower()})"


def table(rows: Sequence[Row], d: int, markdown: bool) -> str:
    header = ["input", "thr", "rule", "ours ms", "floor ms", "ours/floor", "spread", "target",
              "X.sum(0) ms", "ours/X.sum(0)", "peak MB", "ref ms", "ref/ours", "max abs diff",
              "notes"]
    lines = []
    for r in rows:
        spread = "-" if not r.ratios else f"{min(r.ratios):.2f}-{max(r.ratios):.2f}"
        diff = "-" if r.max_diff is None else f"{r.max_diff:.1e}"
        diff += "" if r.agrees else " MISMATCH"
        speed = "-" if r.ref_s is None or math.isnan(r.ours_s) else f"{r.ref_s / r.ours_s:.1f}x"
        lines.append([
            r.kind, str(r.threads), r.rule, _ms(r.ours_s), _ms(r.floor_s),
            "-" if math.isnan(r.ratio) else f"{r.ratio:.2f}", spread, _target(r, d),
            _ms(r.sum0_s), "-" if math.isnan(r.ratio_sum0) else f"{r.ratio_sum0:.2f}",
            "-" if r.peak_mb is None else f"{r.peak_mb:.0f}", _ms(r.ref_s), speed, diff,
            "; ".join(r.notes),
        ])
    return render(header, lines, markdown, right={1, 3, 4, 5, 8, 9, 10, 11, 12})


def render(header: list[str], lines: list[list[str]], markdown: bool, right: set[int]) -> str:
    if markdown:
        sep = ["---:" if i in right else "---" for i in range(len(header))]
        return "\n".join("| " + " | ".join(c) + " |" for c in [header, sep, *lines])
    widths = [max(len(x[i]) for x in [header, *lines]) for i in range(len(header))]

    def fmt(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines)])


def threads_summary(rows: Sequence[Row], n: int, d: int, itemsize: int, markdown: bool) -> str:
    """Per input and rule, the speed-up from 1 to 2 threads and the fraction of the read
    bandwidth used at 2 threads (the 2-thread floor / the 2-thread time: the share of the
    machine's read bandwidth a rule reading its input once would use)."""
    by = {(r.kind, r.rule, r.threads): r for r in rows}
    threads = sorted({r.threads for r in rows})
    if len(threads) < 2:
        return ""
    t1, t2 = threads[0], threads[-1]
    header = ["input", "rule", f"{t1} thr ms", f"{t2} thr ms", "speed-up",
              f"floor GB/s ({t2} thr)", "rule GB/s (one read)", "bandwidth used"]
    lines = []
    for (kind, rule, t), r2 in by.items():
        if t != t2 or (kind, rule, t1) not in by or math.isnan(r2.ours_s):
            continue
        r1 = by[(kind, rule, t1)]
        nbytes = n * d * itemsize
        lines.append([kind, rule, _ms(r1.ours_s), _ms(r2.ours_s), f"{r1.ours_s / r2.ours_s:.2f}x",
                      f"{nbytes / r2.floor_s / 1e9:.1f}", f"{nbytes / r2.ours_s / 1e9:.1f}",
                      f"{r2.floor_s / r2.ours_s:.0%}"])
    return render(header, lines, markdown, right={2, 3, 4, 5, 6, 7})


# --------------------------------------------------------------------------------------------
# --scale-n
# --------------------------------------------------------------------------------------------
def sgemm_rate(threads: int) -> float:
    """Multiply-adds per second of one large float32 GEMM (torch's BLAS) on ``threads``, on the
    benchmark's device."""
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(2048, 8192, device=DEVICE)
    b = torch.randn(8192, 2048, device=DEVICE)
    a @ b
    best = math.inf
    for _ in range(3):
        best = min(best, timed(lambda: a @ b)[0])
    return 2048 * 8192 * 2048 / best


def syrk_rate(threads: int) -> float:
    """Useful multiply-adds per second (n (n + 1) / 2 per column) of numpy's C @ C.T on a
    1000 x 16384 float32 buffer (the BLAS syrk the library's Gram pass uses for many rows)."""
    from byzlearn.aggregators._gram import blas_threads

    C = np.random.default_rng(0).standard_normal((1000, 16384)).astype(np.float32)
    with blas_threads(threads):
        C @ C.T
        best = min(timed(lambda: C @ C.T)[0] for _ in range(3))
    return 1000 * 1001 / 2 * 16384 / best


def scale_n(args) -> list[list[str]]:
    """The sweep's table rows. The sgemm and syrk rates are measured before each n and the
    bounds use the best of the run (the machine's rate: one measurement at the start gave 85 G
    in one run and 107 G in another of the same VM minutes apart, moving every distance-based
    ratio by a quarter)."""
    import torch

    import byzlearn.aggregators as agg
    from byzlearn.aggregators.rules.mda import EXACT_F

    threads = args.threads[0]
    torch.set_num_threads(threads)
    rates: list[float] = []  # sgemm, then syrk, measured before each n
    srates: list[float] = []
    timed_rows: list[tuple] = []
    for n in args.scale_values:
        rates.append(sgemm_rate(threads))
        srates.append(syrk_rate(threads) if DEVICE == "cpu" else math.nan)
        print(f"  n={n}: sgemm {rates[-1] / 1e9:.1f} G multiply-adds/s, syrk "
              f"{srates[-1] / 1e9:.1f} G/s", file=sys.stderr, flush=True)
        f = n // 5
        d = int(args.scale_d) if n < 500 else int(args.scale_d_large)
        X = make_inputs("honest", n, f, d, args.dtype, args.seed, DEVICE)
        compiled_read(X)
        for rule in args.rules:
            if rule not in SCALE_RULES:
                continue
            opts = dict(OPTIONS.get(rule, {}))
            note = ""
            if rule == "mda" and f > EXACT_F:
                opts["approximate"] = True
                note = f"approximate (f > {EXACT_F})"
            impl = agg.get(rule)
            try:
                impl(X, f, **opts)
            except ValueError as exc:
                timed_rows.append((n, f, d, rule, None, None, None, f"ValueError: {exc}"[:60]))
                continue
            ours_s, floor_s, _, ratio, _, _ = paired(
                lambda impl=impl, opts=opts, X=X, f=f: impl(X, f, **opts),
                X,
                args.repeats,
                args.min_time,
            )
            timed_rows.append((n, f, d, rule, ours_s, floor_s, ratio, note))
            print(f"  n={n} {rule}: {ours_s * 1e3:.1f} ms ({ratio:.2f} floors)", file=sys.stderr,
                  flush=True)
        del X
    rate = max(rates, default=math.nan)
    srate = max(srates, default=math.nan)
    print(f"measured sgemm rate (torch), best of the run: {rate / 1e9:.1f} G multiply-adds/s "
          f"({2 * rate / 1e9:.0f} GFLOP/s; before each n: "
          f"{', '.join(f'{r / 1e9:.1f}' for r in rates)}); syrk (numpy's C @ C.T, useful "
          f"multiply-adds): {srate / 1e9:.1f} G/s (before each n: "
          f"{', '.join(f'{r / 1e9:.1f}' for r in srates)}); {threads} thread(s)", flush=True)
    return [_scale_line(row, rate, srate) for row in timed_rows]


def _scale_line(row: tuple, rate: float, srate: float) -> list[str]:
    """One row of the sweep's table from its timings and the run's sgemm and syrk rates."""
    n, f, d, rule, ours_s, floor_s, ratio, note = row
    d_txt = f"{d:.0e}".replace("+0", "")
    if ours_s is None:  # the rule refused these n and f
        return [str(n), str(f), d_txt, rule, "-", "-", "-", "-", "-", "-", "-", note]
    kind = kind_of(rule)
    if kind == "coordinate-wise":
        vs, bound_txt, syrk_txt = ratio, "-", "-"
    else:
        bound = n * n * d / 2 / rate
        vs = ours_s / (bound + floor_s)
        bound_txt = f"{bound * 1e3:.1f}"
        sbound = n * n * d / 2 / srate
        syrk_txt = "-" if DEVICE != "cpu" else f"{ours_s / (sbound + floor_s):.2f}"
    target = SCALE_TARGET[kind]
    mark = "yes" if vs <= target else "NO"
    return [str(n), str(f), d_txt, rule, _ms(ours_s), _ms(floor_s), f"{ratio:.2f}", bound_txt,
            f"{vs:.2f}", f"<= {target:g}: {mark}", syrk_txt, note]


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--d", type=dimension, default=1e7, help="dimension")
    p.add_argument("--n", type=at_least(1), default=25)
    p.add_argument("--f", type=at_least(0), default=5)
    p.add_argument("--threads", type=at_least(1, MAX_THREADS), nargs="+", default=[1],
                   help="torch thread counts")
    p.add_argument("--inputs", nargs="+", default=list(INPUT_KINDS), choices=INPUT_KINDS)
    p.add_argument("--rules", nargs="+", default=None, choices=ALL_RULES, metavar="RULE",
                   help=f"subset of: {' '.join(ALL_RULES)}")
    p.add_argument("--repeats", type=at_least(1), default=5, help="timed pairs per rule (at least)")
    p.add_argument("--min-time", type=non_negative, default=0.5,
                   help="more pairs (at most 100) until the rule's runs add up to this (s)")
    p.add_argument("--dtype", default="float32", choices=sorted(RTOL))
    p.add_argument("--seed", type=at_least(0, 2**64 - 1), default=0)
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--markdown", action="store_true")
    p.add_argument(
        "--quick", action="store_true", help="smoke test: d = 1e5, 2 inputs (explicit options win)"
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where the inputs live; on cuda the floor is X.sum() on the GPU")
    p.add_argument("--scale-n", action="store_true", help="the sweep over n (see the docstring)")
    p.add_argument("--scale-values", type=at_least(1), nargs="+", default=list(SCALE_N))
    p.add_argument("--scale-d", type=dimension, default=1e6, help="d of the sweep for n < 500")
    p.add_argument("--scale-d-large", type=dimension, default=1e5,
                   help="d of the sweep for n >= 500")
    return p


def host_copies(args) -> int:
    """(n, d) inputs' worth of host memory a run holds at once: on the CPU the input and, while
    it is made, two blocks of up to 2^22 columns (or a rule's work: NNM's mixed rows); with the
    references, the input and up to three copies (NNM + trimmed mean's reference: the mixed
    rows, the finite rows, their finite rows), on a GPU a host copy of the input and those."""
    if not args.no_reference and not args.scale_n:
        return 4
    return 3 if args.device == "cpu" else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    quick = {"d": 1e5, "inputs": ["honest", "nan"], "repeats": 3, "min_time": 0.05}
    args = parse_with_quick(parser, argv, **quick)
    import torch

    import byzlearn.aggregators as agg

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device is available to torch here", file=sys.stderr)
        return 2
    global DEVICE
    DEVICE = args.device
    sizes, lower = [(args.n, int(args.d))], "--n or --d"
    if args.scale_n:
        sizes = [
            (n, int(args.scale_d if n < 500 else args.scale_d_large)) for n in args.scale_values
        ]
        lower = "--scale-values, --scale-d or --scale-d-large"
    n, d = max(sizes, key=lambda size: size[0] * size[1])
    itemsize = 4 if args.dtype == "float32" else 8
    check_memory(parser, host_copies(args) * n * d * itemsize, f"n={n} x d={d}", lower)
    sep = "\n" if args.markdown else ""
    for key, value in machine_facts(args):
        print(f"- {key}: {value}" if args.markdown else f"{key:>36}: {value}")
    print(sep, flush=True)
    if args.scale_n:
        args.rules = args.rules or list(SCALE_RULES)
        lines = scale_n(args)
        header = ["n", "f", "d", "rule", "ours ms", "floor ms", "ours/floor", "Gram bound ms",
                  "vs target", "target", "vs syrk bound", "notes"]
        print(render(header, lines, args.markdown, right={0, 1, 4, 5, 6, 7, 8, 10}))
        print(sep + "vs target: ours/floor for coordinate-wise rules; ours / (Gram bound + floor)"
              " for distance-based ones, the Gram bound being n^2 d / 2 multiply-adds at the "
              "sgemm rate (torch's BLAS; measured before each n, the best of the run); vs syrk "
              "bound: the same with the measured rate (the best of the run) "
              "of the syrk the library calls (numpy's BLAS), i.e. the overhead beyond that "
              "product.")
        print(f"load average (1/5/15 min) at the end: {load_average()}")
        return 0
    args.rules = args.rules or list(ALL_RULES)
    d, n, f = int(args.d), args.n, args.f
    try:  # the rules' requirements on n and f, before any input is made
        for rule in args.rules:
            agg.check(rule, n, f, **OPTIONS.get(rule, {}))
    except ValueError as err:
        return refused(err)
    rows: list[Row] = []
    for kind in args.inputs:
        X = make_inputs(kind, n, f, d, args.dtype, args.seed, DEVICE)
        # the references' input (on a GPU: a copy to the host, made only when it is checked)
        Xn = None if args.no_reference else X.cpu().numpy()
        scale = 1.0 if Xn is None else finite_scale(Xn)  # once per input
        for t in args.threads:
            torch.set_num_threads(t)
            compiled_read(X)
            for rule in args.rules:
                row = bench_rule(rule, X, Xn, f, kind, t, args, scale)
                rows.append(row)
                print(f"  {kind} threads={t} {rule}: {_ms(row.ours_s)} ms, {row.ratio:.2f} floors",
                      file=sys.stderr, flush=True)
        del X, Xn
    print(table(rows, d, args.markdown))
    print(sep + f"n = {n}, f = {f}, d = {d:.0e}; floor = the faster of X.sum() and a compiled "
          "one-pass read, timed in turns with the rule; ours/floor = median of the per-pair "
          "ratios (spread: their min-max); peak MB: memory above the input during one call "
          "(resident or handed out by malloc, the larger); ref: the fastest plain implementation "
          "(this file), ref/ours its time over ours.")
    summary = threads_summary(rows, n, d, itemsize, args.markdown)
    if summary:
        print(sep + summary)
    print(f"load average (1/5/15 min) at the end: {load_average()}")
    bad = [r for r in rows if not r.agrees]
    for r in bad:
        print(f"MISMATCH: {r.rule} on {r.kind}: max|ours - ref| = {r.max_diff:.3e} > "
              f"{r.tolerance:.3e}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
