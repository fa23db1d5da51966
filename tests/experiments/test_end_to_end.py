"""End-to-end training: every rule learns without attack; the omniscient attack breaks
averaging but not the robust rules; resume after a kill equals an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from byzlearn.experiments import RunDir, parse_config, run
from byzlearn.experiments.store import RunCollisionError
from tests.resume import kill_at, kill_run, without_times

SYNTHETIC: dict[str, Any] = {
    "dataset": {
        "name": "synthetic",
        "options": {"num_samples": 1500, "num_features": 20, "num_classes": 4, "separation": 1.0},
    },
    "model": {"name": "logistic"},
    "n": 25,
    "f": 5,
    "steps": 60,
    "eval_every": 20,
    "batch_size": 16,
    "checkpoint_every": 0,
}
OMNISCIENT = {"name": "ipm", "options": {"epsilon": 10.0}}  # every Byzantine sends -10 x mean
CHANCE = 0.25


def _config(**kw: Any):
    return parse_config({**SYNTHETIC, **kw})


@pytest.mark.parametrize("rule", ["average", "krum", "median", "trimmed_mean", "bulyan"])
def test_without_attack_every_rule_learns(rule: str) -> None:
    result = run(_config(rule={"name": rule}))
    assert result.records[0]["round"] == 0
    assert result.records[0]["test_accuracy"] < 0.5
    assert result.summary["final_accuracy"] > 0.9
    assert len([r for r in result.records if r["round"] > 0]) == 60


@pytest.mark.parametrize("rule", ["average", "krum", "median", "trimmed_mean", "bulyan"])
def test_omniscient_attack_breaks_average_only(rule: str) -> None:
    result = run(_config(rule={"name": rule}, attack=OMNISCIENT))
    final = result.summary["final_accuracy"]
    if rule == "average":
        assert final < CHANCE + 0.1
    else:
        assert final > 0.9
    if rule in ("krum", "bulyan"):  # selection rules report what they kept
        kept = [r["kept_byzantine"] for r in result.records if r["round"] > 0]
        assert len(kept) == 60 and max(kept) <= 5


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["average", "krum", "median", "trimmed_mean", "bulyan"])
def test_digits_omniscient_attack_with_worker_momentum(rule: str) -> None:
    config = parse_config(
        {
            "dataset": {"name": "digits"},
            "model": {"name": "mlp", "options": {"hidden": [32]}},
            "n": 25,
            "f": 5,
            "attack": OMNISCIENT,
            "rule": {"name": rule},
            "optimizer": {"lr": 0.1, "momentum": 0.5, "momentum_at": "worker"},
            "steps": 80,
            "eval_every": 40,
            "checkpoint_every": 0,
        }
    )
    final = run(config).summary["final_accuracy"]
    if rule == "average":
        assert final < 0.2
    else:
        assert final > 0.75


def test_data_poisoning_runs_and_is_deterministic() -> None:
    config = _config(rule={"name": "median"}, poisoning={"kind": "flip_labels"}, steps=20)
    a, b = run(config), run(config)
    assert a.summary["final_accuracy"] == b.summary["final_accuracy"] > 0.8
    assert [r["train_loss"] for r in a.records[1:]] == [r["train_loss"] for r in b.records[1:]]


def test_a_user_module_and_local_steps_work() -> None:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(20, 8), nn.Tanh(), nn.Linear(8, 4))
    config = _config(rule={"name": "trimmed_mean"}, local_steps=2, steps=30, f=2)
    result = run(config, model=module)
    assert result.summary["final_accuracy"] > 0.8
    assert result.theta is not None and result.theta.numel() == 20 * 8 + 8 + 8 * 4 + 4


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    config = _config(
        rule={"name": "krum"},
        attack={"name": "alie"},
        optimizer={"lr": 0.1, "momentum": 0.9, "momentum_at": "worker"},
        steps=24,
        eval_every=4,
        checkpoint_every=5,
    )
    full = run(config, tmp_path / "full")
    kill_run(config, tmp_path / "killed", at=13)
    rd = RunDir(tmp_path / "killed")
    assert not rd.finished
    assert [r["round"] for r in rd.metrics()][-1] == 13  # written as they came
    assert rd.load_checkpoint()["round"] == 10
    resumed = run(config, tmp_path / "killed")
    a = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in b] == list(range(25))
    assert without_times(a) == without_times(b)
    assert torch.equal(full.theta, resumed.theta)
    assert rd.finished and not rd.checkpoint_path.exists()
    # a finished run is loaded, not retrained
    again = run(config, tmp_path / "killed", callback=kill_at(13))
    assert again.summary == resumed.summary


def test_checkpoint_of_another_config_is_refused(tmp_path: Path) -> None:
    config = _config(steps=12, checkpoint_every=5)
    kill_run(config, tmp_path / "r", at=7)
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    other = _config(steps=12, checkpoint_every=5, seed=9)
    for resume in (True, False):  # --no-resume does not destroy another config's run either
        with pytest.raises(RunCollisionError, match="another config; nothing was written"):
            run(other, tmp_path / "r", resume=resume)
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == before
    # the killed run itself resumes; another directory takes the other config
    assert run(config, tmp_path / "r").status == "resumed"
    assert run(other, tmp_path / "r2").summary["rounds"] == 12


def test_divergence_is_recorded_and_stops_the_run() -> None:
    config = _config(
        model={"name": "mlp", "options": {"hidden": [16]}},
        attack={"name": "ipm", "options": {"epsilon": 1000.0}},
        optimizer={"lr": 10.0},
        steps=400,
    )
    result = run(config)
    assert result.summary["diverged"]
    last = result.records[-1]
    assert last["diverged"] and "test_accuracy" in last
    assert last["round"] < 400


def test_momentum_placement_and_quorum_are_wired_from_the_config() -> None:
    from byzlearn.experiments import Trainer

    opt = {"lr": 0.1, "momentum": 0.9}
    at_worker = Trainer(
        _config(optimizer={**opt, "momentum_at": "worker"}, rule={"name": "median"})
    )
    at_server = Trainer(
        _config(optimizer={**opt, "momentum_at": "server"}, rule={"name": "median"})
    )
    assert at_worker.workers.m is not None and at_worker.server.buffer is None
    assert at_server.workers.m is None and at_server.server.buffer is not None
    for _ in range(3):
        at_worker.step()
        at_server.step()
    assert not torch.allclose(at_worker.theta, at_server.theta)
    quorum = Trainer(_config(q=20, rule={"name": "median"}, attack={"name": "alie"}))
    assert quorum.step()["received"] == 20


def test_mimic_with_a_running_state_resumes_identically(tmp_path: Path) -> None:
    config = _config(
        rule={"name": "nnm+krum"},
        attack={"name": "mimic", "options": {"warmup": 4}},
        steps=12,
        eval_every=6,
        checkpoint_every=5,
    )
    full = run(config, tmp_path / "full")
    kill_run(config, tmp_path / "killed", at=8)
    resumed = run(config, tmp_path / "killed")
    assert without_times(full.records) == without_times(resumed.records)
    assert full.summary["final_accuracy"] > 0.8


def test_simulated_network_stragglers_losses_and_crashes() -> None:
    from byzlearn.experiments import Trainer

    net = {"stragglers": 3, "slowdown": 10.0, "crashes": {0: 3}, "coordinate_drop": 0.1}
    trainer = Trainer(
        _config(
            rule={"name": "median"}, attack={"name": "alie"}, q=21, network=net, byzantine="last"
        )
    )
    first = trainer.step()
    assert first["received"] == 21  # the 3 stragglers (of 25) are not waited for, 1 left over
    assert first["train_loss"] is not None
    for _ in range(3):
        rec = trainer.step()
    assert rec["received"] == 21  # worker 0 crashed at round 3; q is still met by the rest
    assert trainer.engine.stats["dropped"] > 0 and trainer.engine.stats["discarded"] > 0
    result = run(_config(rule={"name": "median"}, network={"coordinate_drop": 0.2}, steps=40))
    assert result.summary["final_accuracy"] > 0.9  # NaN coordinates are skipped, not spread


def test_resumed_records_equal_uninterrupted_ones_with_non_finite_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record value that is not finite (an infinite test loss: a sample whose probability
    underflowed) is written as null and read back as None on resume; the records a run returns
    hold it as written, so a resumed run's equal an uninterrupted one's."""
    from byzlearn.experiments import runner

    evaluate = runner._evaluate

    def infinite_loss(trainer: Any, record: dict[str, Any]) -> None:
        evaluate(trainer, record)
        record["test_loss"] = float("inf")

    monkeypatch.setattr(runner, "_evaluate", infinite_loss)
    config = _config(steps=12, eval_every=2, checkpoint_every=5)
    full = run(config, tmp_path / "full")
    kill_run(config, tmp_path / "killed", at=7)
    resumed = run(config, tmp_path / "killed")
    assert resumed.status == "resumed"
    assert without_times(full.records) == without_times(resumed.records)
    assert without_times(full.records) == without_times(RunDir(tmp_path / "full").metrics())
    assert all(r["test_loss"] is None for r in full.records if "test_loss" in r)
