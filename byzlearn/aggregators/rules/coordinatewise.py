"""Coordinate-wise rules: average, median, trimmed mean, MeaMed, Phocas.

All of them run through the one selection kernel (:mod:`byzlearn.aggregators._select`): per
coordinate, sort the finite values and take a statistic. Non-finite values are *missing*: each
coordinate is aggregated over its k finite values; a coordinate with fewer than 2f + 1 finite values
(1 for ``average``) raises ``ValueError``. Cost: O(n d) memory traffic plus a sorting network of
O(n log^2 n) compare-exchanges per coordinate.
"""

from __future__ import annotations

import numpy as np
import torch

from byzlearn.aggregators import _select as sel
from byzlearn.aggregators._gram import Inputs
from byzlearn.aggregators._mean import mean_of_finite, mean_of_rows
from byzlearn.aggregators._registry import register

# Up to this many rows the selection kernel sorts each coordinate's values in registers (one
# network, no merge), which is also the faster NaN-aware mean there: ``average`` with NaN rows at
# 25 x 1e6, one thread, 2.25 floors against 4.9 for :func:`mean_of_finite`; beyond, the sort
# merges through a buffer and the finite-values pass is faster (200 x 1e6: 4.85 -> 2.4-3.1
# floors with sparse NaN values, 3.58 -> 2.4-3.0 with a NaN row; 100 rows 3.41 -> 2.5-2.8, but
# 2.36 -> 2.4-3.2 with a NaN row).
_SORTED_IN_REGISTERS = 25


def _twice_f_plus_one(f: int) -> int:
    return 2 * f + 1


@register("average", min_n=lambda f: 1, requirement="n >= 1", needs_gram=False)
def average(inputs: Inputs, f: int) -> torch.Tensor:
    r"""Arithmetic mean, ``(1/n) sum_i x_i``: the non-robust baseline.

    A single Byzantine input moves it anywhere (Blanchard et al., NeurIPS 2017, Lemma 1), so ``f``
    is accepted for a uniform interface but not used. Non-finite values are missing: a coordinate
    is averaged over its finite values. Requirement: n >= 1. Cost: O(n d).
    """
    Y = inputs.materialize()
    out = mean_of_rows(Y)  # one pass, None when a value is not finite
    if out is None and Y.shape[0] > _SORTED_IN_REGISTERS:  # missing values, many rows: the
        out = mean_of_finite(Y)  # finite ones of each block that has some (no sort)
    if out is None:  # a coordinate without a finite value (raises), other devices, overflow
        out = sel.coordinatewise(Y, sel.MEAN, 0, 1, "average")
    return out


@register("median", min_n=_twice_f_plus_one, requirement="n >= 2f + 1", needs_gram=False)
def median(inputs: Inputs, f: int) -> torch.Tensor:
    r"""Coordinate-wise median: ``out[j] = median_i x_i[j]`` (mean of the two middle values for
    an even count).

    Reference: Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning: Towards
    Optimal Statistical Rates", ICML 2018. Requirement: n >= 2f + 1 (per coordinate, at least
    2f + 1 finite values). Each output coordinate lies within the range of the honest values.
    Cost: O(n d) traffic + O(n log^2 n) per coordinate.
    """
    return sel.coordinatewise_inputs(inputs, sel.MEDIAN, 0, 2 * f + 1, "median")


@register("trimmed_mean", min_n=_twice_f_plus_one, requirement="n >= 2f + 1", needs_gram=False)
def trimmed_mean(inputs: Inputs, f: int, *, trim: int | None = None) -> torch.Tensor:
    r"""Coordinate-wise trimmed mean: per coordinate, drop the ``b`` largest and ``b`` smallest
    values and average the ``k - 2b`` others (``b = trim``, default f).

    Reference: Yin et al., ICML 2018; ByzantineMomentum ``trmean``. Requirement: n >= 2f + 1 and
    n >= 2b + 1 (per coordinate, 2b + 1 finite values). Cost as :func:`median`.
    """
    if trim is not None and (isinstance(trim, bool) or not isinstance(trim, (int, np.integer))):
        raise TypeError(f"trimmed_mean: trim must be an int or None, got {type(trim).__name__}")
    b = f if trim is None else int(trim)
    if b < f:
        raise ValueError(f"trimmed_mean: trim={b} must be >= f={f} to remove f outliers per side")
    if inputs.n < 2 * b + 1:
        raise ValueError(f"trimmed_mean needs n >= 2*trim + 1, got n={inputs.n}, trim={b}")
    return sel.coordinatewise_inputs(inputs, sel.TRIMMED, b, 2 * b + 1, "trimmed_mean")


@register("meamed", min_n=_twice_f_plus_one, requirement="n >= 2f + 1", needs_gram=False)
def meamed(inputs: Inputs, f: int) -> torch.Tensor:
    r"""Mean around the median: per coordinate, the mean of the ``k - f`` values closest to the
    coordinate-wise median (ties towards the smaller value).

    Reference: Xie, Koyejo, Gupta, "Generalized Byzantine-tolerant SGD", arXiv 1802.10116 (2018).
    Requirement: n >= 2f + 1. Cost as :func:`median`.
    """
    return sel.coordinatewise_inputs(inputs, sel.CLOSEST_TO_MEDIAN, f, 2 * f + 1, "meamed")


@register("phocas", min_n=_twice_f_plus_one, requirement="n >= 2f + 1", needs_gram=False)
def phocas(inputs: Inputs, f: int) -> torch.Tensor:
    r"""Phocas: per coordinate, the mean of the ``k - f`` values closest to the f-trimmed mean.

    Reference: Xie, Koyejo, Gupta, "Phocas: dimensional Byzantine-resilient stochastic gradient
    descent", arXiv 1805.09682 (2018). Requirement: n >= 2f + 1. Cost as :func:`median`.
    """
    return sel.coordinatewise_inputs(
        inputs, sel.CLOSEST_TO_TRIMMED, f, 2 * f + 1, "phocas"
    )
