"""Selects as functions, for the generated fused kernels (:mod:`._fused`).

A conditional expression ``a if c else b`` is a branch in Python's bytecode, so numba builds a
basic block for each side and its join; a sorting network written with them (two per
compare-exchange: 280 at 25 rows) and the statistic after it give a loop body of about a
thousand blocks, on which numba's SSA reconstruction spent over half of the compile time. The
same expressions inside these small functions leave the body one straight block; LLVM inlines
them and emits the same selects. A fused kernel at 25 rows compiled in 2.5 s instead of 10.2 s
(fresh cache, /tmp script), ran as fast (``--scale-n --scale-values 10 25``) and gave the same
bits (80 outputs of both kernels against the previous code, NaN and tied inputs, both dtypes).
The plain kernels of :mod:`._sortnet` keep the conditional expressions: with these calls the
plain 25-row kernel compiled in 4.3 s instead of 14.2 s but sorted 100 rows (4 groups) 7 %
slower (median, n = 100, d = 1e6: 90.3-90.8 against 83.9-84.9 ms, alternated twice).
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
