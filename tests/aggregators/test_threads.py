"""Ranges of blocks on Python threads (the kernels release the GIL)."""

from __future__ import annotations

from byzlearn.aggregators import _select as sel
from byzlearn.aggregators._threads import in_parallel


def test_in_parallel_covers_every_block_once():
    seen = []
    in_parallel(lambda b0, b1: seen.extend(range(b0, b1)), 1000, 3)
    assert sorted(seen) == list(range(1000))
    seen.clear()
    # too few blocks per thread: one range
    in_parallel(lambda b0, b1: seen.append((b0, b1)), 10, 4, sel._MIN_BLOCKS_PER_THREAD)
    assert seen == [(0, 10)]
