"""Tests that close gaps found by mutation testing of the aggregation rules: each one fails on a
plausible bug (a mutant) that every other test of tests/aggregators/ let pass.

The expected values come from independent float64 numpy computations or exact properties.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import byzlearn.aggregators as agg
from byzlearn.aggregators._gram import Inputs
from byzlearn.aggregators._sample import sorted_sample
from byzlearn.aggregators.rules.mixing import nnm as nnm_impl


def _rows(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, d)))


# --- trimmed mean: n >= 2 trim + 1 is checked with its own message ---------------------------
def test_trimmed_mean_names_its_trim_requirement():
    """n = 2 trim passes the registry's n >= 2f + 1 (trim > f) and must fail on the rule's
    own check, which names ``trim``, not on a missing-values error of the kernel."""
    X = _rows(6, 4)
    with pytest.raises(ValueError, match=r"trimmed_mean needs n >= 2\*trim \+ 1, got n=6, trim=3"):
        agg.trimmed_mean(X, f=1, trim=3)
    np.testing.assert_allclose(  # n = 2 trim + 1: the median
        agg.trimmed_mean(X[:5], f=1, trim=2).numpy(), np.median(X[:5].numpy(), axis=0)
    )


# --- Krum: the registry refuses n = 2f + 2 ------------------------------------------------------
@pytest.mark.parametrize("f", [0, 1, 3])
def test_krum_requirement_is_2f_plus_3(f):
    X = _rows(2 * f + 2, 3)
    with pytest.raises(ValueError, match=r"krum needs n >= 2f \+ 3"):
        agg.krum(X, f=f)
    with pytest.raises(ValueError, match=r"krum needs n >= 2f \+ 3"):
        agg.check("krum", 2 * f + 2, f)
    agg.check("krum", 2 * f + 3, f)  # the bound itself runs
    assert agg.krum(_rows(2 * f + 3, 3), f=f).shape == (3,)


# --- NNM: each input is its own first neighbour -------------------------------------------------
def test_nnm_mixes_each_input_with_itself_when_many_coincide():
    """More than n - f identical inputs: ties by index alone would leave the later ones out of
    their own neighbourhood; the documented rule puts each input first in its own."""
    n, f = 7, 2
    X = torch.ones(n, 3, dtype=torch.float64)
    X[0] = 5.0  # one distinct input; rows 1..6 coincide (6 > n - f = 5)
    A = nnm_impl(Inputs.from_matrix(X), f).coefficients()
    assert torch.all(A.diagonal() == 1.0 / (n - f))
    assert torch.allclose(A.sum(dim=1), torch.ones(n, dtype=torch.float64))


# --- DnC: c f rounded to 9 decimals before the floor ------------------------------------------
def test_dnc_fraction_times_f_is_rounded_before_the_floor():
    """1.16 * 25 is 28.999999999999996 in floating point: DnC removes 29 inputs, not 28."""
    n, f = 51, 25
    assert 1.16 * f < 29  # the floating-point product the rule must round
    X = _rows(n, 6, seed=1)
    kept = agg.aggregate("dnc", X, f=f, fraction=1.16, seed=0).kept
    assert kept is not None and kept.numel() == n - 29


# --- SignGuard: the norm filter is inclusive ----------------------------------------------------
def test_signguard_norm_filter_keeps_norms_equal_to_the_bounds():
    """lower = upper = 1: S1 = {i : ||g_i|| = M} holds the median-norm input exactly (odd n,
    distinct norms), which the output must be (min(1, M / M) = 1)."""
    g = np.random.default_rng(3)
    n, d = 7, 20
    Y = g.normal(size=(n, d)) * np.arange(1, n + 1)[:, None]  # distinct norms
    X = torch.from_numpy(Y)
    norms = np.sqrt((Y * Y).sum(axis=1))
    mid = int(np.argsort(norms)[n // 2])
    out = agg.signguard(X, f=1, lower=1.0, upper=1.0, seed=0)
    np.testing.assert_allclose(out.numpy(), Y[mid], rtol=1e-12, atol=0)


# --- MDA: extra removals, and the approximation's candidates ------------------------------------
def test_mda_extra_removal_takes_the_input_farthest_from_the_kept_set():
    """A cover smaller than f (only the outlier conflicts at the least diameter, 4): the second
    removal takes the input of largest summed squared distance to the kept ones (row 1: 8.42,
    against 7.62 for row 0 and 8.02 for rows 2 and 3), as documented."""
    Y = np.array([[0, 0], [2, 0], [0.9, 1], [0.9, -1], [100, 100]], dtype=np.float64)
    result = agg.aggregate("mda", torch.from_numpy(Y), f=2)
    assert result.kept is not None and result.kept.tolist() == [0, 2, 3]
    np.testing.assert_allclose(result.vector.numpy(), Y[[0, 2, 3]].mean(axis=0), rtol=1e-12)


def _approximate_mda_reference(Y: np.ndarray, f: int) -> list[int]:
    """The documented 2-approximation in plain loops: each input's n - f nearest (itself first,
    ties by index), its radius; among the 16 of least radius, the neighbourhood of least
    diameter (ties to the lower centre)."""
    n, m = len(Y), len(Y) - f
    D = ((Y[:, None, :] - Y[None, :, :]) ** 2).sum(axis=-1)
    hoods, radius = [], []
    for i in range(n):
        others = sorted((D[i, j], j) for j in range(n) if j != i)
        hood = [i] + [j for _, j in others[: m - 1]]
        hoods.append(sorted(hood))
        radius.append(D[i, hood[-1]])
    candidates = sorted(range(n), key=lambda i: (radius[i], i))[:16]
    best = min(
        candidates, key=lambda c: (max(D[a, b] for a in hoods[c] for b in hoods[c]), c)
    )
    return hoods[best]


def test_mda_approximation_compares_the_candidates_diameters():
    """Seed 9: the input of least radius is not the centre of the neighbourhood of least
    diameter; the rule must compare the candidates, not take the first."""
    Y = np.random.default_rng(9).normal(size=(9, 2))
    expected = _approximate_mda_reference(Y, 3)
    D = ((Y[:, None, :] - Y[None, :, :]) ** 2).sum(axis=-1)
    first = int(np.argmin([np.sort(D[i])[5] for i in range(9)]))  # least radius
    assert sorted(np.argsort(D[first], kind="stable")[:6].tolist()) != expected  # a real case
    result = agg.aggregate("mda", torch.from_numpy(Y), f=3, approximate=True)
    assert result.kept is not None and result.kept.tolist() == expected
    np.testing.assert_allclose(result.vector.numpy(), Y[expected].mean(axis=0), rtol=1e-12)


def _brute_force_least_diameter(X: np.ndarray, f: int) -> float:
    n = len(X)
    D = ((X[:, None, :] - X[None, :, :]) ** 2).sum(axis=-1)
    return min(
        float(D[np.ix_(s, s)].max()) for s in map(list, itertools.combinations(range(n), n - f))
    )


@pytest.mark.parametrize("seed", [161, 243, 620, 650])
def test_mda_exact_search_when_a_vertex_has_budget_neighbours(seed):
    """Conflict graphs where the search must remove all the neighbours of a vertex whose degree
    equals the budget left (the branch ``deg[v] <= budget``); refusing that branch gave a
    subset of larger diameter on these inputs (n = 10-11, f = 4, d = 2)."""
    rng = np.random.default_rng(seed)
    f = int(rng.integers(1, 5))
    n = int(rng.integers(2 * f + 1, 12))
    d = int(rng.integers(1, 3))
    X = rng.normal(size=(n, d)) if seed % 2 else rng.integers(-3, 4, size=(n, d)).astype(float)
    rows = agg.selected_indices("mda", X, f=f).tolist()
    assert len(set(rows)) == n - f
    D = ((X[:, None, :] - X[None, :, :]) ** 2).sum(axis=-1)
    diameter = float(D[np.ix_(rows, rows)].max())
    assert diameter <= _brute_force_least_diameter(X, f) * (1 + 1e-9) + 1e-12


# --- geometric median: the default smoothing, the weights' check -----------------------------
def test_geometric_median_at_an_input_next_to_a_close_one():
    """1-D, odd count: the geometric median is the median, here 1e-5, an input 1e-5 from the
    input 0 (the typical distance is about 4). The default nu (1e-9 of that distance) keeps
    the two apart; a coarse one (1e-4) merged them and returned 5e-6."""
    values = [-3.0, -2.0, -1.0, 0.0, 1e-5, 5.0, 6.0, 7.0, 8.0]
    X = torch.tensor(values, dtype=torch.float64)[:, None]
    out = agg.geometric_median(X, f=0)
    assert abs(float(out[0]) - 1e-5) <= 1e-12


@pytest.mark.parametrize("weights", [[-1.0, 1, 1, 1, 1], [1.0, 1, 1, 1], [1.0, math.inf, 1, 1, 1]])
def test_geometric_median_refuses_bad_weights(weights):
    X = _rows(5, 3)
    with pytest.raises(ValueError, match="weights must be 5 finite values >= 0"):
        agg.geometric_median(X, f=1, weights=torch.tensor(weights))


# --- Bulyan: beta's bounds, a non-finite row under a weighting selection ---------------------
def test_bulyan_refuses_beta_zero_with_its_own_message():
    X = _rows(7, 5)
    with pytest.raises(ValueError, match=r"bulyan: beta must be in \[1, theta=5\], got beta=0"):
        agg.bulyan(X, f=1, beta=0)


def test_bulyan_weighting_selection_never_moves_a_non_finite_row():
    """A selection that returns weights (the geometric median) moves the input closest to its
    output; a row of NaN values is never that input."""
    X = _rows(7, 5)
    X[2] = float("nan")
    result = agg.aggregate("bulyan", X, f=1, selection="geometric_median")
    assert result.kept is not None and 2 not in result.kept.tolist()
    assert result.kept.numel() == 5  # theta = n - 2f
    assert bool(torch.isfinite(result.vector).all())


# --- registry: max_missing = 1 is allowed -------------------------------------------------------
@pytest.mark.parametrize("value", [1, 1.0, 0, 0.0])
def test_max_missing_accepts_both_ends_of_its_range(value):
    X = _rows(7, 5)
    X[0, 1] = float("nan")
    out = agg.krum(X, f=1, max_missing=value)
    assert out.shape == (5,) and bool(torch.isfinite(out).all())
    agg.check("krum", 7, 1, max_missing=value)


# --- registry: every length option is rescaled with tiny rows ---------------------------------
@pytest.mark.parametrize("exponent", [-540, -1000])
def test_centered_clipping_radius_scales_with_the_retry(exponent):
    """Tiny float64 rows run again times a power of two: the absolute ``radius`` must be
    scaled with them (left as it was, nothing was clipped any more)."""
    X = _rows(9, 8, seed=4)
    X[:2] = 40.0  # far rows, clipped at radius 1
    c = 2.0**exponent
    ref = agg.centered_clipping(X, f=2, radius=1.0, iterations=3)
    out = agg.centered_clipping(X * c, f=2, radius=1.0 * c, iterations=3) / c
    assert torch.allclose(out, ref, rtol=1e-9, atol=0.0), (out - ref).abs().max()


# --- DnC / SignGuard: a negative seed gets the rule's own message ----------------------------
@pytest.mark.parametrize("rule", ["dnc", "signguard"])
@pytest.mark.parametrize("seed", [-1, -2])
def test_negative_seed_is_refused_by_the_rule(rule, seed):
    with pytest.raises(ValueError, match=rf"^{rule}: seed must be >= 0, got {seed}$"):
        agg.get(rule)(_rows(7, 5), f=1, seed=seed)


@pytest.mark.parametrize("fraction", [math.inf, math.nan, -0.5])
def test_dnc_refuses_a_fraction_that_is_not_finite_and_non_negative(fraction):
    """inf reached ``math.floor`` (OverflowError) without the finiteness check."""
    with pytest.raises(ValueError, match=r"^dnc: fraction must be finite and >= 0, got "):
        agg.dnc(_rows(7, 5), f=1, fraction=fraction, seed=0)


# --- skewed geometric median: a singular skew of rank d - 1 -----------------------------------
def test_skewed_geometric_median_refuses_a_skew_of_rank_d_minus_1():
    d = 4
    S = torch.eye(d, dtype=torch.float64)
    S[3] = S[0] + S[1]  # rank 3
    with pytest.raises(ValueError, match="skew must be an invertible matrix"):
        agg.skewed_geometric_median(_rows(5, d), f=1, skew=S)


# --- bucketing: generator before seed; a composition's default max_missing ------------------
def test_bucketing_generator_takes_precedence_over_seed():
    X = _rows(8, 3, seed=5)
    both = agg.bucketing(X, generator=torch.Generator().manual_seed(1), seed=5)
    generator_only = agg.bucketing(X, generator=torch.Generator().manual_seed(1))
    seed_only = agg.bucketing(X, seed=5)
    assert torch.equal(both, generator_only)
    assert not torch.equal(both, seed_only)  # the two shuffles differ here: a real check


def test_composition_default_max_missing_is_the_smallest_of_its_parts():
    """nnm allows 10 % missing coordinates by default, CAF none: "nnm+caf" must use 0, so a row
    with one NaN value is incomplete rather than imputed."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(9, 40, generator=g, dtype=torch.float64)
    X[0, 3] = float("nan")
    default = agg.aggregate("nnm+caf", X, f=2).vector
    strict = agg.aggregate("nnm+caf", X, f=2, max_missing=0.0).vector
    loose = agg.aggregate("nnm+caf", X, f=2, max_missing=agg.DEFAULT_MAX_MISSING).vector
    assert torch.equal(default, strict)
    assert not torch.allclose(default, loose)  # the two budgets differ here: a real check


# --- registry: <part>_options belong to compositions ------------------------------------------
def test_a_single_rule_refuses_its_own_part_options():
    with pytest.raises(TypeError, match=r"unexpected option 'multi_krum_options'"):
        agg.multi_krum(_rows(7, 3), f=1, multi_krum_options={"m": 2})


# --- coordinate samples: no draw and no write for k <= 0 ---------------------------------------
@pytest.mark.parametrize("k", [0, -1, -3])
def test_sorted_sample_of_no_coordinates_is_empty(k):
    rng = np.random.default_rng(0)
    out = sorted_sample(rng, 10, k)
    assert out.dtype == np.int64 and out.shape == (0,)
    assert rng.integers(0, 2**62) == np.random.default_rng(0).integers(0, 2**62)  # no draw
