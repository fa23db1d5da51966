"""The skewed geometric median against a plain Weiszfeld reference on the skewed inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import byzlearn.aggregators as agg


def weiszfeld(Y: np.ndarray, iters: int = 200_000) -> np.ndarray:
    """Plain Weiszfeld iterations from the mean (reference)."""
    z = Y.mean(axis=0)
    for _ in range(iters):
        w = 1.0 / np.maximum(np.linalg.norm(Y - z, axis=1), 1e-15)
        new = (w[:, None] * Y).sum(0) / w.sum()
        if np.linalg.norm(new - z) < 1e-14:
            break
        z = new
    return z


def objective(z: np.ndarray, X: np.ndarray, S: np.ndarray) -> float:
    return float(np.linalg.norm((z - X) @ S.T, axis=1).sum())


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 12), d=st.integers(1, 5), seed=st.integers(0, 10**6),
       diagonal=st.booleans())
@example(n=4, d=3, seed=209, diagonal=True)  # a flat objective: 55,000 Weiszfeld steps
@example(n=3, d=4, seed=31503, diagonal=False)  # minimisers 5.7e-9 apart, objectives 1e-15
def test_matches_the_reference_and_minimises_the_skewed_objective(n, d, seed, diagonal):
    """The skewing, exactly (the rule's output is the geometric median of the skewed inputs
    mapped back), and the minimum against a plain Weiszfeld run to convergence, with a tighter
    ``tol`` than the default: Weiszfeld's steps converge linearly at a rate that can be close
    to 1 on near-degenerate inputs, and the default stopping test (a step below ``tol`` times
    the typical distance, at most ``max_iter = 1000`` steps) can stop 1e-5 above the minimum
    there (this example: 1.8e-5 relative after 1000 steps, 5e-9 after 10,000). A minimiser is
    known to about the square root of the objective's rounding (near a minimum the objective
    changes with the square of the distance): two runs whose objectives agree to 1e-15 may
    stop 6e-9 apart, whatever ``tol`` (the second example), so the skewing is compared to 1e-7;
    a wrong skewing is off by O(1)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    if diagonal:
        S = np.diag(rng.uniform(0.2, 5.0, size=d))
    else:
        S = rng.normal(size=(d, d)) + 3 * np.eye(d)
    skew = np.diag(S) if diagonal else S
    rule = agg.get("skewed_geometric_median")
    tight = {"tol": 1e-10, "max_iter": 20_000}
    got = rule(torch.tensor(X), f=0, skew=torch.tensor(skew), **tight).numpy()
    # the skewing, exactly: the geometric median of the skewed inputs, mapped back
    plain = agg.geometric_median(torch.tensor(X @ S.T), f=0, **tight).numpy()
    np.testing.assert_allclose(got @ S.T, plain, rtol=1e-7, atol=1e-7)
    ref = np.linalg.solve(S, weiszfeld(X @ S.T))
    assert objective(got, X, S) <= objective(ref, X, S) * (1 + 1e-6) + 1e-9
    perm = rng.permutation(n)
    again = rule(torch.tensor(X[perm]), f=0, skew=torch.tensor(skew), **tight)
    np.testing.assert_allclose(again.numpy(), got, atol=1e-6)


def test_identity_skew_is_the_geometric_median_and_bad_skews_are_one_line():
    X = torch.randn(9, 4, dtype=torch.float64)
    rule = agg.get("skewed_geometric_median")
    torch.testing.assert_close(rule(X, f=2), agg.geometric_median(X, f=2))
    torch.testing.assert_close(rule(X, f=2, skew=torch.ones(4)), agg.geometric_median(X, f=2))
    with pytest.raises(ValueError, match=r"skew must have shape \(4,\) or \(4, 4\)"):
        rule(X, f=2, skew=torch.ones(3))
    with pytest.raises(ValueError, match="invertible"):
        rule(X, f=2, skew=torch.zeros(4, 4))
    with pytest.raises(ValueError, match="no zero entry"):
        rule(X, f=2, skew=torch.tensor([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="needs n >= 2f"):
        rule(X, f=5)


def test_a_nan_row_is_ignored():
    X = torch.randn(7, 3, dtype=torch.float64)
    bad = torch.cat([X, torch.full((1, 3), float("nan"))])
    s = torch.tensor([1.0, 2.0, 3.0])
    rule = agg.get("skewed_geometric_median")
    torch.testing.assert_close(rule(bad, f=1, skew=s), rule(X, f=1, skew=s), atol=1e-7, rtol=1e-7)


def test_sharded_aggregation_refuses_it_in_one_line():
    from byzlearn.aggregators import sharded

    V = sharded.scatter(torch.randn(7, 10), k=2, backend="local")
    with pytest.raises(ValueError, match="cannot run sharded: its skewing matrix"):
        sharded.aggregate("skewed_geometric_median", V, f=1, skew=torch.ones(10))
