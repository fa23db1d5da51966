"""Seconds of a rule's first call: on a cold cache (numba compiles its kernels) and on a warm one.

Usage (from the repository root)::

    python benchmarks/first_call.py                      # the demo's rules, n = 25, d = 4810
    python benchmarks/first_call.py --rules krum median --n 25 --d 1e6
    python benchmarks/first_call.py --session            # the rules one after another, one cache

The library's CPU kernels are numba functions compiled on their first call and cached on disk
(numba's cache beside the sources, and the generated selection kernels under
``$BYZLEARN_CACHE``); a later process loads them. This script times, for each rule, in a fresh
Python process with empty caches of its own (``NUMBA_CACHE_DIR`` and ``BYZLEARN_CACHE`` set to a
temporary folder, so the caches of the installed package are neither read nor changed):

- ``import``: ``import byzlearn.aggregators`` (mostly torch's own import);
- ``cold``: the rule's first call on an (n, d) float32 input (compilation included), and how
  many functions numba compiled for it (``compiled``: numba's compile events, nested ones
  included);
- ``warm``: the first call in a second fresh process on the caches the first one wrote (the
  machine code loaded from disk);
- ``hot``: a later call in that process.

With ``--session`` the rules share one cache, in the order given, as in one user's session
(a later rule compiles only what the earlier ones did not). Compilation runs on one core
whatever the thread count; a busy machine stretches it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from _common import at_least, check_memory, dimension, refused

from byzlearn.machine import cpu_name

DEMO_RULES = ("average", "krum", "median", "trimmed_mean", "bulyan", "nnm+krum")

# Run in a fresh process: time the import, the first call, a later call; count numba's compiles.
_CHILD = textwrap.dedent(
    """
    import json, sys, time
    start = time.perf_counter()
    import torch
    import byzlearn.aggregators as agg
    from numba.core import event
    imported = time.perf_counter() - start
    torch.set_num_threads(1)
    rule, n, d, f = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    X = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    with event.install_recorder("numba:compile") as recorder:
        start = time.perf_counter()
        agg.get(rule)(X, f=f)
        first = time.perf_counter() - start
    compiled = sum(ev.is_start for _, ev in recorder.buffer)
    start = time.perf_counter()
    agg.get(rule)(X, f=f)
    again = time.perf_counter() - start
    print(json.dumps({"import": imported, "first": first, "again": again, "compiled": compiled}))
    """
)


def _run(rule: str, n: int, d: int, f: int, cache: Path) -> dict[str, float]:
    env = dict(os.environ)
    env["NUMBA_CACHE_DIR"] = str(cache / "numba")
    env["BYZLEARN_CACHE"] = str(cache / "byzlearn")
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, rule, str(n), str(int(d)), str(f)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"error: {rule} failed in its process: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a Markdown table; 2 (and one line) for a rule that cannot
    run on these sizes, before any process starts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", nargs="+", default=list(DEMO_RULES))
    parser.add_argument("--n", type=at_least(2), default=25)
    parser.add_argument("--d", type=dimension, default=4810)
    parser.add_argument("--f", type=at_least(0), default=None, help="default: n // 5")
    parser.add_argument("--session", action="store_true", help="one cache for all the rules")
    args = parser.parse_args(argv)
    f = args.n // 5 if args.f is None else args.f
    import byzlearn.aggregators as agg  # the children time their own import

    try:  # an unknown name, or an f the rule cannot take, before any child compiles
        for rule in args.rules:
            agg.check(rule, args.n, f)
    except (KeyError, ValueError, TypeError) as err:
        return refused(err)
    # each child holds the (n, d) float32 input and a rule's work (a copy at most: NNM's rows)
    check_memory(parser, 2 * 4 * args.n * int(args.d), f"n={args.n} x d={int(args.d)}")
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"- machine: {platform.machine()}, {cpu_name()}, {os.cpu_count()} cores (load average "
        f"{load}); Python {platform.python_version()}; torch threads: 1 (compilation: one core)"
    )
    print(
        f"- n = {args.n}, f = {f}, d = {int(args.d)}, float32; "
        + ("one cache for all the rules, in order" if args.session else "a cache per rule")
        + "\n"
    )
    print("| rule | import (s) | cold (s) | compiled | warm (s) | hot (ms) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory(prefix="byzlearn-first-call-") as tmp:
        total = 0.0
        for k, rule in enumerate(args.rules):
            cache = Path(tmp) / ("session" if args.session else str(k))
            cold = _run(rule, args.n, args.d, f, cache)
            warm = _run(rule, args.n, args.d, f, cache)
            total += cold["first"]
            print(
                f"| {rule} | {cold['import']:.1f} | {cold['first']:.1f} | {cold['compiled']} | "
                f"{warm['first']:.2f} | {warm['again'] * 1e3:.2f} |",
                flush=True,
            )
    print(f"\ncold first calls in all: {total:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
