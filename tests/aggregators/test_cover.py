"""MDA's compiled vertex-cover search (byzlearn/aggregators/_cover.py) against the Python search
of byzlearn/aggregators/rules/mda.py: the same cover, the same branches (so the same
``max_branches`` at which it gives up), on random, tied and non-finite distances, across the
64-bit word boundaries of the bitsets; and the branch bound behind the documented guarantee."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from byzlearn.aggregators import _cover
from byzlearn.aggregators.rules import mda

pytestmark = pytest.mark.skipif(not _cover.available(), reason="numba is not available")


def _distances(rng: np.random.Generator, n: int, kind: str, f: int) -> np.ndarray:
    if kind == "gaussian":
        X = rng.standard_normal((n, 4))
        D = ((X[:, None] - X[None]) ** 2).sum(-1)
    elif kind == "ties":  # few distinct distances: many equal thresholds and degrees
        D = rng.integers(0, 4, (n, n)).astype(float)
    else:  # some rows at infinite distance from all (non-finite inputs)
        X = rng.standard_normal((n, 3))
        D = ((X[:, None] - X[None]) ** 2).sum(-1)
        bad = rng.choice(n, size=int(rng.integers(0, f + 1)), replace=False)
        D[bad] = np.inf
        D[:, bad] = np.inf
    D = np.maximum(D, D.T)
    np.fill_diagonal(D, 0.0)
    return D


def _thresholds(D: np.ndarray) -> np.ndarray:
    values = D[np.triu_indices(D.shape[0], 1)]
    return np.unique(np.concatenate([[0.0], values[np.isfinite(values)]]))


def _branches(D: np.ndarray, thresholds: np.ndarray, f: int) -> int:
    """Branches the Python search spends (its budget counter, never exhausted)."""
    budget = mda._Budget(10**12, D.shape[0], f)
    lo, hi = 0, len(thresholds) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        found = mda._cover(thresholds[mid] < D, np.ones(D.shape[0], dtype=bool), f, budget)
        lo, hi = (mid + 1, hi) if found is None else (lo, mid - 1)
    return 10**12 - budget.left


def _same_search(D: np.ndarray, f: int) -> None:
    thresholds = _thresholds(D)
    compiled = mda._least_cover(D, thresholds, f, 10**9)
    reference = mda._least_cover(D, thresholds, f, 10**9, compiled=False)
    assert compiled == reference
    used = _branches(D, thresholds, f)
    assert mda._least_cover(D, thresholds, f, used) == reference  # exactly enough
    if used > 1:
        with pytest.raises(ValueError, match=f"max_branches={used - 1} "):
            mda._least_cover(D, thresholds, f, used - 1)


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 40),
    share=st.floats(0.0, 0.5),
    kind=st.sampled_from(["gaussian", "ties", "nonfinite"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_compiled_search_is_the_python_search(n: int, share: float, kind: str, seed: int):
    f = int(share * n)
    _same_search(_distances(np.random.default_rng(seed), n, kind, f), f)


@pytest.mark.parametrize("n", [63, 64, 65, 127, 128, 129])
@pytest.mark.parametrize("kind", ["gaussian", "ties"])
def test_bitsets_across_word_boundaries(n: int, kind: str):
    rng = np.random.default_rng(n)
    f = n // 5
    D = _distances(rng, n, kind, f)
    _same_search(D, f)
    t = float(np.median(D))
    bits = _cover.conflict_bits(D, t)
    dense = np.unpackbits(bits.view(np.uint8), axis=1, bitorder="little")[:, :n].astype(bool)
    np.testing.assert_array_equal(dense, t < D)


def test_the_subset_rule_and_its_limit_are_unchanged():
    """mda through the registry: the subset of the Python search, and the same ValueError
    (naming max_branches) when the budget runs out."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((60, 8))
    D = ((X[:, None] - X[None]) ** 2).sum(-1)
    for f in (3, 12, 25):
        keep, diameter = mda.min_diameter_subset(D, f)
        thresholds = _thresholds(np.maximum(D, D.T))
        cover = mda._least_cover(np.maximum(D, D.T), thresholds, f, 10**9, compiled=False)
        assert cover is not None and set(keep.tolist()) <= set(range(60)) - set(cover)
        assert diameter == pytest.approx(D[np.ix_(keep, keep)].max())
    with pytest.raises(ValueError, match=r"max_branches=3 branches \(n=60, f=12\)"):
        mda.min_diameter_subset(D, 12, max_branches=3)


def _fibonacci_bound(k: int) -> int:
    """N(k) = 1 + N(k - 1) + N(k - 2), N(0) = 1, N(1) = 2: the most branches one search with
    budget k takes (module docstring of rules/mda.py)."""
    a, b = 1, 2
    for _ in range(k - 1):
        a, b = b, 1 + a + b
    return a if k == 0 else b


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 30), density=st.floats(0.05, 0.9), seed=st.integers(0, 2**32 - 1))
def test_one_search_stays_within_the_documented_branch_bound(n: int, density: float, seed: int):
    rng = np.random.default_rng(seed)
    adj = np.triu(rng.random((n, n)) < density, 1)
    adj = adj | adj.T
    for k in range(0, min(n, 12)):
        budget = mda._Budget(10**9, n, k)
        mda._cover(adj, np.ones(n, dtype=bool), k, budget)
        assert 10**9 - budget.left <= _fibonacci_bound(k)
    assert [_fibonacci_bound(k) for k in (0, 1, 2, 3, 22)] == [1, 2, 4, 7, 75024]
    assert _fibonacci_bound(mda.EXACT_F) * 19 <= mda.MAX_BRANCHES
    assert _fibonacci_bound(mda.EXACT_F + 1) * 19 > mda.MAX_BRANCHES


def test_a_budget_beyond_int64_is_ample():
    rng = np.random.default_rng(11)
    X = rng.standard_normal((12, 5))
    D = ((X[:, None] - X[None]) ** 2).sum(-1)
    assert mda.min_diameter_subset(D, 3, max_branches=10**30)[0].tolist() == (
        mda.min_diameter_subset(D, 3)[0].tolist()
    )
