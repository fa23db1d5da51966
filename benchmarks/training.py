"""Seconds per training round, broken down: vectorised workers, a per-worker loop, the big-batch
floor and, when installed, ByzFL's own training loop on the same task.

Usage (from the repository root)::

    python benchmarks/training.py                       # MLP and CNN, n = 25, both scenarios
    python benchmarks/training.py --quick               # smoke test: MLP, few rounds
    python benchmarks/training.py --n 10 25 50 --scenarios average --rounds 20 --threads 2
    python benchmarks/training.py --models mlp --scenarios krum --rules median mda signguard

One round of the synchronous parameter server on scikit-learn's digits (8x8, no download), batch
32 per worker, ``--n`` workers, in two scenarios by default:

- ``average``: f = 0, no attack, averaging (every worker computes);
- ``krum``: f = 5 Byzantine workers sending -10 x the honest mean (``ipm``, epsilon = 10, the
  demo's attack), Krum at the server (issue 12's training round);
- ``alie`` (on request, ``--scenarios alie``): as ``krum`` with ALIE (``mu - z sigma``, z of
  the paper for n and f; ByzFL's ``ALittleIsEnough`` with the same z).

``--rules`` runs the attacked scenarios with other rules at the server (default: Krum; any
registered rule or composition, default options), each as its own row (``ipm+median``,
``alie+mda``: the scenario's attack, then the rule; ``krum`` and ``alie`` keep their names with
Krum); ByzFL's loop runs with Krum only.

For every (model, scenario, n) one run times, after ``--warmup`` rounds, in turns of ``--block``
consecutive rounds per variant (so that load from other processes on a shared machine hits all
of them alike, while each variant runs its rounds back to back as a training run does; with
``--block 1`` the variants alternate round by round and each starts with caches the others have
just filled, which slowed the vectorised MLP round by up to 1.8x on the 2-core test machine):

- ``vectorised``: the ``local`` engine's default, one ``torch.func`` vmapped forward/backward
  for all honest workers;
- ``loop``: ``vectorise: false``, one plain ``nn.Module`` forward/backward per worker;
- ``big batch``: one forward/backward of the same model on all n * 32 samples at once (the
  floor a round can approach: the same flops, no per-worker gradients); for a model with
  convolutions also in channels-last memory (``big batch CL``: module and inputs converted
  with ``memory_format=torch.channels_last``, the faster layout for small images on the CPU),
  and ``/ big batch`` divides by the faster of the two;
- ``byzfl``: ByzFL's DSGD round (its ``Client``, ``ByzantineClient`` and ``Server`` classes,
  as in its ``byzfl.benchmark.train`` loop) on the same model shape, data, n, f, attack and
  rule; skipped, with a note, when ``import byzfl`` fails. ``krum`` 0.9.1, the other peer of
  the issue, is not on PyPI and is not run.

The process keeps the memory it frees for reuse, as the ``byzlearn`` command does
(:mod:`byzlearn.allocator`; ``--system-malloc`` keeps glibc's defaults instead): the figures are
those of a round as the command line runs it; the setting holds for every variant alike.

The vectorised round is broken down by timers wrapped around the library's methods for the
benchmark only (nothing is instrumented in the library): ``workers`` (the honest workers'
minibatch draw and gradients, ``ComputeWorkers.submit``), ``attack`` (the coalition's attack
function), ``aggregation`` (the rule, the server's own ``agg_seconds``), ``update`` (the
server's model step), ``metrics`` (the driver's observers), and ``engine``: the rest (messages,
scheduling, the protocol's bookkeeping). Every figure is the median over ``--rounds`` rounds.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable
from typing import Any

import torch
from _common import MAX_THREADS, at_least, channels_last, parse_with_quick

from byzlearn.allocator import keep_freed_memory, setting
from byzlearn.attacks import alie_z
from byzlearn.experiments import Trainer, parse_config
from byzlearn.machine import cpu_name
from byzlearn.models import names as model_names

SCENARIOS = ("average", "krum", "alie")
DEFAULT_SCENARIOS = ("average", "krum")
BATCH = 32
BYZANTINE = 5
EPSILON = 10.0  # the attack: -EPSILON x the honest mean
BLOCK = 10  # consecutive rounds per variant and turn
PARTS = ("workers", "attack", "aggregation", "update", "metrics")


def _config(model: str, n: int, scenario: str, vectorise: bool, rule: str = "krum") -> Any:
    robust = scenario != "average"
    attack = {"name": "ipm", "options": {"epsilon": EPSILON}} if scenario == "krum" else {}
    if scenario == "alie":
        attack = {"name": "alie"}
    return parse_config(
        {
            "dataset": {"name": "digits"},
            "model": {"name": model},
            "n": n,
            "f": BYZANTINE if robust else 0,
            "attack": attack,
            "rule": {"name": rule if robust else "average"},
            "optimizer": {"lr": 0.1},
            "batch_size": BATCH,
            "engine": {"name": "local", "vectorise": vectorise},
        }
    )


# ---------------------------------------------------------------------- timers
class _Clock:
    """Seconds spent in the wrapped callables during the current round, by part."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PARTS, 0.0)

    def reset(self) -> None:
        self.seconds = dict.fromkeys(PARTS, 0.0)

    def wrap(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kw: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                self.seconds[part] += time.perf_counter() - start

        return timed


def _instrument(trainer: Trainer) -> _Clock:
    """Wrap the trainer's workers, attack, server update and observers with timers (instance
    attributes: the library's classes stay untouched)."""
    clock = _Clock()
    workers = trainer.protocol.workers  # type: ignore[attr-defined]
    workers.compute.submit = clock.wrap("workers", workers.compute.submit)
    if workers.coalition is not None:
        workers.coalition.attack = clock.wrap("attack", workers.coalition.attack)
    server = trainer.server
    server.update = clock.wrap("update", server.update)
    for observer in trainer.observers:
        observer.on_event = clock.wrap("metrics", observer.on_event)  # type: ignore[method-assign]
        observer.collect = clock.wrap("metrics", observer.collect)  # type: ignore[method-assign]
    return clock


def _round(trainer: Trainer, clock: _Clock) -> dict[str, float]:
    clock.reset()
    start = time.perf_counter()
    record = trainer.step()
    total = time.perf_counter() - start
    out = dict(clock.seconds)
    out["aggregation"] = float(record.get("agg_seconds", 0.0))
    out["engine"] = total - sum(out.values())
    out["total"] = total
    return out


# ---------------------------------------------------------------------- big batch
def _big_batch(trainer: Trainer, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = trainer.data.x_train[: n * BATCH]
    y = trainer.data.y_train[: n * BATCH]
    if len(x) < n * BATCH:  # digits has 1437 training images: tile them
        reps = (n * BATCH + len(x) - 1) // len(x)
        x, y = torch.cat([x] * reps)[: n * BATCH], torch.cat([y] * reps)[: n * BATCH]
    return x, y


def _big_batch_seconds(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    start = time.perf_counter()
    module.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(module(x), y).backward()
    return time.perf_counter() - start


# ---------------------------------------------------------------------- ByzFL
class _Unavailable(types.ModuleType):
    """A stand-in module whose every public attribute is itself (callable, returning itself)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self

    def __call__(self, *args: Any, **kw: Any) -> Any:
        return self


def _import_byzfl() -> tuple[Any, str | None]:
    """``byzfl`` or ``None``, and a note. ByzFL's package imports torchvision for its dataset
    helpers only; where torchvision is missing or cannot load (a CUDA build next to a CPU
    torch), an empty stand-in module lets its training classes import (they do not use it)."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision"] = _Unavailable("torchvision")
    try:
        import byzfl
    except Exception as err:
        return None, f"byzfl not run: `import byzfl` failed ({type(err).__name__}: {err})"
    version = getattr(byzfl, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version("byzfl")
    return byzfl, f"byzfl {version}"


class ByzflRound:
    """ByzFL's DSGD round on the same task, written against its public classes the way its
    ``byzfl.benchmark.train`` loop uses them: honest ``Client``s compute gradients on their
    ``DataLoader``s, a ``ByzantineClient`` crafts the attack from the honest gradients, the
    ``Server`` aggregates and steps, and the new model is sent back to every client.

    The model is byzlearn's module of the same shape, handed to ByzFL through its model
    registry (``byzfl.fed_framework.models``, looked up by name); each honest client gets the
    same data part as in byzlearn's run (shuffled, full batches of 32)."""

    def __init__(self, byzfl: Any, trainer: Trainer, scenario: str) -> None:
        import byzfl.fed_framework.models as models
        from torch.utils.data import DataLoader, TensorDataset

        c, data = trainer.config, trainer.data
        f = c.f if scenario != "average" else 0
        honest = [i for i in range(c.n) if i not in set(trainer.byzantine)]
        name = f"byzlearn_{c.model.name}"
        state = trainer.model.module.state_dict()

        def build() -> torch.nn.Module:
            from byzlearn.models import build_model

            module = build_model(c.model.name, data.input_shape, data.num_classes)
            module.load_state_dict(state)
            return module

        setattr(models, name, build)
        self.clock = _Clock()
        self.clients = [
            byzfl.Client(
                {
                    "model_name": name,
                    "device": "cpu",
                    "loss_name": "CrossEntropyLoss",
                    "LabelFlipping": False,
                    "nb_labels": data.num_classes,
                    "momentum": 0.0,
                    "training_dataloader": DataLoader(
                        TensorDataset(
                            data.x_train[trainer.parts[i]], data.y_train[trainer.parts[i]]
                        ),
                        batch_size=BATCH,
                        shuffle=True,
                        drop_last=True,
                    ),
                    "store_per_client_metrics": False,
                }
            )
            for i in honest
        ]
        rule = (
            {"name": "Krum", "parameters": {"f": f}} if f else {"name": "Average", "parameters": {}}
        )
        self.server = byzfl.Server(
            {
                "model_name": name,
                "device": "cpu",
                "test_loader": DataLoader(TensorDataset(data.x_test, data.y_test), batch_size=256),
                "optimizer_name": "SGD",
                "learning_rate": float(c.optimizer.lr),
                "weight_decay": 0.0,
                "milestones": [],
                "learning_rate_decay": 1.0,
                "aggregator_info": rule,
                "pre_agg_list": [],
            }
        )
        self.server.aggregate = self.clock.wrap("aggregation", self.server.aggregate)
        attack = (
            {"name": "InnerProductManipulation", "f": f, "parameters": {"tau": EPSILON}}
            if f
            else {"name": "NoAttack", "f": 0, "parameters": {}}
        )
        if scenario == "alie":  # ByzFL's mu + tau sigma: tau = -z gives byzlearn's mu - z sigma
            attack = {"name": "ALittleIsEnough", "f": f, "parameters": {"tau": -alie_z(c.n, f)}}
        self.byzantine = byzfl.ByzantineClient(attack)
        self.broadcast()

    def broadcast(self) -> None:
        model = self.server.get_dict_parameters()
        for client in self.clients:
            client.set_model_state(model)

    def step(self) -> dict[str, float]:
        clock = self.clock
        clock.reset()
        start = time.perf_counter()
        for client in self.clients:
            client.compute_gradients()
        honest = [client.get_flat_gradients_with_momentum() for client in self.clients]
        t1 = time.perf_counter()
        byz = self.byzantine.apply_attack(honest) if self.byzantine.f else []
        t2 = time.perf_counter()
        self.server.update_model_with_gradients(honest + byz)
        t3 = time.perf_counter()
        self.broadcast()
        end = time.perf_counter()
        out = dict(clock.seconds)
        out.update(workers=t1 - start, attack=t2 - t1, update=t3 - t2 - out["aggregation"])
        out["engine"] = end - t3  # sending the new model back to every client
        out["total"] = end - start
        return out


# ---------------------------------------------------------------------- one measurement
def measure(
    model: str,
    n: int,
    scenario: str,
    rounds: int,
    warmup: int,
    byzfl: Any = None,
    block: int = BLOCK,
    rule: str = "krum",
) -> dict[str, Any]:
    """Median seconds per round of every variant and of the vectorised round's parts.

    The variants take turns, ``block`` consecutive rounds each (a training run executes its
    rounds back to back, with its own data in the caches), so that load from other processes
    hits all of them alike; ``block = 1`` alternates round by round, where each variant starts
    with caches the others have just filled."""
    vec = Trainer(_config(model, n, scenario, True, rule))
    loop = Trainer(_config(model, n, scenario, False, rule))
    clocks = {"vectorised": _instrument(vec), "loop": _instrument(loop)}
    module = vec.model.module
    x, y = _big_batch(vec, n)
    last = channels_last(module, x)
    variants: dict[str, Callable[[], Any]] = {
        "vectorised": lambda: _round(vec, clocks["vectorised"]),
        "loop": lambda: _round(loop, clocks["loop"]),
        "big": lambda: _big_batch_seconds(module, x, y),
    }
    if last is not None:
        variants["big_last"] = lambda: _big_batch_seconds(*last, y)
    if byzfl is not None and (rule == "krum" or scenario == "average"):
        variants["byzfl"] = ByzflRound(byzfl, vec, scenario).step
    samples: dict[str, list[Any]] = {key: [] for key in variants}
    done, total = 0, warmup + rounds
    while done < total:
        count = min(block, total - done)
        for key, run in variants.items():
            for i in range(done, done + count):
                value = run()
                if i >= warmup:
                    samples[key].append(value)
        done += count
    out: dict[str, Any] = {
        "d": vec.model.dim,
        "big": statistics.median(samples.pop("big")),
        "big_last": statistics.median(samples.pop("big_last")) if last is not None else math.nan,
    }
    for key, rows in samples.items():
        out[key] = {part: statistics.median(r[part] for r in rows) for part in rows[0]}
    return out


# ---------------------------------------------------------------------- report
def _machine(threads: int) -> str:
    cpu = cpu_name()
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"- machine: {platform.machine()}, {cpu}, {os.cpu_count()} cores (load average {load}); "
        f"Python {platform.python_version()}, torch {torch.__version__}; "
        f"torch threads: {threads}"
    )


def _label(scenario: str, rule: str) -> str:
    """A row's scenario: ``average``, ``krum``, ``alie`` (with Krum), else attack+rule."""
    if scenario == "average" or rule == "krum":
        return scenario
    return f"{'ipm' if scenario == 'krum' else scenario}+{rule}"


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print Markdown tables."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=at_least(1), nargs="+", default=[25])
    parser.add_argument("--models", nargs="+", choices=model_names(), default=["mlp", "cnn"])
    parser.add_argument(
        "--scenarios", nargs="+", choices=SCENARIOS, default=list(DEFAULT_SCENARIOS)
    )
    parser.add_argument(
        "--rules",
        nargs="+",
        default=["krum"],
        metavar="RULE",
        help="the server's rule in the attacked scenarios, one row each (default: krum)",
    )
    parser.add_argument("--rounds", type=at_least(1), default=30)
    parser.add_argument("--warmup", type=at_least(0), default=5)
    parser.add_argument("--threads", type=at_least(1, MAX_THREADS), default=1)
    parser.add_argument(
        "--block",
        type=at_least(1),
        default=BLOCK,
        help="consecutive rounds per variant and turn (1: alternate round by round)",
    )
    parser.add_argument("--no-byzfl", action="store_true", help="do not run ByzFL's loop")
    parser.add_argument(
        "--quick", action="store_true", help="MLP, n = 25, 5 rounds (explicit options win)"
    )
    parser.add_argument(
        "--system-malloc",
        action="store_true",
        help="keep glibc's malloc thresholds (the command line fixes them: byzlearn.allocator)",
    )
    args = parse_with_quick(parser, argv, models=["mlp"], n=[25], rounds=5, warmup=1)
    torch.set_num_threads(args.threads)
    try:
        setting()  # a misspelt BYZLEARN_MALLOC is refused with --system-malloc too
        kept = False if args.system_malloc else keep_freed_memory()
    except ValueError as err:  # a misspelt BYZLEARN_MALLOC
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    byzfl, note = (None, "byzfl not run (--no-byzfl)") if args.no_byzfl else _import_byzfl()
    print(_machine(args.threads))
    print(
        f"- digits (8x8, 10 classes), batch {BATCH} per worker; `average`: f = 0, no attack; "
        f"`krum`: f = {BYZANTINE}, -{EPSILON:g} x honest mean (ipm); median of {args.rounds} "
        f"rounds after {args.warmup} warm-up rounds, variants in turns of {args.block} "
        f"consecutive rounds"
    )
    print(
        "- allocator: freed memory kept for reuse, as the `byzlearn` command runs"
        if kept
        else "- allocator: the C library's defaults"
    )
    print(f"- peers: {note}; krum 0.9.1 is not on PyPI: not run\n")
    attacked = [scenario for scenario in args.scenarios if scenario != "average"]
    for rule in args.rules if attacked else []:  # refused at once, not after the other rules'
        try:  # measurements (at the largest n: a rule that needs more inputs is refused below)
            _config(args.models[0], max(args.n), attacked[0], True, rule)
        except ValueError as err:
            parser.error(f"--rules {rule}: {err}")
    rows = []
    for model in args.models:
        for scenario in args.scenarios:
            for rule in ["average"] if scenario == "average" else args.rules:
                label = _label(scenario, rule)
                for n in args.n:
                    try:
                        m = measure(
                            model, n, scenario, args.rounds, args.warmup, byzfl, args.block, rule
                        )
                    except ValueError as err:  # a config the library refuses (n too small,
                        parser.error(f"{model} {label} n={n}: {err}")  # an unknown rule)
                    rows.append((model, label, n, m))
                    print(f"  measured {model} {label} n={n}", file=sys.stderr, flush=True)
    print(
        "| model | d | scenario | n | vectorised (ms) | / big batch | loop (ms) | byzfl (ms) "
        "| byzfl / vectorised | big batch (ms) | big batch CL (ms) |"
    )
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for model, scenario, n, m in rows:
        vec, last = m["vectorised"]["total"], m["big_last"]
        big = m["big"] if math.isnan(last) else min(m["big"], last)
        last_ms = "-" if math.isnan(last) else f"{1e3 * last:.2f}"
        peer = m.get("byzfl")
        peer_ms = f"{1e3 * peer['total']:.2f}" if peer else "-"
        ratio = f"{peer['total'] / vec:.1f}x" if peer else "-"
        print(
            f"| {model} | {m['d']} | {scenario} | {n} | {1e3 * vec:.2f} | {vec / big:.2f}x "
            f"| {1e3 * m['loop']['total']:.2f} | {peer_ms} | {ratio} | {1e3 * m['big']:.2f} "
            f"| {last_ms} |"
        )
    print(
        "\nPer-round breakdown (ms, medians of each part, so they need not add up to the total):\n"
    )
    parts = [*PARTS, "engine"]
    print(f"| model | scenario | n | variant | {' | '.join(parts)} | total |")
    print("| --- | --- | ---: | --- |" + " ---: |" * (len(parts) + 1))
    for model, scenario, n, m in rows:
        for variant in ("vectorised", "loop", "byzfl"):
            if variant not in m:
                continue
            r = m[variant]
            cells = " | ".join(f"{1e3 * r[p]:.2f}" for p in parts)
            print(f"| {model} | {scenario} | {n} | {variant} | {cells} | {1e3 * r['total']:.2f} |")


if __name__ == "__main__":
    main()
