"""The fused selection kernel on CUDA tensors (Triton): :mod:`._fused`'s kernel for a GPU.

On a GPU the blocked torch path of :mod:`._select` sorts each column block with ``torch.sort``
along the rows and takes the statistic with masked float64 sums: on an H200 at n = 25, f = 5,
d = 1e8, float32, the median took 221 ms where one read of the input (``X.sum()``) takes 2.4,
Phocas 332 ms (``benchmarks/cuda_check.sh``, 2026-12-04); with this kernel 4.2-4.6 and 4.6-5.0
ms (1.8-1.9 and 2.0-2.1 reads), the same bits as the CPU kernels. This module generates, per
row count n <= 64 (:data:`MAX_ROWS`), statistic, ``drop`` and dtype, a Triton kernel in which
each GPU thread holds the n values of one coordinate in registers, sorts them by the same
unrolled network as the CPU kernels (:func:`._sortnet.network_lines`; from 26 rows, the CPU's
groups sorted by its network and merged by its merge's comparators, :func:`_merged_lines`),
and takes the statistic right there with the CPU kernels' arithmetic
(:func:`._fused.statistic_lines`, translated line by line: float64 sums from 0.0 in row order,
the reciprocal for float32, the window steps, the clamps): one read of the input and one write
of the output.

The kernels from 26 rows have not run on a GPU yet (no device was lent since they were
written; their bits are tested by Triton's interpreter). Compiled here for sm_90 with Triton
3.9 (no device needed for that): the 64-row Phocas kernel (drop 12) takes 96 registers per
thread and no local memory (no spill), 2576 machine instructions, and 35 s to compile; the
50-row median 72 registers, 1376 instructions, 2.5 s; the 25-row Phocas, timed on an H200 at
2.0-2.1 reads, 44 registers and 760 instructions. Each (n, statistic, drop, dtype) compiles
once; Triton keeps the result on disk.

As on the CPU, that arithmetic is only valid where all n values of a coordinate are finite and
no mean overflowed: the kernel flags every other coordinate (one byte each), and the torch path
redoes the flagged ones (NaN where too few values are finite, exactly as before). Rows that hold
no finite value at all (a NaN attack) are left out first, their first value telling which rows
to check: the statistic of each coordinate is the same without them.

From 65 to 1024 rows :mod:`._sorted_cuda`'s kernel takes the statistic instead (sorted blocks
of coordinates, the same flags and redo). Triton is optional (it comes with the CUDA builds of
torch); without it, or for more than 1024 rows, the torch path runs as before.
``TRITON_INTERPRET=1`` runs the kernels on the CPU (the tests do, where Triton is installed).
The kernels' source goes to the cache folder of :mod:`._sortnet` (Triton compiles from a
file).
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from collections.abc import Callable
from typing import Any

import torch

from byzlearn.aggregators import _fused, _sorted_cuda, _sortnet

# Coordinates per Triton program (one per thread at 4 warps).
BLOCK = 128
NUM_WARPS = 4
# The most rows a kernel takes: beyond one network (25 rows), the CPU's groups merged in
# registers (:func:`._fused._merged_body`), as far as the CPU kernels merge them.
MAX_ROWS = _fused.MERGED_MAX_ROWS
_GENERATOR_VERSION = 6


@functools.cache
def triton_available() -> bool:
    """Whether Triton can be imported (it comes with torch's CUDA builds)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


_FAILED: list[str] = []  # the first error of a kernel launch; the torch paths run after it


def launch(
    run: Any, grid: tuple[int, ...], *args: Any, failed: list[str] | None = None, **kwargs: Any
) -> bool:
    """Launch a Triton kernel; False (and one warning, after which every Triton path that
    shares its ``failed`` list stands down for the process) where it fails, e.g. a Triton
    version that cannot compile it: the callers then take their torch path, which gives the
    same values. ``failed``: by default the list of this module's and :mod:`._gram_cuda`'s
    kernels; :mod:`._sorted_cuda` keeps its own, so that its failure leaves them running."""
    latch = _FAILED if failed is None else failed
    if latch:
        return False
    try:
        run[grid](*args, **kwargs)
    except Exception as err:  # any compiler or driver error: fall back, and say so
        latch.append(f"{type(err).__name__}: {err}")
        warnings.warn(
            f"byzlearn: a Triton kernel failed ({latch[0][:200]}); the torch path runs "
            "instead (slower, same values)",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return True


def interpreted() -> bool:
    """Whether Triton runs kernels on the CPU (``TRITON_INTERPRET=1``, for the tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def runs_on(X: torch.Tensor) -> bool:
    """Whether Triton kernels take X: a CUDA tensor (or any tensor under ``TRITON_INTERPRET=1``)
    where Triton is installed. The one device test of this module and :mod:`._gram_cuda`."""
    return (X.is_cuda or interpreted()) and triton_available()


def applies(X: torch.Tensor, n_rows: int, stat: int, drop: int, min_k: int) -> bool:
    """Whether a Triton kernel takes these rows of X: a CUDA tensor (or any tensor under
    ``TRITON_INTERPRET=1``) of float32 or float64, at most :data:`._sorted_cuda.MAX_ROWS` rows
    (this module's kernels up to :data:`MAX_ROWS`, :mod:`._sorted_cuda`'s beyond), enough of
    them for ``min_k`` and for what the statistic needs."""
    from byzlearn.aggregators._select import checked_min_k

    if X.dtype not in (torch.float32, torch.float64) or X.shape[1] == 0 or not runs_on(X):
        return False
    if n_rows > _sorted_cuda.MAX_ROWS or min_k < 1:
        return False
    return checked_min_k(stat, drop, min_k, "fused") <= n_rows


def _translated(line: str) -> str:
    """One line of the numba kernels' statistic or network as Triton: selects as ``tl.where``,
    ``lo``/``hi`` as ``tl.minimum``/``tl.maximum`` (no NaN reaches them), float64 casts as
    ``.to``, finiteness as a comparison with the kernel's ``inf``, scalar starts as float64
    tensors, and comparisons written tensor first."""
    line = re.sub(r"np\.float64\(([aw]\d+)\)", r"\1.to(tl.float64)", line)
    line = re.sub(r"np\.isfinite\(([^()]*)\)", r"(tl.abs(\1) < inf)", line)
    line = re.sub(r"\bpick\(", "tl.where(", line)
    line = re.sub(r"\blo\(", "tl.minimum(", line)
    line = re.sub(r"\bhi\(", "tl.maximum(", line)
    # constants first in the window's comparisons: "(4.0 >= s)", "(4.0 < s + 2.0)", "4.0 == s"
    line = re.sub(r"\((\d+\.\d+) >= (s[^()]*)\)", r"(\2 <= \1)", line)
    line = re.sub(r"\((\d+\.\d+) < (s[^()]*)\)", r"(\2 > \1)", line)
    line = re.sub(r"\((\d+\.\d+) == (s[^,]*),", r"(\2 == \1,", line)
    line = re.sub(r"^(acc|s) = (-?\d+\.\d+)$", r"\1 = zero + \2", line)
    if line == "fine = True":
        line = "fine = zero == 0.0"
    return line


_FLOAT = re.compile(r"(?<![\w.])(\d+\.\d+(?:e-?\d+)?)(?![\w.])")


def _exact_constants(lines: list[str]) -> tuple[list[str], list[float]]:
    """The lines with every float literal that float32 cannot hold exactly (the reciprocals of
    the means) replaced by a float64 value loaded from the kernel's ``consts`` (Triton would
    round such a literal to float32), and those values."""
    values: list[float] = []

    def swap(match: re.Match) -> str:
        x = float(match.group(1))
        if float(torch.tensor(x, dtype=torch.float32)) == x:
            return match.group(1)
        if x not in values:
            values.append(x)
        return f"c{values.index(x)}"

    return [_FLOAT.sub(swap, line) for line in lines], values


def _load_line(name: str, r: int) -> str:
    """``name`` = the values of the r-th of the kernel's rows in this program's coordinates."""
    return f"{name} = tl.load(X + tl.load(rows + {r}) * stride + j, mask=inside_d, other=0.0)"


def _missing_line(name: str) -> str:
    """``name``'s non-finite values as +inf (missing values sort last)."""
    return f"{name} = tl.where(tl.abs({name}) < inf, {name}, inf)"


_CPU_LOAD = re.compile(r"^(\w+) = X\[i(\d+), j0 \+ j\]$")
_CPU_MISSING = re.compile(r"^(\w+) = pick\(abs\(\1\) < inf, \1, inf\)$")
_CPU_PADDING = re.compile(r"^(\w+) = inf$")


def _merged_lines(n: int, stat: int, drop: int, recip: bool) -> list[str]:
    """The CPU's fused kernel of n rows, more than one network sorts, for Triton: its groups
    sorted by the plain kernel's network, merged comparator for comparator in registers and
    the statistic taken (:func:`._fused._merged_body`: the positions the statistic reads hold
    the CPU kernels' values, hence the same bits), with its loads as Triton loads. Its padding
    locals (a group's rows beyond its count, +inf) are never read: no comparator touches
    them, so they are left out."""
    body = _fused._merged_body(n, stat, drop, recip)
    tail = ["out[j0 + j] = o", f"ok &= (a{n - 1} < inf) & fine"]
    assert body[-2:] == tail, body[-2:]
    lines, padding = [], set()
    for line in body[:-2]:
        if load := _CPU_LOAD.match(line):
            lines.append(_load_line(load.group(1), int(load.group(2))))
        elif missing := _CPU_MISSING.match(line):
            lines.append(_missing_line(missing.group(1)))
        elif pad := _CPU_PADDING.match(line):
            padding.add(pad.group(1))
        else:
            lines.append(line)
    read = set(re.findall(r"\b\w+\b", "\n".join(lines)))
    assert not padding & read, sorted(padding & read)
    return lines


def _source(n: int, stat: int, drop: int, recip: bool) -> tuple[str, list[float]]:
    """Kernel source: the n rows ``rows`` of X (non-finite values as +inf) of BLOCK coordinates
    per program, sorted by the network of ``size_for(n)`` rows (+inf padding; beyond, the
    groups merged in registers: :func:`_merged_lines`), the statistic into ``out``, and
    ``flags`` 1 where a value was missing or a mean overflowed; and the float64 constants the
    kernel loads from ``consts``."""
    from byzlearn.aggregators._select import sorting_network

    size = _sortnet.size_for(n)
    assert size is not None or n <= MAX_ROWS
    lines = [
        '"""Generated by byzlearn.aggregators._fused_cuda; do not edit."""',
        "import triton",
        "import triton.language as tl",
        "",
        "",
        "@triton.jit",
        "def kernel(X, rows, stride, out, flags, d, inf, consts, BLOCK: tl.constexpr):",
        "    j = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)",
        "    inside_d = j < d",
        "    zero = (j * 0).to(tl.float64)",  # no tl.zeros: a jit function in some Triton versions
    ]
    if size is None:  # more rows than one network sorts: the groups merged in registers
        body, constants = _exact_constants(_merged_lines(n, stat, drop, recip))
    else:
        for r in range(n):
            lines += ["    " + _load_line(f"a{r}", r), "    " + _missing_line(f"a{r}")]
        lines += [f"    a{r} = (j * 0).to(a0.dtype) + inf" for r in range(n, size)]
        body, constants = _exact_constants(_fused.statistic_lines(n, stat, drop, recip))
        body = _sortnet.network_lines(sorting_network(size)) + body
    lines += [f"    c{k} = tl.load(consts + {k})" for k in range(len(constants))]
    lines += ["    " + _translated(line) for line in body]
    lines += [
        f"    ok = (a{n - 1} < inf) & fine",
        "    tl.store(out + j, o.to(out.dtype.element_ty), mask=inside_d)",
        "    tl.store(flags + j, tl.where(ok, 0, 1).to(tl.int8), mask=inside_d)",
        "",
    ]
    return "\n".join(lines), constants


@functools.cache
def kernel(
    n: int, stat: int, drop: int, recip: bool, interpret: bool
) -> tuple[Callable, list[float]] | None:
    """The Triton kernel for n rows (``recip``: float32 inputs) and its constants, or None where
    its source file cannot be written (Triton compiles from a file). ``interpret`` keys the
    cache: a kernel made under ``TRITON_INTERPRET=1`` runs on the CPU only."""
    source, constants = _source(n, stat, drop, recip)
    name = f"cuda_{n}_{stat}_{drop}_{int(recip)}_{int(interpret)}_v{_GENERATOR_VERSION}"
    run = _sortnet.compiled_from_file(name, source)
    return None if run is None else (run, constants)


def rows_with_values(X: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``rows`` without the rows of X that hold no finite value: only the rows whose first value
    is not finite are read in full."""
    rows = rows.cpu()
    first_missing = (~torch.isfinite(X[rows.to(X.device), 0])).cpu()
    suspects = rows[first_missing].tolist()
    if not suspects:
        return rows
    empty = {r for r in suspects if not bool(torch.isfinite(X[r]).any())}
    return torch.tensor([r for r in rows.tolist() if r not in empty], dtype=torch.int64)


def launch_generated(
    X: torch.Tensor, kept: torch.Tensor, stat: int, drop: int, out: torch.Tensor,
    flags: torch.Tensor,
) -> bool:
    """Run the generated kernel of ``kept.numel()`` rows (at most :data:`MAX_ROWS`) on the rows
    ``kept`` of X (a row stride, unit column stride) into ``out`` and ``flags`` (both
    contiguous, d values); False where it could not run."""
    made = kernel(kept.numel(), stat, drop, X.dtype == torch.float32, interpreted())
    if made is None:
        return False
    run, constants = made
    consts = torch.tensor([*constants, 0.0], dtype=torch.float64, device=X.device)
    d = X.shape[1]
    grid = ((d + BLOCK - 1) // BLOCK,)
    return launch(run, grid, X, kept.to(X.device), X.stride(0), out, flags, d, float("inf"),
                  consts, BLOCK=BLOCK, num_warps=NUM_WARPS)


def statistic_into(
    X: torch.Tensor,
    rows: torch.Tensor,
    stat: int,
    drop: int,
    min_k: int,
    out: torch.Tensor,
    redo: Callable[[torch.Tensor, torch.Tensor], None],
) -> bool:
    """Write the statistic of each column of X (rows ``rows``) into ``out`` by the Triton kernel
    and return True, or return False (nothing written) where it does not apply. The columns it
    flags are handed to ``redo(columns, out_of_those)``, which writes their values."""
    if not applies(X, rows.numel(), stat, drop, min_k):
        return False
    kept = rows_with_values(X, rows)
    if not applies(X, kept.numel(), stat, drop, min_k):
        return False
    Xc = X if X.stride(1) == 1 else X.contiguous()
    o = out if out.is_contiguous() else torch.empty_like(out)
    flags = torch.empty(X.shape[1], dtype=torch.int8, device=X.device)
    if kept.numel() > MAX_ROWS:  # too many rows for one thread's registers: sorted blocks
        launched = _sorted_cuda.launch_statistic(Xc, kept, stat, drop, o, flags, launch,
                                                 interpreted())
    else:
        launched = launch_generated(Xc, kept, stat, drop, o, flags)
    if not launched:
        return False
    columns = torch.nonzero(flags).flatten()
    if columns.numel():
        values = torch.empty(columns.numel(), dtype=o.dtype, device=o.device)
        redo(columns, values)
        o[columns] = values
    if o is not out:
        out.copy_(o)
    return True
