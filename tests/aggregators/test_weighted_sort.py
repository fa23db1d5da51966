"""The weighted-multiset median / trimmed mean (few distinct mixed rows) against numpy: the
multiset expanded with np.repeat, sorted, and the statistic taken in float64."""

from __future__ import annotations

import numpy as np
import pytest

from byzlearn.aggregators import _select, _weighted_sort


def ref_statistic(U: np.ndarray, weights: np.ndarray, stat: int, drop: int) -> np.ndarray:
    S = np.sort(np.repeat(U.astype(np.float64), weights.astype(int), axis=0), axis=0)
    k = S.shape[0]
    if stat == _select.TRIMMED:
        return S[drop : k - drop].mean(axis=0)
    return 0.5 * (S[(k - 1) // 2] + S[k // 2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stat", [_select.MEDIAN, _select.TRIMMED])
@pytest.mark.parametrize("nu", [1, 2, 3, 5, 6, 8])
def test_weighted_statistic_matches_numpy(dtype, stat, nu):
    rng = np.random.default_rng(10 * nu + stat)
    for trial in range(4):
        weights = rng.integers(1, 9, size=nu).astype(np.float64)
        if trial == 0:  # NNM's shape: one row shared by most outputs, the others once
            weights[:] = 1.0
            weights[-1] = 20.0
        k = int(weights.sum())
        drop = int(rng.integers(0, (k - 1) // 2 + 1)) if stat == _select.TRIMMED else 0
        w = 2 * _select.LANES + 31
        U = rng.normal(size=(nu + 1, w)).astype(dtype)
        U[:, ::3] = np.round(U[:, ::3])  # ties
        U[nu] = np.nan  # not read
        out = np.empty(w, dtype=dtype)
        cover = _weighted_sort.covering_row(weights, stat == _select.TRIMMED, drop)
        ok = _weighted_sort.weighted_statistic(
            U, nu, weights, _select.sorting_network(nu), stat, drop, cover, out
        )
        assert ok
        expected = ref_statistic(U[:nu], weights, stat, drop).astype(dtype)
        tol = 1e-6 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)


def test_weighted_statistic_reports_non_finite_values():
    U = np.ones((3, 40), dtype=np.float32)
    U[1, 7] = np.nan
    out = np.empty(40, dtype=np.float32)
    pairs = _select.sorting_network(2)
    weights = np.array([3.0, 2.0])
    cover = _weighted_sort.covering_row(weights, True, 1)
    assert not _weighted_sort.weighted_statistic(U, 2, weights, pairs, 1, 1, cover, out)


@pytest.mark.parametrize("stat", [_select.MEDIAN, _select.TRIMMED])
@pytest.mark.parametrize(("weights", "drop"), [([1, 1, 1, 1, 1, 20], 5), ([3, 9, 1], 4),
                                               ([2, 2, 2, 7], 1), ([1, 19, 1, 1, 1, 1, 1], 6)])
def test_a_row_covering_the_kept_positions_is_the_statistic(stat, weights, drop):
    """NNM's shape: one row's copies hold the kept positions wherever the others fall; the
    output is that row (and the plain statistic of the expanded rows)."""
    w8 = np.asarray(weights, dtype=np.float64)
    nu = len(weights)
    drop = drop if stat == _select.TRIMMED else 0
    rng = np.random.default_rng(nu + drop)
    U = rng.normal(size=(nu + 1, 300)).astype(np.float32) * 10 ** rng.uniform(-3, 3, (nu + 1, 1))
    U = U.astype(np.float32)
    out = np.empty(300, dtype=np.float32)
    pairs = _select.sorting_network(nu)
    cover = _weighted_sort.covering_row(w8, stat == _select.TRIMMED, drop)
    assert _weighted_sort.weighted_statistic(U, nu, w8, pairs, stat, drop, cover, out)
    expected = ref_statistic(U[:nu], w8, stat, drop).astype(np.float32)
    np.testing.assert_array_equal(out, expected)
    k, top = w8.sum(), int(np.argmax(w8))
    lo, hi = (drop, k - drop) if stat == _select.TRIMMED else ((k - 1) // 2, k // 2 + 1)
    if w8[top] >= hi and k - w8[top] <= lo:
        np.testing.assert_array_equal(out, U[top])
