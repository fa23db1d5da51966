"""MDA's exact search compiled: the vertex-cover branching of :mod:`.rules.mda` on bitsets.

The conflict graph of a threshold t (the pairs of inputs farther apart than t) is held as one
row of 64-bit words per vertex, the vertices still in play as one more row of words; a degree
is then a popcount over ``ceil(n / 64)`` words instead of a sum over an n x n boolean matrix,
and a branch costs O(n^2 / 64) word operations with no allocation beyond one row of words.

The branching is :func:`.rules.mda._cover`'s, step for step (the same tests in the same order,
the maximum degree's first vertex, the same two branches in the same order, the same matching
cover), so the cover found and the branches counted are the same: the same subset, and the
same ``max_branches`` at which the search gives up (the Python search stays as the reference
in the tests and as the path where numba is missing).
"""

from __future__ import annotations

import numpy as np

try:  # numba is a dependency, but keep a working fallback if it cannot load
    from numba import njit, types
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover
    njit = None  # type: ignore[assignment]

# What the compiled search returns besides a cover's size.
NO_COVER = -1  # no vertex cover within the budget
EXHAUSTED = -2  # more branches than allowed

if njit is not None:

    @intrinsic
    def _popcount(typingctx, word):  # pragma: no cover (compiled)
        """The number of set bits of a uint64 (LLVM's ctpop: one instruction where the CPU
        has it)."""
        sig = types.uint64(types.uint64)

        def codegen(context, builder, signature, args):
            return builder.ctpop(args[0])

        return sig, codegen

    @njit(cache=True, nogil=True)
    def conflict_bits(D, threshold):  # pragma: no cover (compiled)
        """The rows of words of the graph ``threshold < D`` (bit j of row i: word j // 64,
        bit j % 64)."""
        n = D.shape[0]
        words = (n + 63) // 64
        adj = np.zeros((n, words), dtype=np.uint64)
        for i in range(n):
            for j in range(n):
                if threshold < D[i, j]:
                    adj[i, j >> 6] |= np.uint64(1) << np.uint64(j & 63)
        return adj

    @njit(cache=True, nogil=True)
    def _degrees(adj, active, deg):  # pragma: no cover (compiled)
        """deg[i] = the neighbours of i among the active vertices (0 for inactive i); returns
        the first vertex of largest degree and the sum of the degrees."""
        n, words = adj.shape
        best, top, total = 0, -1, 0
        for i in range(n):
            if (active[i >> 6] >> np.uint64(i & 63)) & np.uint64(1):
                c = 0
                for w in range(words):
                    c += np.int64(_popcount(adj[i, w] & active[w]))
                deg[i] = c
                total += c
                if c > top:
                    best, top = i, c
            else:
                deg[i] = 0
        return best, total

    @njit(cache=True, nogil=True)
    def _matching(adj, active, deg, out, pos):  # pragma: no cover (compiled)
        """A graph whose degrees are at most 1: the lower end of each edge, the edges in
        row-major order, into ``out[pos:]``; returns their number."""
        n = adj.shape[0]
        k = 0
        for i in range(n):
            if deg[i] == 0:
                continue
            for j in range(i + 1, n):
                bit = np.uint64(1) << np.uint64(j & 63)
                if adj[i, j >> 6] & active[j >> 6] & bit:
                    out[pos + k] = i
                    k += 1
        return k

    @njit(cache=True, nogil=True)
    def _search(adj, everyone, budget, out, left):  # pragma: no cover (compiled)
        """:func:`.rules.mda._cover` on bitsets, its recursion as an explicit stack (numba's
        cache cannot load a recursive function): writes a cover of the graph into ``out`` and
        returns its size, or NO_COVER, or EXHAUSTED once ``left[0]`` (branches left) runs
        out. Frame t: the vertices in play, its budget, where its cover starts in ``out``,
        its stage (0: entered, 1: removing v was tried, 2: removing v's neighbours was
        tried), its v, deg(v) and number of neighbours."""
        n, words = adj.shape
        depth = budget + 2  # every frame below the first spends at least one of the budget
        active = np.empty((depth, words), dtype=np.uint64)
        budgets = np.empty(depth, dtype=np.int64)
        starts = np.empty(depth, dtype=np.int64)
        stages = np.zeros(depth, dtype=np.int64)
        vs = np.empty(depth, dtype=np.int64)
        dvs = np.empty(depth, dtype=np.int64)
        ks = np.empty(depth, dtype=np.int64)
        deg = np.empty(n, dtype=np.int64)
        active[0] = everyone
        budgets[0], starts[0], stages[0] = budget, 0, 0
        top = 0
        result = 0  # what the frame that ended last returned
        while True:
            stage = stages[top]
            b, pos = budgets[top], starts[top]
            if stage == 0:
                left[0] -= 1
                if left[0] < 0:
                    return EXHAUSTED
                v, total = _degrees(adj, active[top], deg)
                dv = deg[v]
                edges = total // 2
                if total == 0:
                    result = 0
                elif b == 0:
                    result = NO_COVER
                elif dv == 1:
                    result = NO_COVER if edges > b else _matching(adj, active[top], deg, out, pos)
                elif edges > b * dv:  # each removal covers at most deg[v] edges
                    result = NO_COVER
                else:  # first branch: v leaves the graph
                    vs[top], dvs[top], stages[top] = v, dv, 1
                    out[pos] = v
                    active[top + 1] = active[top]
                    active[top + 1, v >> 6] &= ~(np.uint64(1) << np.uint64(v & 63))
                    budgets[top + 1], starts[top + 1], stages[top + 1] = b - 1, pos + 1, 0
                    top += 1
                    continue
            elif stage == 1:
                if result >= 0:
                    result += 1
                elif dvs[top] > b:
                    result = NO_COVER
                else:  # second branch: v's neighbours (ascending) leave the graph
                    v = vs[top]
                    k = 0
                    for w in range(words):
                        bits = adj[v, w] & active[top, w]
                        active[top + 1, w] = active[top, w] & ~bits
                        while bits:
                            low = bits & (~bits + np.uint64(1))
                            out[pos + k] = w * 64 + np.int64(_popcount(low - np.uint64(1)))
                            k += 1
                            bits ^= low
                    ks[top], stages[top] = k, 2
                    budgets[top + 1], starts[top + 1], stages[top + 1] = b - k, pos + k, 0
                    top += 1
                    continue
            elif result >= 0:  # stage 2
                result += ks[top]
            top -= 1  # the frame ends with ``result``
            if top < 0:
                return result

    @njit(cache=True, nogil=True)
    def least_cover(D, thresholds, f, branches):  # pragma: no cover (compiled)
        """The binary search of :func:`.rules.mda.min_diameter_subset` over ``thresholds``
        (ascending) for the least one whose conflict graph has a cover of at most f vertices:
        (that cover's vertices (the first ``size`` of the array), size (NO_COVER when no
        threshold has one), EXHAUSTED in place of the size when ``branches`` ran out)."""
        n = D.shape[0]
        best = np.empty(max(f, 1), dtype=np.int64)
        size = NO_COVER
        out = np.empty(max(f, 1) + n, dtype=np.int64)
        words = (n + 63) // 64
        everyone = np.zeros(words, dtype=np.uint64)
        for i in range(n):
            everyone[i >> 6] |= np.uint64(1) << np.uint64(i & 63)
        left = np.array([branches], dtype=np.int64)
        lo, hi = 0, thresholds.size - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            found = _search(conflict_bits(D, thresholds[mid]), everyone, f, out, left)
            if found == EXHAUSTED:
                return best, EXHAUSTED
            if found == NO_COVER:
                lo = mid + 1
            else:
                best[:found] = out[:found]
                size, hi = found, mid - 1
        return best, size


def available() -> bool:
    """Whether the compiled search runs here (numba loaded)."""
    return njit is not None


__all__ = ["EXHAUSTED", "NO_COVER", "available", "conflict_bits", "least_cover"]
