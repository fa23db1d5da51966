"""Independent references for the optimised attacks, written from the papers' formulas.

Each optimised attack sends ``base + t * direction`` (f copies) and its fixed counterpart is one
factor ``t`` of the same family. :func:`family` builds the three in numpy (ALIE's z from scipy,
the min-max gamma by the authors' bisection), and :func:`dense_scan` is the brute-force answer
the library's factor search must approach: the largest damage over 2 x k factors on a geometric
grid of both signs, plus the fixed factor.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import norm

import byzlearn.aggregators as agg

from .test_minmax import bisection

PAIRS = (("alie", "alie_opt"), ("ipm", "ipm_opt"), ("min_max", "min_max_opt"))


def family(attack: str, H: np.ndarray, f: int, **kw) -> tuple[np.ndarray, np.ndarray, float]:
    """``(base, direction, fixed_factor)`` of the optimised ``attack`` on honest ``H``."""
    h = H.shape[0]
    n = h + f
    mu = H.mean(0)
    if attack == "alie_opt":  # mu + t sigma; ALIE is t = -z_max (Baruch et al. 2019)
        z = kw.get("z")
        if z is None:
            s = math.floor(n / 2 + 1) - f
            z = norm.ppf((n - s) / n)
        return mu, H.std(0, ddof=1), -float(z)
    if attack == "ipm_opt":  # t mu; IPM is t = -epsilon (Xie et al. 2019)
        return np.zeros_like(mu), mu, -float(kw.get("epsilon", 0.1))
    if attack == "min_max_opt":  # mu - t spread p, p = mu/||mu||; min-max is its gamma
        spread = math.sqrt(float(((H - mu) ** 2).sum()) / (h - 1))
        p = mu / np.linalg.norm(mu)
        gamma = float(np.linalg.norm(mu - bisection(H, "unit_vec", "max")))
        return mu, -spread * p, gamma / spread
    raise AssertionError(attack)


def damage(rule: str, H: np.ndarray, byz: np.ndarray, f: int) -> float:
    """``||F(H ∪ {byz} x f) - mean(H)||`` (a non-finite aggregate counts as inf)."""
    X = torch.from_numpy(np.vstack([H, np.tile(byz, (f, 1))]))
    out = agg.get(rule)(X, f=f).numpy()
    val = float(np.linalg.norm(out - H.mean(0)))
    return val if math.isfinite(val) else math.inf


def dense_scan(
    rule: str,
    H: np.ndarray,
    f: int,
    base: np.ndarray,
    direction: np.ndarray,
    fixed: float,
    k: int = 60,
    bounds: tuple[float, float] = (1e-2, 1e2),
) -> float:
    """The largest damage over ``fixed`` and 2 x ``k`` factors +-m, m geometric in bounds."""
    mags = np.geomspace(*bounds, k)
    factors = [fixed, *(s * m for m in mags for s in (1.0, -1.0))]
    return max(damage(rule, H, base + t * direction, f) for t in factors)
