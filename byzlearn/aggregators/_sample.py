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


def _members_python(bits: np.ndarray, out: np.ndarray, places, counts) -> None:  # pragma: no cover
    out[:-8] = np.flatnonzero(np.unpackbits(bits, bitorder="little"))


# Per byte value: the places of its set bits, lowest first (then zeros), and how many there are.
_PLACES = np.array(
    [[k for k in range(8) if v >> k & 1] + [0] * (8 - bin(v).count("1")) for v in range(256)],
    dtype=np.int64,
)
_COUNTS = np.array([bin(v).count("1") for v in range(256)], dtype=np.int64)


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
    def _members(bits, out, places, counts):  # pragma: no cover (compiled)
        """The set bits' positions in increasing order into out[:-8] (the last 8: scratch):
        per byte, the 8 entries of its row of ``places`` (the set bits' places first) written
        at once, then the count of its set bits kept. (A write and an advance per bit, with a
        branch past zero bytes, took 6.8 ms for 1e6 members of 1e7: SignGuard's sample.)"""
        q = 0
        for b in range(bits.shape[0]):
            byte = bits[b]
            base = 8 * b
            row = places[byte]
            for s in range(8):
                out[q + s] = base + row[s]
            q += counts[byte]

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
    out = np.empty(k + 8, dtype=np.int64)  # 8 scratch entries for the last byte's writes
    _members(bits, out, _PLACES, _COUNTS)
    return out[:k]
