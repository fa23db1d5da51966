"""Large CPU outputs on transparent huge pages.

A rule's output is fresh memory: ``d`` values the caller keeps. With glibc's allocator (the one
torch's CPU tensors use on Linux), a block larger than its largest mmap threshold (32 MiB) is
always a new mapping, unmapped again when freed, so every output of more than 8 M float32
values starts as untouched pages that the kernel faults in and zeroes one 4 KiB page at a time
as the rule writes them. Measured on the development host (2-core AVX-512 Xeon, one thread,
``torch.empty(n).fill_(1)``): 385-391 us per MiB from 48 MiB on, against 47-51 us per MiB for
memory already mapped; that is 14-15 ms for the 40 MB output of d = 1e7, a fifth of one read of
a 25 x 1e7 input. Advised with ``madvise(MADV_HUGEPAGE)`` before its first write, the same
mapping is faulted in 2 MiB at a time: 121-165 us per MiB (4.3 ms at d = 1e7). numpy does the
same for its own arrays of 4 MiB or more, which is why the outputs the kernels allocate through
numpy never showed the cost.

:func:`empty` is ``torch.empty`` with that advice for CPU tensors of at least
:data:`HUGE_MIN_BYTES`. The advice is a hint: where the system has no transparent huge pages
(``never``), another allocator, or no ``madvise`` (not Linux), nothing changes but the time.
Below 32 MiB glibc serves blocks from memory it keeps mapped, so there is nothing to gain.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Sequence

import torch

HUGE_MIN_BYTES = 32 << 20  # glibc's largest mmap threshold: larger blocks are new mappings
_MADV_HUGEPAGE = 14  # <sys/mman.h> on Linux
_PAGE = 4096


@functools.cache
def _madvise() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """libc's ``madvise`` on Linux, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None).madvise
    except (OSError, AttributeError):  # pragma: no cover (every Linux libc has it)
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def advise_huge_pages(t: torch.Tensor) -> torch.Tensor:
    """Ask for transparent huge pages under the whole 4 KiB pages of ``t``'s memory (a CPU
    tensor of at least :data:`HUGE_MIN_BYTES`; others, and systems without ``madvise``, are
    left as they are). Call it before the memory is first written. Returns ``t``."""
    nbytes = t.numel() * t.element_size()
    if t.device.type != "cpu" or nbytes < HUGE_MIN_BYTES:
        return t
    madvise = _madvise()
    if madvise is None:
        return t
    start = t.data_ptr()
    first = -(-start // _PAGE) * _PAGE
    end = (start + nbytes) // _PAGE * _PAGE
    if end > first:
        madvise(first, end - first, _MADV_HUGEPAGE)  # a hint: a failure changes only the time
    return t


def empty(
    shape: int | Sequence[int], *, dtype: torch.dtype, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``torch.empty(shape, dtype=dtype, device=device)``; a large CPU tensor's memory on
    transparent huge pages (:func:`advise_huge_pages`)."""
    return advise_huge_pages(torch.empty(shape, dtype=dtype, device=device))


def empty_like(t: torch.Tensor) -> torch.Tensor:
    """:func:`empty` of ``t``'s shape, dtype and device (contiguous)."""
    return empty(t.shape, dtype=t.dtype, device=t.device)


def copy_of(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``t`` (``t.clone()``) in memory from :func:`empty`."""
    return empty_like(t).copy_(t)
