"""Benchmark of sharded aggregation (``byzlearn.aggregators.sharded``) on k Ray actors.

Usage (from the repository root, with the ray extra installed)::

    python benchmarks/sharded.py                      # d = 1e8, n = 10, f = 2, k = 1 2 4
    python benchmarks/sharded.py --d 1e7 --k 1 2      # smaller
    python benchmarks/sharded.py --quick              # smoke test (d = 1e6)

The inputs never exist in one process: each actor makes its own coordinates (``make``, seeded
per chunk of 2^20 coordinates, so every k sees the same matrix): n - f honest rows
``mu + s_i noise_i`` and f rows ``-10 x`` the honest mean (the demo's attack). Per rule and k
the script times ``sharded.aggregate`` (median of ``--repeats`` after one warm-up; the output
stays on the actors) and, once, gathering the output to the driver. ``--local`` adds the
unsharded rule on the whole matrix in this process (it then needs n d values more here) and
checks the sharded output equals it.

Each actor asks Ray for one CPU and runs torch on ``--threads`` threads; Ray is started with
max(k) CPUs, so on a machine with fewer cores the actors share them (the table says how many
cores there are).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
from _common import MAX_THREADS, at_least, check_memory, dimension, parse_with_quick, refused

CHUNK = 1 << 20
RULES = ("average", "median", "trimmed_mean", "krum", "multi_krum", "geometric_median", "bulyan")


class Maker:
    """Picklable shard maker: columns ``[j0, j1)`` of the benchmark's (n, d) float32 matrix."""

    def __init__(self, n: int, f: int, seed: int = 0) -> None:
        self.n, self.f, self.seed = n, f, seed

    def __call__(self, j0: int, j1: int) -> torch.Tensor:
        out = torch.empty(self.n, j1 - j0, dtype=torch.float32)
        scales = torch.linspace(0.8, 1.2, self.n - self.f)[:, None]
        for c0 in range(j0 // CHUNK * CHUNK, j1, CHUNK):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + c0 // CHUNK)
            mu = torch.randn(CHUNK, generator=g)
            honest = mu + scales * torch.randn(self.n - self.f, CHUNK, generator=g)
            block = torch.cat([honest, (-10.0 * honest.mean(dim=0)).expand(self.f, CHUNK)])
            a, b = max(j0, c0), min(j1, c0 + CHUNK)
            out[:, a - j0 : b - j0] = block[:, a - c0 : b - c0]
        return out


def machine_facts(args: argparse.Namespace) -> list[tuple[str, str]]:
    import ray

    from byzlearn.machine import cpu_name, memory

    cpu, mem = cpu_name(), memory()
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        ("cpu", cpu),
        ("cores", str(os.cpu_count())),
        ("memory", mem),
        ("load average (1/5/15 min) at start", load),
        ("python / torch / ray / numpy",
         f"{platform.python_version()} / {torch.__version__} / {ray.__version__} / "
         f"{np.__version__}"),
        ("threads per actor", str(args.threads)),
        ("inputs", f"n = {args.n}, f = {args.f}, d = {args.d:.0e}, float32 "
                   f"({args.n * args.d * 4 / 2**30:.2f} GiB in all), -10 x mean attack"),
        ("date", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")),
    ]


def _compare(out: torch.Tensor, ref: torch.Tensor) -> str:
    if torch.equal(out, ref):
        return "equal"
    return f"{float((out - ref).abs().max() / ref.abs().max()):.1e}"


def timed(fn, repeats: int) -> tuple[float, object]:
    result = fn()  # warm-up (numba kernels compile or load from cache in each actor)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def bulyan_f(args: argparse.Namespace) -> int:
    """Bulyan's f: ``--f``, lowered to the most that n inputs allow (n >= 4f + 3)."""
    return min(args.f, (args.n - 3) // 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d", type=dimension, default=1e8)
    parser.add_argument("--n", type=at_least(1), default=10)
    parser.add_argument("--f", type=at_least(0), default=2)
    parser.add_argument("--k", type=at_least(1), nargs="+", default=[1, 2, 4])
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    parser.add_argument("--threads", type=at_least(1, MAX_THREADS), default=1)
    parser.add_argument("--repeats", type=at_least(1), default=3)
    parser.add_argument("--local", action="store_true", help="also the unsharded rule, checked")
    parser.add_argument(
        "--quick", action="store_true", help="d = 1e6, k = 1, 2, 1 repeat (explicit options win)"
    )
    args = parse_with_quick(parser, argv, d=1e6, k=[1, 2], repeats=1)
    args.d = int(args.d)
    if max(args.k) > args.d:
        parser.error(f"--k {max(args.k)} shards for d={args.d} coordinates: at most one each")
    # float32 (n, d) values on this machine at once: the shards (or --local's whole input) and
    # a rule's work on them
    check_memory(parser, 2 * 4 * args.n * args.d, f"n={args.n} x d={args.d}")

    import ray

    import byzlearn.aggregators as agg
    from byzlearn.aggregators import sharded

    try:  # the rules' requirements on n and f, before Ray starts
        for rule in args.rules:
            agg.check(rule, args.n, bulyan_f(args) if rule == "bulyan" else args.f)
    except ValueError as err:
        return refused(err)
    torch.set_num_threads(args.threads)
    ray.init(
        address="local", num_cpus=max(args.k), include_dashboard=False, log_to_driver=False
    )
    facts = machine_facts(args)
    make = Maker(args.n, args.f)
    rows: dict[tuple[str, int], tuple[float, float]] = {}
    local: dict[str, float] = {}
    outputs: dict[str, torch.Tensor] = {}
    checks: dict[tuple[str, int], str] = {}
    if args.local:
        X = make(0, args.d)
        for rule in args.rules:
            f = bulyan_f(args) if rule == "bulyan" else args.f
            seconds, out = timed(lambda r=rule, f=f: agg.get(r)(X, f=f), args.repeats)
            local[rule] = seconds
            outputs[rule] = out  # type: ignore[assignment]
            print(f"local {rule}: {seconds:.2f} s", flush=True)
        del X
    for k in args.k:
        t0 = time.perf_counter()
        with sharded.ShardedVectors.generate(args.n, args.d, k, make, backend="ray") as V:
            print(f"k = {k}: shards made in {time.perf_counter() - t0:.1f} s", flush=True)
            V._all("set_threads", args.threads)
            seconds, _ = timed(lambda: V._all("read"), args.repeats)
            rows["one read (floor)", k] = (seconds, float("nan"))
            print(f"k = {k}, one read: {seconds:.2f} s", flush=True)
            for rule in args.rules:
                f = bulyan_f(args) if rule == "bulyan" else args.f
                seconds, res = timed(
                    lambda r=rule, f=f: sharded.aggregate(r, V, f=f), args.repeats
                )
                t1 = time.perf_counter()
                out = res.vector()  # type: ignore[attr-defined]
                gather = time.perf_counter() - t1
                if rule in outputs:
                    checks[rule, k] = _compare(out, outputs[rule])
                del out
                rows[rule, k] = (seconds, gather)
                print(f"k = {k}, {rule}: {seconds:.2f} s (+{gather:.2f} s gather)", flush=True)
    ray.shutdown()

    print()
    for key, value in facts:
        print(f"- {key}: {value}")
    print()
    head = ["rule", *(["local (s)"] if local else [])]
    for k in args.k:
        head += [f"k={k} (s)", f"speed-up k={k}"] if k != args.k[0] else [f"k={k} (s)"]
    head += [f"gather k={args.k[-1]} (s)"]
    if checks:
        head += ["vs local, each k"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for rule in ["one read (floor)", *args.rules]:
        base = rows[rule, args.k[0]][0]
        cells = [rule, *([f"{local[rule]:.2f}" if rule in local else "-"] if local else [])]
        for k in args.k:
            cells.append(f"{rows[rule, k][0]:.2f}")
            if k != args.k[0]:
                cells.append(f"{base / rows[rule, k][0]:.2f}x")
        gather = rows[rule, args.k[-1]][1]
        cells.append("-" if gather != gather else f"{gather:.2f}")
        if checks:
            cells.append(", ".join(checks.get((rule, k), "-") for k in args.k))
        print("| " + " | ".join(cells) + " |")
    print()
    if checks:
        print("vs local: 'equal' (torch.equal), or max |sharded - unsharded| / max |unsharded|.")
    print("one read (floor): X.sum() on every actor at once, the memory floor of any rule.")
    print("Times: median of the repeats of sharded.aggregate (partial Gram passes, n x n work, "
          "outputs left on the actors); gather: ray.get of the output parts to the driver.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
