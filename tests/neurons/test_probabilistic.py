"""Probabilistic crashes (arXiv 1902.01686): b3/b4 vs Monte-Carlo, rigorous bounds, certificates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import byzlearn.neurons as bn

from .helpers import random_mlp


def test_jacobian_matches_autograd() -> None:
    for model in (
        random_mlp([5, 7, 6, 3], "tanh", seed=0),
        nn.Sequential(random_mlp([5, 7, 6, 3], "sigmoid", seed=1), nn.Softmax(-1)),
    ):
        net = bn.extract_network(model)
        x = torch.rand(2, 5)
        J, y = bn.layer_jacobian(net, x, 0)
        for b in range(2):

            def rest(h: torch.Tensor, net: bn.Network = net) -> torch.Tensor:
                out = h
                for lay in net.layers[1:]:
                    out = lay.act.fn(out @ lay.weight.T + lay.bias)
                return out

            h = y[b].detach().requires_grad_()
            out = rest(h)
            ref = torch.stack(
                [torch.autograd.grad(out[k], h, retain_graph=True)[0] for k in range(out.shape[0])]
            )
            torch.testing.assert_close(J[b], ref, rtol=1e-4, atol=1e-6)


def test_last_hidden_layer_mean_is_exact() -> None:
    """Crashes in the last hidden layer with a linear output: Δ = −Σ_i m_i W_i y_i, so
    E Δ = −p Σ W_i y_i exactly (b3 = b4) and Var Δ = p(1 − p) Σ (W_i y_i)²."""
    net = bn.extract_network(random_mlp([4, 30, 2], "sigmoid", seed=2))
    x = torch.rand(6, 4)
    p = 0.1
    m3, m4 = bn.b3(net, x, p, 0), bn.b4(net, x, p, 0)
    torch.testing.assert_close(m3.mean.detach(), m4.mean, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(m3.var.detach(), m4.var, rtol=1e-4, atol=1e-7)
    mc = bn.monte_carlo(net, x, p, 0, reps=20000, seed=0)
    torch.testing.assert_close(mc.mean, m4.mean, rtol=0.05, atol=3 * float(mc.std.max()) / 141)
    torch.testing.assert_close(mc.var, (1 - p) * m4.var, rtol=0.05, atol=0.0)


def _random_net(seed: int) -> tuple[bn.Network, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    width = int(torch.randint(10, 40, (1,), generator=g))
    scale = float(torch.empty(1).uniform_(0.5, 3.0, generator=g))
    act = ["sigmoid", "tanh", "relu"][seed % 3]
    model = random_mlp([10, width, 15, 1], act, seed=seed, scale=scale)
    x = torch.rand(8, 10, generator=g)
    return bn.extract_network(model, data=x), x


def test_estimates_correlate_with_measurement_across_networks() -> None:
    """Pearson correlation across 20 random networks (crashes in the first hidden layer, p = 0.02),
    as in the ErrorComparisonRandom notebook of arXiv 1902.01686 (b4 ≥ 0.996, b3 0.91-0.996)."""
    rows = [
        bn.compare_estimates(*_random_net(s), p=0.02, layer=0, reps=10000, seed=s)
        for s in range(20)
    ]
    corr = {}
    for key in ("std", "mean"):
        mc = np.array([r[f"mc_{key}"] for r in rows])
        for est in ("b3", "b4"):
            v = np.array([r[f"{est}_{key}"] for r in rows])
            corr[f"{est}_{key}"] = stats.pearsonr(v, mc).statistic
    print("pearson correlation with Monte-Carlo:", {k: round(v, 4) for k, v in corr.items()})
    assert corr["b4_std"] > 0.99 and corr["b4_mean"] > 0.97
    assert corr["b3_std"] > 0.95 and corr["b3_mean"] > 0.8  # b3 ignores curvature (mean)
    # b4 is also close in value (not only correlated): median ratio within 10%
    ratio = np.median([r["b4_std"] / r["mc_std"] for r in rows])
    assert 0.9 < ratio < 1.1


@pytest.mark.parametrize("seed", range(6))
def test_rigorous_bounds_hold(seed: int) -> None:
    net, x = _random_net(seed)
    for p in (0.01, 0.1, 0.5):
        r = bn.compare_estimates(net, x, p, layer=0, reps=400, seed=seed)
        assert r["mc_abs"] <= r["rigorous_abs"] * 1.001
        assert r["mc_rms"] <= r["rigorous_rms"] * 1.001
        for layer in (0, 1):
            # crashes in every hidden layer: the input-free recursion
            ps = [p if l <= layer else 0.0 for l in range(net.num_hidden)]
            mean_b, second_b = bn.expected_error_recursion(net, ps)
            d = _mc_all_layers(net, x, ps, 400, seed)
            assert float(d.abs().mean(0).max()) <= mean_b * 1.001
            assert float((d**2).mean(0).max()) <= second_b * 1.001


def _mc_all_layers(
    net: bn.Network, x: torch.Tensor, ps: list[float], reps: int, seed: int
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    masks = {
        l: torch.rand(reps, n, generator=g) < p
        for l, (n, p) in enumerate(zip(net.hidden_sizes, ps, strict=True))
        if p > 0
    }
    with torch.no_grad():
        return net(x, masks) - net(x)


def test_certificate_rigorous_is_valid_and_median_boosting_works() -> None:
    net, x = _random_net(3)
    p, eps, delta = 0.05, 0.5, 1e-3
    cert = bn.certify(net, x, p, eps, delta, method="rigorous")
    assert cert.rigorous and cert.moments is None
    d = _mc_all_layers(net, x, [p, 0.0], 4000, 0)
    freq = (d.abs().amax(-1) >= eps).float().mean(0)  # per input
    assert torch.all(freq.double() <= cert.fail_prob + 0.01)
    if cert.repeats is not None and cert.repeats > 1:
        R = cert.repeats
        fails = 0
        for s in range(200):
            med = bn.median_of_repeats(net, x, p, 0, R, seed=s)
            fails += int(((med - net(x).detach()).abs().amax(-1) >= eps).sum())
        assert fails / (200 * x.shape[0]) <= max(delta, 0.01)
    assert "probability" in cert.summary() or "not certified" in cert.summary()


@pytest.mark.parametrize("method", ["b3", "b4", "monte_carlo"])
def test_certificate_with_estimates(method: str) -> None:
    net, x = _random_net(4)
    small = bn.certify(net, x, 1e-4, 10.0, 1e-3, method=method, reps=200)
    assert bool(small.certified.all()) and small.repeats == 1
    assert "with probability at least 1 - 0.001" in small.summary()
    hard = bn.certify(net, x, 0.3, 1e-4, 1e-3, method=method, reps=200)
    assert not bool(hard.certified.any()) and hard.repeats is None
    assert "not certified" in hard.summary()
    assert hard.paper_repeats == 13  # ceil(2 ln(1000) / ln 3)
    assert hard.fraction_certified_median(13) == 0.0
    mid = bn.certify(net, x, 0.02, 0.05, 1e-3, method=method, reps=200)
    fracs = [mid.fraction_certified_median(R) for R in (1, 5, 13, 51)]
    assert fracs[0] == mid.fraction_certified
    assert fracs == sorted(fracs)
    with pytest.raises(ValueError, match="odd"):
        mid.fraction_certified_median(4)


def test_median_repeats_needed() -> None:
    for q, delta in ((0.1, 1e-6), (0.3, 1e-3), (0.45, 0.01)):
        R = bn.median_repeats_needed(q, delta)
        assert R is not None and R % 2 == 1
        assert stats.binom.sf((R - 1) // 2, R, q) <= delta
        assert R == 1 or stats.binom.sf((R - 3) // 2, R - 2, q) > delta
    assert bn.median_repeats_needed(0.001, 0.01) == 1
    assert bn.median_repeats_needed(0.5, 0.01) is None
    with pytest.raises(ValueError, match="delta"):
        bn.median_repeats_needed(0.1, 0.0)


def test_algorithm1_conditions_report() -> None:
    net, x = _random_net(5)
    c = bn.algorithm1_conditions(net, x, 0.01, 0.5)
    assert c["alpha"] == pytest.approx(np.exp(2.5) * 0.01)
    assert 0 < c["q"] <= 1 and 0 < c["delta0"] <= 1
    assert set(c) >= {"alpha_ok", "q_ok", "delta0_ok", "b3_mean_ok", "chebyshev_ok"}


def test_probabilistic_bad_arguments() -> None:
    net, x = _random_net(0)
    with pytest.raises(ValueError, match="probability"):
        bn.b3(net, x, 1.5)
    with pytest.raises(ValueError, match="hidden layer"):
        bn.b4(net, x, 0.1, layer=2)
    with pytest.raises(ValueError, match="reps"):
        bn.monte_carlo(net, x, 0.1, reps=1)
    with pytest.raises(ValueError, match="epsilon"):
        bn.certify(net, x, 0.1, 0.0, 0.1)
    with pytest.raises(ValueError, match="delta"):
        bn.certify(net, x, 0.1, 0.1, 1.0)
    with pytest.raises(ValueError, match="method"):
        bn.certify(net, x, 0.1, 0.1, 0.1, method="chernoff")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="2 values"):
        bn.expected_error_recursion(net, [0.1])
    with pytest.raises(ValueError, match="R must"):
        bn.median_of_repeats(net, x, 0.1, R=0)


@pytest.mark.parametrize("seed", [1, 2])
def test_failure_frequency_matches_an_independent_monte_carlo(seed: int) -> None:
    """failure_frequency(net, x, p, eps) estimates q = P(||delta||_inf >= eps) per input under
    Bernoulli(p) crashes of the first hidden layer (no rescaling); 4 outputs. The reference is
    written here on the nn.Module itself (numpy masks, its own seed): the two independent
    estimates must agree within 4.5 standard errors of their difference,
    sqrt(q(1-q)(1/R1 + 1/R2)) with q the pooled estimate. Mutations this catches: eps scaled
    by 1.1, p scaled by 0.8, rescaled survivors, mean or one output instead of the max."""
    act = ["sigmoid", "tanh", "relu"][seed % 3]
    model = random_mlp([10, 40, 15, 4], act, seed=seed, scale=2.0)
    x = torch.rand(8, 10, generator=torch.Generator().manual_seed(seed))
    net = bn.extract_network(model, data=x)
    p, R1, R2 = 0.2, 4000, 4000
    head, tail = model[:2], model[2:]  # Linear + activation of hidden layer 0, then the rest
    rng = np.random.default_rng(12345)
    with torch.no_grad():
        y = model(x)
        h = head(x)  # (B, N)
        keep = torch.from_numpy(rng.random((R2, *h.shape)) >= p).to(h.dtype)
        errors = (tail(keep * h) - y).abs().amax(-1)  # (R2, B): ||delta||_inf per draw, input
    eps = float(errors.quantile(0.6))  # a threshold where the frequencies are informative
    q_ref = (errors >= eps).double().mean(0)
    freq = bn.failure_frequency(net, x, p, eps, reps=R1, seed=3)
    assert freq.shape == (x.shape[0],)
    assert torch.all((freq >= 0) & (freq <= 1))
    assert int(((q_ref > 0.05) & (q_ref < 0.95)).sum()) >= x.shape[0] // 2
    q = ((R1 * freq + R2 * q_ref) / (R1 + R2)).clamp(1 / (R1 + R2), 1 - 1 / (R1 + R2))
    se = torch.sqrt(q * (1 - q) * (1 / R1 + 1 / R2))
    z = (freq - q_ref).abs() / se
    print("q_ref", q_ref.numpy().round(3), "z", z.numpy().round(2))
    assert float(z.max()) <= 4.5
    # the rigorous certificate bounds the measured frequency (eps as above, delta unused)
    rig = bn.certify(net, x, p, eps, 0.01, method="rigorous")
    assert torch.all(freq <= rig.fail_prob + 4.5 * se)
    with pytest.raises(ValueError, match="epsilon"):
        bn.failure_frequency(net, x, 0.1, -1.0)
