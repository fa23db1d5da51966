"""What trusting no server costs: messages, bytes, simulated and wall time per step, and
convergence, of every protocol against the single trusted parameter server.

Usage (from the repository root)::

    python benchmarks/protocols.py              # n = 13 workers (f = 3), 4 servers (f_ps = 1)
    python benchmarks/protocols.py --quick      # smoke test: few steps
    python benchmarks/protocols.py --attack none --byzantine-servers 0   # pure overhead

Every run trains the MLP on scikit-learn's digits (no download) for ``--steps`` steps with the
same seed; compute time 1 simulated second per gradient, link delay ``--link`` seconds. Rows:

- ``vanilla``: the parameter server averaging, no Byzantine worker (the papers' "vanilla SGD");
- ``trusted PS + MDA``: one trusted server, the f Byzantine workers attacking;
- ``byzsgd`` (median reads, MDA, DMC gathers every ``--gather-every`` steps), ``byzsgd sync``
  (one filtered model, median on rejection), ``liubei`` (one filtered model, the next server's
  on rejection): 4 servers, ``--byzantine-servers`` of them sending ``--server-attack``;
- ``decentralized``: n peers, NNA mixing, on the complete graph and a random 8-regular graph
  (n = 16 there: the graph needs n * 8 even).

Columns: messages and MB sent per step, simulated seconds per step, wall milliseconds per step,
final accuracy (mean over correct servers / honest peers), and the steps to first reach
``--target`` accuracy, with the overhead against ``vanilla`` in percent (the papers' "convergence
overhead": ByzSGD about 32 %, LiuBei about 24 %, both against vanilla TensorFlow).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Any

import torch
from _common import MAX_THREADS, at_least, non_negative, parse_with_quick, refused

from byzlearn.experiments import parse_config
from byzlearn.experiments.runner import run


def rows(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    attack = {"name": args.attack}
    servers = {
        "servers": 4,
        "f_servers": 1,
        "byzantine_servers": args.byzantine_servers,
        "server_attack": {"name": args.server_attack},
        "gather_every": args.gather_every,
    }
    common = {"n": 13, "f": 3, "attack": attack}
    return [
        ("vanilla", {"n": 13, "f": 0, "attack": {"name": "none"}}),
        ("trusted PS + MDA", {**common, "rule": {"name": "mda"}}),
        ("byzsgd", {**common, "protocol": {"name": "byzsgd", **servers}}),
        ("byzsgd sync", {**common, "protocol": {"name": "byzsgd", "variant": "sync", **servers}}),
        ("liubei", {**common, "protocol": {"name": "liubei", **servers}}),
        ("decentralized complete", {**common, "protocol": {"name": "decentralized"}}),
        (
            "decentralized 8-regular",
            {
                **common,
                "n": 16,
                "protocol": {
                    "name": "decentralized",
                    "topology": {"name": "random_regular", "degree": 8},
                },
            },
        ),
    ]


def _config(data: dict[str, Any], args: argparse.Namespace) -> Any:
    return parse_config(
        {
            **data,
            "steps": args.steps,
            "eval_every": args.eval_every,
            "seed": args.seed,
            "threads": args.threads,
            "network": {"compute_time": 1.0, "link_delay": args.link},
        }
    )


def measure(name: str, data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    config = _config(data, args)
    start = time.perf_counter()
    result = run(config)
    wall = time.perf_counter() - start
    steps = [r for r in result.records if r.get("round", 0) > 0]
    evals = [r for r in result.records if r.get("test_accuracy") is not None]
    reached = next((r["round"] for r in evals if r["test_accuracy"] >= args.target), None)
    return {
        "name": name,
        "messages": sum(r["messages_sent"] for r in steps) / len(steps),
        "mb": sum(r["bytes_sent"] for r in steps) / len(steps) / 1e6,
        "sim": steps[-1]["time"] / len(steps),
        "ms": 1000 * wall / len(steps),
        "acc": evals[-1]["test_accuracy"],
        "reached": reached,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=at_least(1), default=300)
    p.add_argument("--eval-every", type=at_least(1), default=10)
    p.add_argument("--target", type=non_negative, default=0.9)
    p.add_argument("--attack", default="alie")
    p.add_argument("--server-attack", default="gaussian")
    p.add_argument("--byzantine-servers", type=at_least(0), default=1)
    p.add_argument("--gather-every", type=at_least(1), default=1)
    p.add_argument("--link", type=non_negative, default=0.1)
    p.add_argument("--seed", type=at_least(0), default=0)
    p.add_argument("--threads", type=at_least(1, MAX_THREADS), default=1)
    p.add_argument("--quick", action="store_true", help="20 steps (explicit options win)")
    args = parse_with_quick(p, argv, steps=20, eval_every=10)
    if args.target > 1:
        p.error(f"argument --target: an accuracy, at most 1, got {args.target:g}")
    try:  # every row's config (attack names, server counts) is checked before any run
        for _, data in rows(args):
            _config(data, args)
    except ValueError as err:
        return refused(err)
    torch.set_num_threads(args.threads)
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {args.threads} thread(s); digits MLP, {args.steps} steps, "
        f"workers' attack {args.attack}, {args.byzantine_servers} Byzantine server(s) of 4 "
        f"({args.server_attack}), link delay {args.link} s, compute 1 s"
    )
    measure(
        "warm-up", {"n": 4, "f": 0, "steps": 2}, argparse.Namespace(**{**vars(args), "steps": 2})
    )
    results = [measure(name, data, args) for name, data in rows(args)]
    base = results[0]["reached"]
    print(
        "| protocol | messages/step | MB/step | sim s/step | wall ms/step | final acc "
        f"| steps to {args.target} | overhead |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        reached = "—" if r["reached"] is None else str(r["reached"])
        over = "—"
        if r["reached"] is not None and base:
            over = f"{100 * (r['reached'] - base) / base:+.0f} %"
        print(
            f"| {r['name']} | {r['messages']:.0f} | {r['mb']:.3f} | {r['sim']:.2f} "
            f"| {r['ms']:.1f} | {r['acc']:.3f} | {reached} | {over} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
