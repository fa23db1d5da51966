"""A uniform random k-subset of ``range(d)``, sorted, without a d-entry permutation.

Robert Floyd's algorithm (Bentley, Floyd, "Programming Pearls: A Sample of Brilliance", CACM 30(9),
1987): for ``j = d - k, ..., d - 1`` take ``t`` uniform in ``[0, j]``; add ``t`` to the set, or
``j`` when ``t`` is already in it. Every k-subset comes out with probability ``1 / C(d, k)``, after
exactly k draws. The k draws come from the caller's numpy generator in one call
(``rng.integers(0, [d - k, ..., d - 1], endpoint=True)``), so a keyed generator gives the same
subset on every machine; membership is a bitmap of d bits, and reading the bitmap in order gives
the subset sorted. Memory: the k draws and the k outputs (int64) plus d / 8 bytes, against the
8 d bytes of the permutation ``Generator.choice(d, k, replace=False)`` shuffles when k > d / 50.
"""

from __future__ import annotations

import numpy as np

try:  # numba is a dependency, but keep a working fallback if it cannot load
    from numba import njit
except ImportError:  # pragma: no cover
    njit = None  # type: ignore[assignment]


def _floyd_python(draws: np.ndarray, d: int, bits: np.ndarray) -> None:  # pragma: no cover
    k = draws.shape[0]
    for q in range(k):
        j = d - k + q
        t = int(draws[q])
        if bits[t >> 3] & (1 << (t & 7)):
            t = j
        bits[t >> 3] |= 1 << (t & 7)


def _members_python(bits: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    out[:-1] = np.flatnonzero(np.unpackbits(bits, bitorder="little"))


if njit is not None:

    @njit(boundscheck=False, cache=True, nogil=True)
    def _floyd(draws, d, bits):  # pragma: no cover (compiled)
        """Floyd's insertions: draws[q] uniform in [0, d - k + q]; members set in ``bits``."""
        k = draws.shape[0]
        for q in range(k):
            j = d - k + q
            t = draws[q]
            if bits[t >> 3] & (1 << (t & 7)):
                t = j
            bits[t >> 3] |= np.uint8(1 << (t & 7))

    @njit(boundscheck=False, cache=True, nogil=True)
    def _members(bits, out):  # pragma: no cover (compiled)
        """The set bits' positions in increasing order into out[:-1] (out[-1]: scratch)."""
        q = 0
        last = out.shape[0] - 1
        for b in range(bits.shape[0]):
            byte = np.int64(bits[b])
            if byte:
                for s in range(8):  # branch-free: write, then advance when the bit is set
                    out[min(q, last)] = 8 * b + s
                    q += (byte >> s) & 1

else:  # pragma: no cover
    _floyd = _floyd_python
    _members = _members_python


def sorted_sample(rng: np.random.Generator, d: int, k: int) -> np.ndarray:
    """``k`` distinct coordinates of ``range(d)``, uniform over the k-subsets, sorted (int64);
    all of them (no draw) when k >= d. Floyd's algorithm (see the module docstring)."""
    if k >= d:
        return np.arange(d, dtype=np.int64)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    draws = rng.integers(0, np.arange(d - k, d, dtype=np.int64), endpoint=True, dtype=np.int64)
    bits = np.zeros((d + 7) // 8, dtype=np.uint8)
    _floyd(draws, d, bits)
    out = np.empty(k + 1, dtype=np.int64)  # one scratch entry for the branch-free writes
    _members(bits, out)
    return out[:k]
