"""The factor search of the rule-aware ("optimised") attacks: bracket in both directions, refine.

An optimised attack sends ``base + t * direction`` and wants the factor ``t`` that maximises an
objective (the distance between the rule's output and the honest mean, or its part on target
coordinates). The objective is cheap to state but not smooth: a selection rule such as Krum keeps
the Byzantine vector up to some factor and drops it beyond, so the objective typically rises and
then falls abruptly, and may do so on either side of 0. :func:`maximise_factor` therefore

1. **brackets** on a geometric grid of ``k`` magnitudes between ``bounds[0]`` and ``bounds[1]``,
   taken with **both signs** (so the search never assumes the sign of the best factor), plus the
   attack's fixed default factor(s) (``include``: the optimised variant is then, by construction,
   at least as damaging as the fixed one for a deterministic rule);
2. **refines** by golden-section search between the two grid neighbours of the best grid point
   (0 counts as a neighbour between the negative and the positive grid), with the evaluations
   left; when both probes tie (e.g. both fell past the cliff) it keeps the side holding the best
   point seen so far;
3. returns the best factor ever evaluated. Ties go to the first one evaluated: the included
   factors, then the grid by increasing magnitude (``+m`` before ``-m``), so on a plateau (e.g.
   every factor past the point where a selection rule rejects the vector) the bracket is placed
   at the plateau's small end, next to the cliff where the damage is largest.

It uses at most ``evaluations`` objective calls (each one rule evaluation) and is deterministic:
``k = max(2, (evaluations - len(include)) // 4)`` grid magnitudes, about half the budget for the
grid and half for the refinement.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618...
MAX_EVALUATIONS = 10**6
"""The largest search budget taken: each evaluation aggregates once, every step."""


def check_search_options(
    name: str, evaluations: object, bounds: object
) -> tuple[int, float, float]:
    """Validate the ``evaluations`` and ``bounds`` options of an optimised attack."""
    if isinstance(evaluations, bool) or not isinstance(evaluations, int):
        raise TypeError(f"{name}: evaluations must be an int, got {type(evaluations).__name__}")
    if evaluations < 8:
        raise ValueError(f"{name}: evaluations must be >= 8, got {evaluations}")
    if evaluations > MAX_EVALUATIONS:  # 10**30 built a grid of 2.5e29 factors
        raise ValueError(
            f"{name}: evaluations must be <= {MAX_EVALUATIONS} (rule evaluations per step), "
            f"got {evaluations}"
        )
    try:
        lo, hi = (float(b) for b in cast(Iterable[Any], bounds))
    except (TypeError, ValueError):
        raise TypeError(
            f"{name}: bounds must be a pair of floats (lo, hi), got {bounds!r}"
        ) from None
    if not (0.0 < lo < hi < math.inf):
        raise ValueError(f"{name}: bounds must satisfy 0 < lo < hi < inf, got {(lo, hi)}")
    return evaluations, lo, hi


def grid(lo: float, hi: float, k: int) -> list[float]:
    """``k`` geometrically spaced magnitudes from ``lo`` to ``hi`` (inclusive)."""
    if k == 1:
        return [hi]
    ratio = (hi / lo) ** (1.0 / (k - 1))
    return [lo * ratio**i for i in range(k)]


def maximise_factor(
    objective: Callable[[float], float],
    *,
    bounds: tuple[float, float] = (1e-2, 1e2),
    evaluations: int = 32,
    include: Sequence[float] = (),
) -> tuple[float, float, int]:
    """Maximise ``objective(t)`` over ``t`` in ``[-hi, -lo] ∪ [lo, hi]`` (plus ``include``).

    Returns ``(best_t, best_value, calls)``. See the module docstring for the algorithm.
    A NaN objective value counts as ``-inf`` (never chosen over a number).
    """
    lo, hi = bounds
    include = [float(t) for t in include]
    k = max(2, (evaluations - len(include)) // 4)
    mags = grid(lo, hi, k)
    points: list[float] = []
    for t in [*include, *(x for m in mags for x in (m, -m))]:
        if t not in points:
            points.append(t)
    points = points[:evaluations]

    values: dict[float, float] = {}
    best_t, best_v = math.nan, -math.inf

    def evaluate(t: float) -> float:
        nonlocal best_t, best_v
        v = float(objective(t))
        if math.isnan(v):
            v = -math.inf
        values[t] = v
        if v > best_v or math.isnan(best_t):
            best_t, best_v = t, v
        return v

    for t in points:
        evaluate(t)
    calls = len(points)

    # bracket: the neighbours of the best point in the sorted evaluated points (and 0)
    anchors = sorted({*values, 0.0})
    i = anchors.index(best_t)
    a = anchors[max(i - 1, 0)]
    b = anchors[min(i + 1, len(anchors) - 1)]
    left = evaluations - calls
    if left >= 2 and b > a:
        c = b - _INV_PHI * (b - a)
        e = a + _INV_PHI * (b - a)
        fc, fe = evaluate(c), evaluate(e)
        calls += 2
        while calls < evaluations:
            # on a tie (e.g. both probes past a cliff) keep the side holding the best point
            if fc > fe or (fc == fe and best_t < e):
                b, e, fe = e, c, fc
                c = b - _INV_PHI * (b - a)
                fc = evaluate(c)
            else:
                a, c, fc = c, e, fe
                e = a + _INV_PHI * (b - a)
                fe = evaluate(e)
            calls += 1
    return best_t, best_v, calls
