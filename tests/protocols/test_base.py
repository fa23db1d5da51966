"""Helpers of ``protocols.base`` that every protocol uses."""

from __future__ import annotations

import pytest
import torch

from byzlearn.protocols.base import stack_rows


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
