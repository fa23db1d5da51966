"""A/B of the selection kernel's statistic part against an earlier revision, in one process.

Usage (from the repository root)::

    python benchmarks/selection_ab.py --rev 5ec093a              # n = 10, 26, 100, 200
    python benchmarks/selection_ab.py --rev HEAD~3 --n 10 50 --repeats 15

The statistic part is what ``_select.block_statistic`` does after the sort: on one sorted block
of 256 float32 columns (standard normal values, sorted per column), the median, the trimmed
mean, MeaMed and Phocas with f = n // 5. The revision's ``byzlearn/aggregators/_select.py``
(read with ``git show``) is compiled beside the working tree's, and the two are timed in turns
(``--repeats`` rounds, each one call loop of ``--calls`` blocks per side; the minimum is kept), so
load from other processes hits both alike. The table gives nanoseconds per coordinate and
whether both wrote the same outputs. One thread (the kernel is single-threaded per block).
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
from _common import at_least, check_memory

from byzlearn.machine import cpu_name

ROOT = Path(__file__).resolve().parent.parent
LANES = 256
STATS = (("median", 0), ("trimmed_mean", 1), ("meamed", 2), ("phocas", 3))


def _revision_module(rev: str) -> types.ModuleType:
    """``_select.py`` of ``rev``, compiled as a module of its own (numba's disk cache off)."""
    done = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:byzlearn/aggregators/_select.py"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["git failed"])[-1]
        sys.exit(f"error: cannot read _select.py at revision {rev!r}: {why}")
    module = types.ModuleType("byzlearn_select_at_rev")
    module.__file__ = f"<_select.py at {rev}>"
    sys.modules[module.__name__] = module
    source = done.stdout.replace("cache=True", "cache=False")
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def _loop(module: types.ModuleType):
    from numba import njit

    statistic = module.block_statistic

    @njit
    def run(buf, w, stat, drop, min_k, out, j0, work, col, calls):  # pragma: no cover
        for _ in range(calls):
            statistic(buf, w, stat, drop, min_k, out, j0, work, col)

    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rev", required=True, help="the git revision to compare with")
    parser.add_argument("--n", type=at_least(3), nargs="+", default=[10, 26, 100, 200])
    parser.add_argument("--repeats", type=at_least(1), default=9)
    parser.add_argument("--calls", type=at_least(1), default=4000)
    args = parser.parse_args(argv)
    # a block of n x 256 values: drawn in float64, its float32 copy, sorted
    check_memory(parser, max(args.n) * LANES * (8 + 4 + 4), f"n={max(args.n)}", "--n")

    from byzlearn.aggregators import _select as current

    loops = {"rev": _loop(_revision_module(args.rev)), "now": _loop(current)}
    print(f"- machine: {platform.machine()}, {cpu_name()}; Python {platform.python_version()}")
    print(f"- revision compared: {args.rev}; one thread; float32 blocks of {LANES} columns")
    print()
    print(f"| n | statistic | {args.rev} (ns/coord) | now (ns/coord) | now / rev | same outputs |")
    print("|---:|---|---:|---:|---:|---|")
    rng = np.random.default_rng(0)
    for n in args.n:
        buf = np.sort(rng.standard_normal((n, LANES)).astype(np.float32), axis=0)
        out = np.empty(2 * LANES, dtype=np.float32)
        work = np.zeros((4, LANES))
        col = np.zeros(n)
        for name, stat in STATS:
            drop = n // 5
            best = {}
            outputs = {}
            for side, run in loops.items():
                run(buf, LANES, stat, drop, 1, out, 7, work, col, 5)  # compile, warm up
                outputs[side] = out[7 : 7 + LANES].copy()
                best[side] = np.inf
            for _ in range(args.repeats):
                for side, run in loops.items():
                    start = time.perf_counter()
                    run(buf, LANES, stat, drop, 1, out, 7, work, col, args.calls)
                    best[side] = min(best[side], time.perf_counter() - start)
            per = {k: v / args.calls / LANES * 1e9 for k, v in best.items()}
            same = np.array_equal(outputs["rev"], outputs["now"], equal_nan=True)
            print(
                f"| {n} | {name} | {per['rev']:.2f} | {per['now']:.2f} | "
                f"{per['now'] / per['rev']:.2f} | {'yes' if same else 'NO'} |"
            )


if __name__ == "__main__":
    main()
