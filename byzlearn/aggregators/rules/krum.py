"""Selection by distance: Krum, Multi-Krum and the medoid, on the shared distance matrix.

Non-finite rows are infinitely far from every other row: they get infinite scores and are never
selected; a rule raises ``ValueError`` when it would have to select one.
"""

from __future__ import annotations

import numpy as np
import torch

from byzlearn.aggregators._gram import Inputs
from byzlearn.aggregators._registry import Combination, equal_weights, register


def krum_scores(D: torch.Tensor, f: int) -> np.ndarray:
    """Krum scores: ``s(i) = sum of the n - f - 2 smallest ||x_i - x_j||^2 over j != i``.

    With fewer rows than the standalone requirement (inside Bulyan), ``max(1, n - f - 2)``
    neighbours are used.
    """
    n = D.shape[0]
    if n == 1:
        return np.zeros(1)
    k = max(1, n - f - 2)
    Dn = D.numpy().copy()
    Dn.flat[:: n + 1] = np.inf  # the diagonal (what np.fill_diagonal does, minus its checks)
    part = np.sort(Dn, axis=1)[:, :k]
    with np.errstate(invalid="ignore"):
        return part.sum(axis=1)


def _rank(scores: np.ndarray, m: int, name: str) -> np.ndarray:
    order = np.argsort(scores, kind="stable")[:m]
    if not np.all(np.isfinite(scores[order])):
        finite = int(np.isfinite(scores).sum())
        raise ValueError(
            f"{name}: only {finite} input(s) have a finite score but {m} must be selected "
            "(too many inputs hold non-finite values)"
        )
    return order


@register(
    "krum", min_n=lambda f: 2 * f + 3, requirement="n >= 2f + 3", selects=True, guessable=True
)
def krum(inputs: Inputs, f: int) -> Combination:
    r"""Krum: the input with the smallest score ``s(i) = sum_{i -> j} ||x_i - x_j||^2``, where
    ``i -> j`` ranges over the ``n - f - 2`` inputs closest to ``x_i`` (squared distances, as in
    the paper).

    Reference: Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries:
    Byzantine Tolerant Gradient Descent", NeurIPS 2017. Requirement: n >= 2f + 3.
    Cost: one Gram pass O(n^2 d) + O(n^2 log n); output is a copy of one input.
    """
    order = _rank(krum_scores(inputs.sqdist(), f), 1, "krum")
    return Combination(
        inputs=inputs, alpha=equal_weights(inputs.n, order), kept=torch.from_numpy(order)
    )


@register(
    "multi_krum",
    min_n=lambda f: 2 * f + 3,
    requirement="n >= 2f + 3",
    selects=True,
    guessable=True,
)
def multi_krum(inputs: Inputs, f: int, *, m: int | None = None) -> Combination:
    r"""Multi-Krum: the average of the ``m`` inputs with the smallest Krum scores
    (default ``m = n - f``; ``m = 1`` is Krum, ``m = n`` the average).

    Reference: Blanchard et al., NeurIPS 2017 (Multi-Krum, Section 5). Requirement: n >= 2f + 3,
    1 <= m <= n. Cost: one Gram pass + one weighted sum of m rows.
    """
    m = inputs.n - f if m is None else int(m)
    if not 1 <= m <= inputs.n:
        raise ValueError(f"multi_krum: m must be in [1, n={inputs.n}], got m={m}")
    order = _rank(krum_scores(inputs.sqdist(), f), m, "multi_krum")
    alpha = equal_weights(inputs.n, order)
    return Combination(inputs=inputs, alpha=alpha, kept=torch.from_numpy(np.sort(order)))


@register(
    "medoid", min_n=lambda f: 2 * f + 1, requirement="n >= 2f + 1", selects=True, guessable=True
)
def medoid(inputs: Inputs, f: int) -> Combination:
    r"""Medoid: the input minimising the sum of Euclidean distances to the other finite inputs,
    ``argmin_i sum_j ||x_i - x_j||``.

    Reference: El Mhamdi, Guerraoui, Rouault, ICML 2018 (Bulyan paper, as a weakly resilient rule);
    breakdown point 1/2. Requirement: n >= 2f + 1. Cost: one Gram pass + O(n^2).
    """
    D = inputs.sqdist().numpy()
    good = ~inputs.bad.numpy()
    if not good.any():
        raise ValueError("medoid: every input holds non-finite values")
    sums = np.sqrt(D[:, good]).sum(axis=1)
    sums[~good] = np.inf
    best = int(np.argmin(sums))
    alpha = equal_weights(inputs.n, best)
    return Combination(inputs=inputs, alpha=alpha, kept=torch.tensor([best]))
