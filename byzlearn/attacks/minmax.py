"""The min-max and min-sum attacks of Shejwalkar and Houmansadr (NDSS 2021), and the rule-aware
min-max variant.

Both send ``b = mu - gamma * p`` (f identical copies), with ``p`` a perturbation direction:

* ``"unit_vec"`` (default, the reference code's default): ``p = mu / ||mu||``;
* ``"std"``: ``p = sigma`` (coordinate-wise unbiased std);
* ``"sign"``: ``p = sign(mu)``;

and ``gamma >= 0`` the **largest** value keeping ``b`` inconspicuous (AGR-agnostic: no rule):

* min-max: ``max_i ||b - g_i||^2 <= max_{i,j} ||g_i - g_j||^2`` (the Byzantine vector is no
  farther from any honest vector than the two most distant honest vectors are from each other);
* min-sum: ``sum_i ||b - g_i||^2 <= min_i sum_j ||g_i - g_j||^2`` (its sum of squared distances
  to the honest vectors is at most the smallest one of an honest vector; the ``min`` is the
  reference code's, ``our_attack_score``).

The reference code finds ``gamma`` by bisection starting at ``gamma = 10`` (so it never exceeds
20); every constraint here is a quadratic in ``gamma``, so ``gamma`` is computed **exactly** in
closed form (the largest root), with no upper cap. ``gamma = 0`` is always feasible (``mu`` is
an average of the honest vectors). Statistics use the fully finite honest rows only. When
``p = 0`` (e.g. ``mu = 0`` for ``"unit_vec"``) the attack sends ``mu``.

Reference: Shejwalkar, Houmansadr, "Manipulating the Byzantine: Optimizing Model Poisoning
Attacks and Defenses for Federated Learning", NDSS 2021 (code: ``our_attack_dist`` and
``our_attack_score`` in the authors' notebooks).
"""

from __future__ import annotations

import math

import torch

from byzlearn.aggregators._gram import sqdist_from_gram
from byzlearn.aggregators._mean import std_of_rows
from byzlearn.attacks._checks import choice
from byzlearn.attacks._context import (
    AttackContext,
    power_of_two_above,
    scale_for,
    scaled_norm,
)
from byzlearn.attacks._registry import register
from byzlearn.attacks._search import check_search_options
from byzlearn.attacks.optimised import optimise

_PERTURBATIONS = ("unit_vec", "std", "sign")
_REFERENCE = (
    "Shejwalkar, Houmansadr, 'Manipulating the Byzantine: Optimizing Model Poisoning Attacks "
    "and Defenses for Federated Learning', NDSS 2021"
)


def _setup(
    ctx: AttackContext, perturbation: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(G, mu, p) in float64 over the fully finite honest rows."""
    perturbation = choice(ctx.name, "perturbation", perturbation, _PERTURBATIONS)
    G = ctx.finite_rows().to(torch.float64)
    # the statistics of G / c, scaled back: exact for a power of two c, and without overflow
    # (the mean of values of 1.5e308) or underflow (the std of values of 1e-200 was 0)
    c = scale_for(float(G.abs().max()))
    Gc = G / c if c != 1.0 else G
    mu = Gc.mean(0) * c
    if perturbation == "unit_vec":
        norm = scaled_norm(mu)
        p = mu / norm if norm > 0 else torch.zeros_like(mu)
    elif perturbation == "sign":
        p = torch.sign(mu)
    else:
        if G.shape[0] < 2:
            raise ValueError(f"{ctx.name}: perturbation='std' needs at least 2 finite honest rows")
        std = std_of_rows(Gc)  # one compiled call, or torch's where it does not apply
        p = (std if std is not None else Gc.std(0, correction=1)) * c
    return G, mu, p


def _largest_root(a: float, b: float, c: float) -> float:
    """Largest real root of ``a x^2 + b x + c`` (``a > 0``, ``c <= 0`` so it is >= 0)."""
    disc = max(b * b - 4.0 * a * c, 0.0)
    return (-b + math.sqrt(disc)) / (2.0 * a)


def _centred_distances(
    G: torch.Tensor, mu: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``A = mu - G`` (the rows centred on their mean), ``||a_i||^2`` and the squared distances
    ``||g_i - g_j||^2 = ||a_i||^2 + ||a_j||^2 - 2 <a_i, a_j>`` (clamped at 0), from one product
    ``A A^T`` of the centred float64 rows (``torch.cdist`` took 1.3 ms on 20 x 4810 values, and
    a second read of the rows; centred, the products lose nothing that matters in float64)."""
    A = mu - G
    K = A @ A.T
    return A, K.diagonal(), sqdist_from_gram(K)


def _normalised(
    G: torch.Tensor, mu: torch.Tensor, p: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """``(G / c, mu / c, p / q, c / q)`` with ``c`` and ``q`` the powers of two at the largest
    magnitudes of ``G`` (and ``mu``) and of ``p``; ``c / q = 0`` when ``p = 0``.

    The constraints divided by ``c^2`` are those of ``(G / c, mu / c, p / q)`` with
    ``gamma' = gamma q / c``, on values of at most 1: their squares, and the squares of
    squares in the roots' discriminants, neither overflow (values of 1e200, or of 1e150 in
    one dimension, gave ``gamma = 0``, NaN or inf) nor underflow (values of 1e-200:
    ``gamma = 0``, the attack sent ``mu``), and the answer is ``gamma' * c / q``. Scaling by
    powers of two is exact: normal values get the bits they got unscaled.
    """
    G, mu, p = G.to(torch.float64), mu.to(torch.float64), p.to(torch.float64)
    top = float(p.abs().max())
    if top == 0.0:
        return G, mu, p, 0.0
    c = power_of_two_above(max(float(G.abs().max()), float(mu.abs().max()))) or 1.0
    q = power_of_two_above(top)
    return G / c, mu / c, p / q, c / q


def min_max_gamma(G: torch.Tensor, mu: torch.Tensor, p: torch.Tensor) -> float:
    """Largest ``gamma`` with ``max_i ||mu - gamma p - g_i||^2 <= max_{i,j} ||g_i - g_j||^2``.

    Per honest row: ``||a_i||^2 - 2 gamma <a_i, p> + gamma^2 ||p||^2 <= R^2`` with
    ``a_i = mu - g_i``; the answer is the smallest of the per-row largest roots. Computed on
    values scaled by powers of two (any magnitude of float64 values).
    """
    G, mu, p, unit = _normalised(G, mu, p)
    if unit == 0.0:
        return 0.0
    pp = float(p @ p)
    A, aa, D = _centred_distances(G, mu)
    R2 = float(D.max())
    ap = A @ p
    return unit * min(
        _largest_root(pp, -2.0 * float(x), float(y) - R2) for x, y in zip(ap, aa, strict=True)
    )


def min_sum_gamma(G: torch.Tensor, mu: torch.Tensor, p: torch.Tensor) -> float:
    """Largest ``gamma`` with ``sum_i ||mu - gamma p - g_i||^2 <= min_i sum_j ||g_i - g_j||^2``
    (computed on values scaled by powers of two, as :func:`min_max_gamma`)."""
    G, mu, p, unit = _normalised(G, mu, p)
    if unit == 0.0:
        return 0.0
    pp = float(p @ p)
    A, aa, D = _centred_distances(G, mu)
    T = float(D.sum(1).min())
    S = float(aa.sum())
    return unit * _largest_root(G.shape[0] * pp, -2.0 * float((A @ p).sum()), S - T)


@register("min_max", reference=_REFERENCE, aliases=("minmax",))
def min_max(ctx: AttackContext, *, perturbation: str = "unit_vec") -> torch.Tensor:
    r"""Min-max (AGR-agnostic): ``b = mu - gamma p`` with the largest ``gamma`` such that
    ``max_i ||b - g_i|| <= max_{i,j} ||g_i - g_j||`` (see the module docstring).

    Options:
        perturbation: ``"unit_vec"`` (default, ``p = mu/||mu||``), ``"std"`` (``p = sigma``)
            or ``"sign"`` (``p = sign(mu)``).

    Reference: Shejwalkar, Houmansadr, NDSS 2021 (min-max attack, ``our_attack_dist``).
    """
    G, mu, p = _setup(ctx, perturbation)
    return (mu - min_max_gamma(G, mu, p) * p).to(ctx.dtype)


@register("min_sum", reference=_REFERENCE, aliases=("minsum",))
def min_sum(ctx: AttackContext, *, perturbation: str = "unit_vec") -> torch.Tensor:
    r"""Min-sum (AGR-agnostic): ``b = mu - gamma p`` with the largest ``gamma`` such that
    ``sum_i ||b - g_i||^2 <= min_i sum_j ||g_i - g_j||^2`` (see the module docstring).

    Options:
        perturbation: ``"unit_vec"`` (default), ``"std"`` or ``"sign"`` (as for ``min_max``).

    Reference: Shejwalkar, Houmansadr, NDSS 2021 (min-sum attack, ``our_attack_score``).
    """
    G, mu, p = _setup(ctx, perturbation)
    return (mu - min_sum_gamma(G, mu, p) * p).to(ctx.dtype)


@register(
    "min_max_opt",
    rule_aware=True,
    reference=_REFERENCE + " (AGR-tailored: gamma optimised for the rule)",
    aliases=("minmax_opt", "min_max_tailored"),
)
def min_max_opt(
    ctx: AttackContext,
    *,
    perturbation: str = "unit_vec",
    evaluations: int = 32,
    bounds: tuple[float, float] = (1e-2, 1e2),
) -> torch.Tensor:
    r"""Min-max tailored to the rule: ``b = mu - gamma p`` with ``gamma`` maximising
    ``||F(honest ∪ b) - mu||`` instead of satisfying the min-max constraint.

    ``gamma = t * s / ||p||`` with ``s`` the honest norm spread; the factor ``t`` is searched
    with both signs within ``bounds`` (see :mod:`byzlearn.attacks.optimised`), and the min-max
    ``gamma`` is tried too (and ``min_max``'s own vector, one more rule evaluation), so
    ``min_max_opt`` is at least as damaging as ``min_max`` for a deterministic rule.

    Options:
        perturbation: ``"unit_vec"`` (default), ``"std"`` or ``"sign"``.
        evaluations: rule evaluations of the search (default 32; from 8 to 10^6).
        bounds: the magnitudes ``(lo, hi)`` of ``t`` (default (0.01, 100)).

    Reference: Shejwalkar, Houmansadr, NDSS 2021 (the AGR-tailored attacks optimise gamma for
    the known rule).
    """
    check_search_options(ctx.name, evaluations, bounds)  # also where there is no search
    G, mu, p = _setup(ctx, perturbation)
    pn = scaled_norm(p)
    if pn == 0.0:
        return mu.to(ctx.dtype)
    unit = (ctx.spread() or 1.0) / pn
    gamma = min_max_gamma(G, mu, p)
    byz, _ = optimise(
        ctx,
        mu.to(ctx.dtype),
        (-unit * p).to(ctx.dtype),
        include=(gamma / unit,),
        evaluations=evaluations,
        bounds=bounds,
        exact=(mu - gamma * p).to(ctx.dtype),  # min_max's own vector, to the bit
    )
    return byz
