"""The per-round statistics of the honest inputs that :class:`.observers.TruthObserver` records,
in one compiled call.

For the ``m`` honest rows ``h_r`` of the submitted ``(n, d)`` matrix and the aggregate ``a``:

- ``dist_honest_mean = ||a - mean||``, ``mean = (1/m) sum_r h_r``;
- ``variance_norm_ratio = sqrt((1/m) sum_r ||h_r - mean||^2) / ||mean||``, the spread of the
  honest gradients over the norm of their mean (El Mhamdi, Guerraoui, Rouault, "Distributed
  Momentum for Byzantine-resilient Stochastic Gradient Descent", ICLR 2021).

In torch these are seven small operations per round (a row selection, a mean, a finiteness test,
a distance, a centred copy, two norms: about 0.1 ms for 20 x 4810 float32 values on one thread,
most of it per-operation overhead); here one pass over the honest rows, shifted by the first of
them and accumulated in float64, then one over the coordinates. Where an honest value is not
finite (coordinates lost on a link) the caller keeps the torch path, which skips the missing
coordinates.
"""

from __future__ import annotations

import numpy as np
import torch

from byzlearn._jit_cache import serialise_saves

_COLUMNS = 512  # coordinates per block of the row pass: 2 x 4 KiB of float64 sums

try:
    from numba import njit
except ImportError:  # pragma: no cover
    njit = None  # type: ignore[assignment]
else:  # numba's cache saves one at a time across processes (see byzlearn._jit_cache)
    serialise_saves()

__all__ = ["honest_statistics"]


def honest_statistics(
    vectors: torch.Tensor, honest: list[int], output: torch.Tensor
) -> tuple[float, float, float] | None:
    """``(dist_honest_mean, spread, norm of the honest mean)`` over the rows ``honest`` of the
    ``(n, d)`` CPU ``vectors`` (float32 or float64), ``spread = sqrt(mean_r ||h_r - mean||^2)``;
    ``None`` when the compiled path does not apply (numba missing, another device or dtype, a
    non-finite honest value or aggregate, squares past the floats)."""
    if njit is None or not vectors.is_cpu or vectors.dim() != 2 or not honest:
        return None
    if vectors.dtype not in (torch.float32, torch.float64) or output.dtype != vectors.dtype:
        return None
    if not output.is_cpu or output.shape != vectors.shape[1:]:
        return None
    X = vectors.detach().contiguous().numpy()
    a = output.detach().contiguous().numpy()
    rows = np.asarray(honest, dtype=np.int64)
    out = np.zeros(3)
    if not _statistics(X, rows, a, np.empty((2, X.shape[1])), out):
        return None
    return float(np.sqrt(out[0])), float(np.sqrt(out[1] / len(honest))), float(np.sqrt(out[2]))


if njit is not None:

    @njit(boundscheck=False, cache=True, nogil=True, inline="always")
    def _fixed_sum(u, v, scale, square):  # pragma: no cover (compiled)
        """``sum_j t_j`` or ``sum_j t_j^2`` for ``t = u - scale v``, in four running sums over
        ``j mod 4`` added in a fixed order."""
        d = u.shape[0]
        acc0 = acc1 = acc2 = acc3 = 0.0
        full = d - d % 4
        for j in range(0, full, 4):
            t0 = np.float64(u[j]) - scale * v[j]
            t1 = np.float64(u[j + 1]) - scale * v[j + 1]
            t2 = np.float64(u[j + 2]) - scale * v[j + 2]
            t3 = np.float64(u[j + 3]) - scale * v[j + 3]
            if square:
                t0, t1, t2, t3 = t0 * t0, t1 * t1, t2 * t2, t3 * t3
            acc0 += t0
            acc1 += t1
            acc2 += t2
            acc3 += t3
        for j in range(full, d):
            t = np.float64(u[j]) - scale * v[j]
            acc0 += t * t if square else t
        return (acc0 + acc1) + (acc2 + acc3)

    @njit(boundscheck=False, cache=True, nogil=True)
    def _statistics(X, rows, a, work, out):  # pragma: no cover (compiled)
        """``out = (||a - mean||^2, sum_r ||X_r - mean||^2, ||mean||^2)`` over ``rows``, in
        float64; False when a value of those rows or of ``a`` is not finite, or a square
        passes the floats.

        One pass over the rows, shifted by the first of them (``c``): per coordinate the sums
        ``S1 = sum_r (x_r - c)`` and ``S2 = sum_r (x_r - c)^2`` (``work``; independent lanes,
        vectorised), then ``mean = c + S1 / m`` and ``sum_r (x_r - mean)^2 = S2 - S1^2 / m``
        (the shifted-data formula: shifted by a data point, the subtraction loses nothing
        that matters in float64). The rows pass in blocks of ``_COLUMNS`` coordinates, so that
        the block's two float64 sums stay in L1 (over all d coordinates they streamed through
        L2 once per row: 48 against 23 us for 25 x 4810 float32; same additions, same order,
        same bits). The sums over coordinates run in four running sums added in
        a fixed order, so the rounding does not depend on where the arrays lie (records must
        not depend on the process that computed them)."""
        d = X.shape[1]
        m = rows.shape[0]
        s1 = work[0]
        s2 = work[1]
        c = X[rows[0]]
        for j0 in range(0, d, _COLUMNS):  # a block's sums stay in L1 while every row passes
            j1 = min(d, j0 + _COLUMNS)
            w = j1 - j0
            b1 = s1[j0:j1]
            b2 = s2[j0:j1]
            cb = c[j0:j1]
            for j in range(w):
                b1[j] = 0.0
                b2[j] = 0.0
            r = 1
            while r + 1 < m:  # two rows per load and store of the sums, added in row order
                ra = X[rows[r]][j0:j1]
                rb = X[rows[r + 1]][j0:j1]
                for j in range(w):
                    cj = np.float64(cb[j])
                    t = np.float64(ra[j]) - cj
                    u = np.float64(rb[j]) - cj
                    b1[j] = (b1[j] + t) + u
                    b2[j] = (b2[j] + t * t) + u * u
                r += 2
            if r < m:
                row = X[rows[r]][j0:j1]
                for j in range(w):
                    t = np.float64(row[j]) - np.float64(cb[j])
                    b1[j] += t
                    b2[j] += t * t
        finite = True
        for j in range(d):  # independent lanes: the mean in s1, the squared deviations in s2
            mean = np.float64(c[j]) + s1[j] / m
            dev = s2[j] - s1[j] * s1[j] / m
            # a non-finite value, or squares past the floats (float64 values past 1e154):
            # the deviations are inf - inf or -inf, which the clamp below would make 0
            finite &= np.isfinite(dev)
            s1[j] = mean
            s2[j] = dev if dev > 0.0 else 0.0
        out[0] = _fixed_sum(a, s1, 1.0, True)
        out[1] = _fixed_sum(s2, s2, 0.0, False)
        out[2] = _fixed_sum(s1, s1, 0.0, True)
        # a non-finite value makes its column's mean or deviations, so these sums, non-finite
        return finite and np.isfinite(out[0]) and np.isfinite(out[1]) and np.isfinite(out[2])
