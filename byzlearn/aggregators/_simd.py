"""Two compiler hints for the numba kernels, full-width vectors and software prefetch, and the
host's vector width (:func:`vector_bytes`, for kernels that write explicit vectors) and the host
facts the compiled row sums are laid out by (:func:`sum_columns`, :func:`prefetched_sums`: the
CPU's vendor, its last-level cache).

``wide()`` marks the numba function it is called from with the LLVM attribute
``"prefer-vector-width"="512"``. On CPUs with AVX-512, LLVM's default tuning for most Intel cores
(``prefer-256-bit``) keeps loops on 256-bit registers; the kernels here (sorting networks, 3 x 3
tiles of row products) are throughput-bound on their vector instructions, and full-width vectors
do twice the work per instruction. On CPUs without AVX-512 the attribute changes nothing (the
widest vectors are 256 bits). Measured on one core of an AVX-512 Xeon: the Gram tiles 84 against
101 ms, the 25-row sorting network about 20 % faster.

``prefetch(array, index)`` emits ``llvm.prefetch`` (a read, into the L2 cache) for the element
``array.flat[index]``: the Gram kernel prefetches the next chunk of every row while it multiplies
the current one, so the memory read and the products overlap.

Both are no-ops (``wide``) or plain reads (``prefetch``) when llvmlite's internals they rely on are
missing, so a numba/llvmlite upgrade can only cost speed, never correctness.
"""

from __future__ import annotations

import contextlib
import functools

try:
    from llvmlite import ir
    from numba import njit, types
    from numba.core import cgutils
    from numba.extending import intrinsic

    _HAVE = True
except ImportError:  # pragma: no cover
    _HAVE = False

_WIDE_ATTRIBUTE = '"prefer-vector-width"="512"'


def _named_cpu() -> str | None:
    """The CPU numba compiles for where ``NUMBA_CPU_NAME`` names one, None for the host."""
    from numba import config

    name = getattr(config, "CPU_NAME", None)
    return None if name is None or name == "host" else str(name)


# Fewest rows for which the row sums take long chunks on every host (see :func:`sum_columns`).
_LONG_CHUNK_ROWS = 33


def sum_columns(rows: int) -> int:
    """Coordinates per chunk of the compiled sums of rows (the mean, the weighted sum): 4096
    (32 KB of float64 sums, each row read in runs of 16 KB of float32 that the hardware
    prefetchers follow) on AMD's Zen cores (:func:`separate_add_pipes`) and from 33 rows on; 512
    for fewer rows elsewhere. One thread, the same bits whatever the chunk, in one process
    against ``X.sum()`` in turns, floors: on a 2-core AMD EPYC (Zen 3), the weighted sum of 25
    rows of 1e7 float32 values 1.25, 1.10, 1.01, 1.08 with chunks of 1024, 2048, 4096, 8192
    (the earlier kernel, chunks of 256, one row per pass, the next chunk prefetched by software:
    2.1-2.3; software prefetch added 0.15-0.2 at every size; torch's ``w @ X`` 1.6-1.7); on
    an AVX-512 Xeon (48 KB L1, 2 MB L2), chunks of 512 against 4096: the weighted sum of 10 rows
    of 1e6 (L3) 1.08 against 1.35, of 20 of 25 rows of 1e6 1.05 against 1.23, of 20 of 25 rows
    of 1e7 1.14 against 1.21, of 80 of 100 rows of 1e6 1.17 against 1.11 (2048: 1.11); the mean
    of 10 rows of 1e6 1.42 against 1.60, of 25 rows 1.19 against 1.33 (1e6) and 1.21 (1e7), of
    100 rows 1.25 against 1.15."""
    if rows >= _LONG_CHUNK_ROWS or _zen():
        return 4096
    return 512


@functools.cache
def _zen() -> bool:
    return separate_add_pipes()


# Coordinates per chunk of the row sums where they prefetch (see :func:`prefetched_sums`).
PREFETCH_SUM_COLUMNS = 256
# Fewest coordinates per thread of the compiled row sums (16 chunks of 4096): below, one thread.
SUM_MIN_COLUMNS_PER_THREAD = 1 << 16


def sum_plan(rows: int, nbytes: int) -> tuple[int, bool]:
    """``(coordinates per chunk, whether each row's next chunk is prefetched)`` of the
    compiled sums of ``rows`` rows of an input of ``nbytes`` bytes (the mean, the weighted sum):
    ``PREFETCH_SUM_COLUMNS`` with the prefetch where :func:`prefetched_sums`, else
    :func:`sum_columns` without; the same bits either way."""
    if prefetched_sums(rows, nbytes):
        return PREFETCH_SUM_COLUMNS, True
    return sum_columns(rows), False


def prefetched_sums(rows: int, nbytes: int) -> bool:
    """Whether the compiled sum of ``rows`` rows (the weighted sum; the mean, likewise) of an
    input of ``nbytes`` bytes takes chunks of ``PREFETCH_SUM_COLUMNS`` coordinates and
    prefetches each row's next chunk (into L2) just before it adds the row's current one: off
    AMD's Zen cores, for fewer than 33 rows, when the
    input is larger than the last-level cache (its rows then come from memory; never where that
    size is unknown). One thread, the same bits, in one process against ``X.sum()`` in turns, on
    an AVX-512 Xeon (300 MB L3), floors, prefetched against chunks of 512 without: all 25 rows of
    25 x 1e7 float32 values 1.04 against 1.14, 20 of them 0.83 against 0.90, 5 of them 0.25
    against 0.28, 10 rows of 10 x 1e7 1.12 against 1.25; inputs in the L3 cache lose (10 rows
    of 1e6 1.28 against 1.12, 25 of 1e6 1.16 against 1.07). On the Zen 3 EPYC, software
    prefetch cost the sums 0.15-0.2 floors at every chunk width."""
    if rows >= _LONG_CHUNK_ROWS or _zen():
        return False
    return in_last_level_cache(nbytes) is False


def in_last_level_cache(nbytes: int) -> bool | None:
    """Whether an input of ``nbytes`` bytes fits in the CPU's last-level cache (so that a rule
    called on it again, or right after the step that wrote it, reads it from there); None where
    that cache's size is unknown."""
    cache = last_level_cache_bytes()
    return None if cache is None else nbytes <= cache


@functools.cache
def last_level_cache_bytes() -> int | None:
    """The size of the CPU's last-level data cache in bytes (Linux sysfs, CPU 0), or None."""
    import glob

    best: tuple[int, int] | None = None
    for folder in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*"):
        try:
            with open(f"{folder}/level") as f:
                level = int(f.read().strip())
            with open(f"{folder}/type") as f:
                kind = f.read().strip()
            with open(f"{folder}/size") as f:
                size = cache_size_bytes(f.read())
        except (OSError, ValueError):
            continue
        if kind != "Instruction" and size is not None and (best is None or level > best[0]):
            best = (level, size)
    return None if best is None else best[1]


def cache_size_bytes(text: str) -> int | None:
    """A sysfs cache size (``"307200K"``, ``"32M"``, ``"512"``) in bytes, or None."""
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    digits = text[:-1] if scale > 1 else text
    return int(digits) * scale if digits.isdigit() else None


def vector_bytes() -> int:
    """Bytes of the widest vector register numba compiles for: 64 with AVX-512, else 32 (also
    when that cannot be found out). numba targets the host unless ``NUMBA_CPU_NAME`` names
    another CPU (e.g. ``generic``, for caches shared between machines); then AVX-512 counts only
    where ``NUMBA_CPU_FEATURES`` lists ``+avx512f``."""
    try:
        if _named_cpu() is not None:
            from numba import config

            return 64 if "+avx512f" in (getattr(config, "CPU_FEATURES", None) or "") else 32
        from llvmlite import binding

        return 64 if binding.get_host_cpu_features().get("avx512f", False) else 32
    except Exception:  # pragma: no cover (a hint only)
        return 32


def separate_add_pipes() -> bool:
    """Whether numba compiles for a CPU that issues vector additions and subtractions on pipes
    of their own, beside the multiply-adds: AMD's Zen cores (LLVM's ``znver*``; Intel's cores
    issue both on the same ports). False when that cannot be found out, or where
    ``NUMBA_CPU_NAME`` names another CPU than a Zen core."""
    try:
        name = _named_cpu()
        if name is None:
            from llvmlite import binding

            name = binding.get_host_cpu_name()
        return str(name).startswith("znver")
    except Exception:  # pragma: no cover (a hint only)
        return False


if _HAVE:

    @intrinsic
    def wide(typingctx):  # pragma: no cover (compiled)
        """Ask LLVM for 512-bit vectors in the calling function (see the module docstring)."""
        sig = types.void()

        def codegen(context, builder, signature, args):
            # llvmlite validates known attribute names; a key="value" pair is added raw
            with contextlib.suppress(Exception):  # a hint only
                set.add(builder.function.attributes, _WIDE_ATTRIBUTE)
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def prefetch(typingctx, array, index):  # pragma: no cover (compiled)
        """Prefetch (read, L2) the element ``array.flat[index]`` of a C-contiguous array."""
        sig = types.void(array, types.intp)

        def codegen(context, builder, signature, args):
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            ptr = builder.gep(ary.data, [args[1]])
            i8p = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
            # rw = 0 (read), locality = 2 (L2), cache type = 1 (data)
            args = [builder.bitcast(ptr, i8p), i32(0), i32(2), i32(1)]
            builder.call(fn, args)
            return context.get_dummy_value()

        return sig, codegen

    @njit(cache=True, nogil=True, inline="always")
    def prefetch_run(array, start, count):  # pragma: no cover (compiled)
        """Prefetch (read, L2) every cache line of ``array.flat[start:start + count]`` (a
        C-contiguous array; nothing when ``count`` <= 0)."""
        line = max(1, 64 // array.itemsize)
        for q in range(0, count, line):
            prefetch(array, start + q)
