"""A non-overlapping max-pool (and a ReLU after it) in channels-last memory: the forward and the
backward, each one compiled pass.

Forward: each window is scanned as torch's CPU max-pool scans it (row by row, a value replacing
the kept one when it is greater or NaN) and the kept value written, through ``ReLU`` (``0`` where
it is below 0, so ``-0.0`` and NaN pass as they do through ``torch.relu``) when one follows the
pool. Torch's ``max_pool2d`` on the CPU computes the indices as well (they are its backward's
input) and a separate ``relu`` reads the output again.

For a pool whose windows tile the input (kernel = stride, no padding, no dilation) the input's
gradient is the output's gradient at each window's kept index and zero elsewhere. Torch computes
it as ``max_unpool2d`` over the indices its forward returned: a zero fill of the input-sized
gradient, then a scatter. Here each window is scanned again as torch's CPU max-pool scans it
(row by row, a value replacing the kept one when it is greater or NaN, so the first maximum is
kept, or the last NaN; the first position when every value is -inf) and all its positions are
written once; a ReLU that the forward ran after the pool (its threshold: the gradient passes
where the pooled value is not <= 0) is applied on the way. Input rows and columns that no window
covers (a size not divisible by the kernel) get zero. The channels are the innermost dimension,
so the scan vectorises across them.

For 800 x 400 x 8 x 8 values (the grouped first layer of the ``cnn`` model, 25 workers x 32
digits, float32, one thread) the backward replaces ``max_unpool2d`` and ``threshold_backward``
(about 0.6 ms) by one pass.
"""

from __future__ import annotations

import numpy as np
import torch

from byzlearn._jit_cache import serialise_saves

try:
    from numba import njit
except ImportError:  # pragma: no cover
    njit = None  # type: ignore[assignment]
else:  # numba's cache saves one at a time across processes (see byzlearn._jit_cache)
    serialise_saves()

__all__ = ["applies", "pool_backward", "pool_forward"]


def applies(z: torch.Tensor, g: torch.Tensor) -> bool:
    """Whether :func:`pool_backward` takes these tensors: numba, CPU float32/float64, the same
    dtype, both stored channels-last."""
    if njit is None or not (z.is_cpu and g.is_cpu) or z.dtype != g.dtype:
        return False
    if z.dtype not in (torch.float32, torch.float64) or z.dim() != 4 or g.dim() != 4:
        return False
    last = torch.channels_last
    return z.is_contiguous(memory_format=last) and g.is_contiguous(memory_format=last)


def pool_forward(z: torch.Tensor, kernel: tuple[int, int], relu: bool) -> torch.Tensor:
    """The max-pool of ``z`` ``(N, C, H, W)`` over windows of ``kernel`` that tile it (stride =
    kernel; rows and columns no window covers are left out), then ``ReLU`` when ``relu``:
    ``(N, C, H // kh, W // kw)``, channels-last like ``z`` (see :func:`applies`)."""
    n, c, h, w = z.shape
    out = torch.empty(
        (n, c, h // kernel[0], w // kernel[1]), dtype=z.dtype, memory_format=torch.channels_last
    )
    _forward(_nhwc(z), _nhwc(out), kernel[0], kernel[1], relu)
    return out


def pool_backward(
    g: torch.Tensor, z: torch.Tensor, kernel: tuple[int, int], relu: bool
) -> torch.Tensor:
    """The gradient of the pool's input ``z`` ``(N, C, H, W)`` from the gradient ``g`` of its
    output ``(N, C, H // kh, W // kw)`` (both channels-last; see :func:`applies`), through a
    ReLU after the pool when ``relu``; channels-last like ``z``."""
    out = torch.empty_like(z, memory_format=torch.channels_last)
    _backward(_nhwc(g), _nhwc(z), _nhwc(out), kernel[0], kernel[1], relu)
    return out


def _nhwc(t: torch.Tensor) -> np.ndarray:
    """A channels-last ``(N, C, H, W)`` tensor's memory as an ``(N, H, W, C)`` array (no copy)."""
    return t.detach().permute(0, 2, 3, 1).numpy()


if njit is not None:

    @njit(boundscheck=False, cache=True, nogil=True)
    def _forward(z, out, kh, kw, relu):  # pragma: no cover (compiled)
        """``z``: (N, H, W, C), ``out``: (N, PH, PW, C), NHWC arrays; each output row holds its
        window's scan (the channel loops are innermost: they vectorise)."""
        n_, ph_, pw_, c_ = out.shape
        zero = z.dtype.type(0)
        for n in range(n_):
            for py in range(ph_):
                for px in range(pw_):
                    best = out[n, py, px]
                    for c in range(c_):
                        best[c] = -np.inf
                    for k in range(kh * kw):
                        row = z[n, py * kh + k // kw, px * kw + k % kw]
                        for c in range(c_):
                            v = row[c]
                            best[c] = v if v > best[c] or v != v else best[c]
                    if relu:
                        for c in range(c_):
                            best[c] = zero if best[c] < zero else best[c]

    @njit(boundscheck=False, cache=True, nogil=True)
    def _backward(g, z, out, kh, kw, relu):  # pragma: no cover (compiled)
        """``g``: (N, PH, PW, C); ``z``, ``out``: (N, H, W, C), NHWC arrays. The channel loops
        are innermost (they vectorise); ``best``, ``at`` and ``grad`` hold one window's scan."""
        n_, ph_, pw_, c_ = g.shape
        h_, w_ = z.shape[1], z.shape[2]
        best = np.empty(c_, dtype=z.dtype)
        at = np.empty(c_, dtype=np.int64)
        grad = np.empty(c_, dtype=g.dtype)
        zero = z.dtype.type(0)
        for n in range(n_):
            for py in range(ph_):
                for px in range(pw_):
                    y0 = py * kh
                    x0 = px * kw
                    for c in range(c_):
                        best[c] = -np.inf
                        at[c] = 0
                    for k in range(kh * kw):
                        row = z[n, y0 + k // kw, x0 + k % kw]
                        for c in range(c_):
                            v = row[c]
                            take = v > best[c] or v != v
                            best[c] = v if take else best[c]
                            at[c] = k if take else at[c]
                    gp = g[n, py, px]
                    for c in range(c_):
                        grad[c] = zero if relu and best[c] <= zero else gp[c]
                    for k in range(kh * kw):
                        dst = out[n, y0 + k // kw, x0 + k % kw]
                        for c in range(c_):
                            dst[c] = grad[c] if at[c] == k else zero
            for y in range(h_):  # positions no window covers
                for x in range(w_):
                    if y >= ph_ * kh or x >= pw_ * kw:
                        dst = out[n, y, x]
                        for c in range(c_):
                            dst[c] = zero
