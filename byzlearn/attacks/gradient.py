"""Gradient-space attacks with a fixed recipe (no rule needed).

Notation: ``g_1..g_h`` are the honest vectors of this step, ``mu`` and ``sigma`` their
coordinate-wise mean and unbiased standard deviation (non-finite entries ignored), ``n = h + f``.
The f Byzantine workers send one identical vector (the convention of the reference codes, see
algorithms.md §0) unless the attack is *distinct* and called with ``identical=False``. Each
attack has its own default for ``identical=None`` (the default of the call), following its paper
where the paper is explicit: ``gaussian`` (the Krum paper's Byzantine workers draw their noise
independently) and ``bitflip`` (each Byzantine worker negates its own gradient) default to
distinct rows; every other attack to identical rows. Attacks that are not *distinct* have only
one vector to send and return f equal rows whatever ``identical`` says.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

from byzlearn.attacks._checks import choice, integer, real
from byzlearn.attacks._context import AttackContext, as_honest_matrix, scaled
from byzlearn.attacks._registry import register


@register(
    "gaussian",
    distinct=True,
    identical_default=False,
    randomized=True,
    reference="Blanchard et al., NeurIPS 2017 (Gaussian Byzantine workers, N(0, 200^2 I))",
    aliases=("gaussian_noise", "noise"),
)
def gaussian(ctx: AttackContext, *, std: float = 200.0, center: str = "zero") -> torch.Tensor:
    r"""Gaussian noise: ``b = c + std * xi`` with ``xi ~ N(0, I_d)`` drawn from the generator.

    Options:
        std: standard deviation of the noise (default 200, the Krum paper's value); ``> 0``.
        center: ``"zero"`` (default, ``c = 0``, as in the paper) or ``"honest"`` (``c = mu``).

    *Distinct*, and distinct **by default** (``identical=None`` means ``False``): each Byzantine
    worker draws its own noise, as the Byzantine workers of the Krum paper do (each one is a
    Gaussian source). ``identical=True`` sends one draw f times (the convention of the
    reference codes for computed attacks; the default of earlier versions).
    Reference: Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries:
    Byzantine Tolerant Gradient Descent", NeurIPS 2017 (Gaussian Byzantine workers).
    """
    std = real(ctx.name, "std", std, positive=True)
    center = choice(ctx.name, "center", center, ("zero", "honest"))
    noise = std * ctx.randn(ctx.rows(), ctx.d)
    if center == "honest":
        noise = noise + ctx.mean()
    return noise if noise.shape[0] == ctx.f else noise[0]


@register(
    "sign_flip",
    reference="Allen-Zhu et al., ICLR 2021; byzfl SignFlipping",
    aliases=("sign_flipping", "signflip", "reverse"),
)
def sign_flip(ctx: AttackContext, *, scale: float = 1.0) -> torch.Tensor:
    r"""Sign flipping, scaled: ``b = -scale * mu``.

    Options:
        scale: the multiple of the honest mean sent with the opposite sign (default 1, byzfl's
            SignFlipping; a large value such as 10 is the Krum paper's "omniscient" attack);
            ``> 0``.

    Reference: Allen-Zhu, Ebrahimian, Li, Alistarh, "Byzantine-Resilient Non-Convex Stochastic
    Gradient Descent", ICLR 2021 (sign flipping); Blanchard et al., NeurIPS 2017 (a large
    negative multiple of the honest mean).
    """
    scale = real(ctx.name, "scale", scale, positive=True)
    return -scale * ctx.mean()


@register(
    "ipm",
    reference="Xie, Koyejo, Gupta, 'Fall of Empires', UAI 2019 (arXiv 1903.03936)",
    aliases=("fall_of_empires", "empire", "inner_product_manipulation", "foe"),
)
def ipm(ctx: AttackContext, *, epsilon: float = 0.1) -> torch.Tensor:
    r"""Inner-product manipulation ("Fall of Empires"): ``b = -epsilon * mu``.

    With a small ``epsilon`` the Byzantine vector is close to the honest ones (so selection rules
    such as Krum keep it) yet has a negative inner product with the honest mean.

    Options:
        epsilon: the factor (default 0.1, the standard "IPM" setting of epfml's ``xie.py`` and of
            ByzantineMomentum's "empire" attack with factor 1.1); any finite value.

    Reference: Xie, Koyejo, Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner
    Product Manipulation", UAI 2019 (arXiv 1903.03936).
    """
    epsilon = real(ctx.name, "epsilon", epsilon)
    return -epsilon * ctx.mean()


def alie_z(n: int, f: int) -> float:
    r"""The z of "A Little Is Enough": ``s = floor(n/2 + 1) - f``, ``z = Phi^{-1}((n - s)/n)``.

    ``s`` is the number of honest "supporters" the Byzantine vector needs to look like a
    majority. E.g. (n, f) = (25, 5): s = 8, z = 0.468; (20, 4): 0.385; (51, 24): 1.760.
    Raises ``ValueError`` when ``s < 1`` or ``s >= n`` (no finite z).
    Reference: Baruch, Baruch, Goldberg, NeurIPS 2019 (arXiv 1902.06156), as in epfml's
    ``alittle.py`` (which uses the variant ``Phi^{-1}((n - f - s)/(n - f))``).
    """
    n = integer("alie_z", "n", n, minimum=1)
    f = integer("alie_z", "f", f, minimum=0)
    s = math.floor(n / 2 + 1) - f
    if not 1 <= s < n:
        raise ValueError(
            f"alie: z cannot be derived for n={n}, f={f} (s = floor(n/2 + 1) - f = {s} must be "
            f"in [1, n)); pass z=... explicitly"
        )
    return NormalDist().inv_cdf((n - s) / n)


@register(
    "alie",
    reference="Baruch, Baruch, Goldberg, 'A Little Is Enough', NeurIPS 2019 (arXiv 1902.06156)",
    aliases=("a_little_is_enough", "little"),
)
def alie(ctx: AttackContext, *, z: float | None = None) -> torch.Tensor:
    r"""A Little Is Enough: ``b = mu - z * sigma`` (coordinate-wise).

    Options:
        z: the number of honest standard deviations to shift by (default ``None``: the paper's
            ``z_max`` from n and f, see :func:`alie_z`; 0.468 for n = 25, f = 5). A negative z
            shifts in the other direction (``mu + |z| sigma``, byzfl's convention). Needs h >= 2.

    Reference: Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing Defenses For
    Distributed Learning", NeurIPS 2019 (arXiv 1902.06156).
    """
    z = alie_z(ctx.n, ctx.f) if z is None else real(ctx.name, "z", z)
    out = ctx.mean() - z * ctx.std()
    if ctx.dtype != torch.float64 and not bool(torch.isfinite(out).all()):
        # z * sigma, or sigma, may overflow where mu - z * sigma does not (float32: 1.5 *
        # 2.3e38; a std of 3.7e38 made z = 0 send NaN)
        wide = ctx.mean().to(torch.float64) - z * ctx.wide_std()
        out = wide.to(ctx.dtype)
    return out


@register(
    "nonfinite",
    distinct=True,
    randomized=True,
    reference="robustness to NaN/Inf inputs (ByzantineMomentum 'nan' attack)",
    aliases=("nan", "non_finite"),
)
def nonfinite(ctx: AttackContext, *, value: str = "nan", fraction: float = 1.0) -> torch.Tensor:
    r"""Non-finite values: ``b_k = value`` on a fraction of the coordinates, ``mu_k`` elsewhere.

    Options:
        value: ``"nan"`` (default), ``"inf"`` or ``"-inf"``.
        fraction: the fraction of coordinates made non-finite, in (0, 1] (default 1: every
            coordinate). With ``fraction < 1`` the ``ceil(fraction * d)`` coordinates are drawn from
            the generator (uniformly without replacement); *distinct*: with ``identical=False``
            each worker draws its own set.

    Reference: the "nan" attack of LPD-EPFL/ByzantineMomentum (``attacks/nan.py``); robust rules
    must treat non-finite inputs explicitly (algorithms.md §12, item 2).
    """
    value = choice(ctx.name, "value", value, ("nan", "inf", "-inf"))
    fraction = real(ctx.name, "fraction", fraction, positive=True)
    if fraction > 1:
        raise ValueError(f"{ctx.name}: fraction must be in (0, 1], got {fraction}")
    bad = float(value)
    if fraction == 1.0:
        return torch.full((ctx.d,), bad, dtype=ctx.dtype, device=ctx.device)
    m = math.ceil(round(fraction * ctx.d, 9))  # 0.07 * 100 is 7.000000000000001
    rows = ctx.rows()
    picks = ctx.rand(rows, ctx.d).argsort(dim=1)[:, :m]
    out = ctx.mean().reshape(1, -1).repeat(rows, 1)
    out.scatter_(1, picks, bad)
    return out if rows == ctx.f else out[0]


@register(
    "bitflip",
    distinct=True,
    identical_default=False,
    reference="Karimireddy, He, Jaggi, 'Learning from History', ICML 2021 (bit flipping)",
    aliases=("bit_flip", "bit_flipping"),
)
def bitflip(ctx: AttackContext, *, own=None) -> torch.Tensor:
    r"""Bit flipping: Byzantine worker ``i`` sends ``b_i = -own_i``, the negation of the gradient
    it computed honestly.

    Options:
        own: the ``(f, d)`` (or ``(f, *shape)``) gradients the Byzantine workers computed honestly
            (tensor, numpy array or sequence). Default ``None``: worker ``i`` stands in with the
            ``(i mod h')``-th fully finite honest vector (its data resembles the honest workers').

    *Distinct*, and distinct **by default** (``identical=None`` means ``False``): row ``i`` is
    ``-own_i``, each Byzantine worker negating its own gradient as in the paper; with
    ``identical=True`` every worker sends ``-own_0`` (the default of earlier versions).
    Reference: Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust
    Optimization", ICML 2021 (bit-flipping attack); algorithms.md §8.
    """
    if own is None:
        idx = ctx.finite_index()
        own_m = ctx.honest[idx[torch.arange(ctx.f) % idx.numel()]]
    else:
        own_m, _ = as_honest_matrix(own, f"{ctx.name} (own)")
        if tuple(own_m.shape) != (ctx.f, ctx.d):
            raise ValueError(
                f"{ctx.name}: own must hold the f={ctx.f} Byzantine workers' own gradients of "
                f"d={ctx.d} values, got shape {tuple(own_m.shape)}"
            )
        own_m = own_m.to(device=ctx.device, dtype=ctx.dtype)
    return -own_m if not ctx.identical else -own_m[0]


@register("zero", reference="the 'no update' / crashed-but-replying worker", aliases=("no_update",))
def zero(ctx: AttackContext) -> torch.Tensor:
    r"""Zero / no update: ``b = 0``.

    The behaviour of a worker that replies but computes nothing (a lazy or stale worker); the
    honest mean is diluted by ``f / n`` under averaging. No options.
    Reference: a standard baseline (e.g. the "zero gradient" attack of byzfl's benchmarks).
    """
    return torch.zeros(ctx.d, dtype=ctx.dtype, device=ctx.device)


@register(
    "large_norm",
    distinct=True,
    randomized=True,
    reference="Blanchard et al., NeurIPS 2017 (arbitrarily large Byzantine vectors)",
    aliases=("large",),
)
def large_norm(ctx: AttackContext, *, scale: float = 100.0) -> torch.Tensor:
    r"""Large norm: ``b = scale * max_i ||g_i|| * u`` with ``u`` a uniformly random unit vector.

    ``u = xi / ||xi||``, ``xi ~ N(0, I_d)`` from the generator; ``max_i ||g_i||`` is over the fully
    finite honest vectors (1 when they are all zero). Any linear rule is moved arbitrarily far;
    robust rules must discard the vector.

    Options:
        scale: the norm of ``b`` as a multiple of the largest honest norm (default 100); ``> 0``.

    *Distinct*: with ``identical=False`` each worker draws its own direction.
    Reference: Blanchard et al., NeurIPS 2017 (impossibility for linear rules: one Byzantine
    vector of arbitrary norm moves the average anywhere).
    """
    scale = real(ctx.name, "scale", scale, positive=True)
    # max_i ||g_i||, also where the squares overflow or underflow (rows of 1e200 gave inf,
    # rows of 1e-200 gave 0)
    ref = scaled(
        lambda G: float(torch.linalg.vector_norm(G, dim=1).max()),
        ctx.finite_rows().to(torch.float64),
    )
    ref = ref if ref > 0 else 1.0
    xi = ctx.randn(ctx.rows(), ctx.d).to(torch.float64)
    xi = xi / torch.linalg.vector_norm(xi, dim=1, keepdim=True).clamp_min(1e-300)
    out = (scale * ref * xi).to(ctx.dtype)
    return out if out.shape[0] == ctx.f else out[0]
