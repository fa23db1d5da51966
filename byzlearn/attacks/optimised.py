"""Rule-aware attacks: the leeway attack and the optimised variants of ALIE and IPM.

Each sends ``b(t) = base + t * direction`` (f identical copies) with the factor ``t`` chosen by
:func:`byzlearn.attacks._search.maximise_factor` to maximise the damage done to the rule in use:
a bracketing search over a geometric grid of factors of **both signs** within ``bounds``, which
also tries the attack's fixed default factor, refined by golden-section search around the best
grid point; at most ``evaluations`` rule evaluations, deterministic. Because the fixed factor is
among the candidates, the optimised variant is at least as damaging as the fixed one (for a
deterministic rule). The damage is ``||F(honest ∪ byz) - mu||`` (``mu`` the honest mean; a
non-finite aggregate counts as infinitely damaging), or its part on target coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from byzlearn.attacks._checks import choice, real
from byzlearn.attacks._context import AttackContext
from byzlearn.attacks._registry import register
from byzlearn.attacks._search import check_search_options, maximise_factor
from byzlearn.attacks.gradient import alie_z


def optimise(
    ctx: AttackContext,
    base: torch.Tensor,
    direction: torch.Tensor,
    *,
    include: Sequence[float],
    evaluations: object,
    bounds: object,
    coordinates: torch.Tensor | None = None,
    exact: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float]:
    """``(base + t* direction, t*)`` with ``t*`` the factor maximising ``ctx.deviation``.

    ``exact``: a fixed attack's own vector, which ``base + t direction`` at its factor (in
    ``include``) reproduces only up to rounding; it is evaluated too (one more call) and
    returned (with ``t* = nan``) where it does at least as much damage, so that the search is
    never less damaging than that attack: a rounding unit can decide a tie of the rule (the
    min-max vector sits exactly on its distance limit, a tie for Krum-like selections).
    """
    evaluations, lo, hi = check_search_options(ctx.name, evaluations, bounds)

    def objective(t: float) -> float:
        return ctx.deviation(base + t * direction, coordinates)

    t, best, _ = maximise_factor(
        objective, bounds=(lo, hi), evaluations=evaluations, include=include
    )
    if exact is not None:
        value = float(ctx.deviation(exact, coordinates))
        if value >= best or math.isnan(best):
            return exact, math.nan
    return base + t * direction, t


def _coordinates(ctx: AttackContext, coordinates: object) -> torch.Tensor:
    if isinstance(coordinates, str):
        choice(ctx.name, "coordinates", coordinates, ("all",))
        return torch.arange(ctx.d, device=ctx.device)
    if isinstance(coordinates, bool):
        raise TypeError(f"{ctx.name}: coordinates must be an int, a sequence of ints or 'all'")
    try:
        idx = torch.as_tensor(coordinates).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(
            f"{ctx.name}: coordinates must be an int, a sequence of ints or 'all', "
            f"got {coordinates!r}"
        ) from None
    if idx.numel() == 0 or idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise TypeError(f"{ctx.name}: coordinates must be non-empty integer indices or 'all'")
    if bool((idx < 0).any()) or bool((idx >= ctx.d).any()):
        raise ValueError(
            f"{ctx.name}: coordinates must lie in [0, d={ctx.d}), got {idx.tolist()[:8]}"
        )
    return torch.unique(idx).to(ctx.device)


@register(
    "leeway",
    rule_aware=True,
    needs_rule=lambda options: options["epsilon"] is None,
    reference="El Mhamdi, Guerraoui, Rouault, 'The Hidden Vulnerability of Distributed Learning "
    "in Byzantium', ICML 2018 (arXiv 1802.07927)",
    aliases=("bulyan_attack", "hidden_vulnerability"),
)
def leeway(
    ctx: AttackContext,
    *,
    coordinates: int | Sequence[int] | str = 0,
    epsilon: float | None = None,
    objective: str = "target",
    evaluations: int = 32,
    bounds: tuple[float, float] = (1e-2, 1e2),
) -> torch.Tensor:
    r"""The leeway attack of the Bulyan paper: ``b = mu + epsilon * e_J``.

    ``e_J`` is the indicator vector of the target coordinates ``J``. Rules that only control an
    l2 distance (Krum, geometric median, MDA) leave the adversary a per-coordinate leeway of
    order ``sqrt(d) sigma``: a vector that differs from ``mu`` by that much on one coordinate is
    still as close to the honest vectors as they are to each other. Bulyan removes it.

    Options:
        coordinates: the target ``J``: an index, a sequence of indices or ``"all"`` (default 0).
        epsilon: the shift; default ``None``: chosen by the search (then the attack needs the
            rule), ``epsilon = t * s`` with ``s = sqrt(sum_i ||g_i - mu||^2 / (h - 1))`` the
            honest norm spread (1 when it is 0) and ``t`` maximising the objective.
        objective: ``"target"`` (default): ``||F - mu||`` restricted to ``J``; ``"distance"``:
            the whole ``||F - mu||`` (ByzantineMomentum maximises its square, the same argmax).
        evaluations: rule evaluations of the search (default 32; from 8 to 10^6).
        bounds: the magnitudes ``(lo, hi)`` of ``t`` searched, both signs (default (0.01, 100)).

    Reference: El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed Learning
    in Byzantium", ICML 2018 (arXiv 1802.07927); ByzantineMomentum ``attacks/identical.py``
    ("bulyan" attack, line search over the factor).
    """
    J = _coordinates(ctx, coordinates)
    objective = choice(ctx.name, "objective", objective, ("target", "distance"))
    check_search_options(ctx.name, evaluations, bounds)  # also with a given epsilon
    e = torch.zeros(ctx.d, dtype=ctx.dtype, device=ctx.device)
    e[J] = 1.0
    mu = ctx.mean()
    if epsilon is not None:
        return mu + real(ctx.name, "epsilon", epsilon) * e
    s = ctx.spread() or 1.0
    byz, _ = optimise(
        ctx,
        mu,
        s * e,
        include=(),
        evaluations=evaluations,
        bounds=bounds,
        coordinates=J if objective == "target" else None,
    )
    return byz


@register(
    "alie_opt",
    rule_aware=True,
    reference="Baruch et al., NeurIPS 2019, factor optimised for the rule as in "
    "Shejwalkar & Houmansadr, NDSS 2021 and ByzantineMomentum",
    aliases=("alie_optimised", "alie_optimized"),
)
def alie_opt(
    ctx: AttackContext,
    *,
    z: float | None = None,
    evaluations: int = 32,
    bounds: tuple[float, float] = (1e-2, 1e2),
) -> torch.Tensor:
    r"""ALIE with the factor optimised for the rule: ``b = mu + t * sigma``, ``t`` maximising
    ``||F(honest ∪ b) - mu||``.

    The fixed ALIE vector is ``t = -z``; the search tries it too, so ``alie_opt`` is at least as
    damaging as ``alie(z)`` for a deterministic rule.

    Options:
        z: the fixed z tried by the search (default ``None``: the paper's ``z_max(n, f)`` when it
            exists, see :func:`~byzlearn.attacks.gradient.alie_z`).
        evaluations: rule evaluations of the search (default 32; from 8 to 10^6).
        bounds: the magnitudes ``(lo, hi)`` of ``t``, in units of sigma, searched with both signs
            (default (0.01, 100)).

    Reference: Baruch, Baruch, Goldberg, "A Little Is Enough", NeurIPS 2019 (arXiv 1902.06156);
    the search of the factor for the rule in use follows the "optimal" attacks of
    LPD-EPFL/ByzantineMomentum (``attacks/identical.py``, line search) and the AGR-tailored
    attacks of Shejwalkar & Houmansadr, NDSS 2021.
    """
    if z is None:
        try:
            include: tuple[float, ...] = (-alie_z(ctx.n, ctx.f),)
        except ValueError:
            include = ()
    else:
        include = (-real(ctx.name, "z", z),)
    byz, _ = optimise(
        ctx, ctx.mean(), ctx.std(), include=include, evaluations=evaluations, bounds=bounds
    )
    return byz


@register(
    "ipm_opt",
    rule_aware=True,
    reference="Xie, Koyejo, Gupta, UAI 2019, factor optimised for the rule "
    "(ByzantineMomentum 'empire' with line search)",
    aliases=("ipm_optimised", "ipm_optimized", "fall_of_empires_opt"),
)
def ipm_opt(
    ctx: AttackContext,
    *,
    epsilon: float = 0.1,
    evaluations: int = 32,
    bounds: tuple[float, float] = (1e-2, 1e2),
) -> torch.Tensor:
    r"""Inner-product manipulation with the factor optimised for the rule: ``b = t * mu``,
    ``t`` maximising ``||F(honest ∪ b) - mu||``.

    The fixed IPM vector is ``t = -epsilon``; the search tries it too, so ``ipm_opt`` is at least
    as damaging as ``ipm(epsilon)`` for a deterministic rule.

    Options:
        epsilon: the fixed epsilon tried by the search (default 0.1).
        evaluations: rule evaluations of the search (default 32; from 8 to 10^6).
        bounds: the magnitudes ``(lo, hi)`` of ``t`` searched with both signs (default
            (0.01, 100)).

    Reference: Xie, Koyejo, Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner
    Product Manipulation", UAI 2019 (arXiv 1903.03936); factor search as in ByzantineMomentum's
    "empire" attack (``attacks/identical.py``, line search).
    """
    epsilon = real(ctx.name, "epsilon", epsilon)
    mu = ctx.mean()
    byz, _ = optimise(
        ctx,
        torch.zeros_like(mu),
        mu,
        include=(-epsilon,),
        evaluations=evaluations,
        bounds=bounds,
    )
    return byz
