"""Mutation-testing findings for sharded aggregation: each test fails on a plausible bug that
tests/aggregators/test_sharded.py lets through (unbalanced shards, a shard maker's shape not
checked, ...). In-process shards only (``backend="local"``)."""

from __future__ import annotations

import pytest
import torch

import byzlearn.aggregators as agg
from byzlearn.aggregators import sharded


@pytest.mark.parametrize(("d", "k"), [(10, 3), (11, 4), (7, 7), (1002, 4), (5, 1)])
def test_shards_are_consecutive_and_balanced(d: int, k: int) -> None:
    """Shard s holds [j_s, j_{s+1}), sizes differing by at most one, covering 0..d."""
    X = torch.arange(3 * d, dtype=torch.float32).reshape(3, d)
    V = sharded.scatter(X, k, backend="local")
    assert V.bounds[0] == 0 and V.bounds[-1] == d and V.k == k
    sizes = [b - a for a, b in zip(V.bounds, V.bounds[1:], strict=False)]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    for s, shard in enumerate(V.shards):
        assert torch.equal(shard.X, X[:, V.bounds[s] : V.bounds[s + 1]])


def _make(j0: int, j1: int) -> torch.Tensor:
    """Column j of row i is i + j / 1000 (9 rows)."""
    cols = torch.arange(j0, j1, dtype=torch.float32) / 1000.0
    return torch.arange(9, dtype=torch.float32)[:, None] + cols[None, :]


def _make_short(j0: int, j1: int) -> torch.Tensor:
    """A maker that forgets the last column of every shard."""
    return _make(j0, j1)[:, :-1]


def test_generated_shards_equal_scattered_ones_and_their_shapes_are_checked() -> None:
    G = sharded.ShardedVectors.generate(9, 500, 3, _make, backend="local")
    full = _make(0, 500)
    assert torch.equal(sharded.aggregate("medoid", G, f=2).vector(), agg.medoid(full, f=2))
    assert torch.equal(sharded.aggregate("median", G, f=2).vector(), agg.median(full, f=2))
    with pytest.raises(ValueError, match=r"make\(0, 166\) gave shape \(9, 165\), expected"):
        sharded.ShardedVectors.generate(9, 500, 3, _make_short, backend="local")


def _budget_inputs() -> torch.Tensor:
    """9 rows of d = 1200; max_missing = 0.01 allows 12 missing coordinates. Row 3, the most
    central, misses exactly 12 (across the shard boundary at 400 when k = 3); row 5 misses 13,
    all in the first shard (over the budget: bad)."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(9, 1200, generator=g) + 3.0
    X[3] = X[[0, 1, 2, 4, 5, 6, 7, 8]].mean(dim=0)
    X[3, 396:408] = float("nan")
    X[5, 100:113] = float("nan")
    assert int(X[3].isnan().sum()) == 12 and int(X[5].isnan().sum()) == 13
    return X


def _same_with_budget(X: torch.Tensor, k: int) -> None:
    V = sharded.scatter(X, k, backend="local")
    for name in ("krum", "multi_krum", "geometric_median"):
        ref = agg.aggregate(name, X, f=2, max_missing=0.01)
        got = sharded.aggregate(name, V, f=2, max_missing=0.01)
        torch.testing.assert_close(got.vector(), ref.vector, rtol=1e-5, atol=1e-5)
        if ref.kept is not None:
            assert got.kept is not None and torch.equal(got.kept, ref.kept)


@pytest.mark.parametrize("k", [1, 2])
def test_a_row_missing_exactly_its_budget_stays_in_as_unsharded(k: int) -> None:
    """12 missing coordinates are within the budget (<=): Krum keeps row 3, sharded as
    unsharded, and its imputed coordinates are the medians of the complete rows."""
    X = _budget_inputs()
    ref = agg.aggregate("krum", X, f=2, max_missing=0.01)
    assert ref.kept.tolist() == [3]
    medians = X[[0, 1, 2, 4, 6, 7, 8]][:, 396:408].median(dim=0).values
    torch.testing.assert_close(ref.vector[396:408], medians)
    _same_with_budget(X, k)


def test_a_row_over_its_budget_in_an_earlier_shard_stays_out_of_later_medians() -> None:
    """Row 5 goes over its budget in shard 0; row 3's holes straddle shards 0 and 1. The rows
    found bad are carried to the later shards with the counts (they were not: row 5's count
    stopped below the budget where it went over, and shard 1's medians took its values)."""
    X = _budget_inputs()
    _same_with_budget(X, 3)


@pytest.mark.parametrize("k", [2, 3])
def test_too_few_values_only_in_a_later_shard_names_the_global_coordinate(k: int) -> None:
    X = torch.randn(7, 400)
    X[:4, 350] = float("nan")  # in the last shard only: 3 finite values left
    X[:4, 351] = float("nan")
    V = sharded.scatter(X, k, backend="local")
    for name in ("median", "trimmed_mean"):
        with pytest.raises(ValueError) as ref:
            agg.aggregate(name, X, f=2)
        assert "2 coordinate(s) have fewer than" in str(ref.value)
        assert "first: coordinate 350" in str(ref.value)
        with pytest.raises(ValueError) as got:
            sharded.aggregate(name, V, f=2)
        assert str(got.value) == str(ref.value)


@pytest.mark.parametrize("k", [2, 3])
def test_missing_values_in_the_last_column_of_a_shard_are_imputed(k: int) -> None:
    """The central row misses only the last coordinate of each shard: it is lossy (imputed),
    not bad, so Krum keeps it, as unsharded."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(9, 1200, generator=g) + 3.0
    X[3] = X[[0, 1, 2, 4, 5, 6, 7, 8]].mean(dim=0)
    V = sharded.scatter(X, k, backend="local")
    for end in V.bounds[1:]:
        X[3, end - 1] = float("nan")
    V = sharded.scatter(X, k, backend="local")
    ref = agg.aggregate("krum", X, f=2, max_missing=0.01)
    got = sharded.aggregate("krum", V, f=2, max_missing=0.01)
    assert ref.kept.tolist() == [3] and got.kept is not None and got.kept.tolist() == [3]
    assert torch.equal(got.vector(), ref.vector)


def test_a_bad_centre_is_one_clear_error() -> None:
    X = torch.randn(9, 100)
    V = sharded.scatter(X, 2, backend="local")
    bad = torch.zeros(100)
    bad[70] = float("nan")
    with pytest.raises(ValueError, match="center must be finite"):
        sharded.aggregate("centered_clipping", V, f=2, center=bad)
    with pytest.raises(ValueError, match="center has 99 values, vectors have 100"):
        sharded.aggregate("centered_clipping", V, f=2, center=torch.zeros(99))


def test_a_row_over_the_budget_only_in_total_over_the_shards_is_bad() -> None:
    """max_missing = 0.01 of d = 1200 (12): the central row misses 7 coordinates before the
    shard boundary and 7 after it, 14 in all: bad, as unsharded (the shards carry the rows'
    missing counts), so Krum keeps another row. Row 0 misses one coordinate of the last shard,
    so the imputation pass runs."""
    g = torch.Generator().manual_seed(2)
    X = torch.randn(9, 1200, generator=g) + 3.0
    X[3] = X[[0, 1, 2, 4, 5, 6, 7, 8]].mean(dim=0)
    X[3, 593:607] = float("nan")
    X[0, 1199] = float("nan")
    V = sharded.scatter(X, 2, backend="local")
    for name in ("krum", "multi_krum"):
        ref = agg.aggregate(name, X, f=2, max_missing=0.01)
        got = sharded.aggregate(name, V, f=2, max_missing=0.01)
        assert 3 not in ref.kept.tolist()
        assert got.kept is not None and torch.equal(got.kept, ref.kept)
        assert torch.equal(got.vector(), ref.vector)


@pytest.mark.parametrize("k", [2, 3])
def test_a_value_too_large_to_measure_over_all_of_d_makes_its_row_bad(k: int) -> None:
    """The limit is measurable_limit(d) for the whole d, not for a shard's width: a value 1.2
    times it (below the limit of d / k coordinates) makes its row incomplete for DnC and
    SignGuard, as unsharded."""
    from byzlearn.aggregators._gram import measurable_limit

    g = torch.Generator().manual_seed(3)
    X = torch.randn(11, 1000, generator=g, dtype=torch.float64)
    X[2, 10] = 1.2 * measurable_limit(1000)
    V = sharded.scatter(X, k, backend="local")
    for name in ("dnc", "signguard"):
        torch.manual_seed(0)
        ref = agg.aggregate(name, X, f=3)
        torch.manual_seed(0)
        got = sharded.aggregate(name, V, f=3)
        assert 2 not in ref.kept.tolist()
        assert got.kept is not None and torch.equal(got.kept, ref.kept)
        torch.testing.assert_close(got.vector(), ref.vector)


def test_signguard_counts_the_signs_of_every_shard() -> None:
    """The Byzantine rows equal the honest mean on the first shard and are negative everywhere
    after: only the later shards' sign counts tell them apart. Counted on the first shard
    alone, SignGuard kept them (found by mutation testing)."""
    g = torch.Generator().manual_seed(0)
    n, f, d = 12, 3, 3000
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    X[n - f :, :1000] = X[: n - f, :1000].mean(dim=0)
    X[n - f :, 1000:] = -X[: n - f, 1000:].abs().mean(dim=0)
    ref = agg.aggregate("signguard", X, f=f, seed=0)
    assert ref.kept is not None and ref.kept.tolist() == list(range(n - f))
    got = sharded.aggregate("signguard", sharded.scatter(X, 3, backend="local"), f=f, seed=0)
    assert got.kept is not None and torch.equal(got.kept, ref.kept)
    torch.testing.assert_close(got.vector(), ref.vector, rtol=1e-12, atol=1e-12)
