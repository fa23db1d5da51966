"""Rounds per second of the synchronous parameter server: the ``local`` engine vs ``ray``.

Usage (from the repository root, with the ``ray`` extra installed)::

    python benchmarks/engines.py                       # n = 8 25, MLP and CNN
    python benchmarks/engines.py --quick               # smoke test: n = 8, MLP, few rounds
    python benchmarks/engines.py --n 25 --models cnn --rounds 30 --cpus 2 --threads 1

One round on scikit-learn's digits (8x8, no download): n honest workers (f = 0, no attack),
batch 32 per worker, averaging at the server. For every (model, n) and engine the same config
runs ``--warmup`` rounds (on Ray: the actors start and the first calls are made), then
``--rounds`` timed rounds:

- ``local``: every worker in this process, one vectorised forward/backward, ``--threads``
  torch threads;
- ``ray``: a local Ray instance with ``--cpus`` CPUs; the honest workers spread over one actor
  per CPU (one torch thread each), the server (aggregation, update) in this process.

Reported: the median wall time of a round (``s/round``) and its inverse (``rounds/s``); the
overhead per round of Ray (its median minus the local median: object-store puts, actor calls,
result transfers, polling); messages and payload bytes per round (the engine's counters,
identical on both engines: a model to each worker and a gradient back).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Any

import torch
from _common import MAX_THREADS, at_least, parse_with_quick, refused

from byzlearn.experiments import Trainer, parse_config


def _config(model: str, n: int, engine: dict[str, Any]):
    return parse_config(
        {
            "dataset": {"name": "digits"},
            "model": {"name": model},
            "n": n,
            "f": 0,
            "rule": {"name": "average"},
            "batch_size": 32,
            "checkpoint_every": 0,
            "engine": engine,
        }
    )


def _measure(trainer: Trainer, warmup: int, rounds: int) -> dict[str, float]:
    for _ in range(warmup):
        trainer.step()
    before = dict(trainer.engine.stats)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        trainer.step()
        times.append(time.perf_counter() - start)
    after = trainer.engine.stats
    return {
        "seconds": statistics.median(times),
        "messages": (after["sent"] - before["sent"]) / rounds,
        "bytes": (after["bytes"] - before["bytes"]) / rounds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=at_least(1), nargs="+", default=[8, 25])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"])
    parser.add_argument("--rounds", type=at_least(1), default=20)
    parser.add_argument("--warmup", type=at_least(0), default=3)
    parser.add_argument(
        "--threads", type=at_least(1, MAX_THREADS), default=1, help="torch threads of this process"
    )
    parser.add_argument("--cpus", type=at_least(1), default=os.cpu_count() or 1, help="Ray CPUs")
    parser.add_argument(
        "--quick", action="store_true", help="n = 8, MLP, 5 rounds (explicit options win)"
    )
    args = parse_with_quick(parser, argv, n=[8], models=["mlp"], rounds=5, warmup=2)
    try:  # every config is checked (model names, n against the data) before Ray starts
        for model in args.models:
            for n in args.n:
                Trainer(_config(model, n, {"name": "local"}))
    except ValueError as err:
        return refused(err)

    import ray

    torch.set_num_threads(args.threads)
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}")
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}; "
        f"this process: {torch.get_num_threads()} torch threads; ray: {args.cpus} CPUs, "
        f"one actor per CPU, 1 torch thread each"
    )
    print(f"load average at the start: {os.getloadavg()[0]:.2f} (rerun when it is high)")
    print(f"digits, batch 32 per worker, f = 0, average; median of {args.rounds} rounds\n")
    header = (
        f"{'model':<5} {'n':>3} {'local s/round':>13} {'ray s/round':>11} "
        f"{'local rounds/s':>14} {'ray rounds/s':>12} {'ray overhead ms':>15} "
        f"{'msgs/round':>10} {'bytes/round':>11}"
    )
    print(header)
    print("-" * len(header))
    for model in args.models:
        for n in args.n:
            local_trainer = Trainer(_config(model, n, {"name": "local"}))
            local = _measure(local_trainer, args.warmup, args.rounds)
            trainer = Trainer(_config(model, n, {"name": "ray"}))
            try:
                remote = _measure(trainer, args.warmup, args.rounds)
            finally:
                trainer.engine.close()  # type: ignore[attr-defined]
            assert remote["messages"] == local["messages"] and remote["bytes"] == local["bytes"]
            print(
                f"{model:<5} {n:>3} {local['seconds']:>13.4f} {remote['seconds']:>11.4f} "
                f"{1 / local['seconds']:>14.1f} {1 / remote['seconds']:>12.1f} "
                f"{1000 * (remote['seconds'] - local['seconds']):>15.1f} "
                f"{local['messages']:>10.0f} {local['bytes']:>11.0f}"
            )
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
