"""Learning-rate schedules of the server step size, built from :class:`OptimizerConfig`."""

from __future__ import annotations

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
    """
    lr, kind = float(opt.lr), opt.schedule
    if kind == "constant":
        return lambda t: lr
    if kind == "step":
        milestones = sorted(opt.milestones)
        return lambda t: lr * opt.gamma ** sum(1 for m in milestones if t >= m)
    if kind == "cosine":
        return lambda t: lr * 0.5 * (1.0 + math.cos(math.pi * (t - 1) / max(1, steps)))
    if kind == "inverse":
        return lambda t: lr / (1.0 + t / opt.decay_steps)
    raise ValueError(f"optimizer.schedule: unknown schedule {kind!r}")  # pragma: no cover
