"""Random search of the aggregation rules against the tests' independent references.

Usage (from the repository root)::

    python tools/random_search.py                         # every family, 60 s each
    python tools/random_search.py --seconds 600 --seed 3  # longer, another draw
    python tools/random_search.py --families selection    # one family

Each family draws inputs at random (row counts across the kernels' paths, dimensions across
their block and part boundaries, float32 and float64, one or two threads) of several kinds:
Gaussian rows, a -10 x mean attack, quantised values (the integers 0..3, or -2..2), zeros of
both signs, magnitudes from 1e-30 to 1e30, infinite and scattered missing values. Families:

- ``coordinatewise``: the median, the trimmed mean, MeaMed and Phocas against the references of
  ``tests/aggregators/test_coordinatewise.py`` (every finite column; those tolerances);
- ``selection``: the inputs Krum, Multi-Krum, the medoid and CGE keep, against the references of
  ``tests/aggregators/test_distance_rules.py``; a different choice among inputs whose reference
  scores are equal (duplicates, integer rows: a tie the rule leaves open, which rounding breaks
  either way) is not reported;
- ``torch_path``: the CPU kernels against the other devices' torch path
  (``_device.accelerator_path``) on non-quantised inputs, within a few units of rounding.

The two families of distance-based rules draw inputs of one magnitude (any from 1e-30 to 1e30)
rather than values of magnitudes 1e-30 to 1e30 side by side, where the Gram pass's rounding is
a documented limit (docs/testing.md: centred clipping's two paths 7e20 apart on values up to
1e30, 1e-9 of them; Multi-Krum keeping another row).

It prints each mismatch (the draw, the rule, the first differing coordinate) and a summary line
per family; the exit status is 1 when any family found one. The 2026-12-07 searches found
Phocas' float32 centre and ARC's k (docs/testing.md).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import byzlearn.aggregators as agg
from byzlearn.aggregators._device import accelerator_path
from tests.aggregators.test_coordinatewise import reference, tolerance
from tests.aggregators.test_distance_rules import (
    ref_cge,
    ref_krum_scores,
    ref_order,
    ref_sqdist,
)

ROBUST = ("median", "trimmed_mean", "meamed", "phocas")
GetRule = Callable[[str], Callable[..., torch.Tensor]]


@dataclass
class Found:
    """What a family's search found: its number of cases and the mismatches, one line each."""

    cases: int = 0
    mismatches: list[str] = field(default_factory=list)


def draw_input(
    rng: np.random.Generator, n: int, d: int, quantised: bool = True, spread: bool = True
) -> np.ndarray:
    """An (n, d) float64 input of a random kind (see the module docstring); ``spread``: values
    of magnitudes from 1e-30 to 1e30 side by side, else one such magnitude for the whole input
    (the distance-based rules' Gram pass cannot resolve distances of 1e-2 between rows beside
    rows of 1e26 in the same coordinates: docs/testing.md)."""
    kinds = 6 if quantised else 3
    kind = int(rng.integers(0, kinds))
    X = rng.standard_normal((n, d)) * rng.uniform(0.5, 2.0, (n, 1))
    if kind == 1:  # the -10 x mean attack on a fifth of the rows
        f0 = max(1, n // 5)
        X[:f0] = -10 * X[f0:].mean(0) if n > f0 else X[:f0]
    elif kind == 2:  # magnitudes from 1e-30 to 1e30
        X = X * 10.0 ** rng.integers(-30, 31, (n, d) if spread else 1)
    elif kind == 3:
        X = rng.integers(0, 4, (n, d)).astype(float)
    elif kind == 4:
        X = rng.choice([-0.0, 0.0, 1.0, -1.0], (n, d))
    elif kind == 5:
        X = rng.integers(-2, 3, (n, d)).astype(float)
    return X


def coordinatewise(rng: np.random.Generator, get_rule: GetRule = agg.get) -> list[str]:
    """One draw of the coordinate-wise family; its mismatches."""
    small = int(rng.integers(3, 260))
    n = small if rng.random() < 0.7 else int(rng.integers(260, 1100))
    d = int(rng.choice([1, 7, 255, 256, 257, 511, 513, int(rng.integers(1, 1400))]))
    dtype = np.float32 if rng.random() < 0.7 else np.float64
    X = draw_input(rng, n, d).astype(dtype)
    if rng.random() < 0.3:  # missing values: each coordinate over its finite ones
        X[rng.random((n, d)) < rng.choice([0.01, 0.05])] = rng.choice([np.nan, np.inf, -np.inf])
    torch.set_num_threads(int(rng.choice([1, 2])))
    found = []
    for rule in ROBUST:
        f = int(rng.integers(0, (n - 1) // 2 + 1)) if rng.random() < 0.5 else n // 5
        try:
            out = get_rule(rule)(torch.from_numpy(X), f=f)
        except ValueError:  # too few finite values somewhere: the rule refuses
            continue
        ref, scale, ok = reference(X, rule, f)
        got = out.double().numpy()
        err = np.abs(got - ref)
        bad = np.flatnonzero(ok & ~(err <= tolerance(scale, dtype, n)))
        if bad.size:
            j = int(bad[0])
            found.append(f"{rule} n={n} d={d} f={f} {dtype.__name__}: coordinate {j} "
                         f"{got[j]!r} against {ref[j]!r}")
    return found


def selection(rng: np.random.Generator, get_rule: GetRule = agg.get) -> list[str]:
    """One draw of the selection family; its mismatches (ties of equal reference scores left)."""
    n = int(rng.integers(5, 60))
    d = int(rng.choice([1, 3, 17, 300, 4810, int(rng.integers(1, 3000))]))
    dtype = np.float32 if rng.random() < 0.6 else np.float64
    X = draw_input(rng, n, d, spread=False)
    if rng.random() < 0.3:  # duplicated rows
        dup = int(rng.integers(1, n // 2 + 1))
        X[n - dup:] = X[:dup]
    X = X.astype(dtype)
    X64 = X.astype(np.float64)
    D = ref_sqdist(X64)  # (its double loop is most of a draw's time: computed once)
    if not np.isfinite(D[~np.eye(n, dtype=bool)]).all():
        return []  # squared distances past float64 (magnitudes near 1e30 over many coordinates)
    f = int(rng.integers(0, (n - 3) // 2 + 1))
    torch.set_num_threads(int(rng.choice([1, 2])))
    # the references' choices (ref_krum, ref_multi_krum, ref_medoid: the least scores, ties by
    # index) from scores computed once; every row is finite here
    krum = ref_krum_scores(X64, f)
    medoid = np.sqrt(D).sum(1)
    cases = {
        "krum": ([ref_order(krum)[0]], krum),
        "multi_krum": (sorted(ref_order(krum)[: n - f]), krum),
        "medoid": ([ref_order(medoid)[0]], medoid),
        "cge": (ref_cge(X64, f), np.sqrt((X64**2).sum(1))),
    }
    found = []
    for rule, (want, scores) in cases.items():
        try:
            got = sorted(agg.selected_indices(rule, torch.from_numpy(X), f=f).tolist())
        except ValueError:
            continue
        if got == want:
            continue
        rtol = 1e-5 if dtype == np.float32 else 1e-9  # the Gram pass's rounding
        if np.allclose(np.sort(scores[got]), np.sort(scores[want]), rtol=rtol, atol=0):
            continue  # a tie of equal scores, within rounding
        only_got = sorted(set(got) - set(want))[:4]
        only_want = sorted(set(want) - set(got))[:4]
        found.append(f"{rule} n={n} d={d} f={f} {dtype.__name__}: kept {only_got} (scores "
                     f"{scores[only_got].tolist()}) instead of {only_want} (scores "
                     f"{scores[only_want].tolist()})")
    return found


def torch_path(rng: np.random.Generator, get_rule: GetRule = agg.get) -> list[str]:
    """One draw of the CPU kernels against the torch path; its mismatches."""
    rules = ("median", "trimmed_mean", "meamed", "phocas", "average", "bulyan", "krum",
             "multi_krum", "geometric_median", "centered_clipping", "cge", "nnm+median")
    n = int(rng.integers(3, 90))
    d = int(rng.choice([7, 256, 300, 1000, int(rng.integers(2, 3000))]))
    dtype = np.float32 if rng.random() < 0.6 else np.float64
    X = draw_input(rng, n, d, quantised=False, spread=False)
    if rng.random() < 0.3:
        X[rng.random((n, d)) < 0.02] = np.nan
    X = torch.from_numpy(X.astype(dtype))
    f = int(rng.integers(0, max(1, n // 4) + 1))
    rule = str(rng.choice(rules))
    results = []
    for path in (contextlib.nullcontext, accelerator_path):  # the CPU kernels, the torch path
        try:
            with path():
                results.append(get_rule(rule)(X, f=f).double())
        except ValueError as e:
            results.append(str(e).split(":")[0])
    cpu, other = results
    where = f"{rule} n={n} d={d} f={f} {dtype.__name__}"
    if isinstance(cpu, str) or isinstance(other, str):
        return [] if type(cpu) is type(other) else [f"{where}: {cpu!r} against {other!r}"]
    if not torch.equal(torch.isnan(cpu), torch.isnan(other)):
        return [f"{where}: missing coordinates differ"]
    finite = ~torch.isnan(cpu)
    if not finite.any():
        return []
    values = X[torch.isfinite(X)].double().abs()  # rounding scales with the inputs
    scale = 1.0 + max(float(cpu[finite].abs().max()), float(values.max()) if values.numel() else 0)
    # the geometric median stops within its solver's tolerance
    rel = 1e-5 if dtype == np.float32 else (1e-7 if rule == "geometric_median" else 1e-9)
    gap = (cpu[finite] - other[finite]).abs().max()
    return [f"{where}: {float(gap):.3g} apart"] if float(gap) > rel * scale else []


FAMILIES = {"coordinatewise": coordinatewise, "selection": selection, "torch_path": torch_path}


def search(family: str, seconds: float, seed: int, get_rule: GetRule = agg.get) -> Found:
    """Draw cases of ``family`` for ``seconds`` (at least one) from ``seed``."""
    rng = np.random.default_rng(seed)
    found = Found()
    end = time.monotonic() + seconds
    threads = torch.get_num_threads()
    try:
        while found.cases == 0 or time.monotonic() < end:
            found.mismatches += FAMILIES[family](rng, get_rule)
            found.cases += 1
    finally:
        torch.set_num_threads(threads)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--seconds", type=float, default=60.0, help="per family")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    status = 0
    for family in args.families:
        found = search(family, args.seconds, args.seed)
        for line in found.mismatches[:50]:
            print(f"MISMATCH {family}: {line}")
        print(f"{family}: {found.cases} cases, {len(found.mismatches)} mismatches", flush=True)
        status |= bool(found.mismatches)
    return status


if __name__ == "__main__":
    sys.exit(main())
