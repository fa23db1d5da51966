"""The compiled weighted sum of rows (``_gram_kernel.weighted_sum``) against a float64 loop."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from byzlearn.aggregators import _gram_kernel

pytestmark = pytest.mark.skipif(
    not _gram_kernel.available(np.zeros((1, 1), dtype=np.float32)), reason="needs numba"
)


def _reference(X: np.ndarray, rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
    acc = np.zeros(X.shape[1])
    for t, w in zip(rows, weights, strict=True):  # row order, float64
        acc = acc + w * X[t].astype(np.float64)
    return acc.astype(X.dtype)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 11),
    d=st.sampled_from([1, 7, 4095, 4096, 4097, 9000]),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 10_000),
)
def test_weighted_sum_is_the_float64_sum_in_row_order(
    n: int, d: int, dtype: type, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n + 3, d)) * rng.choice([1e-3, 1.0, 1e6])).astype(dtype)
    rows = np.sort(rng.choice(n + 3, size=n, replace=False))
    weights = rng.random(n)
    got = _gram_kernel.weighted_sum(X, rows, weights, 1)
    assert got.dtype == X.dtype and got.shape == (d,)
    want = _reference(X, rows, weights)
    # FMA rounds each product once less than the loop: the float64 sums differ by a few
    # roundings of the terms' size, then the outputs by at most one rounding to their dtype
    size = np.abs(weights[:, None] * X[rows].astype(np.float64)).sum(axis=0)
    bound = np.finfo(dtype).eps * np.abs(want.astype(np.float64)) + 16 * 2.0**-52 * size
    assert (np.abs(got.astype(np.float64) - want) <= bound).all()


@pytest.mark.parametrize("n", [4, 5, 20, 25])
def test_threads_and_out_give_the_same_bits(n: int) -> None:
    rng = np.random.default_rng(n)
    X = rng.standard_normal((n, 300_001)).astype(np.float32)
    rows = np.arange(n)
    weights = rng.random(n)
    one = _gram_kernel.weighted_sum(X, rows, weights, 1)
    two = _gram_kernel.weighted_sum(X, rows, weights, 2)
    out = np.empty(300_001, dtype=np.float32)
    into = _gram_kernel.weighted_sum(X, rows, weights, 2, out=out)
    assert into is out
    assert np.array_equal(one, two) and np.array_equal(one, out)
    np.testing.assert_allclose(one, _reference(X, rows, weights), rtol=4e-7, atol=0)


def test_a_nan_row_with_weight_spoils_only_the_output_it_enters() -> None:
    X = np.ones((5, 5000), dtype=np.float32)
    X[2, 4100] = np.nan
    with_nan = _gram_kernel.weighted_sum(X, np.arange(5), np.full(5, 0.2), 1)
    assert np.isnan(with_nan[4100]) and np.isfinite(np.delete(with_nan, 4100)).all()
    without = _gram_kernel.weighted_sum(X, np.array([0, 1, 3, 4]), np.full(4, 0.25), 1)
    assert np.array_equal(without, np.ones(5000, dtype=np.float32))


@pytest.mark.parametrize(
    ("cols", "prefetched"), [(512, False), (4096, False), (256, True), (512, True)]
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_chunk_width_gives_the_bits_of_the_row_order_sum(
    cols: int, prefetched: bool, dtype: type, monkeypatch
) -> None:
    """The chunk width and the prefetch of the next chunk depend on the host, the rows and the
    input's size (``_simd.sum_plan``): at every width, with and
    without the prefetch, on threads and not, for every row count (whole groups of four rows
    and the rows after them), the float64 sum in row order, to the bit (a NaN row included; a
    last chunk shorter than the others, the output's first ``end`` coordinates only). In
    float64 the compiled sum may fuse each product with its addition (one rounding less than
    numpy's), so there the reference is the plain chunks of 512 of the same kernel."""
    rng = np.random.default_rng(cols)
    X = rng.standard_normal((13, 3 * 4096 + 517)).astype(dtype)
    X[4, 100] = np.nan
    X[7, -1] = np.inf
    row_sets = [[0, 2, 3, 4, 7, 8, 11], [5], [1, 2, 3, 6], [0, 1, 2, 3, 5, 6, 8, 9, 10, 12]]
    weights = [rng.random(len(rows)) for rows in row_sets]
    references = []
    for rows, w in zip(row_sets, weights, strict=True):
        rows = np.array(rows, dtype=np.int64)
        if dtype == np.float32:
            references.append(_reference(X, rows, w))
        else:
            plain = np.empty(X.shape[1], dtype=dtype)
            _gram_kernel._weighted_sum(X, rows, w, plain, 0, -(-X.shape[1] // 512), X.shape[1],
                                       512, False)
            np.testing.assert_allclose(plain, _reference(X, rows, w), rtol=1e-14, atol=1e-14)
            references.append(plain)
    monkeypatch.setattr(_gram_kernel, "sum_plan", lambda rows, nbytes: (cols, prefetched))
    for rows, w, want in zip(row_sets, weights, references, strict=True):
        rows = np.array(rows, dtype=np.int64)
        for threads in (1, 2):
            got = _gram_kernel.weighted_sum(X, rows, w, threads)
            assert got.tobytes() == want.tobytes()
        out = np.full(X.shape[1], 7.0, dtype=dtype)
        _gram_kernel.weighted_sum(X, rows, w, 1, out=out, end=5000)
        assert out[:5000].tobytes() == want[:5000].tobytes() and (out[5000:] == 7.0).all()


def test_prefetch_rule(monkeypatch) -> None:
    """The weighted sum prefetches for fewer than 33 rows off AMD's Zen cores, when the input
    is larger than the last-level cache, and never where that size is unknown."""
    from byzlearn.aggregators import _simd

    monkeypatch.setattr(_simd, "_zen", lambda: False)
    monkeypatch.setattr(_simd, "last_level_cache_bytes", lambda: 300 << 20)
    assert [_simd.prefetched_sums(r, 1 << 30) for r in (1, 25, 32, 33, 100)] == [
        True, True, True, False, False
    ]
    assert not _simd.prefetched_sums(25, 300 << 20) and _simd.prefetched_sums(25, (300 << 20) + 1)
    assert _simd.sum_plan(25, 1 << 30) == (_simd.PREFETCH_SUM_COLUMNS, True)
    assert _simd.sum_plan(25, 1 << 20) == (512, False)
    assert _simd.sum_plan(40, 1 << 30) == (4096, False)
    monkeypatch.setattr(_simd, "last_level_cache_bytes", lambda: None)
    assert not _simd.prefetched_sums(25, 1 << 40)
    monkeypatch.setattr(_simd, "last_level_cache_bytes", lambda: 32 << 20)
    monkeypatch.setattr(_simd, "_zen", lambda: True)
    assert not _simd.prefetched_sums(25, 1 << 30)


def test_cache_sizes_are_read_from_sysfs_text() -> None:
    from byzlearn.aggregators import _simd

    assert _simd.cache_size_bytes("307200K\n") == 300 << 20
    assert _simd.cache_size_bytes("32M") == 32 << 20
    assert _simd.cache_size_bytes("1G") == 1 << 30
    assert _simd.cache_size_bytes("512") == 512
    for text in ("", "K", "12.5M", "abc", "-3K"):
        assert _simd.cache_size_bytes(text) is None
    size = _simd.last_level_cache_bytes()  # this host's, where sysfs tells it
    assert size is None or size > 0


def test_chunk_width_rule(monkeypatch) -> None:
    """512 coordinates for fewer than 33 rows off AMD's Zen cores, else 4096."""
    from byzlearn.aggregators import _simd

    monkeypatch.setattr(_simd, "_zen", lambda: False)
    assert [_simd.sum_columns(r) for r in (1, 25, 32, 33, 100)] == [512, 512, 512, 4096, 4096]
    monkeypatch.setattr(_simd, "_zen", lambda: True)
    assert {_simd.sum_columns(r) for r in (1, 25, 100)} == {4096}
