"""Flower simulation on digits with Byzantine clients: FedAvg against byzlearn's RobustStrategy.

    python examples/flower/simulate.py                       # 10 clients, 3 send -10 x mean
    python examples/flower/simulate.py --attack alie --rule nnm+krum --rounds 30
    python examples/flower/simulate.py --attack gaussian --rule bucketing+median

Runs the ServerApp and ClientApp of ``examples/flower/app`` (the code ``flwr run`` deploys) on an
in-process grid (:class:`byzlearn.integrations.flower.LocalGrid`): the last ``--byzantine``
nodes train honestly, then send a byzlearn attack computed on the round's honest updates. Prints
the test accuracy of the global model every ``--every`` rounds for both strategies, and, for a
selection rule (Krum, NNM + Krum, ...), how many Byzantine replies it kept.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "app"))

from byzflower.client_app import app as honest_app
from byzflower.server_app import run

import byzlearn.aggregators as agg
from byzlearn.integrations.flower import LocalGrid, RobustStrategy, byzantine_clients


def _value(text: str) -> object:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _options(pairs: list[str]) -> dict[str, object]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--attack-option needs key=value, got {pair!r}")
        out[key] = _value(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--byzantine", type=int, default=3)
    parser.add_argument("--attack", default="sign_flip")
    parser.add_argument("--attack-option", action="append", default=None, metavar="KEY=VALUE")
    parser.add_argument("--rule", default="nnm+krum")
    parser.add_argument("--f", type=int, default=None, help="declared f (default --byzantine)")
    parser.add_argument("--momentum", type=float, default=0.0)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--local-steps", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not 0 <= args.byzantine < args.clients:
        raise SystemExit("need 0 <= --byzantine < --clients")
    torch.set_num_threads(args.threads)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    attack_options = (
        _options(args.attack_option)
        if args.attack_option is not None
        else ({"scale": 10.0} if args.attack == "sign_flip" else {})
    )
    config = {
        "num-server-rounds": args.rounds,
        "f": args.byzantine if args.f is None else args.f,
        "server-momentum": args.momentum,
        "local-steps": args.local_steps,
        "lr": args.lr,
        "seed": args.seed,
    }
    honest = args.clients - args.byzantine
    curves, kept, seconds = {}, [], {}
    for rule in ("fedavg", args.rule):
        byzantine = (
            byzantine_clients(
                [honest_app] * args.byzantine,
                args.attack,
                rule=args.rule,
                attack_options=attack_options,
                seed=args.seed,
            )
            if args.byzantine
            else []
        )
        grid = LocalGrid([honest_app] * honest + byzantine, run_config=config)
        start = time.perf_counter()
        result, strategy = run(grid, {**config, "rule": rule}, simulation=True)
        seconds[rule] = time.perf_counter() - start
        curves[rule] = {
            t: float(m["accuracy"]) for t, m in result.evaluate_metrics_serverapp.items()
        }
        if isinstance(strategy, RobustStrategy) and agg.spec(args.rule.split("+")[-1]).selects:
            kept = [r.byzantine_kept for r in strategy.reports]  # selection rules only
    options = attack_options or "defaults"
    print(
        f"digits, {args.clients} clients ({args.byzantine} Byzantine: {args.attack} {options}), "
        f"f={config['f']}, {args.rounds} rounds, MLP, {args.local_steps} local steps, "
        f"lr {args.lr}, seed {args.seed}, {torch.get_num_threads()} thread(s)"
    )
    print(f"| round | FedAvg | {args.rule} | Byzantine kept by {args.rule} |")
    print("|---|---|---|---|")
    for t in sorted(curves["fedavg"]):
        if t % args.every == 0 or t == args.rounds:
            byz = "-" if t == 0 or not kept else kept[t - 1]
            print(f"| {t} | {curves['fedavg'][t]:.3f} | {curves[args.rule][t]:.3f} | {byz} |")
    print(f"seconds: FedAvg {seconds['fedavg']:.1f}, {args.rule} {seconds[args.rule]:.1f}")


if __name__ == "__main__":
    main()
