"""Learning-rate schedules of the server step size, built from :class:`OptimizerConfig`."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

from byzlearn.experiments.config import OptimizerConfig

__all__ = ["learning_rate"]


def learning_rate(opt: OptimizerConfig, steps: int) -> Callable[[int], float]:
    """``lr(t)`` for rounds ``t = 1..steps``.

    - ``constant``: ``lr``;
    - ``step``: ``lr * gamma ** (number of milestones <= t)``;
    - ``cosine``: ``lr * (1 + cos(pi * (t - 1) / steps)) / 2``;
    - ``inverse``: ``lr / (1 + t / decay_steps)`` (the ALIE paper's decay).

    Raises ``ValueError`` (one line, before any round) for a step schedule with a milestone
    before round 1, or whose step size leaves the floats within the ``steps`` rounds
    (``gamma ** k`` overflows: a round that would crash, or step with an infinite size).
    """
    lr, kind = float(opt.lr), opt.schedule
    if kind == "constant":
        return lambda t: lr
    if kind == "step":
        return _step(lr, float(opt.gamma), sorted(opt.milestones), steps)
    if kind == "cosine":
        return lambda t: lr * 0.5 * (1.0 + math.cos(math.pi * (t - 1) / max(1, steps)))
    if kind == "inverse":
        return lambda t: lr / (1.0 + t / opt.decay_steps)
    raise ValueError(f"optimizer.schedule: unknown schedule {kind!r}")  # pragma: no cover


def _step(lr: float, gamma: float, milestones: list[int], steps: int) -> Callable[[int], float]:
    """The step schedule, its ``len(milestones) + 1`` step sizes computed once, those of rounds
    ``1..steps`` checked finite."""
    if milestones and milestones[0] < 1:
        raise ValueError(
            f"optimizer.milestones: rounds start at 1, got {milestones[0]} (a milestone is "
            "the first round of the next step size)"
        )
    sizes = [lr]  # sizes[k]: the step size after k milestones
    for k, m in enumerate(milestones, start=1):
        try:
            size = lr * gamma**k
        except OverflowError:
            size = math.inf
        if not math.isfinite(size) and m <= steps:
            raise ValueError(
                f"optimizer: the step schedule's lr * gamma ** {k} (lr={lr:g}, gamma={gamma:g}) "
                f"is not a finite number at round {m}; use a smaller gamma or fewer milestones"
            )
        sizes.append(size)
    return lambda t: sizes[bisect.bisect_right(milestones, t)]
