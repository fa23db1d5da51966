"""The attacks' honest statistics (``attacks/_context.py``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from byzlearn.attacks import honest_mean
from byzlearn.attacks._context import make_context


@pytest.mark.parametrize("d", [7, 4810, 300_000])  # the mean kernel's sizes and torch's
@pytest.mark.parametrize("missing", [False, True])
def test_honest_mean_is_the_contexts_mean(d: int, missing: bool) -> None:
    """The function other code uses (an equivocating adversary's reflection) and the attacks'
    own mean are the same vector bit for bit, NaN entries ignored in both."""
    gen = torch.Generator().manual_seed(d)
    X = torch.randn(3, d, generator=gen) * 3 + 1
    if missing:
        X[1, 0] = math.nan
    expected = make_context("alie", X, 1)[0].mean()
    assert torch.equal(honest_mean(X), expected)
    finite = X[torch.isfinite(X[:, 0]), 0].double().mean()
    assert float(expected[0]) == pytest.approx(float(finite), rel=1e-6)


@pytest.mark.parametrize("missing", [False, True])
def test_std_ignores_missing_entries_and_matches_numpy(missing: bool) -> None:
    """The context's sigma (the compiled kernel) is numpy's unbiased std of each column's
    finite values; a column with fewer than two finite values gets 0."""
    X = torch.randn(6, 2500, generator=torch.Generator().manual_seed(5)) * 2 - 1
    if missing:
        X[0, 3], X[4, 3], X[2, 2000] = math.nan, math.inf, -math.inf
        X[:5, 7] = math.nan  # one finite value left
    got = make_context("alie", X, 2)[0].std().double().numpy()
    A = X.double().numpy()
    for j in (0, 3, 7, 2000, 2499):
        column = A[np.isfinite(A[:, j]), j]
        expected = column.std(ddof=1) if column.size > 1 else 0.0
        assert got[j] == pytest.approx(expected, rel=1e-6, abs=0)


@pytest.mark.parametrize("missing", [False, True])
def test_finite_rows_are_the_rows_without_a_missing_entry(missing: bool) -> None:
    X = torch.randn(5, 40)
    if missing:
        X[1, 3] = math.nan
        X[4, 0] = math.inf
    ctx = make_context("min_max", X, 1)[0]
    keep = [0, 2, 3] if missing else [0, 1, 2, 3, 4]
    assert ctx.finite_index().tolist() == keep
    assert torch.equal(ctx.finite_rows(), X[keep])
