"""How the ``byzlearn`` command keeps the memory it frees: glibc's malloc thresholds.

glibc's malloc gives freed memory back to the kernel eagerly. A block from 128 KiB on is a
mapping of its own, unmapped when freed (glibc raises that threshold, up to 32 MiB, when it
sees larger blocks freed), and the top of the heap is trimmed once more than twice the
threshold lies free there. A training round allocates and frees the same few megabytes of
activations and gradients every round (the ``cnn`` model's layers at 20-25 workers: about
10 MB), so the kernel maps and zeroes fresh 4 KiB pages for them round after round: 300-1300
page faults a round, 1-2 ms of a 9-11 ms round on a 2-core VM (``docs/performance.md``).
:func:`keep_freed_memory` fixes both thresholds for the process, as ``MALLOC_MMAP_THRESHOLD_``
and ``MALLOC_TRIM_THRESHOLD_`` would: blocks under 32 MiB come from the heap and up to 256 MiB
of freed heap stays with the process for the next round, as PyTorch's CUDA allocator keeps its
blocks. Blocks of 32 MiB and more are still mappings of their own (the aggregation rules' large
outputs ask for huge pages on theirs: :mod:`byzlearn.aggregators._memory`).

The command line calls it once at start, and the processes it starts for the runs (a sweep's
local workers, Ray tasks and actors) call it when it took effect in their parent
(:func:`kept`); ``BYZLEARN_MALLOC=system`` keeps glibc's defaults (``keep``, or the variable
unset or empty, is the default; any other value is refused with :class:`ValueError`, which the
command prints as one error line). Otherwise the library never calls it: a program that imports
byzlearn keeps its own allocator settings (it may call this function itself).
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = [
    "ENVIRONMENT", "MMAP_THRESHOLD", "SETTINGS", "TRIM_THRESHOLD", "keep_freed_memory", "kept",
    "setting",
]

ENVIRONMENT = "BYZLEARN_MALLOC"
SETTINGS = ("keep", "system")  # keep freed memory (the default); leave glibc's thresholds
MMAP_THRESHOLD = 32 * 2**20  # glibc's own ceiling for its dynamic threshold
TRIM_THRESHOLD = 256 * 2**20
_M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_KEPT = False  # whether keep_freed_memory took effect in this process


def _glibc() -> bool:
    """Whether the process runs on glibc (what ``confstr`` reports, without reading files)."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError, AttributeError):  # no such name, or no confstr at all
        return False


def setting() -> str:
    """``BYZLEARN_MALLOC``, one of :data:`SETTINGS` (unset or empty: ``keep``); ValueError for
    any other value, so that a misspelt opt-out is not silently taken for the default."""
    value = os.environ.get(ENVIRONMENT, "").strip().lower() or "keep"
    if value not in SETTINGS:
        raise ValueError(
            f"{ENVIRONMENT}={os.environ[ENVIRONMENT]!r} is not a setting; use "
            f"{ENVIRONMENT}=system to keep the C library's malloc thresholds, or leave it unset"
        )
    return value


def keep_freed_memory(environment: bool = True) -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD` and its trim threshold at
    :data:`TRIM_THRESHOLD` for this process; ``True`` when both were set, ``False`` where the
    C library is not glibc, ``mallopt`` refused, or ``BYZLEARN_MALLOC=system``; ValueError
    where ``BYZLEARN_MALLOC`` holds another value (:func:`setting`). ``environment=False``
    leaves the variable out: the processes a command starts follow their parent's decision."""
    if environment and setting() == "system":
        return False
    if platform.system() != "Linux" or not _glibc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    global _KEPT
    mmap = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    trim = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _KEPT = _KEPT or (mmap and trim)
    return mmap and trim


def kept() -> bool:
    """Whether :func:`keep_freed_memory` took effect in this process (the processes a command
    starts for its runs do the same when it did)."""
    return _KEPT
