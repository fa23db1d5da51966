"""Helpers of ``protocols.base`` that every protocol uses."""

from __future__ import annotations

import math

import pytest
import torch

from byzlearn.protocols.base import diameter, stack_rows


def test_the_rows_of_one_matrix_in_order_are_that_matrix() -> None:
    V = torch.randn(5, 7)
    rows = list(V.unbind(0))
    out = stack_rows(rows)
    assert out is V and torch.equal(out, torch.stack(rows))


@pytest.mark.parametrize(
    "case",
    ["permuted", "subset", "two_matrices", "strided", "reinterpreted", "plain", "one"],
)
def test_other_rows_are_copied(case: str) -> None:
    V = torch.randn(4, 6)
    rows = list(V.unbind(0))
    if case == "permuted":
        rows[1], rows[2] = rows[2], rows[1]
    elif case == "subset":
        rows = rows[:3]
    elif case == "two_matrices":
        rows = rows[:2] + list(torch.randn(2, 6).unbind(0))
    elif case == "strided":  # a whole row's start, every other value of the flat matrix
        rows[0] = V.view(-1)[0:12:2]
    elif case == "reinterpreted":  # the matrix's rows, in order, but read as integers
        rows = [r.view(torch.int32) for r in rows]
    elif case == "plain":
        rows = [torch.randn(6) for _ in range(4)]
    else:
        rows = [torch.randn(6)]
    out = stack_rows(rows)
    assert out is not V and out.is_contiguous()
    assert torch.equal(out, torch.stack(rows))
    assert out.data_ptr() not in {r.data_ptr() for r in rows}  # a copy, not a view


def _loop_diameter(X: torch.Tensor) -> float:
    A = X.double().tolist()
    return max(
        (sum((a - b) ** 2 for a, b in zip(u, v, strict=True)) ** 0.5 for u in A for v in A),
        default=0.0,
    )


@pytest.mark.parametrize("m", [2, 3, 7, 25])
@pytest.mark.parametrize("offset", [0.0, 1e6])  # models far from the origin, close together
def test_diameter_is_the_largest_distance(m: int, offset: float) -> None:
    X = torch.randn(m, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(m))
    X = X * (1e-3 if offset else 1.0) + offset
    assert diameter(X) == pytest.approx(_loop_diameter(X - offset), rel=1e-9)
    assert diameter(X.float()) == pytest.approx(_loop_diameter(X.float()), rel=1e-5)


def test_diameter_of_fewer_than_two_equal_or_non_finite_models() -> None:
    assert diameter(torch.randn(1, 5)) == 0.0
    assert diameter(torch.ones(4, 5)) == 0.0
    for bad in (math.nan, math.inf):
        X = torch.randn(3, 5)
        X[1, 2] = bad
        assert math.isnan(diameter(X))
