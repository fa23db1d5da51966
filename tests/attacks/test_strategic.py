"""The strategic participant's best response, against rules whose best response is known."""

from __future__ import annotations

import pytest
import torch

import byzlearn.aggregators as agg
import byzlearn.attacks as atk


def test_against_the_mean_the_best_response_puts_the_aggregate_on_the_preference():
    honest = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    p = torch.tensor([3.0, -2.0, 1.0], dtype=torch.float64)
    r = atk.get("strategic")(honest, f=1, rule="average", preferred=p,
                             generator=torch.Generator().manual_seed(1))
    exact = 7 * p - honest.sum(0)  # (sum honest + r) / 7 = p
    torch.testing.assert_close(r[0], exact, atol=1e-3, rtol=1e-4)
    out = agg.average(torch.cat([honest, r]), f=0)
    assert float((out - p).norm()) < 1e-3


def test_the_coordinate_wise_median_leaves_nothing_to_gain_for_a_diagonal_norm():
    honest = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    p = torch.tensor([0.7, -1.5], dtype=torch.float64)
    metric = torch.tensor([1.0, 10.0], dtype=torch.float64)
    r = atk.get("strategic")(honest, f=1, rule="median", preferred=p, metric=metric,
                             generator=torch.Generator().manual_seed(0))

    def dist(v):
        out = agg.median(torch.cat([honest, v.reshape(1, -1)]), f=0) - p
        return float((metric * out * out).sum().sqrt())

    assert dist(r[0]) == pytest.approx(dist(p), abs=1e-9)


def test_the_geometric_median_is_not_strategyproof_for_an_anisotropic_voter():
    honest = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    p = torch.tensor([1.5, 1.0], dtype=torch.float64)
    metric = torch.tensor([1.0, 10.0], dtype=torch.float64)
    r = atk.get("strategic")(honest, f=1, rule="geometric_median", preferred=p, metric=metric,
                             generator=torch.Generator().manual_seed(0))

    def dist(v):
        out = agg.geometric_median(torch.cat([honest, v.reshape(1, -1)]), f=0) - p
        return float((metric * out * out).sum().sqrt())

    assert dist(r[0]) < dist(p) - 1e-3  # misreporting helps


def test_bad_options_are_one_line():
    honest = torch.randn(5, 2)
    with pytest.raises(ValueError, match="preferred must be 2 finite values"):
        atk.get("strategic")(honest, f=1, rule="median", preferred=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="metric must be positive"):
        atk.get("strategic")(honest, f=1, rule="median", metric=[1.0, -1.0])
    with pytest.raises(ValueError, match="rule"):
        atk.get("strategic")(honest, f=1)
