"""The strategic participant: aggregation as voting, and its best response.

A participant with a preferred vector ``p`` and a preference norm ``||v||_M = sqrt(v^T M v)``
(``M`` diagonal, ``metric``) reports whatever brings the aggregate closest to ``p``:

    r* = argmin_r ||F(honest ∪ {r}) - p||_M

(all f strategic participants report r*, colluding). The rule is a black box, so the search is
derivative-free: Nelder-Mead from ``p`` (the honest report) and from points far from ``p`` in
``restarts`` directions (for the geometric median the best response lies far away: a far point
pulls the median by a unit vector), keeping the best. The gain over honest reporting,
``||F(honest ∪ {p}) - p||_M - ||F(honest ∪ {r*}) - p||_M >= 0``, is what a strategyproof rule
makes zero. Reference: El Mhamdi, Farhadkhani, Guerraoui, Hoang, "On the Strategyproofness of
the Geometric Median", AISTATS 2023 (arXiv 2106.02394).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from byzlearn.attacks._checks import integer
from byzlearn.attacks._context import AttackContext
from byzlearn.attacks._registry import register
from byzlearn.attacks._search import MAX_EVALUATIONS

__all__ = ["best_response", "strategic"]

MAX_RESTARTS = 10**4
"""The most far starting points taken (each runs a Nelder-Mead search)."""


def _as_vector(ctx: AttackContext, value: object, what: str, default: float) -> np.ndarray:
    if value is None:
        return np.full(ctx.d, default)
    vec = np.asarray(torch.as_tensor(value, dtype=torch.float64).reshape(-1).cpu())
    if vec.shape != (ctx.d,) or not np.isfinite(vec).all():
        raise ValueError(f"{ctx.name}: {what} must be {ctx.d} finite values, got {vec.shape}")
    return vec


def best_response(
    ctx: AttackContext,
    preferred: np.ndarray,
    metric: np.ndarray,
    restarts: int = 8,
    evaluations: int = 400,
) -> tuple[np.ndarray, float, float]:
    """``(r*, distance with r*, distance reporting honestly)`` (distances in the ``metric``
    norm), by Nelder-Mead from the honest report and ``restarts`` far starting points."""
    from scipy.optimize import minimize

    def distance(r: np.ndarray) -> float:
        out = ctx.aggregate(torch.as_tensor(r, dtype=ctx.dtype)).to(torch.float64).cpu().numpy()
        diff = out - preferred
        value = float(np.sqrt(np.sum(metric * diff * diff)))
        return value if math.isfinite(value) else math.inf

    honest_distance = distance(preferred)
    best_r, best = preferred.copy(), honest_distance
    scale = max(float(ctx.spread()), 1e-6) * 10.0
    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=ctx.generator)))
    starts = [preferred]
    for _ in range(restarts):
        u = rng.normal(size=ctx.d)
        starts.append(preferred + scale * u / max(float(np.linalg.norm(u)), 1e-12))
    for start in starts:
        res = minimize(
            distance,
            start,
            method="Nelder-Mead",
            options={"maxfev": evaluations, "xatol": 1e-6 * scale, "fatol": 1e-9},
        )
        if res.fun < best:
            best_r, best = np.asarray(res.x, dtype=np.float64), float(res.fun)
    return best_r, best, honest_distance


@register(
    "strategic",
    rule_aware=True,
    randomized=True,
    reference="El Mhamdi, Farhadkhani, Guerraoui, Hoang, 'On the Strategyproofness of the "
    "Geometric Median', AISTATS 2023 (arXiv 2106.02394)",
)
def strategic(
    ctx: AttackContext,
    *,
    preferred: object = None,
    metric: object = None,
    restarts: int = 8,
    evaluations: int = 400,
) -> torch.Tensor:
    r"""Best response of strategic participants: report ``r*`` minimising
    ``||F(honest ∪ {r}) - p||_M`` (see the module docstring).

    Options:
        preferred: the participants' preferred vector ``p`` (d values; default: the honest
            mean, where reporting it is already optimal for a mean-like rule).
        metric: the diagonal of ``M`` (d positive values; default all ones: Euclidean).
        restarts: far starting points of the search besides ``p`` (default 8; at most 10^4).
        evaluations: rule evaluations per start (default 400; at most 10^6).

    Rule-aware (the rule is evaluated, a black box); randomized (the far starts). Reference:
    El Mhamdi, Farhadkhani, Guerraoui, Hoang, "On the Strategyproofness of the Geometric
    Median", AISTATS 2023 (arXiv 2106.02394).
    """
    # bounded: restarts=10**30 built 1e30 starting points
    restarts = integer(ctx.name, "restarts", restarts, minimum=0, maximum=MAX_RESTARTS)
    evaluations = integer(
        ctx.name, "evaluations", evaluations, minimum=1, maximum=MAX_EVALUATIONS
    )
    mean = ctx.mean().to(torch.float64).cpu().numpy()
    p = _as_vector(ctx, preferred, "preferred", 0.0) if preferred is not None else mean
    m = _as_vector(ctx, metric, "metric", 1.0)
    if (m <= 0).any():
        raise ValueError(f"{ctx.name}: metric must be positive")
    r, _, _ = best_response(ctx, p, m, restarts, evaluations)
    return torch.as_tensor(r, dtype=ctx.dtype)
