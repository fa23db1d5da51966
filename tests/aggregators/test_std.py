"""The columns' standard deviation kernel (``_mean.std_of_rows``) against float64 loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzlearn.aggregators._device import accelerator_path
from byzlearn.aggregators._mean import std_of_rows


def _reference(X: torch.Tensor) -> np.ndarray:
    """Per column, the unbiased std of its finite values (0 with fewer than two), float64."""
    A = X.double().numpy()
    out = np.zeros(A.shape[1])
    for j in range(A.shape[1]):
        column = A[:, j][np.isfinite(A[:, j])]
        if column.size >= 2:
            mean = sum(column) / column.size
            out[j] = np.sqrt(sum((x - mean) ** 2 for x in column) / (column.size - 1))
    return out


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 7),
    d=st.sampled_from([1, 5, 1023, 1024, 1025, 2100]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    scale=st.sampled_from([1e-20, 1.0, 1e30]),
    offset=st.sampled_from([0.0, 1e3]),
    holes=st.integers(0, 12),
    seed=st.integers(0, 10_000),
)
def test_std_of_rows_is_the_std_of_each_columns_finite_values(
    n: int, d: int, dtype: torch.dtype, scale: float, offset: float, holes: int, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    X = ((torch.randn(n, d, generator=gen, dtype=torch.float64) + offset) * scale).to(dtype)
    rng = np.random.default_rng(seed)
    for _ in range(holes):  # NaN and infinities, also several in one column
        X[rng.integers(n), rng.integers(min(d, 3))] = rng.choice([np.nan, np.inf, -np.inf])
    got = std_of_rows(X)
    assert got is not None and got.dtype == dtype and got.shape == (d,)
    rtol = 2e-7 if dtype == torch.float32 else 1e-13
    np.testing.assert_allclose(got.double().numpy(), _reference(X), rtol=rtol, atol=0)


def test_columns_with_fewer_than_two_finite_values_get_zero() -> None:
    X = torch.tensor([[1.0, float("nan"), 2.0], [float("inf"), float("nan"), 4.0]])
    assert std_of_rows(X).tolist() == [0.0, 0.0, pytest.approx(2**0.5)]
    assert std_of_rows(X[:1].contiguous()).tolist() == [0.0, 0.0, 0.0]  # one row
    assert std_of_rows(torch.empty(0, 3)).tolist() == [0.0, 0.0, 0.0]  # no row
    assert std_of_rows(torch.empty(4, 0)).shape == (0,)


def test_threads_give_the_same_bits() -> None:
    X = torch.randn(3, 200_000, dtype=torch.float32)
    X[1, 150_000] = float("nan")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = std_of_rows(X)
        torch.set_num_threads(2)
        two = std_of_rows(X)
    finally:
        torch.set_num_threads(before)
    assert one is not None and two is not None and torch.equal(one, two)


def test_inputs_the_kernel_does_not_take_give_none() -> None:
    X = torch.randn(4, 6)
    assert std_of_rows(X.t()) is None  # not contiguous
    assert std_of_rows(X.half()) is None
    assert std_of_rows(X[0]) is None  # not a matrix
    with accelerator_path():
        assert std_of_rows(X) is None


def test_torch_std_agrees_where_it_applies() -> None:
    X = torch.randn(9, 3000, dtype=torch.float64)
    torch.testing.assert_close(std_of_rows(X), X.std(0, correction=1), rtol=1e-12, atol=0)
