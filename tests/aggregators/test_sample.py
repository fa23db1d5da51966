"""Floyd's sorted random sample (the coordinates DnC and SignGuard draw) against a plain-Python
Floyd loop, and its distribution."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from byzlearn.aggregators._sample import sorted_sample


def ref_floyd(rng: np.random.Generator, d: int, k: int) -> list[int]:
    """Floyd's algorithm with a Python set, on the same draws of the generator."""
    if k >= d:
        return list(range(d))
    draws = rng.integers(0, np.arange(d - k, d), endpoint=True)
    chosen: set[int] = set()
    for q, t in enumerate(draws.tolist()):
        chosen.add(d - k + q if t in chosen else t)
    return sorted(chosen)


@pytest.mark.parametrize(
    ("d", "k"),
    [(1, 1), (5, 0), (8, 7), (9, 8), (16, 15), (17, 1), (100, 99), (1000, 100), (4097, 4000),
     (100_000, 10_000), (10, 20)],
)
def test_sorted_sample_matches_floyd_reference(d, k):
    for seed in range(5):
        got = sorted_sample(np.random.default_rng(seed), d, k)
        expected = ref_floyd(np.random.default_rng(seed), d, k)
        assert got.dtype == np.int64
        assert got.tolist() == expected
        assert len(got) == min(k, d) and len(set(got.tolist())) == len(got)
        assert all(0 <= c < d for c in got.tolist())
        assert np.all(np.diff(got) > 0)


def test_sorted_sample_is_uniform_over_subsets():
    """Chi-square over the C(7, 3) = 35 subsets: every one equally likely."""
    d, k, draws = 7, 3, 35_000
    rng = np.random.default_rng(0)
    counts = dict.fromkeys(itertools.combinations(range(d), k), 0)
    for _ in range(draws):
        counts[tuple(sorted_sample(rng, d, k).tolist())] += 1
    expected = draws / math.comb(d, k)
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 70  # 34 degrees of freedom: P(chi2 > 70) < 1e-3


def test_sorted_sample_is_keyed_by_the_generator():
    a = sorted_sample(np.random.default_rng(3), 10_000, 1000)
    b = sorted_sample(np.random.default_rng(3), 10_000, 1000)
    c = sorted_sample(np.random.default_rng(4), 10_000, 1000)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
