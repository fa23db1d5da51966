"""Norm-based rules: centred clipping, CGE, and the clipping / ARC pre-aggregators."""

from __future__ import annotations

import math

import torch

from byzlearn.aggregators._gram import Inputs
from byzlearn.aggregators._registry import Combination, equal_weights, register
from byzlearn.aggregators.rules.krum import _rank, medoid


@register(
    "centered_clipping",
    min_n=lambda f: 2 * f + 1,
    requirement="n >= 2f + 1",
    accepts_centre=True,
)
def centered_clipping(
    inputs: Inputs,
    f: int,
    *,
    center: torch.Tensor | None = None,
    radius: float | None = None,
    iterations: int = 1,
) -> Combination:
    r"""Centred clipping: ``v <- v + (1/n) sum_i (x_i - v) min(1, tau / ||x_i - v||)``,
    repeated ``iterations`` (L) times from ``v_0 = center``.

    Reference: Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust Optimization",
    ICML 2021 (arXiv 2012.10333). The paper starts from the previous aggregate: pass it as
    ``center`` (the protocol owns that state). Without ``center`` the iteration starts from the
    medoid of the inputs. ``radius`` (tau) defaults to the median distance of the finite inputs
    to ``v_0``. Inputs with non-finite values are infinitely far and get weight 0. v stays in the
    affine span of the inputs and the centre, so the iterations run on the Gram matrix (centred on
    ``center``) and the d coordinates are read once to form the output. Requirement: n >= 2f + 1
    (the guarantee needs a small Byzantine fraction). Cost: one Gram pass + O(L n^2) + one pass.
    """
    if iterations < 1:
        raise ValueError(f"centered_clipping: iterations must be >= 1, got {iterations}")
    n = inputs.n
    G = inputs.centred_gram()
    bad = inputs.bad
    if center is None:
        alpha = medoid(inputs, f).alpha.clone()
        centre_mass = 0.0  # v = sum alpha_i x_i, sum alpha = 1
    else:
        alpha = torch.zeros(n, dtype=torch.float64)  # v = c + sum alpha_i (x_i - c)
        centre_mass = 1.0
    diff = torch.eye(n, dtype=torch.float64) - alpha[None, :]
    dist = ((diff @ G) * diff).sum(dim=1).clamp(min=0).sqrt()
    dist[bad] = float("inf")
    if radius is None:
        finite = dist[~bad]
        tau = float(finite.median()) if finite.numel() else 0.0
    else:
        tau = float(radius)
        if not tau > 0 or not math.isfinite(tau):
            raise ValueError(f"centered_clipping: radius must be finite and > 0, got {radius}")
    for step in range(iterations):
        if step > 0:
            diff = torch.eye(n, dtype=torch.float64) - alpha[None, :]
            dist = ((diff @ G) * diff).sum(dim=1).clamp(min=0).sqrt()
            dist[bad] = float("inf")
        w = torch.where(dist > tau, tau / dist, torch.ones_like(dist)) if tau > 0 else dist * 0
        w[bad] = 0.0
        # x_i - v has coefficients e_i - alpha (and -centre_mass on c): update both
        alpha = alpha + (w - w.sum() * alpha) / n
        centre_mass = centre_mass - float(w.sum()) * centre_mass / n
    return Combination(inputs=inputs, alpha=alpha, centre_weight=centre_mass, centre=center)


@register(
    "cge", min_n=lambda f: 2 * f + 1, requirement="n >= 2f + 1", selects=True, guessable=True
)
def cge(inputs: Inputs, f: int) -> Combination:
    r"""Comparative gradient elimination: the average of the ``n - f`` inputs of smallest norm.

    Reference: Gupta, Liu, Vaidya, "Byzantine Fault-Tolerant Distributed Machine Learning with
    Norm-Based Comparative Gradient Elimination", DSN Workshops 2021 (arXiv 2008.04699); the paper
    sums the kept gradients, here they are averaged so the rule is a drop-in for the mean.
    Requirement: n >= 2f + 1. Non-finite inputs have infinite norm.
    Cost: one Gram pass + O(n log n).
    """
    m = inputs.n - f
    order = _rank(inputs.sqnorms().numpy(), m, "cge")
    alpha = equal_weights(inputs.n, order)
    return Combination(inputs=inputs, alpha=alpha, kept=torch.as_tensor(sorted(order)))


def _scale_rows(inputs: Inputs, scale: torch.Tensor) -> Inputs:
    return inputs.mix(torch.diag(scale))


@register("clipping", kind="pre", min_n=lambda f: 1, requirement="n >= 1", out_n=lambda n, o: n)
def clipping(inputs: Inputs, f: int, *, max_norm: float) -> Inputs:
    r"""Static norm clipping (pre-aggregator): ``x_i <- x_i min(1, c / ||x_i||)``, ``c = max_norm``.

    A standard pre-processing of honest gradients (e.g. clipping 2 and 5 in El Mhamdi, Guerraoui,
    Rouault, ICLR 2021). Non-finite inputs stay non-finite. Returns n vectors.
    """
    c = float(max_norm)
    if not c > 0 or not math.isfinite(c):
        raise ValueError(f"clipping: max_norm must be finite and > 0, got {max_norm}")
    norms = inputs.sqnorms().sqrt()
    scale = torch.where(norms > c, c / norms, torch.ones_like(norms))
    scale[inputs.bad] = 1.0
    return _scale_rows(inputs, scale)


@register("arc", kind="pre", min_n=lambda f: 1, requirement="n >= 1", out_n=lambda n, o: n)
def arc(inputs: Inputs, f: int) -> Inputs:
    r"""Adaptive robust clipping (pre-aggregator): with ``k = floor(2 (f/n) (n - f))``, clip the
    k largest-norm inputs to the norm of the largest unclipped one.

    Reference: Allouah, Guerraoui, Gupta, Pinot, Rizk, Stephan, "Boosting Robustness by Clipping
    Gradients in Distributed Learning" (arXiv 2405.14432). Non-finite inputs have infinite norm, so
    they are among the clipped ones and stay non-finite. Returns n vectors.
    """
    n = inputs.n
    # in integers: the float 2 * (f / n) * (n - f) falls just below the integer it is at
    # n = 121, f = 66; n = 150, f = 105; n = 242, f = 33, 132, 165 (one input fewer clipped)
    k = 2 * f * (n - f) // n
    scale = torch.ones(n, dtype=torch.float64)
    if k > 0:
        norms = inputs.sqnorms().sqrt()
        order = torch.argsort(norms, descending=True, stable=True)
        limit = norms[order[k]] if k < n else torch.tensor(0.0, dtype=torch.float64)
        for i in order[:k].tolist():
            if bool(inputs.bad[i]):
                continue
            if norms[i] > limit:
                scale[i] = float(limit / norms[i])
    return _scale_rows(inputs, scale)
