"""Benchmark of the aggregation rules against the memory floor and plain-torch references.

Usage (from the repository root)::

    python benchmarks/aggregators.py                       # d = 1e5 1e6 1e7, threads 1 and 2
    python benchmarks/aggregators.py --quick               # smoke test: d = 1e5, 1 thread
    python benchmarks/aggregators.py --d 1e5 1e6 --threads 1 --markdown
    python benchmarks/aggregators.py --d 1e7 --threads 1 --rules median krum mda

For every dimension d, thread count t and rule, the script times (median over ``--repeats`` runs,
more for short calls, see ``--min-time``; after one warm-up run that also triggers numba's JIT
compilation):

- ``ours``: the library rule ``byzlearn.aggregators.get(rule)(X, f)``;
- ``floor``: ``X.sum(0)`` on the same input, the memory-bandwidth floor of any rule that must read
  all n * d values once, timed in turns with the rule; ``ours/floor`` is the median of the
  per-pair ratios (steadier than a ratio of medians on a host whose speed drifts);
- ``ref``: a plain-torch reference implementation of the same rule, written here the
  straightforward way (sort / median / topk / cdist / Weiszfeld in d-space / brute-force subset
  search), see ``REFERENCES``.

It checks that ``ours`` and ``ref`` agree (max abs difference, relative to the size of the inputs)
and exits with status 1 when any rule disagrees beyond the tolerance. Targets (at d = 1e7):
coordinate-wise rules within 3x of the floor, distance-based rules within 4x (filters and
compositions have no target; their rows show ``-``). See
``benchmarks/README.md`` for the meaning of every column.

Input: n - f honest rows ``mu + s_i * noise_i`` (``s_i`` spread over [0.8, 1.2] so that Krum
scores and subset diameters are well separated and the selections are unique) and f Byzantine
rows ``-mu + noise_j`` (a sign-flip attack), in the chosen dtype, from a fixed seed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the real imports happen in main(), after NUMBA_NUM_THREADS is set
    import torch

COORDINATEWISE = ("average", "median", "trimmed_mean", "meamed", "phocas")
DISTANCE_BASED = (
    "krum",
    "multi_krum",
    "medoid",
    "geometric_median",
    "mda",
    "bulyan",
    "centered_clipping",
    "cge",
)
# Rules the issue states no target for: filters (a Gram pass or a coordinate sample, then one
# weighted sum) and compositions with a pre-aggregator (their cost adds up).
FILTERS = ("caf", "dnc", "signguard")
COMPOSED = ("nnm+krum", "bucketing+median", "nnm+trimmed_mean")
ALL_RULES = COORDINATEWISE + DISTANCE_BASED + FILTERS + COMPOSED
TARGET = {"coordinate-wise": 3.0, "distance-based": 4.0}
TARGET_D = 10_000_000  # the dimension the targets are stated for

# Coordinate-wise references run on column blocks of this many coordinates, so that their sort /
# topk temporaries (values + int64 indices, several times the size of X) stay bounded at d = 1e7.
REF_COLUMN_BLOCK = 1 << 20
# A reference whose first (checked) run takes longer than this is not run again: its time is that
# single run (marked "1 run" in the notes).
DEFAULT_REF_BUDGET_S = 3.0
# Agreement tolerance: max |ours - ref| <= RTOL[dtype] * max(1, max |X|).
RTOL = {"float32": 1e-4, "float64": 1e-9}
BUCKET_SEED = 0
# Short measurements are repeated until they add up to --min-time seconds, at most this often.
MAX_REPEATS = 200
DEFAULT_MIN_TIME_S = 0.25
# At most this many coordinates where a coordinate-wise reference (or Bulyan's second phase)
# differs are rechecked in float64.
MAX_RECHECKED = 1000
GM_TOL = 1e-8  # the library's default geometric_median tolerance, used by the reference too
GM_MAX_ITER = 1000
GM_STALL = 5
# Notes a reference leaves about its last run (e.g. iteration counts).
REF_INFO: dict[str, str] = {}
# State a reference leaves for the float64 recheck (Bulyan's selection).
REF_STATE: dict[str, torch.Tensor] = {}


# --------------------------------------------------------------------------------------------
# Plain-torch references
# --------------------------------------------------------------------------------------------
def _by_columns(
    fn: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor, block: int = REF_COLUMN_BLOCK
) -> torch.Tensor:
    """Apply a coordinate-wise ``fn`` ((n, b) -> (b,)) on column blocks of X (bounded memory)."""
    import torch

    if X.shape[1] <= block:
        return fn(X)
    return torch.cat([fn(X[:, j : j + block]) for j in range(0, X.shape[1], block)])


def ref_average(X: torch.Tensor, f: int) -> torch.Tensor:
    """Plain mean."""
    return X.mean(dim=0)


def ref_median(X: torch.Tensor, f: int) -> torch.Tensor:
    """``torch.median(dim=0)`` (n odd here, so the lower median is the median)."""
    import torch

    return _by_columns(lambda B: torch.median(B, dim=0).values, X)


def ref_trimmed_mean(X: torch.Tensor, f: int) -> torch.Tensor:
    """Sort each coordinate, drop f values per side, average the rest."""
    n = X.shape[0]
    return _by_columns(lambda B: B.sort(dim=0).values[f : n - f].mean(dim=0), X)


def _closest_mean(S: torch.Tensor, centre: torch.Tensor, m: int) -> torch.Tensor:
    """Per column, the mean of the m values of S (sorted along dim 0) closest to ``centre``,
    ties towards the smaller value like the library (a stable sort of the distances + gather)."""
    idx = (S - centre).abs().sort(dim=0, stable=True).indices[:m]
    return S.gather(0, idx).mean(dim=0)


def ref_meamed(X: torch.Tensor, f: int) -> torch.Tensor:
    """Sort for the median, then the mean of the n - f values closest to it."""
    n = X.shape[0]

    def one(B: torch.Tensor) -> torch.Tensor:
        S = B.sort(dim=0).values
        med = S[n // 2] if n % 2 else 0.5 * (S[n // 2 - 1] + S[n // 2])
        return _closest_mean(S, med, n - f)

    return _by_columns(one, X)


def ref_phocas(X: torch.Tensor, f: int) -> torch.Tensor:
    """Sort for the f-trimmed mean, then the mean of the n - f values closest to it."""
    n = X.shape[0]

    def one(B: torch.Tensor) -> torch.Tensor:
        S = B.sort(dim=0).values
        return _closest_mean(S, S[f : n - f].mean(dim=0), n - f)

    return _by_columns(one, X)


def _sqdist(X: torch.Tensor) -> torch.Tensor:
    """Pairwise squared distances with ``torch.cdist`` (its default mode: for n <= 25 rows it
    sums the coordinate differences directly, no Gram-matrix cancellation, O(n^2) memory)."""
    import torch

    return torch.cdist(X, X) ** 2


def _krum_pick(D: torch.Tensor, f: int) -> int:
    """Index of the Krum choice for the squared-distance matrix D (self excluded)."""
    n = D.shape[0]
    k = max(1, n - f - 2)
    scores = D.topk(k + 1, dim=1, largest=False).values.sum(dim=1)  # includes D[i, i] = 0
    return int(scores.argmin())


def ref_krum(X: torch.Tensor, f: int) -> torch.Tensor:
    """cdist**2, sum of the n - f - 2 smallest per row, the row of least score."""
    return X[_krum_pick(_sqdist(X), f)].clone()


def ref_multi_krum(X: torch.Tensor, f: int) -> torch.Tensor:
    """cdist**2, Krum scores, mean of the n - f rows of least score."""
    n = X.shape[0]
    D = _sqdist(X)
    scores = D.topk(n - f - 1, dim=1, largest=False).values.sum(dim=1)
    return X[scores.topk(n - f, largest=False).indices].mean(dim=0)


def ref_medoid(X: torch.Tensor, f: int) -> torch.Tensor:
    """cdist, the row of least summed distance."""
    import torch

    return X[int(torch.cdist(X, X).sum(dim=1).argmin())].clone()


def ref_geometric_median(X: torch.Tensor, f: int) -> torch.Tensor:
    """Smoothed Weiszfeld in d-space with the library's stopping rule: from the mean, until the
    step is below ``GM_TOL`` times the median pairwise distance (nu = 1e-9 of it), at most
    ``GM_MAX_ITER`` iterations. In float32 that tolerance can lie below the rounding of z, so the
    iteration also stops when the step has not decreased for ``GM_STALL`` iterations."""
    import torch

    C = torch.cdist(X, X)
    off = C[~torch.eye(X.shape[0], dtype=torch.bool)]
    scale = float(off[off > 0].median())
    nu = 1e-9 * scale
    z = X.mean(dim=0)
    best_step, stalled, iterations, reason = math.inf, 0, 0, "max_iter"
    for iterations in range(1, GM_MAX_ITER + 1):  # noqa: B007  (reported after the loop)
        dist = torch.cdist(X, z[None, :])[:, 0]
        beta = 1.0 / dist.clamp(min=nu)
        new = (beta / beta.sum()) @ X
        step = float(torch.linalg.vector_norm(new - z))
        z = new
        if step <= GM_TOL * scale:
            reason = "tol"
            break
        stalled = stalled + 1 if step >= best_step else 0
        best_step = min(best_step, step)
        if stalled >= GM_STALL:
            reason = "stalled"
            break
    REF_INFO["geometric_median"] = f"ref: {iterations} Weiszfeld its ({reason})"
    return z


def ref_mda(X: torch.Tensor, f: int) -> torch.Tensor:
    """Brute force: cdist, then every (n - f)-subset (itertools.combinations), least diameter."""
    import numpy as np

    n = X.shape[0]
    D = _sqdist(X).double().numpy()
    best, best_diam = None, math.inf
    for keep in itertools.combinations(range(n), n - f):
        diam = D[np.ix_(keep, keep)].max()
        if diam < best_diam:
            best, best_diam = keep, diam
    assert best is not None
    return X[list(best)].mean(dim=0)


def ref_bulyan(X: torch.Tensor, f: int) -> torch.Tensor:
    """cdist**2 once; theta = n - 2f rounds of Krum on the remaining rows (submatrix of D);
    then, per coordinate, the mean of the beta = theta - 2f selected values closest to the
    median (sort + stable sort of the distances + gather)."""
    import torch

    n = X.shape[0]
    theta = n - 2 * f
    beta = theta - 2 * f
    D = _sqdist(X)
    remaining = list(range(n))
    chosen: list[int] = []
    for _ in range(theta):
        sub = D[remaining][:, remaining]
        chosen.append(remaining.pop(_krum_pick(sub, f)))
    kept = torch.tensor(sorted(chosen))
    REF_STATE["bulyan"] = kept
    return _bulyan_trim(X[kept], beta)


def _bulyan_trim(S: torch.Tensor, beta: int) -> torch.Tensor:
    """Bulyan's second phase: per coordinate, the mean of the beta values closest to the median
    of the selected rows S."""
    theta = S.shape[0]

    def one(B: torch.Tensor) -> torch.Tensor:
        Bs = B.sort(dim=0).values
        med = Bs[theta // 2] if theta % 2 else 0.5 * (Bs[theta // 2 - 1] + Bs[theta // 2])
        return _closest_mean(Bs, med, beta)

    return _by_columns(one, S)


def recheck(rule: str, X: torch.Tensor, cols: torch.Tensor, f: int) -> torch.Tensor | None:
    """The reference at the coordinates ``cols`` only, in float64, or None when the rule's
    coordinates are not independent (distance-based rules other than Bulyan's second phase)."""
    if kind_of(rule) == "coordinate-wise":
        return REFERENCES[rule](X[:, cols].double(), f)
    if rule == "bulyan" and "bulyan" in REF_STATE:
        kept = REF_STATE["bulyan"]
        return _bulyan_trim(X[kept][:, cols].double(), X.shape[0] - 4 * f)
    return None


def ref_centered_clipping(X: torch.Tensor, f: int) -> torch.Tensor:
    """One centred-clipping step in d-space from the medoid (cdist), radius tau = median
    distance to it: ``v + mean_i (x_i - v) min(1, tau / ||x_i - v||)``."""
    import torch

    v = X[int(torch.cdist(X, X).sum(dim=1).argmin())]
    diff = X - v
    norms = torch.linalg.vector_norm(diff, dim=1)
    tau = norms.median()
    w = torch.where(norms > tau, tau / norms, torch.ones_like(norms))
    return v + (diff * w[:, None]).mean(dim=0)


def ref_cge(X: torch.Tensor, f: int) -> torch.Tensor:
    """Row norms, mean of the n - f rows of least norm."""
    import torch

    n = X.shape[0]
    norms = torch.linalg.vector_norm(X, dim=1)
    return X[norms.topk(n - f, largest=False).indices].mean(dim=0)


def ref_nnm_krum(X: torch.Tensor, f: int) -> torch.Tensor:
    """NNM in d-space (cdist, each row replaced by the mean of its n - f nearest rows, itself
    included; an (n, d) matmul), then Krum (cdist**2) on the mixed rows."""
    import torch

    n = X.shape[0]
    D = _sqdist(X)
    D.fill_diagonal_(-1.0)
    idx = D.topk(n - f, dim=1, largest=False).indices
    M = torch.zeros(n, n, dtype=X.dtype).scatter_(1, idx, 1.0 / (n - f))
    Y = M @ X
    return Y[_krum_pick(_sqdist(Y), f)].clone()


def ref_bucketing_median(X: torch.Tensor, f: int) -> torch.Tensor:
    """Shuffle with the seed given to the library, average buckets of 2, torch.median(dim=0)."""
    import torch

    n = X.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(BUCKET_SEED))
    Y = torch.stack([X[perm[b : b + 2]].mean(dim=0) for b in range(0, n, 2)])
    if Y.shape[0] % 2 == 0:
        raise ValueError("ref_bucketing_median assumes an odd number of buckets")
    return ref_median(Y, f)


REFERENCES: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
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
    "bulyan": ref_bulyan,
    "centered_clipping": ref_centered_clipping,
    "cge": ref_cge,
    "nnm+krum": ref_nnm_krum,
    "bucketing+median": ref_bucketing_median,
}
# Options passed to the library rule (to match the reference).
OPTIONS: dict[str, dict] = {"bucketing+median": {"seed": BUCKET_SEED}}
# Notes printed next to a rule's row.
NOTES: dict[str, str] = {
    "mda": "ref: C(n, f) subsets",
    "bulyan": "ref: cdist once, Krum on submatrices",
}


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One line of the result table."""

    d: int
    threads: int
    rule: str
    kind: str
    ours_s: float
    floor_s: float
    pair_ratio: float | None = None  # median of (rule time / floor time) over interleaved pairs
    ref_s: float | None = None
    max_diff: float | None = None
    tolerance: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.pair_ratio if self.pair_ratio is not None else self.ours_s / self.floor_s

    @property
    def speedup(self) -> float | None:
        return None if self.ref_s is None else self.ref_s / self.ours_s

    @property
    def agrees(self) -> bool:
        return self.max_diff is None or self.max_diff <= (self.tolerance or 0.0)

    def target_mark(self) -> str:
        """``yes`` / ``NO`` at the target dimension, ``(yes)`` / ``(no)`` below it."""
        if self.kind not in TARGET:
            return "-"
        ok = self.ratio <= TARGET[self.kind]
        if self.d >= TARGET_D:
            return "yes" if ok else "NO"
        return "(yes)" if ok else "(no)"


def kind_of(rule: str) -> str:
    """``coordinate-wise``, ``distance-based``, ``filter`` or ``composed``."""
    if rule in COORDINATEWISE:
        return "coordinate-wise"
    if rule in DISTANCE_BASED:
        return "distance-based"
    return "filter" if rule in FILTERS else "composed"


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """Wall time of one call and its result."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median_time(fn: Callable[[], object], repeats: int, min_time: float = 0.0) -> float:
    """Median wall time of at least ``repeats`` calls, more (up to ``MAX_REPEATS``) until they
    add up to ``min_time`` seconds: short calls get enough samples for a robust median on a
    machine shared with other work."""
    times: list[float] = []
    while len(times) < repeats or (sum(times) < min_time and len(times) < MAX_REPEATS):
        times.append(timed(fn)[0])
    return statistics.median(times)


def paired_times(
    fn: Callable[[], object], floor: Callable[[], object], repeats: int, min_time: float = 0.0
) -> tuple[float, float, float]:
    """Time ``fn`` and ``floor`` alternately: (median fn time, median floor time, median of the
    per-pair ratios). On a machine whose speed drifts (shared hosts, turbo), a ratio taken from
    calls made moments apart is far steadier than one of two separately timed medians."""
    ours: list[float] = []
    floors: list[float] = []
    while len(ours) < repeats or (sum(ours) < min_time and len(ours) < MAX_REPEATS):
        floors.append(timed(floor)[0])
        ours.append(timed(fn)[0])
    ratios = [a / b for a, b in zip(ours, floors, strict=True)]
    return statistics.median(ours), statistics.median(floors), statistics.median(ratios)


def make_inputs(n: int, f: int, d: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """n - f honest rows ``mu + s_i noise_i`` (s_i in [0.8, 1.2]) and f rows ``-mu + noise``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=dtype)
    mu = torch.randn(d, generator=g, dtype=dtype)
    scales = torch.linspace(0.8, 1.2, n - f, dtype=dtype)
    X[: n - f].mul_(scales[:, None]).add_(mu)
    X[n - f :].sub_(mu)
    return X


def bench_rule(
    rule: str,
    X: torch.Tensor,
    f: int,
    repeats: int,
    threads: int,
    with_reference: bool,
    ref_budget_s: float,
    rtol: float,
    min_time: float = 0.0,
) -> Row:
    """Warm up, time the library rule, run/time the reference and compare the outputs."""
    import torch

    import byzlearn.aggregators as agg

    impl = agg.get(rule)
    opts = OPTIONS.get(rule, {})
    _, ours = timed(lambda: impl(X, f, **opts))  # warm-up (JIT) + the checked output
    floor_repeats = max(repeats, 5)
    ours_s, floor_s, ratio = paired_times(
        lambda: impl(X, f, **opts), lambda: X.sum(dim=0), floor_repeats, min_time
    )
    row = Row(X.shape[1], threads, rule, kind_of(rule), ours_s, floor_s, ratio)
    if rule in NOTES:
        row.notes.append(NOTES[rule])
    ref = REFERENCES.get(rule)
    if not with_reference or ref is None:
        return row
    with torch.no_grad():
        ref_first, expected = timed(lambda: ref(X, f))
        if rule in REF_INFO:  # e.g. the number of Weiszfeld iterations
            row.notes.append(REF_INFO.pop(rule))
        if ref_first > ref_budget_s or repeats == 1:
            row.ref_s = ref_first
            if repeats > 1:
                row.notes.append("ref: 1 run")
        else:
            row.ref_s = median_time(lambda: ref(X, f), repeats, min_time)
    assert isinstance(ours, torch.Tensor) and isinstance(expected, torch.Tensor)
    row.tolerance = rtol * max(1.0, float(X.abs().max()))
    diff = (ours.double() - expected.double()).abs()
    cols = torch.nonzero(diff > row.tolerance).flatten()
    if 0 < cols.numel() <= MAX_RECHECKED:
        # Near-ties ("closest to the centre" picks, rounding of the centre) can make a reference
        # in the input precision choose differently at a few coordinates: redo those in float64.
        with torch.no_grad():
            exact = recheck(rule, X, cols, f)
        if exact is not None:
            diff[cols] = (ours[cols].double() - exact).abs()
            row.notes.append(f"{cols.numel()} coord(s) rechecked in float64")
    row.max_diff = float(diff.max())
    return row


def parse_dims(values: Sequence[str]) -> list[int]:
    """``["1e5", "1000000"]`` -> ``[100000, 1000000]``."""
    dims = []
    for v in values:
        try:
            x = float(v)
        except ValueError:
            raise SystemExit(f"--d: {v!r} is not a number") from None
        if not x.is_integer() or x < 1:
            raise SystemExit(f"--d: {v!r} is not a positive integer")
        dims.append(int(x))
    return dims


def default_repeats(d: int) -> int:
    """5 repeats up to d = 1e6, 3 above."""
    return 5 if d <= 1_000_000 else 3


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def load_average() -> str:
    """The 1, 5 and 15 minute load averages (``/proc/loadavg``)."""
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "unknown"


def machine_facts(threads: Sequence[int], dtype: str, n: int, f: int) -> list[tuple[str, str]]:
    """What the timings were taken on (CPU, memory, versions, settings, date)."""
    import numba
    import numpy
    import torch

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        cpu = platform.processor() or "unknown"
    mem = "unknown"
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal"):
                    mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                    break
    except OSError:
        pass
    load = load_average()
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    return [
        ("cpu", cpu),
        ("cores", f"{cores} (usable by this process: {usable})"),
        ("memory", mem),
        ("load average (1/5/15 min)", load),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        (
            "numba",
            f"{numba.__version__} (NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS}, "
            f"NUMBA_THREADING_LAYER={numba.config.THREADING_LAYER})",
        ),
        ("numpy", numpy.__version__),
        ("threads", " ".join(map(str, threads))),
        ("dtype", dtype),
        ("n, f", f"{n}, {f}"),
        ("date", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")),
    ]


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:.2f}"


def _fmt_diff(row: Row) -> str:
    if row.max_diff is None:
        return "-"
    return f"{row.max_diff:.1e}" + ("" if row.agrees else " MISMATCH")


def table(rows: Sequence[Row], markdown: bool) -> str:
    """The result table, as aligned text or as a Markdown table."""
    header = [
        "d",
        "thr",
        "rule",
        "kind",
        "ours ms",
        "floor ms",
        "ours/floor",
        "target",
        "ref ms",
        "speed-up",
        "max|diff|",
        "notes",
    ]
    lines = [
        [
            f"{r.d:.0e}".replace("+0", ""),
            str(r.threads),
            r.rule,
            r.kind,
            _ms(r.ours_s),
            _ms(r.floor_s),
            f"{r.ratio:.2f}",
            r.target_mark(),
            _ms(r.ref_s),
            "-" if r.speedup is None else f"{r.speedup:.1f}x",
            _fmt_diff(r),
            "; ".join(r.notes),
        ]
        for r in rows
    ]
    right = {0, 1, 4, 5, 6, 8, 9}
    if markdown:
        sep = ["---:" if i in right else "---" for i in range(len(header))]
        return "\n".join("| " + " | ".join(c) + " |" for c in [header, sep, *lines])
    widths = [max(len(x[i]) for x in [header, *lines]) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines)])


def legend(n: int, f: int) -> str:
    """Short explanation printed under the table."""
    return (
        "ours = library rule, floor = X.sum(0) on the same input (timed in turns with the rule), "
        "ref = plain-torch reference (this file); times are medians over the repeats, "
        "ours/floor is the median of the per-pair ratios.\n"
        f"target (at d = 1e7): ours/floor <= {TARGET['coordinate-wise']:g} for coordinate-wise "
        f"rules, <= {TARGET['distance-based']:g} for distance-based ones; '(yes)'/'(no)' below "
        "d = 1e7 is informative only; '-': no target (filters, compositions).\n"
        "speed-up = ref / ours; max|diff| = max |ours - ref| (MISMATCH when above tolerance).\n"
        f"mda reference enumerates all C({n}, {f}) = {math.comb(n, f)} subsets of removed inputs."
    )


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--d", nargs="+", default=["1e5", "1e6", "1e7"], help="dimensions")
    p.add_argument("--n", type=int, default=25, help="number of input vectors")
    p.add_argument("--f", type=int, default=5, help="number of Byzantine inputs")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts")
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed runs per measurement (default: 5 for d <= 1e6, 3 above)",
    )
    p.add_argument(
        "--rules",
        nargs="+",
        default=list(ALL_RULES),
        choices=ALL_RULES,
        metavar="RULE",
        help=f"subset of: {' '.join(ALL_RULES)}",
    )
    p.add_argument(
        "--min-time",
        type=float,
        default=DEFAULT_MIN_TIME_S,
        help=f"repeat a measurement beyond --repeats (at most {MAX_REPEATS} runs) until its runs "
        "add up to this many seconds",
    )
    p.add_argument("--dtype", default="float32", choices=sorted(RTOL), help="input dtype")
    p.add_argument("--seed", type=int, default=0, help="seed of the input data")
    p.add_argument("--no-reference", action="store_true", help="skip the references")
    p.add_argument(
        "--ref-budget",
        type=float,
        default=DEFAULT_REF_BUDGET_S,
        help="a reference slower than this (seconds) on its checked run is not repeated",
    )
    p.add_argument(
        "--threading-layer",
        default="default",
        choices=["default", "workqueue", "omp", "tbb"],
        help="numba threading layer (sets NUMBA_THREADING_LAYER); 'default' leaves numba's choice",
    )
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("--quick", action="store_true", help="smoke test: d = 1e5, 1 thread")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when every reference agrees with the library, 1 otherwise."""
    args = build_parser().parse_args(argv)
    dims = [100_000] if args.quick else parse_dims(args.d)
    threads = [1] if args.quick else args.threads
    if min(threads) < 1 or (args.repeats is not None and args.repeats < 1):
        raise SystemExit("--threads and --repeats must be >= 1")
    # The library's numba kernel uses min(torch.get_num_threads(), NUMBA_NUM_THREADS) threads and
    # numba reads NUMBA_NUM_THREADS once, when it is first imported (by byzlearn, below).
    os.environ.setdefault("NUMBA_NUM_THREADS", str(max(2, *threads)))
    if args.threading_layer != "default":
        os.environ["NUMBA_THREADING_LAYER"] = args.threading_layer
    import numba
    import torch

    import byzlearn.aggregators as agg

    if max(threads) > numba.config.NUMBA_NUM_THREADS:
        print(
            f"warning: NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS} caps the numba "
            f"kernel below --threads {max(threads)}",
            file=sys.stderr,
        )
    dtype = getattr(torch, args.dtype)
    for rule in args.rules:
        agg.check(rule, args.n, args.f, **OPTIONS.get(rule, {}))

    sep = "\n" if args.markdown else ""
    for key, value in machine_facts(threads, args.dtype, args.n, args.f):
        print(f"- {key}: {value}" if args.markdown else f"{key:>26}: {value}")
    print(sep, flush=True)

    rows: list[Row] = []
    for d in dims:
        repeats = args.repeats or default_repeats(d)
        X = make_inputs(args.n, args.f, d, dtype, args.seed)
        for t in threads:
            torch.set_num_threads(t)
            X.sum(dim=0)  # warm-up
            for rule in args.rules:
                # The floor is timed in turns with each rule, so that both see the same load.
                row = bench_rule(
                    rule,
                    X,
                    args.f,
                    repeats,
                    t,
                    not args.no_reference,
                    args.ref_budget,
                    RTOL[args.dtype],
                    args.min_time,
                )
                rows.append(row)
                print(
                    f"  d={d:.0e} threads={t} {rule}: ours {_ms(row.ours_s)} ms, "
                    f"ref {_ms(row.ref_s)} ms",
                    file=sys.stderr,
                    flush=True,
                )
        del X

    print(table(rows, args.markdown))
    print(sep + legend(args.n, args.f))
    print(f"load average (1/5/15 min) at the end: {load_average()}")
    try:
        print(f"numba threading layer used: {numba.threading_layer()}")
    except ValueError:  # no parallel numba kernel ran
        print("numba threading layer used: none (no parallel kernel ran)")
    bad = [r for r in rows if not r.agrees]
    for r in bad:
        print(
            f"MISMATCH: {r.rule} at d={r.d} threads={r.threads}: max|ours - ref| = "
            f"{r.max_diff:.3e} > tolerance {r.tolerance:.3e}",
            file=sys.stderr,
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
