"""Geometric median by smoothed Weiszfeld iterations in the coefficient space of the Gram matrix."""

from __future__ import annotations

import torch

from byzlearn.aggregators._gram import Inputs
from byzlearn.aggregators._registry import Combination, register


def affine_distances(G: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``||x_i - z||`` for ``z = sum_j alpha_j x_j`` with ``sum alpha = 1``, from a centred Gram."""
    Ga = G @ alpha
    sq = G.diagonal() - 2.0 * Ga + alpha @ Ga
    return sq.clamp(min=0.0).sqrt()


@register("geometric_median", min_n=lambda f: 2 * f + 1, requirement="n >= 2f + 1")
def geometric_median(
    inputs: Inputs,
    f: int,
    *,
    tol: float = 1e-8,
    max_iter: int = 1000,
    nu: float | None = None,
    weights: torch.Tensor | None = None,
) -> Combination:
    r"""Geometric median ``argmin_z sum_i a_i ||z - x_i||`` by smoothed Weiszfeld iterations.

    ``z <- sum_i b_i x_i / sum_i b_i`` with ``b_i = a_i / max(nu, ||z - x_i||)`` (RFA: Pillutla,
    Kakade, Harchaoui, "Robust Aggregation for Federated Learning", arXiv 1912.13445), started from
    the mean of the finite inputs and run until the step ``||z_{t+1} - z_t||`` falls below
    ``tol`` times the typical distance between inputs, or ``max_iter`` iterations. ``z`` stays a
    convex combination of the inputs, so each iteration costs O(n^2) on the Gram matrix and the d
    coordinates are read only to form the output. ``nu`` defaults to 1e-9 of the typical distance;
    ``weights`` (a_i) default to 1. Rows with non-finite values get weight 0. Breakdown point 1/2;
    requirement: n >= 2f + 1. Cost: one Gram pass + O(iterations n^2) + one weighted sum.
    """
    if tol <= 0 or max_iter < 1:
        raise ValueError("geometric_median: tol must be > 0 and max_iter >= 1")
    n = inputs.n
    good = ~inputs.bad
    a = torch.ones(n, dtype=torch.float64)
    if weights is not None:
        a = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        if a.numel() != n or bool((a < 0).any()) or not bool(torch.isfinite(a).all()):
            raise ValueError(f"geometric_median: weights must be {n} finite values >= 0")
    a = a * good
    if float(a.sum()) <= 0:
        raise ValueError("geometric_median: no finite input with a positive weight")
    G = inputs.centred_gram().clone()
    G[~good, :] = 0.0
    G[:, ~good] = 0.0
    D = inputs.sqdist()
    finite_d = D[good][:, good]
    scale = float(finite_d[finite_d > 0].sqrt().median()) if bool((finite_d > 0).any()) else 0.0
    if scale == 0.0:  # all finite inputs coincide
        alpha = a / a.sum()
        return Combination(inputs=inputs, alpha=alpha)
    smoothing = 1e-9 * scale if nu is None else float(nu)
    if smoothing <= 0:
        raise ValueError("geometric_median: nu must be > 0")
    alpha = a / a.sum()
    for _ in range(max_iter):
        dist = affine_distances(G, alpha)
        beta = a / dist.clamp(min=smoothing)
        new = beta / beta.sum()
        step = new - alpha
        alpha = new
        if float((step @ G @ step).clamp(min=0).sqrt()) <= tol * scale:
            break
    return Combination(inputs=inputs, alpha=alpha)
