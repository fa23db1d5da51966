"""One pass over the data, then O(n^2) work: the Gram matrix every distance-based rule shares.

Distance-based rules never touch the d coordinates more than twice: once here, to build the
centred Gram matrix of the inputs, and once at the end, to form their output as a weighted sum of
input rows. Everything in between (Krum scores, MDA's subset search, Weiszfeld iterations, centred
clipping, NNM mixing, Bulyan's iterated selection) runs on n x n matrices.

Numerics. ``||x_i - x_j||^2 = G_ii + G_jj - 2 G_ij`` loses precision when the vectors sit far from
the point the Gram matrix is centred on (full model weights share a large common component; an
outlier drags a mean). So the pass centres every chunk of coordinates before any product (the
common component cancels exactly inside the chunk), multiplies in the input precision and
accumulates the chunks in float64. The centre is a *central input row*: on inputs of 2^21 values
or more it is chosen first on a sample of about d / 64 coordinates (:func:`centre_row_from_sample`;
with an honest majority an honest row near the bulk, which attackers cannot drag away), so the
distances between the inputs near it are exact to working precision in one pass, attacked or not.
Smaller inputs centre each chunk on its mean. If the distances still look cancellation-prone
(inputs far from the centre compared with their spread), the pass is run once more centred on the
central row of the full Gram matrix. On the CPU the pass is numba (:mod:`._gram_kernel`: one read
of the data, 3 x 3 tiles computing half the products of a GEMM for few rows, BLAS syrk for many,
threads); elsewhere a torch subtraction and GEMM per block. Inputs under 2^21 values take the
same kernel pass in one compiled call (:mod:`._gram_small`, bit-identical results).

Missing coordinates (NaN/Inf: a lossy link, or a Byzantine input). A row missing at most a
fraction ``max_missing`` of its coordinates stays in: each missing value is replaced by the
coordinate-wise median m_k of the rows that carry coordinate k (rows known to be bad when the
block is read excluded: a row's count is checked block by block, and a row found over the budget,
or holding a value too large to measure, stays out of every later block's medians), and the row's
squared norm in the Gram matrix gets ``c_i = sum_{k missing in i} s_k^2`` added, s_k the spread
(1.4826 x MAD) of coordinate k. So ``D_ij = ||x^_i - x^_j||^2 + c_i + c_j``: where one row misses
k the term is ``(m_k - x_jk)^2 + s_k^2``, whose expectation for an honest pair is the honest
``E(x_ik - x_jk)^2 = 2 s_k^2``; where both miss it, ``2 s_k^2``. Distances are unbiased for
honest rows, and a row that hides coordinates is never closer to the others than the finite row
that sends ``m_k`` there (whose output contribution is the same): a Byzantine input gains
nothing by sending NaNs. Outputs and mixed rows use the imputed values (missing coordinates of
the output are filled by the coordinate-wise median). Rows missing more than ``max_missing`` of
their coordinates, or holding a value so large that squared distances over d coordinates could
overflow float64 (see :func:`measurable_limit`), are *bad*: excluded from every product and
infinitely far from every other row, so selection rules rank them last and they never enter a
weighted sum. ``max_missing=0`` makes every row with a non-finite value bad.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from byzlearn.aggregators import _gram_cuda, _gram_finish, _gram_kernel, _memory, _speculate
from byzlearn.aggregators._device import cpu_kernels, kernel_input

# Coordinates per block: big enough to amortise the per-block Python overhead, small enough for
# the block and its centred copy to stay in cache while the GEMM reads them.
_BLOCK_ELEMENTS = 1 << 19
# Coordinates per block of the CPU kernel, times n: the unit of threading and of the
# non-finite check (a block holding NaN/Inf is redone in float64 by the slow path).
_KERNEL_BLOCK_ELEMENTS = 1 << 22
# Elements per block of the BLAS path (many rows): a (rows x columns) float32 buffer of 16 MB
# (measured faster than 64 MB blocks from 200 to 1000 rows).
_BLAS_BLOCK_ELEMENTS = 1 << 22
# Columns per product of dense mixing (NNM) on the CPU: a (n', n) x (n, 16384) product runs
# at about twice the speed of one over the 80k+ columns of a block (measured, one core).
_MIX_COLUMNS = 16384
# Refine when the estimated relative error of typical distances exceeds this.
_REFINE_REL_ERROR = 1e-5


def block_size(n: int, d: int, device: torch.device) -> int:
    """Columns per block for an (n, d) input on ``device``."""
    if not cpu_kernels(device):
        return d if n * d <= (1 << 28) else max(1, (1 << 28) // n)
    return max(1024, min(d, _BLOCK_ELEMENTS // max(n, 1)))


def column_blocks(d: int, size: int) -> list[tuple[int, int]]:
    """Split ``range(d)`` into consecutive ``(start, stop)`` blocks of at most ``size`` columns."""
    return [(j, min(d, j + size)) for j in range(0, d, size)]


@dataclass
class BaseGram:
    """Centred Gram statistics of the base rows X (n, d).

    ``aug`` is the (n+1) x (n+1) Gram matrix of the rows ``[X - 1 m^T; m]`` where ``m`` is the
    centre vector (per-block means, a chosen row, or a given centre). Rows and columns of bad rows
    are zero. ``bad`` flags rows with non-finite values.
    """

    aug: torch.Tensor  # float64, CPU
    bad: torch.Tensor  # bool, CPU, (n,)
    missing: MissingEntries | None = None  # imputed missing values of the rows kept
    speculation: _speculate.Speculation | None = None  # an output written during the pass
    # whether a row is bad, once asked (not an init field: ``replace`` does not carry it over)
    _any_bad: bool | None = field(default=None, init=False, repr=False, compare=False)

    def any_bad(self) -> bool:
        """Whether some row is bad (``bad.any()``, computed once)."""
        if self._any_bad is None:
            self._any_bad = bool(self.bad.any())
        return self._any_bad


# Fraction of missing coordinates beyond which a row is excluded (bad), by default.
DEFAULT_MAX_MISSING = 0.1


@dataclass
class MissingEntries:
    """The missing (non-finite) values of the rows kept, and the values imputed for them."""

    rows: torch.Tensor  # long, CPU, (m,)
    cols: torch.Tensor  # long, CPU, (m,)
    values: torch.Tensor  # float64, CPU, (m,): the coordinate-wise median of column cols[i]

    def restricted(self, rows: torch.Tensor) -> MissingEntries | None:
        """The entries of the rows flagged in the boolean mask ``rows`` (None if none)."""
        keep = rows[self.rows]
        if not bool(keep.any()):
            return None
        return MissingEntries(self.rows[keep], self.cols[keep], self.values[keep])

    def columns(self) -> torch.Tensor:
        """The distinct columns holding an entry, sorted."""
        return torch.unique(self.cols)

    def fill(self, values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> None:
        """Write the imputed values into ``values = X[rows][:, cols]`` (in place)."""
        r = _positions(rows.cpu(), self.rows)
        c = _positions(cols.cpu(), self.cols)
        hit = (r >= 0) & (c >= 0)
        if bool(hit.any()):
            values[r[hit].to(values.device), c[hit].to(values.device)] = self.values[hit].to(
                device=values.device, dtype=values.dtype
            )


def _positions(index: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
    """For each value of ``wanted``, its position in ``index`` (-1 when absent)."""
    if index.numel() == 0:
        return torch.full_like(wanted, -1)
    ordered, order = torch.sort(index)
    at = torch.searchsorted(ordered, wanted).clamp_max(ordered.numel() - 1)
    return torch.where(ordered[at] == wanted, order[at], torch.full_like(wanted, -1))


class _MissingLog:
    """Accumulates, block by block, what the masked path finds about missing coordinates."""

    def __init__(self, n: int, d: int, max_missing: float) -> None:
        self.budget = max_missing * d  # rows missing more than this are bad
        self.counts = torch.zeros(n, dtype=torch.long)
        # rows found bad in the blocks read so far (over the budget, values too large): left
        # out of the later blocks' medians, as rows known to be over the budget are
        self.bad = torch.zeros(n, dtype=torch.bool)
        self.penalty = torch.zeros(n, dtype=torch.float64)
        self.parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    @property
    def over(self) -> torch.Tensor:
        """Rows already missing more than the budget."""
        return self.counts > self.budget

    def entries(self, keep: torch.Tensor) -> MissingEntries | None:
        """The recorded entries of the rows flagged in ``keep``."""
        if not self.parts:
            return None
        rows, cols, values = (torch.cat(x) for x in zip(*self.parts, strict=True))
        return MissingEntries(rows, cols, values).restricted(keep)


def measurable_limit(d: int) -> float:
    """Largest magnitude whose squared distances over d coordinates cannot overflow float64.

    With every value of two rows within +-T, ``||x - y||^2 <= 4 d T^2``; rows holding a larger
    value are treated like non-finite ones (infinitely far), never allowed to overflow the sums of
    the other rows.
    """
    return float(np.sqrt(np.finfo(np.float64).max / (8.0 * max(d, 1))))


def _masked_block(
    Xb: torch.Tensor,
    centre: torch.Tensor | None,
    centre_row: int | None,
    d: int,
    j0: int = 0,
    log: _MissingLog | None = None,
):
    """Slow path for a block holding non-finite values or overflowing products (float64).

    Values too large to measure make their row bad. Missing (non-finite) values of the other
    rows are imputed with the coordinate-wise median of the rows carrying that coordinate, and
    their spread is added to ``log`` (see the module docstring); without a log (``max_missing =
    0``) a missing value makes its row bad.
    """
    n = Xb.shape[0]
    Xd = Xb.to(torch.float64, copy=True)  # imputed in place below: never the caller's tensor
    finite = torch.isfinite(Xd)
    bad = (finite & (Xd.abs() > measurable_limit(d))).any(dim=1)
    missing = ~finite
    if log is None:
        bad |= missing.any(dim=1)
    else:  # found bad in an earlier block, or over the budget with this block's missing
        # values: bad before any median is taken
        bad |= log.bad.to(bad.device)
        bad |= (log.counts.to(bad.device) + missing.sum(dim=1)) > log.budget
        _impute_block(Xd, finite, missing & ~bad[:, None], bad, j0, log)
    good = ~bad
    if centre is not None:
        m = centre.double()
        m = torch.where(torch.isfinite(m), m, torch.zeros((), dtype=m.dtype, device=m.device))
    elif centre_row is not None and bool(good[centre_row]):
        m = Xd[centre_row]
    elif good.any():
        m = Xd[good].mean(dim=0)
    else:
        m = torch.zeros(Xd.shape[1], dtype=torch.float64, device=Xd.device)
    aug = torch.empty(n + 1, Xd.shape[1], dtype=torch.float64, device=Xd.device)
    torch.sub(Xd, m, out=aug[:n])  # every row at once (a masked gather and scatter cost 8x)
    if not bool(good.all()):
        aug[:n][bad] = 0
    aug[n] = m
    G = aug @ aug.T
    overflow = ~torch.isfinite(G.diagonal()[:n])
    if overflow.any():  # values beyond ~1e154: treat as non-finite
        bad |= overflow
        aug[:n][bad] = 0
        G = aug @ aug.T
    if log is not None:
        log.bad |= bad.cpu()
    return G, bad


def _column_medians(V: torch.Tensor) -> torch.Tensor:
    """The median of each column's non-NaN values (the midpoint of the middle pair for even
    counts; NaN for a column without any): the selection kernel on the CPU, where torch's
    ``nanquantile(V, 0.5, dim=0)`` sorts along the short first dimension (112 ms for 25 x 1e5
    float64 values on one thread, about 1 us per column), ``nanquantile`` elsewhere."""
    if not (kernel_input(V) and V.dim() == 2 and V.is_contiguous()):
        return torch.nanquantile(V, 0.5, dim=0)
    from byzlearn.aggregators import _select  # imports this module

    out = torch.empty(V.shape[1], dtype=V.dtype)
    _select.statistic_into(V, _select.MEDIAN, 0, 1, out)  # no value: NaN, as nanquantile
    return out


def _impute_block(
    Xd: torch.Tensor,
    finite: torch.Tensor,
    missing: torch.Tensor,
    bad: torch.Tensor,
    j0: int,
    log: _MissingLog,
) -> None:
    """Replace the ``missing`` values of Xd (in place) by their column's median; log them."""
    cols = torch.nonzero(missing.any(dim=0)).flatten()
    if cols.numel() == 0:
        return
    V = Xd[:, cols].clone()
    V[~finite[:, cols] | bad[:, None]] = float("nan")
    med = _column_medians(V)  # midpoint of the middle pair for even counts
    spread = 1.4826 * _column_medians((V - med).abs())
    med = torch.nan_to_num(med, nan=0.0)  # a column nobody carries: no information
    s2 = torch.nan_to_num(spread, nan=0.0) ** 2
    r, c = torch.nonzero(missing[:, cols], as_tuple=True)
    Xd[r, cols[c]] = med[c]
    rows_cpu = r.cpu()
    log.penalty.index_add_(0, rows_cpu, s2[c].double().cpu())
    log.counts += torch.bincount(rows_cpu, minlength=log.counts.numel())
    record = ~log.over[rows_cpu]  # rows far over the budget will be bad: keep no entries
    if bool(record.any()):
        log.parts.append(
            (rows_cpu[record], (cols[c] + j0).cpu()[record], med[c].double().cpu()[record])
        )


def base_gram(
    X: torch.Tensor,
    centre: torch.Tensor | None = None,
    centre_row: int | None = None,
    max_missing: float = DEFAULT_MAX_MISSING,
    guess: _speculate.Guess | None = None,
) -> BaseGram:
    """Centred Gram matrix of the rows of X in one blocked pass (see the module docstring).

    The fast pass flags every row holding a non-finite value. When some of those rows miss at
    most ``max_missing`` of their coordinates (a lossy link, not a NaN row), the pass is made
    again on the float64 path, which imputes their missing values (:func:`_imputed_pass`);
    rows missing more (NaN rows) stay bad and cost nothing extra. ``guess``: the rule's weights
    on a Gram matrix, for an output written during the pass (:mod:`._speculate`).
    """
    on_kernel = kernel_input(X)
    speculation = None
    if on_kernel and _gram_kernel.available(X.detach().numpy()):
        acc, bad, speculation = _kernel_pass(X, centre, centre_row, guess)
    else:
        acc, bad = _torch_pass(X, centre, centre_row)
    missing = None
    if max_missing > 0 and bool(bad.any()) and _some_rows_within_budget(X, bad, max_missing):
        acc, bad, missing = _imputed_pass(X, centre, centre_row, max_missing)
        speculation = None  # the output then holds imputed values
    return _masked_base(acc, bad, missing, speculation)


def _masked_base(
    acc: torch.Tensor,
    bad: torch.Tensor,
    missing: MissingEntries | None = None,
    speculation: _speculate.Speculation | None = None,
) -> BaseGram:
    """The base statistics of a pass's (n + 1) x (n + 1) sums: rows whose squared norm
    overflowed across blocks made bad too, and the entries of every bad row zeroed."""
    # (in place on the pass's own sums; compiled: the torch version of these few lines took
    # about 0.1 ms a call)
    aug = acc.cpu().contiguous().numpy()
    bad_np = bad.cpu().numpy().copy()
    _gram_finish.mask_bad(aug, bad_np)  # adds the rows whose sums overflowed across blocks
    acc, bad = torch.from_numpy(aug), torch.from_numpy(bad_np)
    if missing is not None:
        missing = missing.restricted(~bad)
    return BaseGram(aug=acc, bad=bad, missing=missing, speculation=speculation)


# Coordinates per read when counting a flagged row's missing values.
_COUNT_CHUNK = 1 << 20


def _some_rows_within_budget(X: torch.Tensor, bad: torch.Tensor, max_missing: float) -> bool:
    """Whether a flagged row misses at most ``max_missing`` of its coordinates (and holds no
    value too large to measure). A row's count stops as soon as it is over the budget, so a
    NaN row costs a read of about ``max_missing`` of it."""
    d = X.shape[1]
    budget = max_missing * d
    limit = measurable_limit(d)
    on_kernel = kernel_input(X)
    if on_kernel and _gram_kernel.available(Xn := X.detach().numpy()):
        # compiled: a NaN row costs a read of about the budget (the loop below: three tensor
        # operations and a boolean-mask copy per chunk of 2^20 values, 3-4 ms per NaN row at
        # d = 1e7)
        flagged = bad.cpu().numpy().astype(np.bool_)
        return bool(_gram_kernel.rows_within_budget(Xn, flagged, budget, limit))
    for i in torch.nonzero(bad.cpu()).flatten().tolist():
        count = 0
        huge = False
        for j0 in range(0, d, _COUNT_CHUNK):
            chunk = X[i, j0 : j0 + _COUNT_CHUNK]
            finite = torch.isfinite(chunk)
            count += int((~finite).sum())
            huge = huge or bool((chunk[finite].abs() > limit).any())
            if count > budget or huge:
                break
        if 0 < count <= budget and not huge:
            return True
    return False


def _imputed_pass(
    X: torch.Tensor, centre: torch.Tensor | None, centre_row: int | None, max_missing: float
) -> tuple[torch.Tensor, torch.Tensor, MissingEntries | None]:
    """The Gram pass on the float64 path with the rows' missing values imputed (their
    coordinates' medians, their spread charged to the diagonal; see the module docstring)."""
    n, d = X.shape
    log = _MissingLog(n, d, max_missing)
    acc, bad = _torch_pass(X, centre, centre_row, log)
    bad = bad.cpu() | log.over
    acc = acc.cpu()
    acc.diagonal()[:n] += torch.where(bad, 0.0, log.penalty)
    return acc, bad, log.entries(~bad)


def _kernel_pass(
    X: torch.Tensor,
    centre: torch.Tensor | None,
    centre_row: int | None,
    guess: _speculate.Guess | None = None,
):
    """CPU: the numba kernels of :mod:`._gram_kernel` (3 x 3 tiles for few rows, BLAS syrk for
    many), the slow path for blocks whose products overflow; returns the sums, the bad rows and
    the speculative output (:mod:`._speculate`, tiles only) or None.

    Rows holding a non-finite value are flagged by the kernel (their products are skipped, the
    others' stay exact); a block holding products that overflowed the input precision is redone
    in float64 by :func:`_masked_block`. With ``centre_row`` the centre row's own (zero) centred
    values are not multiplied; where that row is not finite the kernel centres on the mean.
    """
    n, d = X.shape
    Xn = X.detach().numpy()
    rows = np.arange(n, dtype=np.int64)
    if centre is not None:
        centre_np = centre.detach().to(device="cpu", dtype=X.dtype).numpy()
    elif centre_row is not None:
        centre_np = Xn[centre_row]
        rows = rows[rows != centre_row]
    else:
        centre_np = None
    if rows.size >= _gram_kernel.BLAS_MIN_ROWS:
        return (*_blas_pass(X, Xn, centre, centre_np, centre_row, rows), None)
    blocks = column_blocks(d, kernel_block_size(n, rows.size, Xn.nbytes))
    threads = torch.get_num_threads()
    speculation = None
    if guess is None or len(blocks) < _speculate.MIN_BLOCKS:
        parts = _gram_kernel.gram_blocks(Xn, blocks, centre_np, threads, rows)
    else:
        parts, speculation = _guessed_blocks(X, blocks, centre_np, rows, centre_row, guess)
    acc = torch.zeros(n + 1, n + 1, dtype=torch.float64)
    bad = torch.zeros(n, dtype=torch.bool)
    finite = []
    for (j0, j1), part in zip(blocks, parts, strict=True):
        if part.nonfinite.size or part.centre_missing:
            _flag_rows(bad, part.nonfinite, part.centre_missing, centre_row)
        if not part.finite():
            acc += _redo_block(X, j0, j1, centre, centre_row, part.centre_missing, bad)
            continue
        finite.append(part)
    acc += torch.from_numpy(_laid_out(n, rows, finite))
    return acc, bad, speculation


def _laid_out(n: int, rows: np.ndarray, parts: list[_gram_kernel.BlockStats]) -> np.ndarray:
    """The blocks' statistics summed in block order, laid out once as the (n + 1) x (n + 1)
    matrix (the layout is linear); zeros for no block (every block redone, or none)."""
    size = _gram_kernel.padded_rows(rows.size)  # the blocks' (buffer rows)^2 products
    sum_acc = np.zeros((size, size))
    sum_dots = np.zeros(rows.size)
    sum_msq = 0.0
    for part in parts:
        sum_acc += part.acc
        sum_dots += part.dots
        sum_msq += part.msq
    return _gram_kernel.layout(n, rows, sum_acc, sum_dots, sum_msq)


def _guessed_blocks(
    X: torch.Tensor,
    blocks: list[tuple[int, int]],
    centre_np: np.ndarray | None,
    rows: np.ndarray,
    centre_row: int | None,
    guess: _speculate.Guess,
) -> tuple[list[_gram_kernel.BlockStats], _speculate.Speculation | None]:
    """The kernel pass's blocks, the rule's output written during the later ones when the
    first ``HEAD_BLOCKS`` agree on its weights (:mod:`._speculate`)."""
    n, d = X.shape
    Xn = X.detach().numpy()
    threads = torch.get_num_threads()
    head = _speculate.HEAD_BLOCKS
    start = time.perf_counter()
    parts = _gram_kernel.gram_blocks(Xn, blocks[:head], centre_np, threads, rows)
    pass_time = (time.perf_counter() - start) * len(blocks) / head  # an estimate
    partial = [[p] for p in parts] + [parts]  # each block, then all of them
    grams = [_partial_base(n, rows, ps, centre_row) for ps in partial]
    weights = None
    if all(g is not None for g in grams):
        budget = _speculate.GUESS_BUDGET * pass_time
        weights = _speculate.agreed_weights(guess, grams, budget)  # type: ignore[arg-type]
    speculation = sums = None
    if weights is not None:
        out = _memory.empty(d, dtype=X.dtype)
        speculation = _speculate.Speculation(weights, out, start=blocks[head][0])
        sums = speculation.sums()
    parts += _gram_kernel.gram_blocks(Xn, blocks[head:], centre_np, threads, rows, sums)
    return parts, speculation


def _partial_base(
    n: int, rows: np.ndarray, parts: list[_gram_kernel.BlockStats], centre_row: int | None
) -> BaseGram | None:
    """The base statistics of some blocks of the kernel pass alone (a guess's input), or None
    where a block's products overflowed."""
    if not all(p.finite() for p in parts):
        return None
    bad = torch.zeros(n, dtype=torch.bool)
    for p in parts:
        _flag_rows(bad, p.nonfinite, p.centre_missing, centre_row)
    return _masked_base(torch.from_numpy(_laid_out(n, rows, parts)), bad)


def kernel_block_size(n: int, active: int, nbytes: int | None) -> int:
    """Columns per block of the CPU kernel pass over n rows, ``active`` of them multiplied, of
    an input of ``nbytes`` bytes: about ``_KERNEL_BLOCK_ELEMENTS`` values, a whole number of
    passes of the tiles (:func:`._gram_kernel.tile_lanes`, which takes the same ``nbytes``, so
    that the blocks and :func:`._gram_kernel.gram_blocks`' passes agree; None: the width for an
    input of unknown size)."""
    lanes = _gram_kernel.tile_lanes(_gram_kernel.padded_rows(active), nbytes)
    return max(lanes, (_KERNEL_BLOCK_ELEMENTS // max(n, 1)) // lanes * lanes)


def _flag_rows(
    bad: torch.Tensor, nonfinite: np.ndarray, centre_missing: bool, centre_row: int | None
) -> None:
    """Mark the rows a block found non-finite (and the centre row when it is missing there)."""
    bad[torch.from_numpy(nonfinite)] = True
    if centre_missing and centre_row is not None:
        bad[centre_row] = True


def _redo_block(
    X: torch.Tensor,
    j0: int,
    j1: int,
    centre: torch.Tensor | None,
    centre_row: int | None,
    centre_missing: bool,
    bad: torch.Tensor,
) -> torch.Tensor:
    """Block ``[j0, j1)`` whose products overflowed, redone in float64 by
    :func:`_masked_block` (its bad rows added to ``bad``)."""
    m = None if centre is None else centre[j0:j1]
    row = None if centre_missing else centre_row
    Gm, bad_b = _masked_block(X[:, j0:j1], m, row, X.shape[1])
    bad |= bad_b
    return Gm


def _blas_pass(
    X: torch.Tensor,
    Xn: np.ndarray,
    centre: torch.Tensor | None,
    centre_np: np.ndarray | None,
    centre_row: int | None,
    rows: np.ndarray,
):
    """:func:`_kernel_pass` for many rows: per block the kernel writes the centred rows, their
    products are one BLAS ``syrk`` (numpy's ``C @ C.T`` on one buffer) on
    ``torch.get_num_threads()`` BLAS threads, summed in float64 into one matrix laid out once
    (blocks whose products overflow go to :func:`_masked_block`, as in the kernel path)."""
    n, d = Xn.shape
    na = rows.size
    lanes = _gram_kernel.LANES
    size = max(4 * lanes, (_BLAS_BLOCK_ELEMENTS // na) // lanes * lanes)
    buf = _gram_kernel.aligned_zeros((na, min(size, d)), Xn.dtype)
    G = np.zeros((na, na))
    dots = np.zeros(na)
    msq = 0.0
    extra = torch.zeros(n + 1, n + 1, dtype=torch.float64)
    bad = torch.zeros(n, dtype=torch.bool)
    with blas_threads(torch.get_num_threads()):
        for j0, j1 in column_blocks(d, size):
            C = buf if j1 - j0 == buf.shape[1] else np.empty((na, j1 - j0), Xn.dtype)
            dots_b, msq_b, nonfinite, centre_missing = _gram_kernel.centre_block(
                Xn, j0, j1, centre_np, rows, C
            )
            _flag_rows(bad, nonfinite, centre_missing, centre_row)
            Gb = C @ C.T  # numpy runs this product of a buffer with its transpose as a syrk
            if not (np.isfinite(Gb).all() and np.isfinite(dots_b).all() and np.isfinite(msq_b)):
                extra += _redo_block(X, j0, j1, centre, centre_row, centre_missing, bad)
                continue
            G += Gb
            dots += dots_b
            msq += msq_b
    acc = torch.from_numpy(_gram_kernel.layout(n, rows, G, dots, msq)) + extra
    return acc, bad


_BLAS_CONTROLLER: list = []  # the threadpoolctl controller, created on first use


@contextlib.contextmanager
def blas_threads(threads: int) -> Iterator[None]:
    """Limit the BLAS behind numpy to ``threads`` threads inside a ``with`` block (threadpoolctl,
    a dependency of scikit-learn; without it the BLAS keeps its own setting)."""
    limit = None
    try:
        if not _BLAS_CONTROLLER:
            from threadpoolctl import ThreadpoolController

            _BLAS_CONTROLLER.append(ThreadpoolController())
        limit = _BLAS_CONTROLLER[0].limit(limits=threads, user_api="blas")
    except Exception:
        limit = None
    try:
        yield
    finally:
        if limit is not None:
            limit.restore_original_limits()


def slow_columns(
    X: torch.Tensor, centre: torch.Tensor | None, centre_row: int | None
) -> Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]:
    """``(j0, j1) ->`` the slow path's (:func:`_masked_block`, no imputation) Gram matrix and bad
    rows of X's columns j0:j1, centred as the pass is (for the chunks the Triton pass redoes)."""

    def redo(j0: int, j1: int) -> tuple[torch.Tensor, torch.Tensor]:
        m = None if centre is None else centre[j0:j1]
        return _masked_block(X[:, j0:j1], m, centre_row, X.shape[1], j0)

    return redo


def _torch_pass(
    X: torch.Tensor,
    centre: torch.Tensor | None,
    centre_row: int | None,
    log: _MissingLog | None = None,
):
    """Other devices (and inputs the kernel does not take): mean, sub and a GEMM per block;
    float32 on a GPU: the Triton pass of :mod:`._gram_cuda` where it applies."""
    n, d = X.shape
    size = block_size(n, d, X.device)
    if log is None:
        redo = slow_columns(X, centre, centre_row)
        done = _gram_cuda.gram_pass(X, centre, centre_row, redo, size)
        if done is not None:
            return done
    acc = torch.zeros(n + 1, n + 1, dtype=torch.float64, device=X.device)
    bad = torch.zeros(n, dtype=torch.bool, device=X.device)
    buf = torch.empty(n + 1, min(size, d), dtype=X.dtype, device=X.device)
    for j0, j1 in column_blocks(d, size):
        Xb = X[:, j0:j1]
        b = buf[:, : j1 - j0]
        if centre is not None:
            m = centre[j0:j1]
        elif centre_row is not None:
            m = Xb[centre_row]
        else:
            m = Xb.mean(dim=0)
        torch.sub(Xb, m, out=b[:n])
        b[n] = m
        Gb = b @ b.T
        if not bool(torch.isfinite(Gb).all()):
            Gb, bad_b = _masked_block(
                Xb, None if centre is None else m, centre_row, d, j0, log
            )
            bad |= bad_b
        acc += Gb.double()
    return acc, bad


def sqdist_from_gram(G: torch.Tensor) -> torch.Tensor:
    """Squared distances ``D_ij = G_ii + G_jj - 2 G_ij`` from a Gram matrix (clamped at 0, a zero
    diagonal; NaN stays NaN)."""
    diag = G.diagonal()
    D = diag[:, None] + diag[None, :] - 2.0 * G
    D.clamp_(min=0.0)
    D.fill_diagonal_(0.0)
    return D


def _refinement(
    G: torch.Tensor, bad: torch.Tensor, dtype: torch.dtype
) -> tuple[np.ndarray, int | None]:
    """The squared distances of the rows whose centred Gram matrix is G (its first ``len(bad)``
    rows and columns: :func:`._gram_finish.distances`) and, where they look cancellation-prone
    (:func:`cancellation_prone` on the lower median of the good rows' squared norms and their
    distance scale, :func:`._gram_finish.distances`), the central row to centre a second pass
    on (:func:`._gram_finish.central_row`); else None. One compiled call for the distances,
    which the caller may keep."""
    D, scale_g, scale_d = _distances(G, bad)
    if not cancellation_prone(scale_g, scale_d, dtype):
        return D, None
    return D, _gram_finish.central_row(D, bad.cpu().numpy())


def _float64_numpy(G: torch.Tensor) -> np.ndarray:
    """A CPU float64 matrix as a C-contiguous numpy array (no copy where it is one already)."""
    return np.ascontiguousarray(G.detach().to(device="cpu", dtype=torch.float64).numpy())


def rounding_unit(dtype: torch.dtype) -> float:
    """The relative rounding the Gram pass allows for in an entry of inputs of ``dtype``: 64
    units in the last place (products in the input precision summed over many coordinates).
    The precision check (:func:`cancellation_prone`) compares it with the distances; the rules
    that must tell equal inputs apart from the pass's results (the geometric median's optimality
    check, CAF's drops) count inputs within it of each other as one."""
    return 64.0 * torch.finfo(dtype).eps


def cancellation_prone(scale_g: float, scale_d: float, dtype: torch.dtype) -> bool:
    """Whether the rounding of Gram entries of size ``scale_g`` (:func:`rounding_unit`) is large
    against squared distances of size ``scale_d``: above ``_REFINE_REL_ERROR`` relative error,
    the pass is run again centred on a central row. False when ``scale_g`` is 0."""
    rel = rounding_unit(dtype) * scale_g / max(scale_d, 1e-300)
    return rel > _REFINE_REL_ERROR and scale_g > 0.0


# Inputs of fewer elements centre their Gram pass on chunk means (and run it again, centred on a
# central row, when that looks cancellation-prone: cheap at this size); larger ones pick the
# central row first, from a sample of the coordinates, so that one pass suffices under attack.
_SAMPLE_MIN_ELEMENTS = 1 << 21
# The sample: chunks of this many consecutive coordinates, evenly spread over d ...
_SAMPLE_CHUNK = 256
# ... about d / _SAMPLE_FRACTION coordinates, between 4 and _SAMPLE_MAX_CHUNKS chunks.
_SAMPLE_FRACTION = 64
_SAMPLE_MAX_CHUNKS = 64


def _sample_starts(d: int) -> np.ndarray | None:
    """The first coordinates of the sample's chunks (see :func:`sample_columns`); None when the
    chunks would cover every coordinate."""
    chunks = int(min(_SAMPLE_MAX_CHUNKS, max(4, d // (_SAMPLE_FRACTION * _SAMPLE_CHUNK))))
    if chunks * _SAMPLE_CHUNK >= d:
        return None
    return np.linspace(0, d - _SAMPLE_CHUNK, chunks).astype(np.int64)


def sample_columns(d: int) -> np.ndarray:
    """The coordinates :func:`centre_row_from_sample` reads: evenly spread chunks of
    ``_SAMPLE_CHUNK`` consecutive coordinates, about ``d / 64`` of them (4 to 64 chunks)."""
    starts = _sample_starts(d)
    if starts is None:
        return np.arange(d)
    return (starts[:, None] + np.arange(_SAMPLE_CHUNK)[None, :]).reshape(-1)


def _sample(X: torch.Tensor) -> torch.Tensor:
    """The columns :func:`sample_columns` of X (a new matrix): on the CPU kernels, one compiled
    copy of the chunks (:func:`._gram_kernel.gather_chunks`); else ``index_select``."""
    starts = _sample_starts(X.shape[1])
    if starts is not None and kernel_input(X):
        Xn = X.detach().numpy()
        if _gram_kernel.available(Xn):
            return torch.from_numpy(_gram_kernel.gather_chunks(Xn, starts, _SAMPLE_CHUNK))
    return X.index_select(1, torch.as_tensor(sample_columns(X.shape[1]), device=X.device))


def centre_row_from_sample(X: torch.Tensor) -> int | None:
    """A central input row to centre the Gram pass on, chosen on a sample of the coordinates;
    None for small inputs (they centre on chunk means).

    Centring each chunk on its mean lets a few far inputs (e.g. the -10 x mean attack, Gaussian
    noise of sigma 200) drag the centre away from the honest inputs, so that their distances come
    from differences of large products and lose precision. An input row that is central (least
    sum of squared distances to its closest half, :func:`._gram_finish.central_row`) on about d / 64
    evenly spread coordinates is, with an honest majority, an honest row near the bulk of the
    others on all coordinates, and centring on it keeps their distances exact to working
    precision in one pass. Rows holding a non-finite value in the sample are never chosen. The
    choice only affects rounding: a row that looks central on the sample only (an attack on this
    choice) is caught by the precision check after the pass, which then runs a second pass
    centred on the central row of the full Gram matrix.
    """
    n, d = X.shape
    if n < 3 or n * d < _SAMPLE_MIN_ELEMENTS:
        return None
    return central_row_of_sample(_sample(X))


def central_row_of_sample(S: torch.Tensor) -> int | None:
    """The central row (:func:`._gram_finish.central_row`) of the sampled columns S; None when
    every row holds a non-finite value there. The sample's Gram pass centres on chunk means and
    is never refined; where the small path applies (fewer than 2^21 values) it computes it in one
    compiled call, the same statistics to the bit as :func:`base_gram`."""
    from byzlearn.aggregators._gram_small import small_gram

    small = small_gram(S, DEFAULT_MAX_MISSING, refine=False)
    gram = small[0] if small is not None else base_gram(S)
    bad = gram.bad.numpy()
    if bad.all():
        return None
    D = small[1]["sqdist"].numpy() if small is not None else _distances(gram.aug, gram.bad)[0]
    return _gram_finish.central_row(D, bad)


def _distances(G: torch.Tensor, bad: torch.Tensor) -> tuple[np.ndarray, float, float]:
    """The squared distances of the rows whose centred Gram matrix is G (its first ``len(bad)``
    rows and columns; as :meth:`Inputs.sqdist`) and the two medians of the precision check
    (:func:`._gram_finish.distances`)."""
    return _gram_finish.distances(_float64_numpy(G), bad.cpu().numpy())


@dataclass
class Inputs:
    """n' vectors held as linear combinations ``Y = A X`` of the base rows X (never copied).

    Pre-aggregators (NNM, bucketing, clipping) only change ``A``; the Gram matrix of Y follows
    from the base Gram matrix by algebra, so a composed rule like ``nnm+krum`` still reads the
    d coordinates only twice.
    """

    X: torch.Tensor
    gram: BaseGram | None  # None for coordinate-wise rules, which never need it
    A: torch.Tensor | None = None  # float64 (n', n); None is the identity
    centre: torch.Tensor | None = None  # given centre vector the Gram is centred on, if any
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_matrix(
        cls,
        X: torch.Tensor,
        centre: torch.Tensor | None = None,
        max_missing: float = DEFAULT_MAX_MISSING,
        guess: _speculate.Guess | None = None,
    ) -> Inputs:
        """Build from an (n, d) matrix with one pass over the data (two only when the first
        still looks cancellation-prone, see :func:`centre_row_from_sample`; the imputation of
        missing values may add one on the float64 path, see :func:`base_gram`). ``guess``: the
        rule's weights on a Gram matrix, to write its output during the pass where the first
        blocks agree on them (:mod:`._speculate`)."""
        if centre is None:  # small inputs: the same pass in one compiled call (_gram_small)
            from byzlearn.aggregators._gram_small import small_gram

            if (small := small_gram(X, max_missing)) is not None:
                return cls(X=X, gram=small[0], _cache=small[1])
        row = None if centre is not None else centre_row_from_sample(X)
        gram = base_gram(X, centre=centre, centre_row=row, max_missing=max_missing, guess=guess)
        if centre is not None:  # no precision check (the rule's own centre); distances on demand
            return cls(X=X, gram=gram, centre=centre)
        # the distances (those Inputs.sqdist computes: cached) and the precision check
        D, refined = _refinement(gram.aug, gram.bad, X.dtype)
        if refined is not None and refined != row:
            # (an output written in the first pass does not depend on the centre)
            again = base_gram(X, centre_row=refined, max_missing=max_missing)
            gram = replace(again, speculation=gram.speculation)
            D = _distances(gram.aug, gram.bad)[0]
        return cls(X=X, gram=gram, _cache={"sqdist": torch.from_numpy(D)})

    # --- shape and validity -------------------------------------------------------------
    @property
    def n(self) -> int:
        return self.X.shape[0] if self.A is None else self.A.shape[0]

    @property
    def d(self) -> int:
        return self.X.shape[1]

    def coefficients(self) -> torch.Tensor:
        """The (n', n) float64 mixing matrix A."""
        if self.A is None:
            return torch.eye(self.X.shape[0], dtype=torch.float64)
        return self.A

    @property
    def bad(self) -> torch.Tensor:
        """Rows (of Y) that mix in a row holding non-finite values."""
        if "bad" not in self._cache:
            if self.A is None:
                self._cache["bad"] = self.base.bad.clone()
            else:
                self._cache["bad"] = (self.A[:, self.base.bad] != 0).any(dim=1)
        return self._cache["bad"]

    # --- n x n statistics -----------------------------------------------------------------
    def _basis_coefficients(self, centred: bool) -> torch.Tensor:
        A = self.coefficients()
        last = A.sum(dim=1, keepdim=True)
        if centred:
            last = last - 1.0
        return torch.cat([A, last], dim=1)

    def centred_gram(self) -> torch.Tensor:
        """Gram matrix of ``Y - 1 m^T`` (float64, n' x n'); translation-free distances follow.

        ``m`` is the given centre where a rule gives one (centred clipping's iterations need
        exactly that centring), else a point near the rows: the pass's centre for the base rows,
        the mean of the good rows for mixed ones. A scaling pre-aggregator (``clipping``,
        ``arc``) puts its rows far from the base centre (inputs around 1000 clipped to norm 1),
        where distances from a Gram centred on it kept only a few digits (``clipping+caf``
        9.4e-5 off in float64 on rows 5e-4 apart).
        """
        if "gram" not in self._cache:
            if self.A is None:  # the base rows: the centred block of aug itself (symmetric)
                n = self.X.shape[0]
                self._cache["gram"] = self.base.aug[:n, :n].clone()
                return self._cache["gram"]
            C = self._basis_coefficients(centred=True)
            good = ~self.bad
            if self.centre is None and bool(good.any()):
                C = C - C[good].mean(dim=0, keepdim=True)  # Y - 1 mean(Y_good)^T
            G = C @ self.base.aug @ C.T
            self._cache["gram"] = 0.5 * (G + G.T)  # exactly symmetric: D[i, j] == D[j, i]
        return self._cache["gram"]

    def sqdist(self) -> torch.Tensor:
        """Pairwise squared distances (float64, n' x n'); +inf to and from bad rows."""
        if "sqdist" not in self._cache:
            D = sqdist_from_gram(self.centred_gram())
            bad = self.bad
            D[bad, :] = float("inf")
            D[:, bad] = float("inf")
            D.fill_diagonal_(0.0)
            self._cache["sqdist"] = D
        return self._cache["sqdist"]

    def sqnorms(self) -> torch.Tensor:
        """Squared Euclidean norms of the rows of Y (float64); +inf for bad rows."""
        if "sqnorms" not in self._cache:
            aug = self.base.aug
            if self.A is None:  # ||x_i||^2 = ||c_i||^2 + 2 c_i.m + ||m||^2, O(n)
                n = self.X.shape[0]
                norms = (aug.diagonal()[:n] + 2.0 * aug[:n, n] + aug[n, n]).clamp(min=0.0)
            else:
                C = self._basis_coefficients(centred=False)
                norms = ((C @ aug) * C).sum(dim=1).clamp(min=0.0)
            norms[self.bad] = float("inf")
            self._cache["sqnorms"] = norms
        return self._cache["sqnorms"]

    # --- new views ----------------------------------------------------------------------
    def mix(self, M: torch.Tensor) -> Inputs:
        """The vectors ``M Y`` for an (n'', n') matrix M (float64)."""
        A = M.to(torch.float64) @ self.coefficients()
        return replace(self, A=A, _cache={})  # same class, X, Gram and centre

    def subset(self, rows: torch.Tensor | list[int]) -> Inputs:
        """The rows ``rows`` of Y, as a new Inputs sharing the base Gram matrix."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        return replace(self, A=self.coefficients()[rows], _cache={})

    # --- back to d coordinates ----------------------------------------------------------
    def base_weights(self, alpha: torch.Tensor) -> torch.Tensor:
        """Weights on the base rows of the combination ``alpha^T Y`` (float64, (n,))."""
        alpha = alpha.to(torch.float64)
        return alpha if self.A is None else self.A.T @ alpha

    def combine(self, alpha: torch.Tensor) -> torch.Tensor:
        """The vector ``sum_i alpha_i Y_i`` (d,), in the input dtype; bad rows must weigh 0.

        Missing values of the rows kept count as their imputed values (see the module
        docstring), so the output has no missing coordinate.
        """
        w = self.base_weights(alpha)
        some_bad = self.base.any_bad()
        if some_bad and bool((w[self.base.bad] != 0).any()):
            raise AssertionError("internal error: a bad row was given a non-zero weight")
        speculation = self.base.speculation
        if (
            speculation is not None
            and self.missing is None
            and (out := speculation.output(self.X, w)) is not None
        ):
            return out  # written during the Gram pass (the same bits)
        out = weighted_rows(self.X, w, all_rows=not some_bad)
        if self.missing is not None:
            rows = torch.nonzero(w).flatten()
            for cols in self._missing_column_chunks(0, self.d):
                values = self.gather(rows, cols)
                out[cols.to(out.device)] = (w[rows].to(values.device) @ values).to(out.dtype)
        return out

    # --- missing coordinates --------------------------------------------------------------
    @property
    def base(self) -> BaseGram:
        """The base Gram statistics (for distance-based rules, which always build them)."""
        if self.gram is None:
            raise ValueError("internal error: a distance-based step on inputs without a Gram pass")
        return self.gram

    @property
    def missing(self) -> MissingEntries | None:
        """Imputed missing values of the base rows kept (None when there are none)."""
        return None if self.gram is None else self.gram.missing

    def gather(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """``X[rows][:, cols]`` in float64 with missing values imputed (bad rows keep theirs)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        cols = torch.as_tensor(cols, dtype=torch.long)
        device = self.X.device
        values = self.X.index_select(1, cols.to(device)).index_select(0, rows.to(device)).double()
        if self.missing is not None:
            self.missing.fill(values, rows, cols)
        return values

    def _missing_column_chunks(self, j0: int, j1: int) -> Iterator[torch.Tensor]:
        """The columns in ``[j0, j1)`` holding a missing value, in chunks (CPU, long)."""
        if self.missing is None:
            return
        if "missing_cols" not in self._cache:
            self._cache["missing_cols"] = self.missing.columns()
        cols = self._cache["missing_cols"]
        lo, hi = torch.searchsorted(cols, torch.tensor([j0, j1])).tolist()
        for k in range(lo, hi, _MIX_COLUMNS):
            yield cols[k : min(hi, k + _MIX_COLUMNS)]

    def _repair(self, j0: int, j1: int, out: torch.Tensor) -> None:
        """Recompute the columns of the block ``out = Y[:, j0:j1]`` that mix a missing value,
        from the imputed values (a mix with a bad row stays non-finite)."""
        A = self.coefficients()
        for cols in self._missing_column_chunks(j0, j1):
            values = self.gather(torch.arange(self.X.shape[0]), cols)
            values[self.base.bad] = float("nan")
            mixed = A.to(values.device) @ torch.nan_to_num(values, nan=0.0)
            mixed[self.bad] = float("nan")
            out[:, (cols - j0).to(out.device)] = mixed.to(device=out.device, dtype=out.dtype)

    def materialize(self) -> torch.Tensor:
        """The (n', d) matrix Y (a view of X when A is the identity).

        Sparse mixing (bucketing, per-row scaling) sums only the rows involved, so a missing
        coordinate stays missing in that coordinate only; dense mixing (NNM) marks a whole
        output row missing (NaN) when it mixes a row holding non-finite values.
        """
        if self.A is None and self.missing is None:
            return self.X
        X = self.X
        out = _memory.empty((self.n, self.d), dtype=X.dtype, device=X.device)
        mix = self._column_mixer()
        for j0, j1 in column_blocks(self.d, block_size(X.shape[0], self.d, X.device)):
            mix(j0, j1, out[:, j0:j1])
            self._repair(j0, j1, out[:, j0:j1])
        return out

    def column_blocks(self, size: int) -> Iterator[tuple[int, int, torch.Tensor]]:
        """``(j0, j1, Y[:, j0:j1])`` block by block, without building all of Y.

        When A is not the identity the blocks are written into one reused buffer (valid until
        the next block), so a consumer of Y's columns never pays for the (n', d) matrix.
        """
        if self.A is None and self.missing is None:
            for j0, j1 in column_blocks(self.d, size):
                yield j0, j1, self.X[:, j0:j1]
            return
        X = self.X
        buf = torch.empty(self.n, min(size, self.d), dtype=X.dtype, device=X.device)
        mix = self._column_mixer()
        for j0, j1 in column_blocks(self.d, size):
            block = buf if j1 - j0 == buf.shape[1] else buf[:, : j1 - j0]
            mix(j0, j1, block)
            self._repair(j0, j1, block)
            yield j0, j1, block

    def sparse_mixing(self) -> bool:
        """Whether the rows of ``A X`` are built as sums of their few terms (bucketing, per-row
        scaling, or no Gram matrix), a missing value staying in its coordinate, rather than
        by one dense product (NNM), which marks a whole row missing."""
        A = self.coefficients()
        return self.gram is None or int((A != 0).sum()) <= 2 * self.X.shape[0]

    def _column_mixer(self) -> Callable[[int, int, torch.Tensor], None]:
        """A function writing the columns j0:j1 of ``A X`` into a given (n', j1 - j0) tensor."""
        X, A = self.X, self.coefficients()
        if self.sparse_mixing():
            terms = [
                [(j, float(A[i, j])) for j in torch.nonzero(A[i]).flatten().tolist()]
                for i in range(A.shape[0])
            ]

            def sparse(j0: int, j1: int, out: torch.Tensor) -> None:
                for i, row_terms in enumerate(terms):
                    o = out[i]
                    if not row_terms:
                        o.zero_()
                        continue
                    first, scale = row_terms[0]
                    o.copy_(X[first, j0:j1])
                    if scale != 1.0:
                        o.mul_(scale)
                    for j, a in row_terms[1:]:
                        o.add_(X[j, j0:j1], alpha=a)

            if not kernel_input(X):
                return sparse
            Xn = X.detach().numpy()

            def sparse_numpy(j0: int, j1: int, out: torch.Tensor) -> None:
                # The same sums with numpy's single-threaded loops: torch's OpenMP workers,
                # woken for these memory-bound ops, would spin against the kernel's threads.
                O = out.numpy()
                term = np.empty(j1 - j0, dtype=Xn.dtype)
                for i, row_terms in enumerate(terms):
                    if not row_terms:
                        O[i] = 0
                        continue
                    first, scale = row_terms[0]
                    np.multiply(Xn[first, j0:j1], scale, out=O[i])
                    for j, a in row_terms[1:]:
                        np.multiply(Xn[j, j0:j1], a, out=term)
                        np.add(O[i], term, out=O[i])

            return sparse_numpy
        all_good = not self.base.any_bad()
        good = torch.nonzero(~self.base.bad).flatten().to(X.device)
        A_good = A[:, ~self.base.bad].to(device=X.device, dtype=X.dtype)
        bad_rows = self.bad.to(X.device)
        step = _MIX_COLUMNS if cpu_kernels(X.device) else max(1, X.shape[1])

        def dense(j0: int, j1: int, out: torch.Tensor) -> None:
            for k0 in range(j0, j1, step):
                k1 = min(j1, k0 + step)
                rows = X[:, k0:k1] if all_good else X[good, k0:k1]
                torch.mm(A_good, rows, out=out[:, k0 - j0 : k1 - j0])
            if not all_good:
                out[bad_rows] = float("nan")

        return dense


def weighted_rows(X: torch.Tensor, w: torch.Tensor, all_rows: bool = False) -> torch.Tensor:
    """``sum_i w_i X_i`` over the rows with non-zero weight, in one blocked pass, dtype of X.

    ``all_rows=True`` (every row finite) allows one dense product over all rows, zero weights
    included, which is faster than gathering the rows with non-zero weight block by block.
    """
    # the weights are a small CPU vector: numpy finds the rows (a few us less than torch)
    w_np = w.detach().numpy() if w.device.type == "cpu" else w.cpu().numpy()
    used, used_w = _gram_kernel.used_rows(w_np)
    if used.size == 0:
        return torch.zeros(X.shape[1], dtype=X.dtype, device=X.device)
    if used.size == 1:
        i = int(used[0])
        scale = float(used_w[0])
        out = _memory.empty(X.shape[1], dtype=X.dtype, device=X.device)
        return out.copy_(X[i]) if scale == 1.0 else torch.mul(X[i], scale, out=out)
    if kernel_input(X) and _gram_kernel.available(X.detach().numpy()):
        # one compiled read of the rows used, float64 sums (speed: see _gram_kernel)
        summed = _gram_kernel.weighted_sum(
            X.detach().numpy(), used, used_w, torch.get_num_threads()
        )
        return torch.from_numpy(summed)
    rows = torch.from_numpy(used)
    if all_rows or rows.numel() == X.shape[0]:
        return w.to(device=X.device, dtype=X.dtype) @ X
    weights = w[rows].to(device=X.device, dtype=X.dtype)
    rows = rows.to(X.device)
    n, d = X.shape
    out = _memory.empty(d, dtype=X.dtype, device=X.device)
    size = block_size(n, d, X.device)
    for j0, j1 in column_blocks(d, size):
        torch.mv(X[rows, j0:j1].T, weights, out=out[j0:j1])
    return out


def as_numpy_bool(t: torch.Tensor) -> np.ndarray:
    """A CPU boolean tensor as a numpy array."""
    return t.cpu().numpy().astype(bool)
