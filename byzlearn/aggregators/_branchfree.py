"""Selects as functions, for the generated kernels (:mod:`._sortnet`, :mod:`._fused`).

A conditional expression ``a if c else b`` is a branch in Python's bytecode, so numba builds a
basic block for each side and its join; a sorting network written with them (two per
compare-exchange: 280 at 25 rows) gives a loop body of about a thousand blocks, on which numba's
SSA reconstruction spent over half of the compile time. The same expressions inside these small
functions leave the body one straight block; LLVM inlines them and emits the same selects.
Fresh cache, one process each (/tmp scripts): the plain 25-row kernel compiled in 4.3-4.6 s
instead of 14.2 s, a fused kernel at 25 rows in 1.6-1.9 s instead of 10.2 s. The same bits (80
outputs of both kernels byte-equal to the previous code's: every statistic at 5, 10 and 25
rows, Bulyan's short windows, merged 40 and 60 rows, ties, NaN, inf, both dtypes) and the same
speed (the merged 100-row sort in one process, both variants alternated 11 times: median 82.7
against 82.1 ms, MeaMed 99.0 against 98.9 ms; a first A/B across processes had shown 7 % either
way, which is this host's noise from one process to the next).
"""

from __future__ import annotations

try:
    from numba import njit

    @njit(inline="never", cache=True)  # a call in numba's IR, inlined by LLVM
    def lo(a, b):  # pragma: no cover (compiled)
        """The first of a compare-exchange: ``a if a < b else b``."""
        return a if a < b else b

    @njit(inline="never", cache=True)
    def hi(a, b):  # pragma: no cover (compiled)
        """The second of a compare-exchange: ``b if a < b else a``."""
        return b if a < b else a

    @njit(inline="never", cache=True)
    def pick(c, a, b):  # pragma: no cover (compiled)
        """``a if c else b`` (both already computed)."""
        return a if c else b

except ImportError:  # pragma: no cover
    pass
