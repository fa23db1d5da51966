"""Run a kernel over contiguous ranges of blocks on several Python threads.

The numba kernels of :mod:`._gram_kernel` and :mod:`._sortnet` release the GIL (``nogil=True``),
so plain Python threads run them in parallel; the caller chooses how many (torch's thread count)
and how many blocks a thread needs to be worth starting.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


def in_parallel(
    work: Callable[[int, int], object], n_items: int, threads: int, min_per_thread: int = 1
) -> None:
    """Run ``work(i0, i1)`` on up to ``threads`` contiguous ranges of ``range(n_items)`` at once.

    Fewer threads when there are fewer than ``min_per_thread`` items per thread; one range, on
    the caller's thread, when only one is left.
    """
    threads = max(1, min(threads, n_items // max(1, min_per_thread)))
    if threads == 1:
        work(0, n_items)
        return
    bounds = [n_items * t // threads for t in range(threads + 1)]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(work, bounds[t], bounds[t + 1]) for t in range(threads)]
        for future in futures:
            future.result()
