"""The rows' mean kernel (``_mean.mean_of_rows``) against float64 loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzlearn.aggregators._device import accelerator_path
from byzlearn.aggregators._mean import mean_of_finite, mean_of_rows


def _reference(X: torch.Tensor) -> torch.Tensor:
    A = X.double().numpy()
    sums = np.zeros(A.shape[1])
    for row in A:  # row order, in float64
        sums = sums + row
    return torch.from_numpy(sums / A.shape[0]).to(X.dtype)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 9),
    d=st.sampled_from([1, 7, 1023, 1024, 1025, 3000]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    scale=st.sampled_from([1e-20, 1.0, 1e30]),
    seed=st.integers(0, 10_000),
)
def test_mean_of_rows_is_the_float64_mean_rounded_once(
    n: int, d: int, dtype: torch.dtype, scale: float, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    X = (torch.randn(n, d, generator=gen, dtype=torch.float64) * scale).to(dtype)
    got = mean_of_rows(X)
    assert got is not None and got.dtype == dtype and got.shape == (d,)
    assert torch.equal(got, _reference(X))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", [(0, 0), (2, 1024), (4, 2999), (3, 1500)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_non_finite_value_anywhere_gives_none(
    bad: float, where: tuple[int, int], dtype: torch.dtype
) -> None:
    X = torch.randn(5, 3000, dtype=dtype)
    X[where] = bad
    assert mean_of_rows(X) is None
    with accelerator_path():  # the torch path answers the same
        assert mean_of_rows(X) is None


def test_finite_float64_values_whose_sum_overflows_give_none() -> None:
    X = torch.zeros(3, 4, dtype=torch.float64)
    X[:2, 1] = 1e308
    assert mean_of_rows(X) is None


def test_other_paths_agree_with_the_kernel() -> None:
    X = torch.randn(6, 2500)
    kernel = mean_of_rows(X)
    assert kernel is not None
    with accelerator_path():
        torch_path = mean_of_rows(X)
    columns_first = torch.empty(2500, 6).T.copy_(X)  # not contiguous: torch's mean
    strided = mean_of_rows(columns_first)
    assert torch_path is not None and strided is not None
    torch.testing.assert_close(torch_path, kernel, rtol=1e-6, atol=1e-7)
    assert torch.equal(mean_of_rows(X.double()), _reference(X.double()))
    assert mean_of_rows(torch.empty(0, 3)) is None
    half = mean_of_rows(X.half())  # not a kernel dtype: torch's mean
    assert half is not None and half.dtype == torch.float16


@pytest.mark.parametrize(
    ("cols", "prefetched"), [(512, False), (4096, False), (256, True), (512, True)]
)
@pytest.mark.parametrize("threads", [1, 2])
def test_large_matrices_on_threads_give_the_same_bits(
    threads: int, cols: int, prefetched: bool, monkeypatch
) -> None:
    """Large matrices are split into ranges of blocks, one per thread, at every block width,
    with and without the prefetch of each row's next block (``_simd.sum_plan``: it depends on
    the host, the rows and the matrix's size), for row counts in and off whole groups of four
    after the first row: the same float64 mean rounded once, and ``None`` for a non-finite
    value in any range."""
    from byzlearn.aggregators import _mean

    monkeypatch.setattr(_mean, "sum_plan", lambda rows, nbytes: (cols, prefetched))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for n in (1, 5, 7):
            X = torch.randn(n, 300_001)
            got = mean_of_rows(X)
            assert got is not None
            assert torch.equal(got, _reference(X))
            assert torch.equal(mean_of_rows(X.double()), _reference(X.double()))
            for where in [(0, 0), (n - 1, 300_000), (n // 2, 150_000)]:
                Y = X.clone()
                Y[where] = float("nan")
                assert mean_of_rows(Y) is None
    finally:
        torch.set_num_threads(before)
    assert mean_of_rows(torch.empty(4, 0)).shape == (0,)


def _finite_reference(X: torch.Tensor) -> torch.Tensor:
    """The mean of each column's finite values: float64 sums in row order, over their count,
    clamped to their range (loops)."""
    A = X.double().numpy()
    out = np.empty(A.shape[1])
    for j in range(A.shape[1]):
        total, count, low, high = 0.0, 0, np.inf, -np.inf
        for v in A[:, j]:
            if np.isfinite(v):
                total, count, low, high = total + v, count + 1, min(low, v), max(high, v)
        out[j] = min(max(total / count, low), high)
    return torch.from_numpy(out).to(X.dtype)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40),
    d=st.sampled_from([1, 7, 1025, 3000]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    missing=st.sampled_from([0.0, 0.01, 0.3]),
    seed=st.integers(0, 10_000),
)
def test_mean_of_finite_is_the_mean_of_each_columns_finite_values(
    n: int, d: int, dtype: torch.dtype, missing: float, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=gen, dtype=dtype) * 100
    specials = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=dtype)
    lost = torch.rand(n, d, generator=gen) < missing
    lost[0] = False  # every column keeps a finite value
    Y = torch.where(lost, specials[torch.randint(0, 3, (n, d), generator=gen)], X)
    out = mean_of_finite(Y)
    assert out is not None and out.dtype == dtype
    assert torch.equal(out, _finite_reference(Y))
    clean = ~lost.any(0)  # a column without a missing value: mean_of_rows' bits
    if bool(clean.any()):
        assert torch.equal(out[clean], mean_of_rows(X[:, clean].contiguous()))


def test_mean_of_finite_gives_none_without_a_finite_value_or_on_overflow() -> None:
    X = torch.randn(6, 2000)
    X[:, 1500] = float("nan")  # one column with no finite value
    assert mean_of_finite(X) is None
    big = torch.full((3, 5), 1e308, dtype=torch.float64)
    big[0, 0] = float("nan")
    assert mean_of_finite(big) is None  # 2e308 overflows the sum of a column
