"""Seconds per training round: vectorised honest workers vs a plain per-worker loop.

Usage (from the repository root)::

    python benchmarks/training.py                  # n = 10 25 50, MLP and CNN, 1 thread
    python benchmarks/training.py --quick          # smoke test: n = 10, MLP, few rounds
    python benchmarks/training.py --n 25 --models cnn --rounds 20 --threads 2

One round of the synchronous parameter server on scikit-learn's digits (8x8, no download):
n honest workers (f = 0, no attack, so every worker computes), batch 32 per worker, averaging at
the server. For every (model, n) the same run times, after ``--warmup`` rounds:

- ``vectorised``: the ``local`` engine's default, one ``torch.func`` vmapped forward/backward
  for all n workers;
- ``loop``: ``vectorise: false``, one plain ``nn.Module`` forward/backward per worker;
- ``big batch``: one forward/backward of the same model on all n * 32 samples at once (the
  floor a vectorised round can approach: same flops, no per-worker gradients).

Each figure is the median over ``--rounds`` rounds of the wall time of a whole round (data
sampling, gradients, aggregation, update); the rounds of the three variants are interleaved, so
load from other processes on a shared machine hits them alike.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from byzlearn.experiments import Trainer, parse_config


def _config(model: str, n: int, vectorise: bool):
    return parse_config(
        {
            "dataset": {"name": "digits"},
            "model": {"name": model},
            "n": n,
            "f": 0,
            "rule": {"name": "average"},
            "batch_size": 32,
            "engine": {"name": "local", "vectorise": vectorise},
        }
    )


def _step_seconds(trainer: Trainer) -> float:
    start = time.perf_counter()
    trainer.step()
    return time.perf_counter() - start


def _big_batch(trainer: Trainer, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = trainer.data.x_train[: n * 32]
    y = trainer.data.y_train[: n * 32]
    if len(x) < n * 32:  # digits has 1437 training images: tile them
        reps = (n * 32 + len(x) - 1) // len(x)
        x, y = torch.cat([x] * reps)[: n * 32], torch.cat([y] * reps)[: n * 32]
    return x, y


def _big_batch_seconds(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    start = time.perf_counter()
    module.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(module(x), y).backward()
    return time.perf_counter() - start


def measure(model: str, n: int, rounds: int, warmup: int) -> dict[str, float]:
    """Median seconds per round of the three variants, their rounds interleaved so that load
    from other processes hits all of them alike; ``rest`` is the vectorised round minus its
    batched forward/backward (engine, messages, minibatch draws, aggregation, update)."""
    vec = Trainer(_config(model, n, True))
    loop = Trainer(_config(model, n, False))
    module = vec.model.module
    x, y = _big_batch(vec, n)
    grads = {"seconds": 0.0}
    batched = vec.model.batched_grads

    def timed(*args, **kw):
        start = time.perf_counter()
        out = batched(*args, **kw)
        grads["seconds"] += time.perf_counter() - start
        return out

    vec.model.batched_grads = timed  # type: ignore[method-assign]
    times: dict[str, list[float]] = {"vectorised": [], "loop": [], "big": [], "rest": []}
    for i in range(warmup + rounds):
        grads["seconds"] = 0.0
        sample = {"vectorised": _step_seconds(vec)}
        sample["rest"] = sample["vectorised"] - grads["seconds"]
        sample["loop"] = _step_seconds(loop)
        sample["big"] = _big_batch_seconds(module, x, y)
        if i >= warmup:
            for key, value in sample.items():
                times[key].append(value)
    out = {k: statistics.median(v) for k, v in times.items()}
    out["d"] = vec.model.dim
    return out


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="n = 10, MLP, 5 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.models, args.rounds, args.warmup = [10], ["mlp"], 5, 1
    torch.set_num_threads(args.threads)
    print(
        f"- machine: {platform.machine()}, {platform.processor() or 'cpu'}; "
        f"torch {torch.__version__}; {args.threads} thread(s)\n"
        f"- digits (8x8, 10 classes), batch 32 per worker, f = 0, average; "
        f"median of {args.rounds} rounds after {args.warmup} warm-up rounds\n"
    )
    header = (
        "| model | d | n | vectorised (s/round) | of which not gradients (s) | loop (s/round) "
        "| speed-up | big batch (s) | vectorised / big batch |"
    )
    print(header)
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for model in args.models:
        for n in args.n:
            m = measure(model, n, args.rounds, args.warmup)
            t_vec, t_loop, t_big = m["vectorised"], m["loop"], m["big"]
            print(
                f"| {model} | {m['d']} | {n} | {t_vec:.4f} | {m['rest']:.4f} | {t_loop:.4f} "
                f"| {t_loop / t_vec:.1f}x | {t_big:.4f} | {t_vec / t_big:.1f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
