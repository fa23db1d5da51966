"""The mean of the rows of an (n, d) matrix in one compiled pass, with the finiteness test.

``mean_of_rows(X)`` is ``(1/n) sum_i X[i]`` when every value of ``X`` is finite, else ``None``
(the caller then takes its NaN-aware path: for ``average`` :func:`mean_of_finite` above 25
rows, else the selection kernel's ``MEAN``; a ``nanmean`` for the attacks' honest mean). On
the CPU, for float32 and float64, one numba pass
accumulates the column sums in float64, the rows in order, four per load and store of the sums,
in blocks of coordinates whose sums stay in L1 (:func:`._simd.sum_columns`; off AMD, fewer than
33 rows of a matrix larger than the last-level cache take blocks of 256 and prefetch each row's
next block just before they add its current one, :func:`._simd.prefetched_sums`: on an AVX-512
Xeon, 25 x 1e7 float32 values 0.92-1.09 floors against 1.11-1.24 with plain blocks of 512, 10 x
1e7 1.10 against 1.40; large matrices on ``torch.get_num_threads()`` threads, ranges of blocks
each: the same bits); the finiteness test
reads the sums, not the matrix again (a non-finite value makes its column's float64 sum
non-finite: float32 values cannot overflow a float64 sum of fewer than 10^200 rows, and a float64
matrix whose finite values overflow their sum is reported as non-finite, which the callers'
NaN-aware paths then handle). Against torch's ``X.mean(0)`` and the test of its sum (three
operations), this is one call, rounds once from float64, and reads the matrix once at memory
speed: on a 2-core AMD EPYC (Zen 3), one thread, A/B in one process against ``X.sum()`` in
turns, 25 x 1e7 float32 values took 1.19-1.26 floors against 2.7 for ``X.mean(0)`` and 2.2 for
the earlier path (torch above 2^18 values); 25 x 4e5 1.16-1.20 against 2.25; 25 x 4810 (a
training round's gradients) 51 against 55 us. The earlier kernel (two rows per pass, blocks of
1024) took 1.5-1.6 floors on large inputs.

Other devices, other dtypes and non-contiguous matrices: ``X.mean(0)`` and one test of
its sum (float32 sums for float32 inputs: the result may differ from the kernel's in the last
bits).
"""

from __future__ import annotations

import numpy as np
import torch

from byzlearn.aggregators import _memory
from byzlearn.aggregators._device import kernel_input
from byzlearn.aggregators._simd import SUM_MIN_COLUMNS_PER_THREAD, sum_plan
from byzlearn.aggregators._threads import in_parallel

_COLUMNS = 1024  # coordinates per block of the standard deviation: 8 KiB of float64 sums

try:
    from numba import njit

    from byzlearn.aggregators._simd import prefetch_run, wide
except ImportError:  # pragma: no cover
    njit = None  # type: ignore[assignment]


def mean_of_rows(X: torch.Tensor) -> torch.Tensor | None:
    """The mean of the rows of the (n, d) matrix ``X``, or ``None`` when a value of ``X`` is
    not finite (or ``X`` has no rows)."""
    if njit is None or X.numel() == 0 or not kernel_input(X) or not X.is_contiguous():
        out = torch.mean(X, dim=0, out=_memory.empty(X.shape[1], dtype=X.dtype, device=X.device))
        return out if bool(torch.isfinite(out.sum())) else None
    return _by_blocks(X, _mean_kernel)


def mean_of_finite(X: torch.Tensor) -> torch.Tensor | None:
    """The mean of each column of the (n, d) matrix ``X`` over its finite values (NaN and
    infinities are missing), clamped to the range of those values; ``None`` where the kernel
    does not apply (numba missing, another device or dtype, a non-contiguous or empty matrix),
    where a column holds no finite value, or where a sum of finite values overflows (the caller
    then takes its selection path, which reports or handles them).

    The pass of :func:`mean_of_rows`, block by block; a block whose sums are not all finite is
    read again for its finite values only (their float64 sum in row order, their count, their
    smallest and largest). A column without a missing value gets the same additions in the same
    order either way, so in float32 (where the clamp cannot move a mean rounded from float64)
    its mean is :func:`mean_of_rows`' to the bit, whatever the other columns hold. The
    selection kernel's ``MEAN``, which sorted each coordinate's values first, took 4.2-4.8
    floors for ``average`` on inputs with a missing value (25-200 rows, d = 1e6, one thread)."""
    if njit is None or X.numel() == 0 or not kernel_input(X) or not X.is_contiguous():
        return None
    return _by_blocks(X, _finite_mean_kernel)


def _by_blocks(X: torch.Tensor, kernel) -> torch.Tensor | None:
    """``kernel(Xn, out, b0, b1, cols, prefetched)`` over the blocks of columns of the CPU
    matrix X, on ``torch.get_num_threads()`` threads (ranges of blocks); None when a range
    reports False."""
    Xn = X.detach().numpy()
    out = _memory.empty(X.shape[1], dtype=X.dtype)
    o = out.numpy()
    # coordinates per block, and whether the next block is prefetched, for this host and input
    # (the same bits)
    cols, prefetched = sum_plan(X.shape[0], Xn.nbytes)
    blocks = -(-X.shape[1] // cols)
    done: list[bool] = []  # one answer per range of blocks
    in_parallel(
        lambda b0, b1: done.append(kernel(Xn, o, b0, b1, cols, prefetched)),
        blocks,
        torch.get_num_threads(),
        SUM_MIN_COLUMNS_PER_THREAD // cols,
    )
    return out if all(done) else None


if njit is not None:

    @njit(boundscheck=False, cache=True, nogil=True, inline="always")
    def _column_sums(X, j0, j1, sums, ahead=0):  # pragma: no cover (compiled)
        """sums[:j1 - j0] = the float64 sums of the columns j0:j1 of X, the rows added in
        order, four per load and store of the sums. ``ahead``: prefetch that many coordinates
        of each row from j1 on (the next block) just before the row's values are added."""
        n, d = X.shape
        w = j1 - j0
        prefetch_run(X, j1, ahead)
        first = X[0][j0:j1]
        for j in range(w):
            sums[j] = np.float64(first[j])
        r = 1
        while r + 3 < n:
            for u in range(4):
                prefetch_run(X, (r + u) * d + j1, ahead)
            r0, r1, r2, r3 = X[r][j0:j1], X[r + 1][j0:j1], X[r + 2][j0:j1], X[r + 3][j0:j1]
            for j in range(w):
                s01 = (sums[j] + np.float64(r0[j])) + np.float64(r1[j])
                sums[j] = (s01 + np.float64(r2[j])) + np.float64(r3[j])
            r += 4
        while r < n:
            prefetch_run(X, r * d + j1, ahead)
            row = X[r][j0:j1]
            for j in range(w):
                sums[j] += np.float64(row[j])
            r += 1

    @njit(boundscheck=False, cache=True, nogil=True)
    def _mean_kernel(X, out, b0, b1, cols, prefetched=False):  # pragma: no cover (compiled)
        """out = the float64 column sums of X divided by n, rounded to out's dtype, over the
        blocks b0..b1-1 of ``cols`` coordinates; False (at once, out then partly written) when
        a sum is not finite. Rows are added in order, four per pass over a block
        (``prefetched``: each row's next block prefetched as its current one is added)."""
        wide()
        n, d = X.shape
        sums = np.empty(min(d, cols))
        bad = 0
        for b in range(b0, b1):
            j0 = b * cols
            j1 = min(d, j0 + cols)
            w = j1 - j0
            _column_sums(X, j0, j1, sums, min(cols, d - j1) if prefetched else 0)
            block = out[j0:j1]
            for j in range(w):
                block[j] = sums[j] / n
                bad |= not (abs(sums[j]) < np.inf)  # NaN or infinite (an integer OR vectorises)
            if bad != 0:
                return False  # the caller takes its NaN-aware path: no need to read on
        return True


    @njit(boundscheck=False, cache=True, nogil=True)
    def _finite_mean_kernel(X, out, b0, b1, cols, prefetched=False):
        # pragma: no cover (compiled)
        """:func:`_mean_kernel`, except that a block whose sums are not all finite is read
        again for its finite values only: out = their float64 sum (rows in order) over their
        count, clamped to their range. False (at once) when a column of such a block holds no
        finite value or its sum overflows."""
        wide()
        n, d = X.shape
        w_max = min(d, cols)
        sums = np.empty(w_max)
        counts = np.empty(w_max)
        low = np.empty(w_max)
        high = np.empty(w_max)
        for b in range(b0, b1):
            if _mean_kernel(X, out, b, b + 1, cols, prefetched):
                continue  # every value of the block is finite
            j0 = b * cols
            j1 = min(d, j0 + cols)
            w = j1 - j0
            block = out[j0:j1]
            for j in range(w):
                sums[j] = 0.0
                counts[j] = 0.0
                low[j] = np.inf
                high[j] = -np.inf
            r = 0
            while r < n:  # two rows per load and store of the four accumulators; branch-free
                ra = X[r][j0:j1]
                rb = X[r + 1 if r + 1 < n else r][j0:j1]
                second = r + 1 < n
                for j in range(w):
                    s = sums[j]
                    c = counts[j]
                    lo = low[j]
                    hi = high[j]
                    v = np.float64(ra[j])
                    finite = abs(v) < np.inf
                    s += v if finite else 0.0
                    c += 1.0 if finite else 0.0
                    lo = v if finite and v < lo else lo
                    hi = v if finite and v > hi else hi
                    u = np.float64(rb[j])
                    finite = second and abs(u) < np.inf
                    s += u if finite else 0.0
                    c += 1.0 if finite else 0.0
                    lo = u if finite and u < lo else lo
                    hi = u if finite and u > hi else hi
                    sums[j] = s
                    counts[j] = c
                    low[j] = lo
                    high[j] = hi
                r += 2
            for j in range(w):
                if counts[j] == 0.0 or not abs(sums[j]) < np.inf:
                    return False
                m = sums[j] / counts[j]
                m = m if m > low[j] else low[j]
                block[j] = m if m < high[j] else high[j]
        return True


_STD_MIN_BLOCKS_PER_THREAD = 64  # 64 K coordinates: below that one thread


def std_of_rows(X: torch.Tensor) -> torch.Tensor | None:
    """The unbiased standard deviation of each column of the (n, d) matrix ``X`` over its
    finite values, ``sqrt(sum_i (x_ij - m_j)^2 / (k_j - 1))`` with ``m_j`` the mean of the
    ``k_j`` finite values (0 where ``k_j < 2``), in ``X``'s dtype; ``None`` where the kernel
    does not apply (numba missing, another device or dtype, a non-contiguous matrix).

    Two passes over each block of ``_COLUMNS`` coordinates, both in float64: the column sums,
    then the squared deviations from their mean (the block, ``n x 4 KiB`` in float32, is still
    in cache for the second pass); a block holding a NaN or an infinity (its sums are not
    finite) is redone over its finite values only, with their counts. torch's ``X.std(0)`` is
    slow along a short first dimension (torch 2.13, one thread: 20 x 4810 float32 in 1.15 ms
    against 12 us for ``X.mean(0)``; 20 x 1e6 in 242 ms against 5.6 ms), so every size takes
    the kernel.
    """
    if njit is None or not kernel_input(X) or not X.is_contiguous() or X.dim() != 2:
        return None
    n, d = X.shape
    out = _memory.empty(d, dtype=X.dtype)
    if n == 0 or d == 0:  # no values: 0, as for fewer than two
        return out.zero_()
    Xn, o = X.detach().numpy(), out.numpy()
    blocks = -(-d // _COLUMNS)
    in_parallel(
        lambda b0, b1: _std_kernel(Xn, o, b0, b1),
        blocks,
        torch.get_num_threads(),
        _STD_MIN_BLOCKS_PER_THREAD,
    )
    return out


if njit is not None:

    @njit(boundscheck=False, cache=True, nogil=True)
    def _std_kernel(X, out, b0, b1):  # pragma: no cover (compiled)
        """``out`` over the column blocks ``b0:b1`` (see :func:`std_of_rows`): per block, the
        float64 column sums (two rows per load and store of the sums), the means, the sums of
        squared deviations; a block whose sums are not finite (it holds a NaN or an infinity)
        is done again by :func:`_std_block_finite_values`."""
        wide()
        n, d = X.shape
        sums = np.empty(_COLUMNS)
        sq = np.empty(_COLUMNS)
        for b in range(b0, b1):
            j0 = b * _COLUMNS
            j1 = min(d, j0 + _COLUMNS)
            w = j1 - j0
            _column_sums(X, j0, j1, sums)
            for j in range(w):
                sq[j] = 0.0
            bad = 0
            for j in range(w):
                sums[j] = sums[j] / n  # the mean
                bad |= not (abs(sums[j]) < np.inf)  # an integer OR vectorises
            if bad != 0:
                _std_block_finite_values(X, out, j0, j1)
                continue
            r = 0
            while r + 1 < n:
                ra = X[r][j0:j1]
                rb = X[r + 1][j0:j1]
                for j in range(w):
                    t = np.float64(ra[j]) - sums[j]
                    u = np.float64(rb[j]) - sums[j]
                    sq[j] = (sq[j] + t * t) + u * u
                r += 2
            if r < n:
                ra = X[r][j0:j1]
                for j in range(w):
                    t = np.float64(ra[j]) - sums[j]
                    sq[j] += t * t
            block = out[j0:j1]
            for j in range(w):
                block[j] = np.sqrt(sq[j] / (n - 1)) if n > 1 else 0.0

    @njit(boundscheck=False, cache=True, nogil=True)
    def _std_block_finite_values(X, out, j0, j1):  # pragma: no cover (compiled)
        """``out[j0:j1]`` over the finite values of each column only (see
        :func:`std_of_rows`)."""
        n = X.shape[0]
        w = j1 - j0
        sums = np.zeros(w)
        counts = np.zeros(w)
        sq = np.zeros(w)
        for r in range(n):
            row = X[r][j0:j1]
            for j in range(w):
                x = np.float64(row[j])
                ok = abs(x) < np.inf  # False for NaN and +-inf
                sums[j] += x if ok else 0.0
                counts[j] += 1.0 if ok else 0.0
        for j in range(w):
            sums[j] = sums[j] / counts[j] if counts[j] > 0.0 else 0.0  # the mean
        for r in range(n):
            row = X[r][j0:j1]
            for j in range(w):
                x = np.float64(row[j])
                t = x - sums[j]
                sq[j] += t * t if abs(x) < np.inf else 0.0
        block = out[j0:j1]
        for j in range(w):
            block[j] = np.sqrt(sq[j] / (counts[j] - 1.0)) if counts[j] > 1.0 else 0.0
