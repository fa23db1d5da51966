"""all_finite against numpy's elementwise test, on values built to hit every branch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from byzlearn.finite import all_finite

SPECIAL = [np.nan, np.inf, -np.inf, 6.5e4, -6.5e4, 0.0, -1.5]  # 6.5e4: float16 sums overflow


@settings(max_examples=200, deadline=None)
@given(
    arrays(
        dtype=st.sampled_from([np.float32, np.float64, np.float16]),
        shape=st.tuples(st.integers(0, 7), st.integers(0, 40)),
        elements=st.one_of(
            st.floats(allow_nan=True, allow_infinity=True, width=16),
            st.sampled_from(SPECIAL),
        ),
    )
)
def test_matches_numpy(values: np.ndarray) -> None:
    expected = bool(np.isfinite(values).all())
    assert all_finite(torch.from_numpy(values)) is expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_overflowing_sum_of_finite_values_is_finite(dtype: torch.dtype) -> None:
    big = torch.finfo(dtype).max
    x = torch.full((4, 3), big, dtype=dtype)
    assert not bool(torch.isfinite(x.sum()))  # the fast path cannot answer
    assert all_finite(x)
    x[2, 1] = float("nan")
    assert not all_finite(x)


def test_one_bad_value_anywhere() -> None:
    x = torch.randn(20, 4810)
    assert all_finite(x)
    for bad in (float("nan"), float("inf"), float("-inf")):
        y = x.clone()
        y[13, 4000] = bad
        assert not all_finite(y)
    y = x.clone()
    y[0, 0], y[19, 4809] = float("inf"), float("-inf")  # their sum is NaN, still not finite
    assert not all_finite(y)


def test_other_dtypes() -> None:
    assert all_finite(torch.arange(10))
    assert all_finite(torch.tensor([True, False]))
    assert all_finite(torch.empty(0))
    assert all_finite(torch.tensor([1 + 2j, 3 - 1j]))
    assert not all_finite(torch.tensor([1 + 2j, complex(0, float("inf"))]))
    assert not all_finite(torch.tensor([1.0, float("nan")], dtype=torch.bfloat16))


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
@pytest.mark.parametrize("dtype", [torch.float8_e5m2, torch.complex32])
def test_dtypes_without_a_sum(dtype: torch.dtype) -> None:
    """Where torch has no sum for a dtype (CPU) but an elementwise test, the answer is the
    elementwise one (it raised NotImplementedError from the sum)."""
    for values, expected in (([1.0, 2.0], True), ([1.0, float("nan")], False)):
        x = torch.tensor(values).to(dtype)
        assert all_finite(x) is expected is bool(torch.isfinite(x).all())
