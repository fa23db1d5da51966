"""Dropping numba's cached machine code when the compiled modules it was built from change.

numba's disk cache (``@njit(cache=True)``) checks a cached function against the file that
defines it only (its modification time and size). A compiled function that calls into another
module carries that module's code and constants as they were when it was compiled: after an edit
or a ``git pull`` in an editable install that changes, say, ``_gram_kernel.py`` but not
``_gram_small.py``, the cached ``_gram_small._small_pass`` would keep running the old Gram
kernel, with the old buffer layout, beside Python code that already uses the new one (a wrong
result or a read outside a buffer, with no error). So on the package's first import,
:func:`drop_stale` compares a digest of the sources of every module holding numba code with the
one stored beside their caches, and where it differs deletes those caches (numba then compiles
afresh, once). The generated selection kernels (:mod:`byzlearn.aggregators._sortnet`) already
carry such a digest in their file names.

Only the package's own ``__pycache__`` folders are handled: that is where numba caches for a
writable source tree (an editable install). A non-editable install is rewritten as a whole on
upgrade, so every cached function sees its own file change; a cache folder set with
``NUMBA_CACHE_DIR`` is left alone (clear it yourself after changing the sources).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parent
# The stamp holding the digest the caches were built from (in the package's __pycache__).
STAMP = "byzlearn-jit-sources.sha256"
# A module holds numba code when its source names either (njit without a cache can still be
# compiled into a cached caller).
_MARKERS = (b"njit", b"cache=True")


def compiled_sources(package: Path = PACKAGE) -> dict[Path, bytes]:
    """The package's modules that hold numba code and their sources, in a fixed order (each file
    read once; a ``.py`` name that is not a file, e.g. a dangling link, is no module)."""
    sources = {path: path.read_bytes() for path in sorted(package.rglob("*.py")) if path.is_file()}
    return {path: text for path, text in sources.items() if any(m in text for m in _MARKERS)}


def sources_digest(sources: dict[Path, bytes], package: Path = PACKAGE) -> str:
    """SHA-256 of the sources' paths (relative to the package) and contents."""
    digest = hashlib.sha256()
    for path, text in sources.items():
        digest.update(path.relative_to(package).as_posix().encode() + b"\0")
        digest.update(text + b"\0")
    return digest.hexdigest()


def drop_stale(package: Path = PACKAGE) -> bool:
    """Delete numba's index and data files (``*.nbi``, ``*.nbc``) from the ``__pycache__`` folders
    of the package's compiled modules when their sources' digest differs from the stored one
    (or none is stored), then store the new digest; True when caches were dropped. Never raises:
    a folder that cannot be read or written keeps what it has (numba then caches elsewhere)."""
    try:
        sources = compiled_sources(package)
        digest = sources_digest(sources, package)
        stamp = package / "__pycache__" / STAMP
        try:
            if stamp.read_bytes() == digest.encode():
                return False
        except OSError:
            pass  # no stamp yet: the caches' origin is unknown (a damaged one: the same)
        for folder in sorted({path.parent / "__pycache__" for path in sources}):
            for cached in folder.glob("*.nb[ic]"):
                cached.unlink(missing_ok=True)
        stamp.parent.mkdir(exist_ok=True)
        partial = stamp.with_name(f"{STAMP}.{os.getpid()}")
        partial.write_text(digest)
        partial.replace(stamp)  # atomic: a concurrent import reads the old or the new digest
        return True
    except OSError:
        return False


# The file, in each numba cache folder, whose lock serialises saves there (its name outlives the
# caches that :func:`drop_stale` deletes).
SAVE_LOCK = "byzlearn-numba-save.lock"


def serialise_saves() -> bool:
    """Make a numba cache save (read the index, pick a data file name, write both) one step
    across processes, by an exclusive ``flock`` of a lock file in the cache folder; True when
    installed (or already), False without numba or ``fcntl`` (then nothing changes).

    numba (0.68; its issue #10128 for the same race in its GUFunc caches) saves a compiled
    function's new signature by reading the function's index, taking the first data file name
    not in it, and writing the index and the file without a lock. Two processes saving two
    signatures of one function at once (a ``sweep --jobs 2`` of float32 and float64 runs, or
    the background compilation of :mod:`byzlearn.experiments._warm`) both read the same index,
    both take ``<name>.1.nbc``, and the last index written can map a signature to the other's
    machine code: a later process would run code compiled for other argument types (a wrong
    result or a crash, no error). Under the lock the second save reads the first one's index
    and takes another name. A folder where the lock file cannot be made saves as before."""
    try:
        import fcntl

        from numba.core import caching
    except ImportError:
        return False
    cls = caching.IndexDataCacheFile
    if getattr(cls.save, "_byzlearn_serialised", False):
        return True
    unlocked = cls.save

    def save(self: Any, key: Any, data: Any) -> None:
        try:
            os.makedirs(self._cache_path, exist_ok=True)
            lock = os.open(os.path.join(self._cache_path, SAVE_LOCK), os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            return unlocked(self, key, data)  # (numba's own save reports what it cannot write)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released by the close (or by the kernel at exit)
            return unlocked(self, key, data)
        finally:
            os.close(lock)

    save._byzlearn_serialised = True  # type: ignore[attr-defined]
    save.__wrapped__ = unlocked  # type: ignore[attr-defined]
    save.__doc__ = unlocked.__doc__
    cls.save = save  # type: ignore[method-assign]
    return True
