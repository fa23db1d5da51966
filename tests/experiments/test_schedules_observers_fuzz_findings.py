"""Findings of a random search over the learning-rate schedules and the observers' statistics:
each schedule against its documented formula, bad step schedules refused in one line."""

from __future__ import annotations

import math
import random

import pytest

from byzlearn.experiments.config import OptimizerConfig, parse_config
from byzlearn.experiments.schedules import learning_rate


def _reference(opt: OptimizerConfig, steps: int, t: int) -> float:
    if opt.schedule == "step":
        return opt.lr * opt.gamma ** len([m for m in opt.milestones if m <= t])
    if opt.schedule == "cosine":
        return opt.lr * (1 + math.cos(math.pi * (t - 1) / steps)) / 2
    if opt.schedule == "inverse":
        return opt.lr / (1 + t / opt.decay_steps)
    return opt.lr


@pytest.mark.parametrize("seed", range(20))
def test_every_schedule_follows_its_documented_formula(seed: int) -> None:
    rng = random.Random(seed)
    steps = rng.randint(1, 60)
    opt = OptimizerConfig(
        lr=10 ** rng.uniform(-5, 2),
        schedule=rng.choice(["constant", "step", "cosine", "inverse"]),
        milestones=[rng.randint(1, 70) for _ in range(rng.randint(0, 5))],  # repeats count twice
        gamma=10 ** rng.uniform(-3, 1),
        decay_steps=10 ** rng.uniform(-2, 4),
    )
    lr = learning_rate(opt, steps)
    for t in range(1, steps + 1):
        assert lr(t) == pytest.approx(_reference(opt, steps, t), rel=1e-12)


@pytest.mark.parametrize("milestones", [[0], [-5, 10], [3, 0]])
def test_a_step_milestone_before_round_one_is_refused(milestones: list[int]) -> None:
    opt = OptimizerConfig(schedule="step", milestones=milestones)
    with pytest.raises(ValueError, match=r"^optimizer.milestones: rounds start at 1, got -?\d+"):
        learning_rate(opt, 10)


def test_a_step_size_that_overflows_within_the_run_is_refused_not_a_crash_at_its_round() -> None:
    # was: OverflowError from ``gamma ** 2`` at round 2, in the middle of the run
    opt = OptimizerConfig(schedule="step", milestones=[1, 2], gamma=1e300)
    with pytest.raises(ValueError, match=r"lr \* gamma \*\* 2 .* not a finite number at round 2"):
        learning_rate(opt, 10)
    # was: an infinite step size from round 3 on (a run that "diverges" by configuration)
    opt = OptimizerConfig(lr=1e300, schedule="step", milestones=[2, 3], gamma=1e5)
    with pytest.raises(ValueError, match="at round 3"):
        learning_rate(opt, 3)
    # milestones after the last round are never reached: fine
    lr = learning_rate(OptimizerConfig(schedule="step", milestones=[1, 20], gamma=1e300), 10)
    assert lr(1) == pytest.approx(1e299) and lr(10) == lr(1)


def test_the_trainer_refuses_an_overflowing_step_schedule_in_one_line(tmp_path) -> None:
    from byzlearn.experiments.config import ConfigError
    from byzlearn.experiments.runner import run

    config = parse_config(
        {
            "n": 3,
            "f": 0,
            "steps": 3,
            "dataset": {"name": "digits"},
            "optimizer": {"schedule": "step", "milestones": [1, 2], "gamma": 1e300},
        }
    )
    with pytest.raises(ConfigError, match="invalid config: optimizer: the step schedule"):
        run(config, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
