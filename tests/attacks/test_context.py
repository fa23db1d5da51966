"""The attacks' honest statistics (``attacks/_context.py``)."""

from __future__ import annotations

import math

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
