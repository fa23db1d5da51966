"""The one selection kernel behind every coordinate-wise rule.

For each coordinate j, the kernel takes the values ``X[r, j]`` of the chosen rows r, drops the
non-finite ones (they are *missing*), sorts the k remaining values and returns one statistic of
them. Statistics:

- ``MEDIAN``: the middle value (mean of the two middle values when k is even);
- ``TRIMMED``: the mean of the values left after dropping ``drop`` from each end;
- ``CLOSEST_TO_MEDIAN``: the mean of the ``k - drop`` values closest to the median;
- ``CLOSEST_TO_TRIMMED``: the mean of the ``k - drop`` values closest to the ``drop``-trimmed mean;
- ``MEAN``: the mean of the finite values.

Ties in "closest" are broken towards the smaller value. Every mean is clamped to the range of the
values it averages, so rounding never puts an output outside that range (and a mean whose sum
overflows is recomputed from the scaled values). A coordinate with fewer than ``min_k`` finite
values (never fewer than the statistic needs: 2 ``drop`` + 1 for the trimmed ones, ``drop`` + 1
for ``CLOSEST_TO_MEDIAN``, 1 otherwise) cannot be aggregated safely; the kernel reports it and the
caller raises.

CPU: a numba kernel works on blocks of ``LANES`` coordinates held transposed in a small buffer
(cache resident) and sorts all lanes at once with a Batcher odd-even merge sorting network, whose
compare-exchange steps are branch-free min/max over contiguous lanes (SIMD friendly). Blocks run
in parallel over ``torch.get_num_threads()`` threads. Other devices: a blocked torch path (sort
along the rows), which is also the reference the tests compare the kernel with.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from byzlearn.aggregators._gram import block_size, column_blocks

MEDIAN, TRIMMED, CLOSEST_TO_MEDIAN, CLOSEST_TO_TRIMMED, MEAN = range(5)
LANES = 256

# Fewest finite values each statistic is defined on, given ``drop``.
_NEEDED = {
    MEDIAN: lambda drop: 1,
    TRIMMED: lambda drop: 2 * drop + 1,
    CLOSEST_TO_MEDIAN: lambda drop: drop + 1,
    CLOSEST_TO_TRIMMED: lambda drop: 2 * drop + 1,
    MEAN: lambda drop: 1,
}

try:  # numba is a dependency, but keep a working fallback if it cannot load
    import numba
    from numba import njit, prange

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    _HAVE_NUMBA = False


@functools.cache
def sorting_network(n: int) -> np.ndarray:
    """Compare-exchange pairs (a, b), a < b, of Batcher's odd-even merge sort for n inputs.

    Built for the next power of two; pairs touching padding positions are dropped, which is valid
    because padding holds +inf and never moves below position n.
    """
    size = 1
    while size < n:
        size *= 2
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        a, b = i + j, i + j + k
                        if b < n:
                            pairs.append((a, b))
            k //= 2
        p *= 2
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


if _HAVE_NUMBA:

    @njit(cache=True, inline="always")
    def _range_mean(col, lo, hi):
        """Mean of the sorted values col[lo:hi], clamped to [col[lo], col[hi - 1]]."""
        m = hi - lo
        acc = 0.0
        for t in range(lo, hi):
            acc += col[t]
        res = acc / m
        if not np.isfinite(res):  # the sum overflowed: average the scaled values
            res = 0.0
            for t in range(lo, hi):
                res += col[t] / m
        return min(max(res, col[lo]), col[hi - 1])

    @njit(cache=True, inline="always")
    def _window_mean(col, k, drop, centre):
        m = k - drop
        s = 0
        while s < k - m and (centre - col[s]) > (col[s + m] - centre):
            s += 1
        return _range_mean(col, s, s + m)

    @njit(cache=True)
    def _lane_statistic(col, k, stat, drop):
        if stat == 4:  # MEAN
            return _range_mean(col, 0, k)
        if stat == 1 or stat == 3:  # TRIMMED, or its mean as the centre
            trimmed = _range_mean(col, drop, k - drop)
            if stat == 1:
                return trimmed
            return _window_mean(col, k, drop, trimmed)
        half = k // 2
        if k % 2 == 1:
            med = col[half]
        else:
            a = col[half - 1]
            b = col[half]
            med = 0.5 * (a + b)
            if not np.isfinite(med):  # a + b overflowed
                med = 0.5 * a + 0.5 * b
        if stat == 0:
            return med
        return _window_mean(col, k, drop, med)

    @njit(parallel=True, cache=True)
    def _kernel(X, rows, pairs, stat, drop, min_k, out, first_bad):
        n_rows = rows.shape[0]
        d = X.shape[1]
        n_blocks = (d + 255) // 256
        for blk in prange(n_blocks):
            j0 = blk * 256
            w = min(256, d - j0)
            buf = np.empty((n_rows, 256), dtype=np.float64)
            cnt = np.zeros(256, dtype=np.int64)
            for r in range(n_rows):
                src = X[rows[r]]
                row = buf[r]
                for j in range(w):
                    v = src[j0 + j]
                    if np.isfinite(v):
                        row[j] = v
                        cnt[j] += 1
                    else:
                        row[j] = np.inf
            for p in range(pairs.shape[0]):
                ra = buf[pairs[p, 0]]
                rb = buf[pairs[p, 1]]
                for j in range(w):
                    x = ra[j]
                    y = rb[j]
                    ra[j] = min(x, y)
                    rb[j] = max(x, y)
            first_bad[blk] = -1
            col = np.empty(n_rows, dtype=np.float64)
            for j in range(w):
                k = cnt[j]
                if k < min_k or k == 0:
                    out[j0 + j] = np.nan
                    if first_bad[blk] < 0:
                        first_bad[blk] = j0 + j
                    continue
                for t in range(k):
                    col[t] = buf[t, j]
                out[j0 + j] = _lane_statistic(col, k, stat, drop)


def _torch_statistic(Xs: torch.Tensor, k: torch.Tensor, stat: int, drop: int) -> torch.Tensor:
    """Statistic of the sorted columns Xs (rows sorted, +inf last), k finite values per column."""
    n = Xs.shape[0]
    pos = torch.arange(n, device=Xs.device)[:, None]
    zero = torch.zeros((), dtype=Xs.dtype, device=Xs.device)

    def take(idx: torch.Tensor) -> torch.Tensor:
        return Xs.gather(0, idx.clamp(0, n - 1)[None, :])[0]

    def range_mean(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:  # mean of [lo, hi)
        # Masked sums, not differences of prefix sums: a prefix sum holding a huge outlier would
        # cancel catastrophically (e.g. -1e30 + 1 - (-1e30) == 0).
        inside = (pos >= lo[None, :]) & (pos < hi[None, :])
        m = (hi - lo).to(Xs.dtype)
        res = torch.where(inside, Xs, zero).sum(dim=0) / m
        bad = ~torch.isfinite(res)
        if bool(bad.any()):  # the sum overflowed: average the scaled values
            scaled = torch.where(inside, Xs / m, zero).sum(dim=0)
            res = torch.where(bad, scaled, res)
        return torch.minimum(torch.maximum(res, take(lo)), take(hi - 1))

    if stat == MEAN:
        return range_mean(torch.zeros_like(k), k)
    if stat in (TRIMMED, CLOSEST_TO_TRIMMED):
        centre = range_mean(torch.full_like(k, drop), k - drop)
        if stat == TRIMMED:
            return centre
    else:
        a, b = take((k - 1) // 2), take(k // 2)
        centre = 0.5 * (a + b)
        centre = torch.where(torch.isfinite(centre), centre, 0.5 * a + 0.5 * b)  # a + b overflowed
        if stat == MEDIAN:
            return centre
    m = k - drop
    s = torch.zeros_like(k)
    for _ in range(drop):
        move = (s < k - m) & ((centre - take(s)) > (take(s + m) - centre))
        s = s + move.long()
    return range_mean(s, s + m)


def _torch_path(X, rows, stat, drop, min_k, out):
    n_rows = rows.numel()
    size = block_size(n_rows, X.shape[1], X.device)
    for j0, j1 in column_blocks(X.shape[1], size):
        Xb = X[rows, j0:j1].double()
        finite = torch.isfinite(Xb)
        k = finite.sum(dim=0)
        Xs = torch.where(finite, Xb, torch.full_like(Xb, float("inf"))).sort(dim=0).values
        res = _torch_statistic(Xs, k.clamp(min=1), stat, drop)
        res[k < max(min_k, 1)] = float("nan")
        out[j0:j1] = res.to(out.dtype)


def coordinatewise(
    X: torch.Tensor,
    stat: int,
    drop: int,
    min_k: int,
    name: str,
    rows: torch.Tensor | None = None,
    force_torch: bool = False,
) -> torch.Tensor:
    """Apply one statistic per coordinate over the rows ``rows`` of X (all rows by default).

    Raises ``ValueError`` naming the rule when a coordinate has fewer than ``min_k`` finite values.
    """
    if stat not in _NEEDED:
        raise ValueError(f"{name}: unknown statistic {stat!r}")
    if drop < 0:
        raise ValueError(f"{name}: drop must be >= 0, got {drop}")
    min_k = max(int(min_k), _NEEDED[stat](drop))
    n, d = X.shape
    if rows is None:
        rows = torch.arange(n)
    out = torch.empty(d, dtype=X.dtype, device=X.device)
    if X.device.type == "cpu" and _HAVE_NUMBA and not force_torch:
        Xc = X if X.is_contiguous() else X.contiguous()
        torch_threads = torch.get_num_threads()
        threads = max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS))
        numba.set_num_threads(threads)
        n_blocks = (d + LANES - 1) // LANES
        first_bad = np.empty(n_blocks, dtype=np.int64)
        _kernel(
            Xc.numpy(),
            rows.cpu().numpy().astype(np.int64),
            sorting_network(rows.numel()),
            stat,
            drop,
            min_k,
            out.numpy(),
            first_bad,
        )
        # Starting numba's OpenMP threading layer (first call) resets the process-wide OpenMP
        # thread count that torch reads: give torch back the count the caller set.
        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)
        bad_blocks = first_bad[first_bad >= 0]
        first = int(bad_blocks[0]) if bad_blocks.size else -1
    else:
        _torch_path(X, rows.to(X.device), stat, drop, min_k, out)
        bad = torch.nonzero(torch.isnan(out)).flatten()
        first = int(bad[0]) if bad.numel() else -1
    if first >= 0:
        count = int(torch.isnan(out).sum())
        raise ValueError(
            f"{name}: {count} coordinate(s) have fewer than {min_k} finite values "
            f"(first: coordinate {first}); non-finite values are treated as missing and too "
            f"many are missing there to aggregate safely"
        )
    return out
