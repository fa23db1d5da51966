"""Findings of a random search of the attacks against independent references (numpy, float64,
written from the papers' formulas in the tests): each test failed before its fix.

* honest values of extreme magnitude (|x| near a dtype's limit, or tiny) whose statistics are
  representable: the mean, the standard deviation, the norms and the min-max/min-sum gamma
  overflowed or underflowed on the way (float32 sums, squares of float64 values beyond 1e154 or
  below 1e-154) and the attacks sent inf, NaN, or the plain mean, silently;
* a number of Byzantine vectors too large to allocate gave torch's multi-line C++ message;
* search options of the rule-aware attacks were not checked where the search did not run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

import byzlearn.attacks as atk


def nanmean(X: np.ndarray) -> np.ndarray:
    """The mean of the finite values per column, by an exact scaled sum (no overflow)."""
    out = np.empty(X.shape[1])
    for j in range(X.shape[1]):
        col = X[np.isfinite(X[:, j]), j]
        c = np.abs(col).max() if col.size else 0.0
        out[j] = np.nan if col.size == 0 else (c * np.mean(col / c) if c > 0 else 0.0)
    return out


def nanstd(X: np.ndarray) -> np.ndarray:
    """The unbiased std of the finite values per column, scaled (no overflow or underflow)."""
    out = np.zeros(X.shape[1])
    for j in range(X.shape[1]):
        col = X[np.isfinite(X[:, j]), j]
        c = np.abs(col).max() if col.size else 0.0
        if col.size >= 2 and c > 0:
            out[j] = c * np.std(col / c, ddof=1)
    return out


def big(scale: float, shape=(6, 5), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape) * scale


def alie_z(n: int, f: int) -> float:
    s = math.floor(n / 2 + 1) - f
    return float(norm.ppf((n - s) / n))


# --- the honest mean ---------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("missing", [False, True])
def test_mean_of_huge_float32_values_does_not_overflow(layout, missing):
    X = np.array([[3e38, 1.0], [3e38, 2.0], [2e38, 3.0]], dtype=np.float32)
    if missing:
        X[0, 1] = np.nan
    T = torch.from_numpy(X)
    if layout == "transposed":  # not contiguous: another code path
        T = T.T.contiguous().T
    out = atk.get("sign_flip")(T, 2)
    ref = -nanmean(X.astype(np.float64))
    assert torch.isfinite(out).all()
    np.testing.assert_allclose(out.double().numpy(), np.tile(ref, (2, 1)), rtol=1e-6)


def test_mean_of_huge_bfloat16_values_with_missing_ones():
    X = torch.tensor([[3e38, 1.0], [3e38, float("nan")], [2e38, 3.0]]).to(torch.bfloat16)
    out = atk.get("ipm")(X, 1, epsilon=1.0)
    ref = -nanmean(X.double().numpy())
    assert torch.isfinite(out).all()
    np.testing.assert_allclose(out.double().numpy()[0], ref, rtol=1e-2)


@pytest.mark.parametrize("missing", [False, True])
def test_mean_of_huge_float64_values_does_not_overflow(missing):
    X = np.array([[1.5e308, 1.0], [1.2e308, 2.0], [1.7e308, 3.0]])
    if missing:
        X[1, 1] = np.inf
    out = atk.get("sign_flip")(torch.from_numpy(X), 1).numpy()
    np.testing.assert_allclose(out[0], -nanmean(X), rtol=1e-12)
    np.testing.assert_allclose(atk.honest_mean(X), nanmean(X), rtol=1e-12)


# --- the standard deviation (ALIE) ------------------------------------------------------------
@pytest.mark.parametrize("scale", [1e200, 1e-200, 1e160, 1e-160])
@pytest.mark.parametrize("missing", [False, True])
def test_alie_at_extreme_float64_magnitudes(scale, missing):
    X = big(scale)
    if missing:
        X[2, 3] = np.nan
    f = 2
    z = alie_z(X.shape[0] + f, f)
    out = atk.get("alie")(torch.from_numpy(X), f).numpy()
    ref = nanmean(X) - z * nanstd(X)
    np.testing.assert_allclose(out[0], ref, rtol=1e-9)


@pytest.mark.parametrize("missing", [False, True])
def test_alie_on_non_contiguous_float32_beyond_1e19(missing):
    X = big(1e25).astype(np.float32)
    if missing:
        X[1, 0] = np.nan
    T = torch.from_numpy(X).T.contiguous().T
    out = atk.get("alie")(T, 1, z=1.0).double().numpy()
    Xd = X.astype(np.float64)
    np.testing.assert_allclose(out[0], nanmean(Xd) - nanstd(Xd), rtol=1e-5)


# --- norms: large_norm, the spread (leeway), the search's damage ---------------------------------
@pytest.mark.parametrize("scale", [1e200, 1e-200])
def test_large_norm_at_extreme_float64_magnitudes(scale):
    X = big(scale)
    g = torch.Generator().manual_seed(0)
    out = atk.get("large_norm")(torch.from_numpy(X), 3, generator=g, scale=10.0).numpy()
    c = np.abs(X).max()
    ref = 10.0 * c * np.linalg.norm(X / c, axis=1).max()
    for row in out:
        c_row = np.abs(row).max()
        assert c_row * np.linalg.norm(row / c_row) == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize("scale", [1e200, 1e-200])
def test_leeway_with_epsilon_search_at_extreme_magnitudes(scale):
    X = big(scale, shape=(10, 8))
    out = atk.get("leeway")(torch.from_numpy(X), 3, rule="average").numpy()
    assert np.isfinite(out).all()
    mu = nanmean(X)
    np.testing.assert_allclose(out[0, 1:], mu[1:], rtol=1e-9)
    # the average is moved by 3/13 of the shift, without bound: the search takes the largest
    # factor, 100 spreads
    c = np.abs(X - mu).max()
    spread = c * math.sqrt(float((((X - mu) / c) ** 2).sum()) / 9)
    assert abs(out[0, 0] - mu[0]) == pytest.approx(100 * spread, rel=1e-6)


@pytest.mark.parametrize("name", ["ipm_opt", "alie_opt", "min_max_opt"])
def test_factor_search_sees_damage_at_huge_magnitudes(name):
    """Every damage was an overflowed norm (inf) and every factor tied: the first one won."""
    X = big(1e200, shape=(10, 8)) + 3e200
    out = atk.get(name)(torch.from_numpy(X), 3, rule="average").numpy()
    assert np.isfinite(out).all()
    mu = nanmean(X)
    shift = out[0] - mu
    c = np.abs(shift).max()
    # against the average the damage grows with the factor: the search reaches its bound
    assert c * np.linalg.norm(shift / c) > 10 * c * np.linalg.norm(mu / c) / 100


# --- min-max / min-sum ---------------------------------------------------------------------------
def bisection_gamma(G: np.ndarray, p: np.ndarray, kind: str) -> float:
    """The largest feasible gamma by bisection, on values scaled to 1 (scale-invariant)."""
    c, cp = np.abs(G).max(), np.abs(p).max()
    G, p = G / c, p / cp
    mu = G.mean(0)
    D = ((G[:, None, :] - G[None, :, :]) ** 2).sum(-1)

    def ok(g: float) -> bool:
        dist = ((mu - g * p - G) ** 2).sum(1)
        return dist.max() <= D.max() if kind == "max" else dist.sum() <= D.sum(1).min()

    lo, hi = 0.0, 1.0
    while ok(hi):
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo * c / cp


@pytest.mark.parametrize("scale", [1e300, 1e200, 1e-200, 1e-300])
@pytest.mark.parametrize("name", ["min_max", "min_sum"])
@pytest.mark.parametrize("perturbation", ["unit_vec", "std", "sign"])
def test_min_max_min_sum_at_extreme_magnitudes(scale, name, perturbation):
    X = big(scale, shape=(7, 4)) + 0.5 * scale
    c = np.abs(X).max()
    mu = c * (X / c).mean(0)
    if perturbation == "unit_vec":
        p = mu / (np.abs(mu).max() * np.linalg.norm(mu / np.abs(mu).max()))
    elif perturbation == "sign":
        p = np.sign(mu)
    else:
        p = nanstd(X)
    gamma = bisection_gamma(X, p, "max" if name == "min_max" else "sum")
    out = atk.get(name)(torch.from_numpy(X), 2, perturbation=perturbation).numpy()
    np.testing.assert_allclose(out[0], mu - gamma * p, rtol=1e-7, atol=0)
    assert gamma > 0


# --- bad input: one clear line ----------------------------------------------------------------
@pytest.mark.parametrize("f", [10**30, 2**62])
def test_f_too_large_to_allocate_is_one_line(f):
    with pytest.raises(ValueError, match="too many") as err:
        atk.get("ipm")(torch.randn(3, 4), f)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"bounds": 8}, TypeError),
        ({"bounds": (2.0, 1.0)}, ValueError),
        ({"evaluations": 3}, ValueError),
        ({"evaluations": 8.5}, TypeError),
    ],
)
def test_leeway_checks_its_search_options_with_a_given_epsilon(options, error):
    with pytest.raises(error, match="leeway"):
        atk.get("leeway")(torch.randn(5, 4), 2, epsilon=1.0, **options)


def test_min_max_opt_checks_its_search_options_when_the_direction_is_zero():
    honest = torch.zeros(5, 4)  # mu = 0: p = mu / ||mu|| is 0, nothing to search
    with pytest.raises(ValueError, match="min_max_opt: evaluations"):
        atk.get("min_max_opt")(honest, 2, rule="average", evaluations=2)
    out = atk.get("min_max_opt")(honest, 2, rule="average")
    assert torch.equal(out, torch.zeros(2, 4))


# --- mimic's running state ----------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1e200, 1e-200])
@pytest.mark.parametrize("start", ["gaussian", "deviation"])
def test_mimic_state_is_scale_invariant(scale, start):
    """z is a direction and the pick an argmax: both ignore a common scale of the honest
    vectors (values of 1e200 overflowed the power-iteration step: z was NaN, the pick row 0)."""
    H = torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    plain, scaled = atk.MimicState(warmup=3, start=start), atk.MimicState(warmup=3, start=start)
    for step in range(3):
        plain, scaled = plain.observe(H + step), scaled.observe((H + step) * scale)
        assert scaled.target == plain.target
        assert scaled.z is not None and plain.z is not None
        np.testing.assert_allclose(scaled.z.numpy(), plain.z.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["min_max", "min_sum"])
def test_min_max_min_sum_roots_do_not_overflow_in_one_dimension(name):
    """Values of 1.7e150 and 2.2e150 (d = 1): the discriminant squares squares (1e600)."""
    X = np.array([[1.7299366469e150], [2.2354586083e150]])
    p = nanstd(X)
    gamma = bisection_gamma(X, p, "max" if name == "min_max" else "sum")
    out = atk.get(name)(torch.from_numpy(X), 3, perturbation="std").numpy()
    np.testing.assert_allclose(out[:, 0], X.mean() - gamma * p[0], rtol=1e-9)


def test_alie_float32_does_not_overflow_on_the_way():
    """``z * sigma`` beyond the float32 range while ``mu - z sigma`` is within it."""
    X = np.array([[2.0e38, 1.0], [-2.0e38, 2.0], [2.0e38, 4.0]], dtype=np.float32)
    Xd = X.astype(np.float64)
    ref = nanmean(Xd) - 1.5 * nanstd(Xd)
    assert abs(ref[0]) < np.finfo(np.float32).max < 1.5 * nanstd(Xd)[0]
    out = atk.get("alie")(torch.from_numpy(X), 1, z=1.5).double().numpy()
    np.testing.assert_allclose(out[0], ref, rtol=1e-6, atol=1e-6)  # float32 rounding at 0.04


@pytest.mark.parametrize("z", [0.0, -1.0])
def test_alie_float32_with_a_std_beyond_the_float32_range(z):
    """sigma itself beyond 3.4e38 (inf in float32) while mu - z sigma is not: z = 0 sent NaN,
    z = -1 sent inf."""
    X = np.array([[2.0e38, 1.0], [-3.2e38, 2.0]], dtype=np.float32)
    Xd = X.astype(np.float64)
    ref = nanmean(Xd) - z * nanstd(Xd)
    assert nanstd(Xd)[0] > np.finfo(np.float32).max > abs(ref[0])
    out = atk.get("alie")(torch.from_numpy(X), 1, z=z).double().numpy()
    np.testing.assert_allclose(out[0], ref, rtol=1e-6)


def test_leeway_refuses_complex_coordinates_in_one_line():
    with pytest.raises(TypeError, match="leeway: coordinates"):
        atk.get("leeway")(torch.randn(5, 4), 2, epsilon=1.0, coordinates=1j)


# --- search budgets: a huge one is refused, not allocated --------------------------------------
@pytest.mark.parametrize("name", ["leeway", "alie_opt", "ipm_opt", "min_max_opt"])
def test_a_huge_search_budget_is_refused_in_one_line(name):
    """evaluations=10**30 built a grid of 2.5e29 factors (the process was killed)."""
    with pytest.raises(ValueError, match=rf"{name}: evaluations must be <= 1000000"):
        atk.get(name)(torch.randn(5, 4), 2, rule="average", evaluations=10**30)
    atk.get(name)(torch.randn(5, 4), 1, rule="average", evaluations=10)  # still fine


@pytest.mark.parametrize(
    ("option", "message"),
    [("restarts", r"restarts must be an integer in \[0, 10000\]"),
     ("evaluations", r"evaluations must be an integer in \[1, 1000000\]")],
)
def test_a_huge_strategic_budget_is_refused_in_one_line(option, message):
    """restarts=10**30 built 1e30 starting points."""
    with pytest.raises(ValueError, match=f"strategic: {message}"):
        atk.get("strategic")(torch.randn(5, 2), 1, rule="median", **{option: 10**30})


@pytest.mark.parametrize(
    ("name", "options"),
    [("alie_opt", {"evaluations": 10**30}), ("strategic", {"restarts": 10**30})],
)
def test_the_config_probe_refuses_a_huge_budget(name, options):
    """The probe caps budgets to try values quickly: a budget the attack refuses must stay
    refused (it became the cap, and the run failed at its first step)."""
    from byzlearn.attacks._probe import probe_attack

    with pytest.raises(ValueError, match=f"{name}: "):
        probe_attack(name, options, honest=5, f=1, max_dim=10, rule="median")
