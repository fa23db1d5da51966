"""``python -m byzlearn.aggregators``: every rule on one synthetic step, with and without outliers.

n honest-looking Gaussian gradients around a common direction, f of them replaced by Byzantine
vectors (a large negative multiple of the honest mean, the omniscient attack of the Krum paper,
and NaN rows). For each rule it prints its n/f requirement, the error of its output (distance to
the honest mean, in units of the honest spread) and its time.
"""

from __future__ import annotations

import argparse
import time

import torch

import byzlearn.aggregators as agg
from byzlearn.argtypes import at_least, check_memory

# Vectors of n x d float32 values the demo holds at once (the honest rows, three inputs, the
# rules' work), for its memory check.
_COPIES = 6


def _error(out: torch.Tensor, honest_mean: torch.Tensor, spread: float) -> float:
    return float((out.double() - honest_mean).norm()) / spread


def main(argv: list[str] | None = None) -> None:
    """Print the demo table (Markdown). A rule that refuses n and f (its requirement) says so in
    its cells; bad arguments end with one ``error:`` line (exit status 2)."""
    parser = argparse.ArgumentParser(
        prog="python -m byzlearn.aggregators", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--n", type=at_least(2), default=25)
    parser.add_argument("--f", type=at_least(0), default=5)
    parser.add_argument("--d", type=at_least(1), default=100_000)
    parser.add_argument("--seed", type=at_least(0, 2**64 - 1), default=0)
    args = parser.parse_args(argv)
    n, f, d = args.n, args.f, args.d
    if n - f < 2:  # the honest spread (the error's unit) needs two honest vectors
        parser.error(f"needs n - f >= 2 honest vectors, got n={n}, f={f}")
    check_memory(parser, _COPIES * 4 * n * d, f"n={n} x d={d}")
    g = torch.Generator().manual_seed(args.seed)
    direction = torch.randn(d, generator=g)
    honest = direction + torch.randn(n - f, d, generator=g)
    honest_mean = honest.double().mean(0)
    spread = float((honest.double() - honest_mean).norm(dim=1).mean())  # E||g_i - mean||
    repeated = honest[torch.arange(f) % (n - f)]  # no attack: f more honest vectors
    omniscient = torch.cat([honest, (-10.0 * honest_mean).float().expand(f, d)])
    nan_rows = torch.cat([honest, torch.full((f, d), float("nan"))])

    print(f"n={n}, f={f}, d={d}; error = ||output - honest mean|| / mean ||g_i - honest mean||\n")
    print("| rule | requirement | no attack | -10 x mean | NaN rows | ms |")
    print("|---|---|---:|---:|---:|---:|")
    for name in agg.names("rule"):
        rule = agg.get(name)
        cells = []
        for X in (torch.cat([honest, repeated]), omniscient, nan_rows):
            try:
                cells.append(f"{_error(rule(X, f=f), honest_mean, spread):.3g}")
            except ValueError as err:
                cells.append(f"refused ({str(err).split(':')[0]})")
        ms = "-"
        if not cells[1].startswith("refused"):  # timed on the attacked input, once it is taken
            start = time.perf_counter()
            rule(omniscient, f=f)
            ms = f"{1000 * (time.perf_counter() - start):.1f}"
        print(f"| {name} | {agg.spec(name).requirement} | {' | '.join(cells)} | {ms} |")


if __name__ == "__main__":
    main()
