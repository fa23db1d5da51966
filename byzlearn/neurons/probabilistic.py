"""Probabilistic crashes: expected output error, its variance, bounds and (ε, δ) certification.

Failure model (El Mhamdi, Guerraoui, Kucharavy & Volodin, *The Probabilistic Fault Tolerance of
Neural Networks in the Continuous Limit*, arXiv 1902.01686, ``IndependentCrashes``): every neuron of
one hidden layer crashes (outputs 0) independently with probability p, **without rescaling** the
survivors. Δ = ỹ − y is the output error (a vector over outputs), for each input.

Estimates of E[Δ] and Var[Δ] (per input, per output), y_i = fault-free outputs of the failing
layer, ŷ = network output:

* :func:`b3` (first-order Taylor, arXiv 1902.01686):
  E Δ ≈ −p·Σ_i (∂ŷ/∂y_i)·y_i,   Var Δ ≈ p·Σ_i ((∂ŷ/∂y_i)·y_i)²;
* :func:`b4` (leave-one-out, exact to O(p²)):
  E Δ ≈ p·Σ_i (ŷ_{−i} − ŷ),   Var Δ ≈ p·Σ_i (ŷ_{−i} − ŷ)²   (ŷ_{−i}: only neuron i crashed);
* :func:`monte_carlo`: the measurement, over independent masks.

b3 and b4 are **approximations** (first order in p; b3 is also first order in the network's
curvature), not upper bounds: they can be below the measured value. Two rigorous bounds complement
them:

* :func:`crash_moment_bound` (input-specific): with A = Σ_i m_i|y_i| (m_i ~ Bernoulli(p)) the ℓ1
  error of the failing layer and G its worst-case gain to ‖Δ‖∞ (the FEP recursion of *When Neurons
  Fail*, IPDPS 2017): E‖Δ‖∞ ≤ G·p·‖y‖₁ and E‖Δ‖∞² ≤ G²·(p(1 − p)‖y‖₂² + p²‖y‖₁²);
* :func:`expected_error_recursion` (input-free, crashes in every layer, in the spirit of the
  recursion of El Mhamdi, Guerraoui & Rouault, *On the Robustness of a Neural Network*, SRDS
  2017): ε_l ≤ p_l·C_l + (1 − p_l)·K_l·r_l·ε_{l−1} for the expected absolute error of one
  neuron, r_l the largest ℓ1 norm of a neuron's incoming weights.

:func:`certify` answers "with probability at least 1 − δ, ‖Δ‖∞ < ε" with Chebyshev's inequality
(P(|Δ_k| ≥ ε) ≤ Var/(ε − |E|)², union over outputs) and, when one evaluation is not enough, the
median of R independent evaluations (Algorithm 1 of arXiv 1902.01686).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from scipy import stats

from byzlearn.neurons._checks import check_int, check_real
from byzlearn.neurons.inject import _check_x
from byzlearn.neurons.network import Network

__all__ = [
    "Certificate",
    "Moments",
    "algorithm1_conditions",
    "b3",
    "b4",
    "certify",
    "compare_estimates",
    "crash_moment_bound",
    "expected_error_recursion",
    "failure_frequency",
    "layer_gain",
    "layer_jacobian",
    "median_of_repeats",
    "median_repeats_needed",
    "monte_carlo",
]


@dataclass
class Moments:
    """Mean and variance of the output error Δ, each (B, out); ``source`` names the estimator."""

    mean: torch.Tensor
    var: torch.Tensor
    source: str

    @property
    def std(self) -> torch.Tensor:
        return self.var.clamp_min(0).sqrt()


def _check_p(p: float) -> float:
    """A probability: a real number in [0, 1] (numpy scalars and 0-d tensors too, not bools)."""
    return check_real(p, "p (a probability)", 0.0, 1.0)


def layer_jacobian(net: Network, x: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(J, y): J = ∂ŷ/∂y of shape (B, out, N_l) at the fault-free point, y the layer's outputs.

    Computed by the chain rule J = φ'_out·W_out·diag(φ'(z_L))·W_L ··· diag(φ'(z_{l+1}))·W_{l+1};
    differentiable with respect to the weights (used by the b3 regulariser).
    """
    layer = net.check_hidden(layer)
    x = _check_x(net, x)
    _, hs, zs = net.forward(x, return_hidden=True)
    L = net.num_hidden
    out = net.layers[L]
    if out.act.elementwise:
        J = out.act.derivative(zs[L]).unsqueeze(-1) * out.weight  # (B, out, N_L)
    else:  # softmax output: Jacobian diag(s) - s s^T
        sm = out.act.fn(zs[L])
        Js = torch.diag_embed(sm) - sm.unsqueeze(-1) * sm.unsqueeze(-2)
        J = Js @ out.weight
    for k in range(L - 1, layer, -1):
        J = (J * net.layers[k].act.derivative(zs[k]).unsqueeze(1)) @ net.layers[k].weight
    return J, hs[layer]


def b3(net: Network, x: torch.Tensor, p: float, layer: int = 0) -> Moments:
    """First-order (Taylor) estimate of arXiv 1902.01686 (bound b3):

        E Δ ≈ −p·Σ_i (∂ŷ/∂y_i)·y_i,    Var Δ ≈ p·Σ_i ((∂ŷ/∂y_i)·y_i)².

    An approximation to O(p²) (exact for the mean when the failing layer is the last hidden layer
    and the output is linear). Differentiable in the weights.
    """
    p = _check_p(p)
    J, y = layer_jacobian(net, x, layer)
    t = J * y.unsqueeze(1)  # (B, out, N)
    return Moments(-p * t.sum(-1), p * (t**2).sum(-1), "b3")


def b4(net: Network, x: torch.Tensor, p: float, layer: int = 0) -> Moments:
    """Leave-one-out estimate of arXiv 1902.01686 (bound b4), exact to O(p²):

    E Δ ≈ p·Σ_i (ŷ_{−i} − ŷ),    Var Δ ≈ p·Σ_i (ŷ_{−i} − ŷ)².
    """
    p = _check_p(p)
    layer = net.check_hidden(layer)
    x = _check_x(net, x)
    N = net.layers[layer].n_out
    with torch.no_grad():
        y = net.forward(x)
        d = net.forward(x, {layer: torch.eye(N, dtype=torch.bool)}) - y  # (N, B, out)
    return Moments(p * d.sum(0), p * (d**2).sum(0), "b4")


def _mc_chunks(
    net: Network, x: torch.Tensor, p: float, layer: int, reps: int, seed: int
) -> torch.Tensor:
    """(reps, B, out) output errors under independent Bernoulli(p) crashes of ``layer``."""
    reps = check_int(reps, "reps", 1)
    N = net.layers[layer].n_out
    g = torch.Generator().manual_seed(seed)
    chunk = max(1, min(reps, 2_000_000 // max(1, x.shape[0] * max(N, net.out_features))))
    with torch.no_grad():
        y = net.forward(x)
        out = []
        done = 0
        while done < reps:
            M = min(chunk, reps - done)
            mask = torch.rand(M, N, generator=g) < p
            out.append(net.forward(x, {layer: mask}) - y)
            done += M
    return torch.cat(out)


def monte_carlo(
    net: Network, x: torch.Tensor, p: float, layer: int = 0, reps: int = 1000, seed: int = 0
) -> Moments:
    """Measured mean and (unbiased) variance of Δ over ``reps`` independent crash masks.

    Each neuron of ``layer`` is zeroed with probability p, survivors are not rescaled
    (arXiv 1902.01686, ``IndependentCrashes`` / ``compute_error``).
    """
    p = _check_p(p)
    reps = check_int(reps, "reps", 2)
    layer = net.check_hidden(layer)
    x = _check_x(net, x)
    d = _mc_chunks(net, x, p, layer, reps, seed)
    return Moments(d.mean(0), d.var(0), "monte_carlo")


def layer_gain(net: Network, layer: int) -> float:
    """G_l: worst-case factor from the ℓ1 error of hidden ``layer`` to the output error ‖Δ‖∞.

    G_l = K_out·max|W_out|·Π_{k>l} K_k·‖W_k‖_{1→1} (‖W‖_{1→1} = largest column ℓ1 norm), the
    no-failure gain of the FEP recursion (*When Neurons Fail*, IPDPS 2017).
    """
    layer = net.check_hidden(layer)
    L = net.num_hidden
    out = net.layers[L]
    G = out.act.K * float(out.weight.detach().abs().max())
    for k in range(layer + 1, L):
        lay = net.layers[k]
        G *= lay.act.K * float(lay.weight.detach().abs().sum(0).max())
    return G


def crash_moment_bound(
    net: Network, x: torch.Tensor, p: float, layer: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rigorous per-input bounds (E‖Δ‖∞, E‖Δ‖∞²), each (B,), under Bernoulli(p) crashes.

    With y the layer's fault-free outputs and G = :func:`layer_gain`: ‖Δ‖∞ ≤ G·Σ_i m_i|y_i|, so
    E‖Δ‖∞ ≤ G·p·‖y‖₁ and E‖Δ‖∞² ≤ G²·(p(1 − p)·‖y‖₂² + p²·‖y‖₁²). Valid for every network and
    input (no approximation), and usually loose.
    """
    p = _check_p(p)
    layer = net.check_hidden(layer)
    x = _check_x(net, x)
    with torch.no_grad():
        y = net.hidden(x)[layer].abs()
    G = layer_gain(net, layer)
    l1, l2sq = y.sum(-1), (y**2).sum(-1)
    return G * p * l1, G**2 * (p * (1 - p) * l2sq + p**2 * l1**2)


def expected_error_recursion(net: Network, p: Sequence[float]) -> tuple[float, float]:
    """Input-free bounds on (E|Δ_k|, E Δ_k²) when every neuron of hidden layer l crashes w.p. p_l.

    Per neuron of layer l (C_l = max |h| on the layer's interval, r_l = largest ℓ1 norm of a
    neuron's incoming weights): a crashed neuron errs by ≤ C_l, a correct one by
    ≤ K_l·Σ_j|w_j||e_j|, and crashes are independent of the errors below, so

        ε_l ≤ p_l·C_l + (1 − p_l)·K_l·r_l·ε_{l−1},   s_l ≤ p_l·C_l² + (1 − p_l)·K_l²·r_l²·s_{l−1}

    (ε: mean absolute error, s: second moment, via (Σ a_j e_j)² ≤ (Σ a_j)(Σ a_j e_j²)); the output
    gets K_out·r_out·ε_L and K_out²·r_out²·s_L. Recursion in the spirit of El Mhamdi, Guerraoui &
    Rouault, *On the Robustness of a Neural Network* (SRDS 2017), re-derived here (exact rigorous
    form, not the paper's constants).
    """
    L = net.num_hidden
    ps = [_check_p(v) for v in p]
    if len(ps) != L:
        raise ValueError(f"p needs {L} values (one per hidden layer), got {len(ps)}")
    eps, sec = 0.0, 0.0
    for k in range(L):
        lay = net.layers[k]
        r = float(lay.weight.detach().abs().sum(1).max())
        C = lay.C if ps[k] > 0 else 0.0
        if ps[k] > 0 and not math.isfinite(C):
            raise ValueError(f"layer {lay.name!r} has no finite interval: pass C or data")
        eps = ps[k] * C + (1 - ps[k]) * lay.act.K * r * eps
        sec = ps[k] * C**2 + (1 - ps[k]) * lay.act.K**2 * r**2 * sec
    out = net.layers[L]
    r = float(out.weight.detach().abs().sum(1).max())
    return out.act.K * r * eps, (out.act.K * r) ** 2 * sec


def median_repeats_needed(q: float, delta: float, max_r: int = 100_001) -> int | None:
    """Smallest odd R with P(Binomial(R, q) ≥ (R + 1)/2) ≤ δ, or None if q ≥ 1/2.

    If one evaluation fails (‖Δ‖∞ ≥ ε) with probability ≤ q, the coordinate-wise median of R
    independent evaluations fails only when at least (R + 1)/2 of them fail. This exact binomial
    tail replaces the closed form R = 2·log(1/δ)/log 3 quoted for Algorithm 1 of arXiv 1902.01686.
    """
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    q = check_real(q, "q", 0.0, 1.0)
    if q <= delta:
        return 1
    if q >= 0.5:
        return None
    r = 1
    while r <= max_r:
        if stats.binom.sf((r - 1) // 2, r, q) <= delta:
            return r
        r += 2
    return None


@dataclass
class Certificate:
    """Answer of :func:`certify` for a batch of inputs.

    Attributes:
        fail_prob: (B,) upper estimate of P(‖Δ‖∞ ≥ ε) for one evaluation (1.0 when |E Δ_k| ≥ ε).
        certified: (B,) bool, fail_prob ≤ δ (one evaluation suffices).
        repeats: R such that the median of R evaluations fails w.p. ≤ δ for every input of the
            batch (None when some input has fail_prob ≥ 1/2).
        paper_repeats: ⌈2·log(1/δ)/log 3⌉ (rounded up to odd), the R of Algorithm 1 as quoted in
            the reference notes [M]; :meth:`fraction_certified_median` tells for how many inputs
            it suffices.
        rigorous: True when fail_prob is a proven bound (``method="rigorous"``); False for the
            b3/b4/Monte-Carlo moments (approximations).
    """

    epsilon: float
    delta: float
    p: float
    layer: int
    method: str
    moments: Moments | None
    fail_prob: torch.Tensor
    certified: torch.Tensor
    repeats: int | None
    paper_repeats: int
    rigorous: bool

    @property
    def fraction_certified(self) -> float:
        return float(self.certified.float().mean())

    @property
    def worst_fail_prob(self) -> float:
        return float(self.fail_prob.max())

    def summary(self) -> str:
        """One sentence: the certification answer."""
        kind = "proven" if self.rigorous else f"estimated with {self.method}"
        if bool(self.certified.all()):
            return (
                f"with probability at least 1 - {self.delta:g} the error stays below "
                f"{self.epsilon:g} for all {self.certified.numel()} inputs ({kind}, one "
                f"evaluation; worst P(fail) <= {self.worst_fail_prob:.3g})"
            )
        if self.repeats is not None:
            return (
                f"one evaluation: P(error >= {self.epsilon:g}) <= {self.worst_fail_prob:.3g} "
                f"> delta ({kind}); the median of R = {self.repeats} independent "
                f"evaluations stays below {self.epsilon:g} with probability at least "
                f"1 - {self.delta:g}"
            )
        R = self.paper_repeats
        return (
            f"not certified for every input: P(error >= {self.epsilon:g}) <= "
            f"{self.worst_fail_prob:.3g} for the worst input ({kind}); certified for "
            f"{100 * self.fraction_certified:.1f}% of inputs with one evaluation and for "
            f"{100 * self.fraction_certified_median(R):.1f}% with the median of R = {R}"
        )

    def fraction_certified_median(self, R: int) -> float:
        """Fraction of inputs for which the median of R evaluations fails w.p. ≤ δ."""
        if R < 1 or R % 2 == 0:
            raise ValueError(f"R must be a positive odd integer, got {R}")
        tail = stats.binom.sf((R - 1) // 2, R, self.fail_prob.numpy())
        ok = (tail <= self.delta) | self.certified.numpy()
        return float(ok.mean())


def certify(
    net: Network,
    x: torch.Tensor,
    p: float,
    epsilon: float,
    delta: float,
    layer: int = 0,
    method: Literal["b3", "b4", "monte_carlo", "rigorous"] = "b4",
    reps: int = 1000,
    seed: int = 0,
) -> Certificate:
    """Certify "with probability at least 1 − δ, ‖Δ‖∞ < ε" under Bernoulli(p) crashes of ``layer``.

    For the moment estimators (``b3``, ``b4``, ``monte_carlo``): Chebyshev per output,
    P(|Δ_k| ≥ ε) ≤ Var_k/(ε − |E_k|)² when |E_k| < ε, and a union bound over the outputs. For
    ``rigorous``: Markov on the proven second moment, P(‖Δ‖∞ ≥ ε) ≤ E‖Δ‖∞²/ε²
    (:func:`crash_moment_bound`). When one evaluation is not enough, the median of R independent
    evaluations (Algorithm 1 of arXiv 1902.01686) is certified with R from
    :func:`median_repeats_needed`.
    """
    p = _check_p(p)
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    moments: Moments | None
    if method == "rigorous":
        _, second = crash_moment_bound(net, x, p, layer)
        fail = (second / epsilon**2).clamp(max=1.0)
        moments = None
    elif method in ("b3", "b4", "monte_carlo"):
        if method == "b3":
            with torch.no_grad():
                moments = b3(net, x, p, layer)
        elif method == "b4":
            moments = b4(net, x, p, layer)
        else:
            moments = monte_carlo(net, x, p, layer, reps, seed)
        gap = epsilon - moments.mean.abs()
        per = torch.where(
            gap > 0, moments.var.clamp_min(0) / gap.clamp_min(1e-300) ** 2, torch.ones_like(gap)
        )
        fail = per.sum(-1).clamp(max=1.0)
    else:
        raise ValueError(f"method must be b3, b4, monte_carlo or rigorous, got {method!r}")
    fail = fail.detach().double()
    certified = fail <= delta
    R = median_repeats_needed(float(fail.max()), delta)
    paper_R = math.ceil(2 * math.log(1 / delta) / math.log(3))
    paper_R += 1 - paper_R % 2  # odd, so that the median is one of the evaluations
    return Certificate(
        epsilon, delta, p, layer, method, moments, fail, certified, R, paper_R, method == "rigorous"
    )


def failure_frequency(
    net: Network,
    x: torch.Tensor,
    p: float,
    epsilon: float,
    layer: int = 0,
    reps: int = 1000,
    seed: int = 0,
) -> torch.Tensor:
    """Measured P(‖Δ‖∞ ≥ ε) per input, (B,), over ``reps`` independent crash masks of ``layer``.

    The Monte-Carlo counterpart of :func:`certify` (failure model of arXiv 1902.01686).
    """
    p = _check_p(p)
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    reps = check_int(reps, "reps", 1)
    layer = net.check_hidden(layer)
    x = _check_x(net, x)
    d = _mc_chunks(net, x, p, layer, reps, seed)
    return (d.abs().amax(-1) >= epsilon).double().mean(0)


def median_of_repeats(
    net: Network, x: torch.Tensor, p: float, layer: int = 0, R: int = 1, seed: int = 0
) -> torch.Tensor:
    """Coordinate-wise median (B, out) of R independent faulty evaluations (fresh crashes each).

    The boosting step of Algorithm 1 (arXiv 1902.01686).
    """
    R = check_int(R, "R", 1)
    p = _check_p(p)
    layer = net.check_hidden(layer)
    x = _check_x(net, x)
    d = _mc_chunks(net, x, p, layer, R, seed)
    with torch.no_grad():
        y = net.forward(x)
    return y + d.median(dim=0).values


def algorithm1_conditions(
    net: Network, x: torch.Tensor, p: float, epsilon: float, layer: int = 0
) -> dict[str, float | bool]:
    """The checks of Algorithm 1 (arXiv 1902.01686, ``TheAlgorithm.ipynb``), as quoted [M]:

    α = e^{2.5}·p < 1; q = min_j/max_j of the neurons' incoming ℓ1 norms ≥ 0.01;
    δ₀ = exp(−n·KL(α‖p)·q) < 1/6 (KL between Bernoulli laws); b3 mean < ε; Chebyshev term
    Var/(ε − E)² < 1/3 (b3 moments, worst input and output). Reported, not enforced.
    """
    p = _check_p(p)
    epsilon = check_real(epsilon, "epsilon", 0.0, lo_open=True)
    layer = net.check_hidden(layer)
    lay = net.layers[layer]
    norms = lay.weight.detach().abs().sum(1)
    q = float(norms.min() / norms.max()) if float(norms.max()) > 0 else 0.0
    alpha = math.exp(2.5) * p
    if 0 < p < alpha < 1:
        kl = alpha * math.log(alpha / p) + (1 - alpha) * math.log((1 - alpha) / (1 - p))
        delta0 = math.exp(-lay.n_out * kl * q)
    else:
        delta0 = 1.0
    with torch.no_grad():
        m = b3(net, x, p, layer)
    mean_worst = float(m.mean.abs().max())
    gap = epsilon - m.mean.abs()
    cheb = float(
        torch.where(
            gap > 0, m.var / gap.clamp_min(1e-300) ** 2, torch.full_like(gap, math.inf)
        ).max()
    )
    return {
        "alpha": alpha,
        "alpha_ok": alpha < 1,
        "q": q,
        "q_ok": q >= 0.01,
        "delta0": delta0,
        "delta0_ok": delta0 < 1 / 6,
        "b3_mean": mean_worst,
        "b3_mean_ok": mean_worst < epsilon,
        "chebyshev": cheb,
        "chebyshev_ok": cheb < 1 / 3,
    }


def compare_estimates(
    net: Network, x: torch.Tensor, p: float, layer: int = 0, reps: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Batch-averaged |E Δ| and std Δ from b3, b4 and Monte-Carlo, plus the rigorous bounds.

    Keys: ``{b3,b4,mc}_{mean,std}`` (averaged over inputs and outputs of |E Δ_k| and sqrt(Var)),
    ``mc_abs`` (measured E‖Δ‖∞), ``rigorous_abs`` (bound on E‖Δ‖∞), ``rigorous_rms`` (bound on
    sqrt(E‖Δ‖∞²)), ``mc_rms`` (measured sqrt(E‖Δ‖∞²)), all averaged over the batch.
    ``reps`` must be >= 2 (the Monte-Carlo standard deviation needs two samples).
    """
    reps = check_int(reps, "reps", 2)
    x = _check_x(net, x)
    with torch.no_grad():
        m3 = b3(net, x, p, layer)
    m4 = b4(net, x, p, layer)
    d = _mc_chunks(net, x, _check_p(p), net.check_hidden(layer), reps, seed)
    inf = d.abs().amax(-1)  # (reps, B)
    r_abs, r_sec = crash_moment_bound(net, x, p, layer)
    return {
        "b3_mean": float(m3.mean.abs().mean()),
        "b3_std": float(m3.std.mean()),
        "b4_mean": float(m4.mean.abs().mean()),
        "b4_std": float(m4.std.mean()),
        "mc_mean": float(d.mean(0).abs().mean()),
        "mc_std": float(d.std(0).mean()),
        "mc_abs": float(inf.mean()),
        "mc_rms": float((inf**2).mean(0).sqrt().mean()),
        "rigorous_abs": float(r_abs.mean()),
        "rigorous_rms": float(r_sec.sqrt().mean()),
    }
