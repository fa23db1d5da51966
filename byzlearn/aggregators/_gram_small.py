"""The Gram pass of small inputs (fewer than 2^21 values) in one compiled call.

At the sizes of a training round (n = 25 gradients of an MLP, d = 4810: 0.1 M values) the
arithmetic of :func:`._gram.base_gram` takes about 0.08 ms, and the Python and torch work around
it (the block plan, the layout of the (n + 1) x (n + 1) matrix, the bad rows, the precision
check, the squared distances: some hundred small tensor operations) took twice that again
(measured on one core: ``Inputs.from_matrix`` 0.25 ms, then ``sqdist`` 0.02 ms; with this path
0.09 ms for both). This path does the same computation in one call (:func:`_small_pass`; two
calls, with the buffers made in Python, took 10-20 us more per call on the EPYC host of the
README's table 1b), in two steps:

1. the CPU kernel of the general path (:func:`._gram_kernel._gram_block` on the whole of X: one
   block, each chunk of ``LANES`` coordinates centred on the mean of the rows finite there,
   products in the input precision, chunks summed in float64; rows holding a non-finite value
   flagged and left out of every product), so its statistics are bit for bit those of the
   general path;
2. :func:`_finish`: the (n + 1) x (n + 1) matrix ``aug`` laid out as :func:`._gram_kernel.layout`
   does, the rows of bad inputs zeroed, the squared distances ``D_ij = G_ii + G_jj - 2 G_ij``
   (clamped at 0, +inf to and from bad rows, as :meth:`._gram.Inputs.sqdist`) and the two
   scales of the precision check (:func:`._gram._refinement`: the lower median of the good
   rows' centred squared norms and their distance scale, :func:`._gram_finish.distances`).

The numerics contract is the general path's (see :mod:`._gram`), case by case:

- a row holding a NaN/Inf is flagged by the kernel; with ``max_missing = 0``, or when every
  flagged row misses more than ``max_missing`` of its coordinates or holds a value too large to
  measure (:func:`._gram_kernel.rows_within_budget`, compiled), the flagged rows are bad here, as
  there; when one of them is within the budget (a lossy link: its missing values are imputed),
  the general path runs instead;
- products that overflowed the input precision (values beyond ~1e19 in float32) send the input
  to the general path, whose float64 slow path handles them;
- when the precision check fails (inputs far from the chunk means compared with their spread,
  e.g. a round under the -10 x mean attack), the pass is run again centred on the central row
  of this Gram matrix, as the general pass does (the same kernel on the other rows, centred on
  that row, its entries zero, the distances cached), in one more compiled call: it took the
  general path's Python steps before (Krum on 25 x 4810 attacked float32 values 488-499 ->
  284-286 us a call, one thread; docs/performance.md, 2026-12-07).

So the results (``aug``, ``bad``, the distances, Krum's choice) are those of the general path, to
the last bit (``tests/aggregators/test_gram_small.py`` compares them on random inputs with NaN
rows, infinite values, attacked and near-duplicate rows).
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from byzlearn.aggregators import _gram_finish, _gram_kernel
from byzlearn.aggregators._device import kernel_input
from byzlearn.aggregators._gram import (
    _SAMPLE_MIN_ELEMENTS,
    BaseGram,
    base_gram,
    cancellation_prone,
    kernel_block_size,
    measurable_limit,
)

try:
    from numba import njit
except ImportError:  # pragma: no cover
    njit = None  # type: ignore[assignment]

# Inputs of fewer values than this take the small path (those the general path centres on
# chunk means rather than on a central row chosen on a sample).
SMALL_MAX_ELEMENTS = _SAMPLE_MIN_ELEMENTS


# A read-only argument of the kernel, made once: the unused centre.
_NO_CENTRE = {np.float32: np.zeros(1, np.float32), np.float64: np.zeros(1, np.float64)}
# The kernel's aligned buffer per (n, dtype), one set per thread (rules may run in several
# threads at once). The pass writes the rows it centres before it reads them and never writes
# the padding rows after the n rows, which stay zero, so a buffer serves every call of its n.
_BUFFERS = threading.local()
_MAX_BUFFERS = 8  # buffers kept per thread (each at most 576 x 1024 values, 4.5 MB in float64)
# What :func:`_small_pass` found: the statistics, a lossy row (the general path imputes its
# missing values), products that overflowed (the general path's float64 slow path).
_DONE, _LOSSY, _OVERFLOW = 0, 1, 2


def _buffer(n: int, dtype: np.dtype, nbytes: int) -> np.ndarray:
    """The kernel's buffer for n rows of ``dtype`` of an input of ``nbytes`` bytes in this thread
    (made on first use; as wide as the general pass's, :func:`._gram_kernel.tile_lanes`)."""
    buffers = getattr(_BUFFERS, "by_rows", None)
    if buffers is None:
        buffers = _BUFFERS.by_rows = {}
    R = _gram_kernel.padded_rows(n)
    width = _gram_kernel.tile_lanes(R, nbytes)
    key = (n, dtype.str, width)
    if key not in buffers:
        if len(buffers) >= _MAX_BUFFERS:  # callers with ever other n: keep the memory bounded
            buffers.clear()
        buffers[key] = _gram_kernel.aligned_zeros((R, width), dtype)
    return buffers[key]


def applies(X: torch.Tensor) -> bool:
    """Whether the small path takes X: a CPU float32/float64 C-contiguous (n, d) matrix of
    fewer than ``SMALL_MAX_ELEMENTS`` values, with fewer rows than the BLAS path starts at, that
    the general kernel pass reads in one block."""
    if njit is None or not kernel_input(X):
        return False
    if X.dim() != 2 or not X.is_contiguous():
        return False
    n, d = X.shape
    if n < 1 or d < 1 or n * d >= SMALL_MAX_ELEMENTS or n >= _gram_kernel.BLAS_MIN_ROWS:
        return False
    # one block of the general pass (always, below 2^21)
    return d <= kernel_block_size(n, n, X.element_size() * X.numel())


def small_gram(
    X: torch.Tensor, max_missing: float, refine: bool = True
) -> tuple[BaseGram, dict] | None:
    """The base Gram statistics of X (no given centre), as :meth:`._gram.Inputs.from_matrix`
    computes them, and the initial cache of its :class:`._gram.Inputs` (the squared distances,
    ``"sqdist"``, unless a refinement pass ran); None when X is not for this path
    (:func:`applies`) or needs the general path (imputation, overflowing products).
    ``refine=False``: never the refinement pass, i.e. what ``base_gram(X, max_missing=...)``
    computes (the sample of :func:`._gram.centre_row_from_sample`)."""
    if not applies(X):
        return None
    Xn = X.detach().numpy()
    n, d = Xn.shape
    no_centre = _NO_CENTRE[Xn.dtype.type]  # read by the kernel only with a given centre
    status, aug, D, bad, medians = _small_pass(
        Xn, _gram_kernel.all_rows(n), no_centre, False, _buffer(n, Xn.dtype, Xn.nbytes),
        float(max_missing * d), measurable_limit(d), max_missing > 0, _gram_kernel.BUFFER,
    )
    if status != _DONE:
        return None  # a lossy row (imputed by the general path), or an overflow (float64 path)
    if refine and cancellation_prone(float(medians[0]), float(medians[1]), X.dtype):
        refined = _gram_finish.central_row(D, bad)
        again = _centred_on_row(Xn, refined)
        if again is None:
            return base_gram(X, centre_row=refined, max_missing=max_missing), {}
        aug, D, bad = again
    gram = BaseGram(aug=torch.from_numpy(aug), bad=torch.from_numpy(bad))
    gram._any_bad = bool(bad.any())
    return gram, {"sqdist": torch.from_numpy(D)}


def _centred_on_row(Xn: np.ndarray, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(aug, D, bad)`` of the pass centred on ``row``, as ``base_gram(X, centre_row=row)``
    computes them (the other rows active, centred on that row's values; the general pass's
    mode, block and buffer), or None where the general path must run it (a block size below d,
    products that overflow, a centre not finite somewhere). No row is lossy here: the first
    pass found none within the budget, and the bad rows do not depend on the centre."""
    n, d = Xn.shape
    if n < 2 or d > kernel_block_size(n, n - 1, Xn.nbytes):
        return None
    rows = np.delete(_gram_kernel.all_rows(n), row)
    status, aug, D, bad, _ = _small_pass(
        Xn, rows, np.ascontiguousarray(Xn[row]), True, _buffer(n - 1, Xn.dtype, Xn.nbytes),
        0.0, measurable_limit(d), False, _gram_kernel.FUSED_CENTRING,
    )
    return (aug, D, bad) if status == _DONE else None


if njit is not None:

    @njit(boundscheck=False, error_model="numpy", cache=True, nogil=True)
    def _small_pass(X, rows, centre, use_centre, C, budget, limit, lossy_allowed, mode):
        # pragma: no cover (compiled)
        """The kernel pass on the active ``rows`` of X (all, or all but the centre row, whose
        values ``centre`` are then used, ``use_centre``), then :func:`_finish`, in one call:
        (status, ``aug``, the squared distances, the bad rows, the two medians). ``status`` is
        ``_LOSSY`` when ``lossy_allowed`` and a flagged row is within the budget of missing
        values (:func:`._gram_kernel.rows_within_budget`), ``_OVERFLOW`` when a statistic is
        not finite or the given centre is not finite somewhere; the other outputs are then
        unset. ``mode``: the kernel's (:func:`._gram_kernel._gram_block`), a run-time value
        (a default would be a literal: another compilation of the kernel)."""
        n = X.shape[0]
        na = rows.shape[0]
        R = C.shape[0]
        acc = np.zeros((R, R))
        dots = np.zeros(na)
        msq = np.zeros(1)
        flags = np.zeros(na + 1, dtype=np.bool_)
        # (``mode`` passed, and run-time values for the flag and the start, as gram_blocks
        # passes them: the same compiled specialisation of the kernel, so the same vectorised
        # loops and the same bits as the general pass, and one compilation for both, where the
        # literals False and 0 made numba compile the kernel and its callees again: see
        # "Literal arguments" in :mod:`._gram_kernel`)
        _gram_kernel._gram_block(X, rows, centre, use_centre, np.int64(0), X.shape[1],
                                 acc, dots, msq, flags, C, mode)
        bad = np.zeros(n, dtype=np.bool_)  # rows holding a non-finite value (_finish adds none)
        for a in range(na):
            bad[rows[a]] = flags[a]
        aug = np.zeros((n + 1, n + 1))
        D = np.empty((n, n))
        medians = np.zeros(2)
        if flags[na]:  # (the general pass then centres on the mean there, and flags the row)
            return _OVERFLOW, aug, D, bad, medians
        if lossy_allowed and bad.any() and _gram_kernel.rows_within_budget(X, bad, budget, limit):
            return _LOSSY, aug, D, bad, medians
        if not _finish(acc, dots, msq[0], rows, bad, aug, D, medians):
            return _OVERFLOW, aug, D, bad, medians
        return _DONE, aug, D, bad, medians

    @njit(boundscheck=False, error_model="numpy", cache=True, nogil=True)
    def _finish(acc, dots, msq, rows, bad, aug, D, medians):  # pragma: no cover (compiled)
        """From the kernel's statistics of the active ``rows``: ``aug`` (zeros on entry; the
        layout of :func:`._gram_kernel.layout`, an inactive row's entries zero, bad rows zeroed
        as in :func:`._gram.base_gram`), the squared distances ``D`` (as
        :meth:`._gram.Inputs.sqdist`) and ``medians = (median centred squared norm, distance
        scale)`` of the good rows (:func:`._gram_finish.distances`). Returns False when a statistic
        is not finite (an overflow: the caller takes the general path). No fast-math: the
        operations and their rounding are those of the torch code they replace."""
        n = bad.shape[0]
        na = rows.shape[0]
        if not np.isfinite(msq):
            return False
        for a in range(na):
            if not np.isfinite(dots[a]):
                return False
            for b in range(a, na):
                if not np.isfinite(acc[a, b]):
                    return False
        for a in range(na):
            i = rows[a]
            for b in range(a, na):
                j = rows[b]
                v = acc[a, b]
                if bad[i] or bad[j]:
                    v = 0.0
                aug[i, j] = v
                aug[j, i] = v
            v = 0.0 if bad[i] else dots[a]
            aug[i, n] = v
            aug[n, i] = v
        aug[n, n] = msq
        _gram_finish.fill_distances(aug, bad, D, medians)
        return True
