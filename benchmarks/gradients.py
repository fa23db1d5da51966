"""Per-worker gradients: the engines' short road against vmap, side by side in one run.

Usage (from the repository root)::

    python benchmarks/gradients.py                      # MLP and CNN, 25 workers x 32 digits
    python benchmarks/gradients.py --workers 5 100 --calls 20 --threads 2

For each model (``mlp``, ``cnn``), number of workers h and parameter kind (``shared``: one model
for all workers, as in a synchronous round; ``own``: one model per worker, as in later local
steps or decentralised peers), the per-worker gradients and losses of h workers on 32 digits
each are computed by:

- ``road``: ``FlatModel.batched_grads``, the written-out road (``byzlearn/engines/_sequential.py``,
  ``_convolutional.py``);
- ``vmap``: ``torch.func.vmap(grad_and_value(loss))`` through the module (the road switched off);
- for the CNN, ``road, unpool``: the road with the max-pools by torch (``max_pool2d`` with
  indices, then ``relu``; backward by ``max_unpool2d``) instead of the compiled passes of
  ``_pool_kernel.py``;
- ``big batch``: one forward/backward of the module on all h x 32 samples (no per-worker
  gradients: the floor), in the default layout and, for the CNN, in channels-last memory.

The variants run in turns, call after call, so that load from other processes hits all alike;
medians in ms. The road's gradients are checked against vmap's (``max abs diff``).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from _common import MAX_THREADS, at_least, channels_last, check_memory
from torch.nn import functional as F  # noqa: N812

from byzlearn.engines import FlatModel, _pool_kernel
from byzlearn.machine import cpu_name
from byzlearn.models import build_model

BATCH = 32
SHAPE = (1, 8, 8)  # digits
CLASSES = 10
# Peak bytes per worker of measure() (both parameter kinds; measured at 1000 workers, rounded up:
# mostly the vmapped activations and per-worker gradients)
BYTES_PER_WORKER = {"mlp": 300_000, "cnn": 1_300_000}


def _big_batch(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        module.zero_grad(set_to_none=True)
        F.cross_entropy(module(x), y).backward()

    return run


def measure(model: str, h: int, kind: str, calls: int) -> dict[str, float]:
    """Median ms per call of every variant (interleaved) and the road's max abs diff."""
    torch.manual_seed(h)
    module = build_model(model, SHAPE, CLASSES)
    road = FlatModel(module)
    vmapped = FlatModel(module)
    vmapped._layers = None  # the road switched off: vmap through the module
    theta = road.flatten()
    if kind == "own":
        theta = theta + 0.01 * torch.randn(h, road.dim)
    x = (torch.rand(h, BATCH, *SHAPE) * 16).floor()  # digits-like pixels (ties in the pools)
    y = torch.randint(0, CLASSES, (h, BATCH))
    applies = _pool_kernel.applies

    def without_kernel() -> None:
        _pool_kernel.applies = lambda z, g: False  # type: ignore[assignment]
        try:
            road.batched_grads(theta, x, y)
        finally:
            _pool_kernel.applies = applies  # type: ignore[assignment]

    variants: dict[str, Callable[[], object]] = {
        "road": lambda: road.batched_grads(theta, x, y),
        "vmap": lambda: vmapped.batched_grads(theta, x, y),
    }
    if model == "cnn":
        variants["road, unpool"] = without_kernel
    flat_x, flat_y = x.reshape(h * BATCH, *SHAPE), y.reshape(-1)
    variants["big batch"] = _big_batch(copy.deepcopy(module), flat_x, flat_y)
    if model == "cnn":
        last = channels_last(module, flat_x)
        assert last is not None
        variants["big batch CL"] = _big_batch(*last, flat_y)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(calls + 2):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            if i >= 2:  # two warm-up calls
                times[name].append(time.perf_counter() - start)
    out = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    g_road, _ = road.batched_grads(theta, x, y)
    g_vmap, _ = vmapped.batched_grads(theta, x, y)
    out["diff"] = float((g_road - g_vmap).abs().max())
    return out


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=["mlp", "cnn"], default=["mlp", "cnn"])
    parser.add_argument("--workers", type=at_least(1), nargs="+", default=[25])
    parser.add_argument("--kinds", nargs="+", choices=["shared", "own"], default=["shared", "own"])
    parser.add_argument("--calls", type=at_least(1), default=40)
    parser.add_argument("--threads", type=at_least(1, MAX_THREADS), default=1)
    args = parser.parse_args(argv)
    h = max(args.workers)
    per_worker = max(BYTES_PER_WORKER[model] for model in args.models)
    check_memory(parser, h * per_worker, f"{h} workers", "--workers")
    torch.set_num_threads(args.threads)
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(
        f"- machine: {platform.machine()}, {cpu_name()}, {os.cpu_count()} cores (load average "
        f"{load}); Python {platform.python_version()}, torch {torch.__version__}; torch threads: "
        f"{args.threads}\n- digits-shaped inputs, {BATCH} samples per worker; median of "
        f"{args.calls} calls per variant, in turns\n"
    )
    print(
        "| model | workers | parameters | road (ms) | vmap (ms) | vmap / road | road, unpool (ms) "
        "| big batch (ms) | big batch CL (ms) | max abs diff |"
    )
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for model in args.models:
        for h in args.workers:
            for kind in args.kinds:
                m = measure(model, h, kind, args.calls)
                unpool = f"{m['road, unpool']:.2f}" if "road, unpool" in m else "-"
                last = f"{m['big batch CL']:.2f}" if "big batch CL" in m else "-"
                print(
                    f"| {model} | {h} | {kind} | {m['road']:.2f} | {m['vmap']:.2f} "
                    f"| {m['vmap'] / m['road']:.1f}x | {unpool} | {m['big batch']:.2f} | {last} "
                    f"| {m['diff']:.1e} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
