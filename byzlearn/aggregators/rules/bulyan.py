"""Bulyan over any selection rule: iterated selection, then coordinate-wise trimming."""

from __future__ import annotations

import torch

from byzlearn.aggregators import _select as sel
from byzlearn.aggregators._gram import Inputs
from byzlearn.aggregators._registry import Combination, register, spec


def _closest_row(inputs: Inputs, result) -> int:
    """Index of the row of ``inputs`` closest to a rule's output (bad rows never chosen)."""
    if isinstance(result, Combination) and result.kept is not None and len(result.kept) == 1:
        return int(result.kept[0])
    if isinstance(result, Combination) and result.value is None:
        alpha = result.alpha
        if result.centre_weight == 0.0 and abs(float(alpha.sum()) - 1.0) < 1e-9:
            diff = torch.eye(inputs.n, dtype=torch.float64) - alpha[None, :]
            G = inputs.centred_gram()
            sq = ((diff @ G) * diff).sum(dim=1)
            sq[inputs.bad] = float("inf")
            return int(torch.argmin(sq))
        z = result.vector()
    else:
        z = result.vector() if isinstance(result, Combination) else result
    Y = inputs.materialize()
    sq = torch.stack([torch.sum((Y[i] - z).double() ** 2) for i in range(inputs.n)]).cpu()
    sq[~torch.isfinite(sq)] = float("inf")
    sq[inputs.bad] = float("inf")
    return int(torch.argmin(sq))


@register("bulyan", min_n=lambda f: 4 * f + 3, requirement="n >= 4f + 3", selects=True)
def bulyan(
    inputs: Inputs,
    f: int,
    *,
    selection: str = "krum",
    selection_options: dict | None = None,
    theta: int | None = None,
    beta: int | None = None,
) -> Combination:
    r"""Bulyan: select ``theta`` inputs by iterating a rule, then trim coordinate-wise.

    1. Selection: R = all inputs, S = {}. Repeat theta = n - 2f times: apply the rule A
       (``selection``, Krum by default) to R and move its choice from R to S (when A's output is
       not one of the inputs, move the input closest to it).
    2. For each coordinate j: the mean of the beta = theta - 2f values ``s[j], s in S``, closest
       to their median.

    Reference: El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed Learning in
    Byzantium", ICML 2018. Requirement: n >= 4f + 3. Inside the iteration, Krum on a shrinking R
    uses ``max(1, |R| - f - 2)`` neighbours. ``selection`` may be any registered rule (distance-
    based ones run on the shared Gram matrix without touching the d coordinates). Non-finite rows
    are never selected; in phase 2 the selected rows' missing coordinates count as their imputed
    values (the coordinate-wise median, see ``docs/aggregators.md``). Cost: one Gram pass + theta
    runs of A on n x n matrices + one kernel pass over the theta selected rows.
    """
    n = inputs.n
    theta = n - 2 * f if theta is None else int(theta)
    beta = theta - 2 * f if beta is None else int(beta)
    if not 1 <= theta <= n:
        raise ValueError(f"bulyan: theta must be in [1, n={n}], got theta={theta}")
    if not 1 <= beta <= theta:
        raise ValueError(f"bulyan: beta must be in [1, theta={theta}], got beta={beta}")
    rule = spec(selection)
    if rule.kind != "rule":
        raise ValueError(f"bulyan: selection must be an aggregation rule, got {selection!r}")
    options = dict(selection_options or {})
    remaining = list(range(n))
    chosen: list[int] = []
    for _ in range(theta):
        sub = inputs.subset(remaining)
        pick = _closest_row(sub, rule.impl(sub, f, **options))
        if bool(sub.bad[pick]):
            raise ValueError("bulyan: the selection reached an input with non-finite values")
        chosen.append(remaining.pop(pick))
    kept = torch.tensor(sorted(chosen))
    drop = theta - beta
    if inputs.A is None and inputs.missing is None:
        value = sel.coordinatewise(
            inputs.X, sel.CLOSEST_TO_MEDIAN, drop, drop + 1, "bulyan", rows=kept
        )
    else:
        value = sel.coordinatewise_inputs(
            inputs.subset(kept), sel.CLOSEST_TO_MEDIAN, drop, drop + 1, "bulyan"
        )
    return Combination(inputs=inputs, alpha=None, kept=kept, value=value)
