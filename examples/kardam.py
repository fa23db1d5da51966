"""Kardam on digits: what its filters reject, and what resilience costs without an attack.

Usage (from the repository root; about 2 minutes on 2 cores with the defaults)::

    python examples/kardam.py                 # seeds 0-4
    python examples/kardam.py --seeds 0 1     # quicker

n = 10 workers, f = 3, exponential compute times (mean 1 s) and link delays (mean 0.1 s),
learning rate 0.1, 1500 steps (one step = one gradient received by the server). Two tables:

1. Under attack (the 3 Byzantine workers send -10 x the honest mean, or huge gradients):
   final accuracy of Kardam and of asynchronous SGD with the same dampening (exp, alpha 0.2),
   and the fraction of honest and Byzantine gradients Kardam's filters rejected.
2. Without attack (the 3 workers honest, f = 3 still declared): steps to reach a target test
   accuracy for Kardam and for asynchronous SGD with the same dampening; the slowdown
   ``steps(kardam) / steps(async) - 1`` beside the paper's bound f/n (Damaskinos et al.,
   ICML 2018: the cost of Kardam's resilience is a slowdown of at most f/n).
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from byzlearn.experiments import RunResult, parse_config, run

BASE: dict[str, Any] = {
    "dataset": {"name": "digits"},
    "model": {"name": "mlp", "options": {"hidden": [64]}},
    "n": 10,
    "f": 3,
    "optimizer": {"lr": 0.1},
    "steps": 1500,
    "checkpoint_every": 0,
    "network": {
        "compute_time": {"dist": "exponential", "mean": 1.0},
        "link_delay": {"dist": "exponential", "mean": 0.1},
    },
}
ATTACKS = {
    "-10 x mean": {"name": "ipm", "options": {"epsilon": 10.0}},
    "large": {"name": "large_norm"},
}
ASYNC = {"name": "async_sgd", "dampening": "exp", "alpha": 0.2}
KARDAM = {"name": "kardam", "dampening": "exp", "alpha": 0.2}


def _run(seed: int, protocol: dict, **extra: Any) -> RunResult:
    return run(parse_config({**BASE, "seed": seed, "protocol": protocol, **extra}))


def _rate(s: dict, who: str) -> float:
    rejected, accepted = s[f"rejected_{who}"], s[f"accepted_{who}"]
    return rejected / max(1, rejected + accepted)


def under_attack(seeds: list[int]) -> None:
    print(
        "| attack | Kardam final acc | async SGD final acc | honest rejected "
        "| Byzantine rejected |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, attack in ATTACKS.items():
        k = [_run(s, KARDAM, attack=attack, eval_every=1500).summary for s in seeds]
        a = [_run(s, ASYNC, attack=attack, eval_every=1500).summary for s in seeds]

        def span(values: list[float]) -> str:
            return f"{min(values):.3f}-{max(values):.3f}"

        print(
            f"| {label} | {span([x['final_accuracy'] for x in k])} "
            f"| {span([x['final_accuracy'] for x in a])} "
            f"| {span([_rate(x, 'honest') for x in k])} "
            f"| {span([_rate(x, 'byzantine') for x in k])} |",
            flush=True,
        )


def _steps_to(records: list[dict], target: float) -> int | None:
    for record in records:
        if (record.get("test_accuracy") or 0.0) >= target:
            return int(record["round"])
    return None


def slowdown(seeds: list[int], targets: list[float]) -> None:
    f_over_n = BASE["f"] / BASE["n"]
    print("| target acc | async SGD steps | Kardam steps | slowdown (mean, per seed) | f/n |")
    print("| ---: | ---: | ---: | --- | ---: |")
    # one run per seed and protocol, with no attacker, read at every target
    curves = {
        name: [_run(s, protocol, num_byzantine=0, eval_every=10).records for s in seeds]
        for name, protocol in (("async", ASYNC), ("kardam", KARDAM))
    }
    for target in targets:
        a = [_steps_to(records, target) for records in curves["async"]]
        k = [_steps_to(records, target) for records in curves["kardam"]]
        pairs = [(x, y) for x, y in zip(a, k, strict=True) if x and y]
        ratios = [y / x - 1.0 for x, y in pairs]
        mean = f"{statistics.mean(ratios):+.2f}" if ratios else "n/a"
        per = ", ".join(f"{r:+.2f}" for r in ratios)
        print(
            f"| {target:.2f} | {a} | {k} | {mean} ({per}) | {f_over_n:.2f} |", flush=True
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.85, 0.9])
    args = parser.parse_args(argv)
    under_attack(args.seeds)
    print()
    slowdown(args.seeds, args.targets)


if __name__ == "__main__":
    main()
