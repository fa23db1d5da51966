"""Each fixed attack against an independent numpy reference computed in the test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

import byzlearn.attacks as atk


def draw(h: int = 15, d: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0.5, 2.0, size=(h, d))


def run(name: str, X: np.ndarray, f: int, **kw) -> np.ndarray:
    out = atk.get(name)(torch.from_numpy(X), f, **kw)
    return out.numpy()


def assert_rows(out: np.ndarray, row: np.ndarray, f: int) -> None:
    assert out.shape == (f, row.size)
    for r in out:
        np.testing.assert_allclose(r, row, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("n", "f", "z"),
    [(20, 4, 0.385), (25, 5, 0.468), (25, 11, 1.405), (50, 12, 0.583), (51, 24, 1.760)],
)
def test_alie_z_table(n, f, z):
    assert atk.alie_z(n, f) == pytest.approx(z, abs=5e-4)
    s = math.floor(n / 2 + 1) - f
    assert atk.alie_z(n, f) == pytest.approx(norm.ppf((n - s) / n), rel=1e-9)


def test_alie_z_invalid():
    with pytest.raises(ValueError, match="pass z="):
        atk.alie_z(10, 8)


@pytest.mark.parametrize("seed", range(3))
def test_alie(seed):
    X = draw(seed=seed)
    f = 4
    n = X.shape[0] + f
    mu, sd = X.mean(0), X.std(0, ddof=1)
    s = math.floor(n / 2 + 1) - f
    z = norm.ppf((n - s) / n)
    assert_rows(run("alie", X, f), mu - z * sd, f)
    assert_rows(run("alie", X, f, z=1.5), mu - 1.5 * sd, f)
    assert_rows(run("alie", X, f, z=-1.0), mu + sd, f)


def test_sign_flip_ipm_zero():
    X = draw()
    mu = X.mean(0)
    assert_rows(run("sign_flip", X, 3), -mu, 3)
    assert_rows(run("sign_flip", X, 3, scale=10.0), -10 * mu, 3)
    assert_rows(run("ipm", X, 3), -0.1 * mu, 3)
    assert_rows(run("ipm", X, 3, epsilon=2.0), -2.0 * mu, 3)
    assert_rows(run("zero", X, 3), np.zeros_like(mu), 3)
    with pytest.raises(ValueError, match="scale must be > 0"):
        run("sign_flip", X, 3, scale=-1.0)
    with pytest.raises(ValueError, match="epsilon must be finite"):
        run("ipm", X, 3, epsilon=math.inf)
    with pytest.raises(TypeError, match="epsilon must be a number"):
        run("ipm", X, 3, epsilon="0.1")


def test_gaussian_matches_torch_draws():
    X = draw()
    ref = 200.0 * torch.randn(
        3, 40, generator=torch.Generator().manual_seed(7), dtype=torch.float64
    )
    out = run("gaussian", X, 3, generator=torch.Generator().manual_seed(7), identical=False)
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-12)
    # the default: each Byzantine worker draws its own noise (the Krum paper's Gaussian workers)
    assert atk.spec("gaussian").identical_default is False
    out = run("gaussian", X, 3, generator=torch.Generator().manual_seed(7))
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-12)
    # identical=True: one draw sent f times
    out = run(
        "gaussian",
        X,
        3,
        generator=torch.Generator().manual_seed(7),
        std=2.0,
        center="honest",
        identical=True,
    )
    ref = (
        X.mean(0)
        + 2.0
        * torch.randn(
            1, 40, generator=torch.Generator().manual_seed(7), dtype=torch.float64
        ).numpy()[0]
    )
    assert_rows(out, ref, 3)
    with pytest.raises(ValueError, match="center must be one of"):
        run("gaussian", X, 3, center="one")


def test_gaussian_statistics():
    X = draw(d=20000)
    out = run("gaussian", X, 2, generator=torch.Generator().manual_seed(0), identical=False)
    assert abs(out.std() - 200.0) < 3.0 and abs(out.mean()) < 3.0


def test_large_norm():
    X = draw()
    ref_norm = np.linalg.norm(X, axis=1).max()
    out = run("large_norm", X, 3, generator=torch.Generator().manual_seed(1), identical=False)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 100 * ref_norm, rtol=1e-12)
    xi = torch.randn(3, 40, generator=torch.Generator().manual_seed(1), dtype=torch.float64).numpy()
    np.testing.assert_allclose(out, 100 * ref_norm * xi / np.linalg.norm(xi, axis=1, keepdims=True))
    out = run("large_norm", X, 2, scale=5.0)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 5 * ref_norm, rtol=1e-12)


def test_nonfinite():
    X = draw()
    for value, bad in (("nan", np.nan), ("inf", np.inf), ("-inf", -np.inf)):
        out = run("nonfinite", X, 2, value=value)
        assert_rows(out, np.full(40, bad), 2)
    out = run(
        "nonfinite",
        X,
        3,
        fraction=0.25,
        identical=False,
        generator=torch.Generator().manual_seed(3),
    )
    mu = X.mean(0)
    for row in out:
        bad = np.isnan(row)
        assert bad.sum() == 10
        np.testing.assert_allclose(row[~bad], mu[~bad])
    assert len({tuple(np.isnan(r)) for r in out}) > 1
    with pytest.raises(ValueError, match="fraction"):
        run("nonfinite", X, 2, fraction=1.5)
    # ceil(fraction d) of the fraction as written: 0.07 * 100 is 7.000000000000001 in floats
    for fraction, count in ((0.07, 7), (0.14, 14), (0.55, 55), (0.071, 8)):
        out = atk.get("nonfinite")(torch.randn(3, 100), 1, fraction=fraction)
        assert int(out.isnan().sum()) == count, fraction
    with pytest.raises(ValueError, match="value must be one of"):
        run("nonfinite", X, 2, value="zero")


def test_bitflip():
    X = draw(h=4)
    out = run("bitflip", X, 6, identical=False)
    np.testing.assert_allclose(out, -X[[0, 1, 2, 3, 0, 1]])
    # the default: each Byzantine worker negates its own gradient (the paper's bit flipping)
    assert atk.spec("bitflip").identical_default is False
    np.testing.assert_allclose(run("bitflip", X, 6), -X[[0, 1, 2, 3, 0, 1]])
    assert_rows(run("bitflip", X, 3, identical=True), -X[0], 3)
    own = draw(h=3, seed=9)
    np.testing.assert_allclose(run("bitflip", X, 3, own=own), -own)
    np.testing.assert_allclose(
        run("bitflip", X, 3, own=torch.from_numpy(own), identical=True), -own[[0, 0, 0]]
    )
    with pytest.raises(ValueError, match="own must hold"):
        run("bitflip", X, 2, own=own)
    # non-finite honest rows are skipped as stand-ins
    Y = X.copy()
    Y[0, 3] = np.nan
    np.testing.assert_allclose(run("bitflip", Y, 3, identical=False), -X[[1, 2, 3]])


def mimic_reference(X: np.ndarray) -> int:
    A = X - X.mean(0)
    _, _, vt = np.linalg.svd(A, full_matrices=False)
    return int(np.argmax(np.abs(A @ vt[0])))


@pytest.mark.parametrize("seed", range(4))
def test_mimic_per_step_choice(seed):
    X = draw(seed=seed)
    # make one worker clearly the most heterogeneous along a direction
    X[5] += 6.0 * np.sign(np.random.default_rng(seed).normal(size=40))
    k = mimic_reference(X)
    assert k == 5
    assert_rows(run("mimic", X, 3), X[k], 3)
    assert_rows(run("mimic", X, 3, worker=2), X[2], 3)
    with pytest.raises(ValueError, match="worker must be in"):
        run("mimic", X, 3, worker=15)
    # huge honest values: the same choice (A A^T overflowed: the wrong row at 1e155, and
    # eigh failed at 1e200; found by a random search)
    for scale in (1e155, 1e200):
        big = torch.from_numpy(X.astype(np.float64) * scale)
        assert torch.equal(atk.get("mimic")(big, 3)[0], big[k])


def mimic_variant_reference(steps: list[np.ndarray], warmup: int, z0: np.ndarray | None):
    """epfml's ``MimicVariantAttacker`` (codes/attacks/mimic.py, argmax=True) re-written in
    numpy: at t = 0 ``_init_callback`` (mu = honest mean, z = z0, one power-iteration step),
    for 0 < t < warmup ``_warmup_callback`` (running mean, z averaged with the new power step,
    normalised), and while t < warmup ``_attack_callback`` picks argmax_i <g_i, z>; afterwards
    the target is frozen. ``z0=None`` starts from ``g_0 - mu`` instead (not the reference: the
    ``start="deviation"`` option). Returns the per-step targets and the final mu and z."""
    mu = z = None
    targets: list[int] = []
    target = -1
    for t, G in enumerate(steps):
        if t < warmup:
            avg = sum(G) / len(G)
            if t == 0:
                mu = avg
                z = (G[0] - mu) if z0 is None else z0
                cumu = sum(((g - mu) @ z) * (g - mu) for g in G)
                z = cumu / np.linalg.norm(cumu)
            else:
                mu = t / (1 + t) * mu + avg / (1 + t)
                cumu = sum(((g - mu) @ z) * (g - mu) for g in G)
                z = t / (1 + t) * z + cumu / np.linalg.norm(cumu) / (1 + t)
                z = z / np.linalg.norm(z)
            target = max(range(len(G)), key=lambda i: G[i] @ z)
        targets.append(target)
    return targets, mu, z


def _steps(seed: int = 0, h: int = 8, d: int = 30, k: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(h, d)) + rng.normal(size=d) for _ in range(k)]


def _check_state(state: atk.MimicState, steps, targets, mu, z, generator=None) -> None:
    for t, G in enumerate(steps):
        state = state.observe(torch.from_numpy(G), generator=generator)
        assert state.step == t + 1
        assert state.target == targets[t], (t, state.target, targets[t])
        assert_rows(run("mimic", G, 2, state=state), G[targets[t]], 2)
    np.testing.assert_allclose(state.mu.numpy(), mu, rtol=1e-12)
    np.testing.assert_allclose(state.z.numpy(), z, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_mimic_state_follows_the_reference(seed):
    """Default MimicState: epfml's start, torch.randn(d, generator=manual_seed(0)) (float32)."""
    steps = _steps(seed)
    z0 = torch.randn(30, generator=torch.Generator().manual_seed(0)).double().numpy()
    targets, mu, z = mimic_variant_reference(steps, 3, z0)
    _check_state(atk.MimicState(warmup=3), steps, targets, mu, z)
    assert atk.MimicState().start == "gaussian" and atk.MimicState().seed == 0
    # another seed, or the caller's generator, draws another start
    z7 = torch.randn(30, generator=torch.Generator().manual_seed(7)).double().numpy()
    targets7, mu7, zz7 = mimic_variant_reference(steps, 3, z7)
    _check_state(atk.MimicState(warmup=3, seed=7), steps, targets7, mu7, zz7)
    _check_state(
        atk.MimicState(warmup=3), steps, targets7, mu7, zz7, torch.Generator().manual_seed(7)
    )


@pytest.mark.parametrize("seed", range(3))
def test_mimic_state_deviation_start(seed):
    """start="deviation": this library's earlier start, g_0 - mu (not the reference's)."""
    steps = _steps(seed)
    targets, mu, z = mimic_variant_reference(steps, 3, None)
    _check_state(atk.MimicState(warmup=3, start="deviation"), steps, targets, mu, z)


def test_the_two_starts_differ():
    """The start matters (so the tests above tell the two apart): over a few draws, the
    reference's seeded Gaussian start and the deviation start pick different workers."""
    differ = 0
    for seed in range(10):
        steps = _steps(seed, h=12, d=200, k=1)
        z0 = torch.randn(200, generator=torch.Generator().manual_seed(0)).double().numpy()
        differ += (
            mimic_variant_reference(steps, 1, z0)[0] != mimic_variant_reference(steps, 1, None)[0]
        )
    assert differ >= 8  # 10 of 10 when measured


def test_mimic_state_errors():
    X = draw()
    with pytest.raises(ValueError, match="observe"):
        run("mimic", X, 2, state=atk.MimicState())
    with pytest.raises(TypeError, match="MimicState"):
        run("mimic", X, 2, state="s")
    with pytest.raises(TypeError, match="at most one"):
        run("mimic", X, 2, state=atk.MimicState(), worker=1)
    with pytest.raises(ValueError, match="warmup"):
        atk.MimicState(warmup=0)
    with pytest.raises(ValueError, match="start must be one of"):
        atk.MimicState(start="first")
    with pytest.raises(ValueError, match="seed"):
        atk.MimicState(seed=-1)
    with pytest.raises(TypeError, match="generator"):
        atk.MimicState().observe(X, generator=0)
    s = atk.MimicState().observe(torch.from_numpy(X))
    with pytest.raises(ValueError, match="d=40"):
        atk.MimicState(warmup=2).observe(X).observe(X[:, :5])
    # a target holding a non-finite value falls back to the per-step choice
    Y = X.copy()
    Y[s.target, 0] = np.nan
    assert np.isfinite(run("mimic", Y, 2, state=s)).all()


def test_nonfinite_honest_policy():
    X = draw(h=6, d=5)
    X[0, 1] = np.nan
    X[2, 3] = np.inf
    mu = np.array([np.mean(X[np.isfinite(X[:, k]), k]) for k in range(5)])
    sd = np.array([np.std(X[np.isfinite(X[:, k]), k], ddof=1) for k in range(5)])
    z = atk.alie_z(8, 2)
    assert_rows(run("alie", X, 2), mu - z * sd, 2)
    assert_rows(run("sign_flip", X, 2), -mu, 2)
    # distance-based attacks use the finite rows only
    G = X[[1, 3, 4, 5]]
    assert np.isfinite(run("min_max", X, 2)).all()
    np.testing.assert_allclose(run("min_max", X, 2), run("min_max", G, 2))
    assert np.isfinite(run("mimic", X, 2)).all()
    with pytest.raises(ValueError, match="every honest vector holds a non-finite"):
        run("mimic", np.full((3, 4), np.nan), 2)
