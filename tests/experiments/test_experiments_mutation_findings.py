"""Findings of a mutation test of the experiments layer: each test here fails on a plausible
bug (a mutant) that every earlier test passed. The config's boundaries (Byzantine ids, crash
ids, stragglers, ``q``, Kardam's ``n >= 3f + 1``), the fields of the config hash, the store's
checks of metrics and checkpoints, the run summary's fields and the last step's evaluation,
which workers the network's faults hit, the observers' formulas, sweep grid overlaps and the
report's worst case, curves and labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import byzlearn.experiments.parallel as parallel
import byzlearn.experiments.report as report
from byzlearn.experiments import RunDir, parse_config, plan_sweep, run
from byzlearn.experiments.config import Config, ConfigError, apply_overrides, config_hash
from byzlearn.experiments.observers import EngineObserver, TruthObserver
from byzlearn.experiments.runner import _structure_problem, summarise
from byzlearn.experiments.store import (
    CheckpointError,
    RunDirError,
    RunLockedError,
    find_named,
    read_metrics,
)
from byzlearn.experiments.tables import fmt
from byzlearn.experiments.trainer import Trainer

TINY: dict[str, Any] = {
    "dataset": {
        "name": "synthetic",
        "options": {"num_samples": 200, "num_features": 5, "num_classes": 3},
    },
    "model": {"name": "logistic"},
    "n": 6,
    "f": 1,
    "rule": {"name": "median"},
    "steps": 4,
    "eval_every": 2,
    "checkpoint_every": 0,
}


def _config(**changes: Any) -> Config:
    return parse_config({**TINY, **changes})


# --------------------------------------------------------------------------- config boundaries
@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"byzantine": [6]}, "byzantine"),  # ids in [0, n): n itself is not a worker
        ({"network": {"crashes": {6: 1}}}, "network.crashes"),
        ({"f": 2, "network": {"stragglers": 5}}, "network.stragglers"),  # 4 honest workers
        ({"protocol": {"name": "kardam"}, "n": 6, "f": 2}, r"kardam needs n >= 3f \+ 1"),
        ({"poisoning": {"kind": "targeted_flip", "source": 3}}, "poisoning.source"),  # 3 classes
        ({"protocol": {"q": 2}}, "the 2 gradients the server waits for"),  # median: q >= 2f + 1
        ({"n": 1000, "batch_size": 10_001}, "batch_size: n x local_steps x batch_size"),
    ],
)
def test_one_past_each_bound_is_refused(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        _config(**changes)


@pytest.mark.parametrize(
    "changes",
    [
        {"byzantine": [5]},
        {"network": {"crashes": {5: 1}}},
        {"f": 2, "network": {"stragglers": 4}},
        {"protocol": {"name": "kardam"}, "n": 7, "f": 2},
        {"protocol": {"q": 6}},  # the server may wait for all n gradients
        {"protocol": {"q": 3}},
        {"poisoning": {"kind": "targeted_flip", "source": 2, "target": 0}},
        {"n": 1000, "batch_size": 10_000},  # exactly MAX_SAMPLES_PER_ROUND samples a round
    ],
)
def test_each_bound_itself_is_accepted(changes: dict[str, Any]) -> None:
    _config(**changes)


def test_a_dataset_seed_is_a_32_bit_seed() -> None:
    options = dict(TINY["dataset"]["options"])
    _config(dataset={"name": "synthetic", "options": {**options, "seed": 2**32 - 1}})
    with pytest.raises(ConfigError, match=r"dataset\.options\.seed: 0 to 2"):
        _config(dataset={"name": "synthetic", "options": {**options, "seed": 2**32}})


def test_an_override_without_a_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="override '=5': expected key=value"):
        apply_overrides({}, ["=5"])


def test_the_hash_covers_eval_every_but_not_checkpoint_every() -> None:
    base = config_hash(_config())
    assert config_hash(_config(eval_every=1)) != base  # other records: another result
    assert config_hash(_config(checkpoint_every=3)) == base  # only how often it is saved


# --------------------------------------------------------------------------- the run store
def test_a_round_that_is_a_boolean_is_a_damaged_metrics_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"round": 0}\n{"round": true}\n{"round": 2}\n')
    with pytest.raises(RunDirError, match="line 2 has round True"):
        read_metrics(path)


def test_metrics_ending_one_round_before_the_checkpoint_are_refused(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    rd.metrics_path.write_text("".join(json.dumps({"round": t}) + "\n" for t in range(3)))
    with pytest.raises(RunDirError, match="end at round 2 but the checkpoint is of round 3"):
        rd.cut_metrics_to(3)
    assert [r["round"] for r in rd.cut_metrics_to(2)] == [0, 1, 2]


def test_a_checkpoint_without_its_keys_is_not_a_checkpoint(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    rd.save_checkpoint({"round": 1, "hash": "x"})  # no "trainer"
    with pytest.raises(CheckpointError, match="not a byzlearn checkpoint"):
        rd.load_checkpoint()


def test_a_lock_of_another_host_is_respected(tmp_path: Path) -> None:
    (tmp_path / "lock").write_text("1 another-host.invalid\n")  # its process cannot be checked
    with pytest.raises(RunLockedError, match=r"another-host\.invalid"), RunDir(tmp_path).lock():
        pass  # pragma: no cover (never entered)
    assert (tmp_path / "lock").read_text() == "1 another-host.invalid\n"


def test_runs_are_found_once_through_a_link_to_a_parent(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.yaml").write_text("{}\n")
    (tmp_path / "a" / "up").symlink_to(tmp_path)  # a loop: each directory is read once
    assert find_named(tmp_path, "config.yaml") == [tmp_path / "a" / "config.yaml"]


def test_a_run_whose_config_is_a_link_is_refused_not_skipped(tmp_path: Path) -> None:
    config = _config()
    _finished(tmp_path, config, 0.5, [0, 2, 4])
    run_dir = tmp_path / "runs" / config_hash(config)[:16]
    (tmp_path / "elsewhere.yaml").write_bytes((run_dir / "config.yaml").read_bytes())
    (run_dir / "config.yaml").unlink()
    (run_dir / "config.yaml").symlink_to(tmp_path / "elsewhere.yaml")
    with pytest.raises(RunDirError, match=r"config\.yaml: is a symbolic link"):
        report.collect(tmp_path)


def test_a_checkpoint_number_replaced_by_a_string_does_not_fit() -> None:
    assert _structure_problem({"a": "x"}, {"a": 1}) == "/a is str 'x', not a number"
    assert _structure_problem({"a": [1, 2]}, {"a": [1, 2.5]}) is None  # an int for a float fits


# --------------------------------------------------------------------------- summaries, runs
def test_the_summary_fields_follow_their_definitions() -> None:
    records = [
        {"round": 0, "test_accuracy": 0.1},
        {"round": 1, "test_accuracy": 0.9, "kept_byzantine": 1, "time": 1.0},
        {"round": 2, "kept_byzantine": 0, "time": 2.0, "skipped": True},
        {"round": 3, "test_accuracy": 0.5, "kept_byzantine": 2, "time": 3.5},
    ]
    summary = summarise(_config(), records)
    assert summary["final_accuracy"] == 0.5  # the last evaluation, not the best
    assert summary["best_accuracy"] == 0.9
    assert summary["kept_byzantine_mean"] == 1.0  # over the rounds that report it
    assert summary["simulated_time"] == 3.5  # at the last round
    assert summary["rounds"] == 3 and summary["skipped"] == 1


def test_the_last_step_is_evaluated_when_eval_every_does_not_divide_steps() -> None:
    result = run(_config(steps=5, eval_every=3))
    evaluated = [r["round"] for r in result.records if "test_accuracy" in r]
    assert evaluated == [0, 3, 5]
    assert result.summary["final_accuracy"] == result.records[-1]["test_accuracy"]


def test_a_dataset_seed_in_the_options_fixes_the_data_whatever_the_run_seed() -> None:
    options = {**TINY["dataset"]["options"], "seed": 7}
    a, b = (
        Trainer(_config(seed=seed, dataset={"name": "synthetic", "options": options})).data
        for seed in (0, 1)
    )
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stragglers_and_omissions_hit_honest_workers_only(seed: int) -> None:
    config = _config(seed=seed, f=2, byzantine="first", network={"stragglers": 4, "omission": 0.5})
    trainer = Trainer(config)
    ids = trainer.worker_ids
    honest = {ids[i] for i in range(2, 6)}
    network = trainer.engine.network  # type: ignore[attr-defined]
    assert set(network.slowdown) == honest
    assert set(network.faults) == honest


# --------------------------------------------------------------------------- observers
def _collect(observer: Any, record: dict[str, Any] | None = None) -> dict[str, Any]:
    record = {} if record is None else record
    observer.collect(record)
    return record


def test_the_train_loss_is_the_honest_senders_mean() -> None:
    obs = TruthObserver(byzantine=[2], workers=[0, 1, 2])
    obs.on_event("aggregated", {"senders": [0, 1, 2], "losses": {0: 1.0, 1: 2.0, 2: 9.0}})
    assert _collect(obs)["train_loss"] == 1.5  # a poisoning worker's loss left out


def test_asynchronous_updates_count_honest_and_byzantine_apart() -> None:
    obs = TruthObserver(byzantine=[2], workers=[0, 1, 2])
    obs.on_event("update", {"sender": 0, "accepted": True, "loss": 1.0})
    first = _collect(obs, {"accepted": True})
    assert first["train_loss"] == 1.0 and first["byzantine_sender"] is False
    obs.on_event("update", {"sender": 2, "accepted": False, "loss": 9.0})
    second = _collect(obs, {"accepted": False})
    assert "train_loss" not in second and second["byzantine_sender"] is True
    totals = {"accepted_honest": 1, "rejected_honest": 0}
    totals |= {"accepted_byzantine": 0, "rejected_byzantine": 1}
    assert {k: second[k] for k in totals} == totals
    assert obs.summary()["per_worker"]["2"] == {"byzantine": True, "accepted": 0, "rejected": 1}


def test_the_spread_needs_two_honest_rows_and_follows_its_formula() -> None:
    vectors = torch.tensor([[1.0, 2.0], [3.0, 6.0], [100.0, -100.0]])
    output = torch.tensor([0.0, 0.0])
    obs = TruthObserver(byzantine=[1, 2], workers=[0, 1, 2])
    obs.on_event("aggregated", {"senders": [0, 1, 2], "losses": {}, "vectors": vectors,
                                "output": output})  # fmt: skip
    one = _collect(obs)
    assert one["dist_honest_mean"] == pytest.approx(5**0.5)
    assert "variance_norm_ratio" not in one  # the spread of one row is not defined
    obs = TruthObserver(byzantine=[2], workers=[0, 1, 2])
    obs.on_event("aggregated", {"senders": [0, 1, 2], "losses": {}, "vectors": vectors,
                                "output": output})  # fmt: skip
    two = _collect(obs)
    mean = np.array([2.0, 4.0])  # sqrt(mean_r ||h_r - mean||^2) / ||mean||
    assert two["dist_honest_mean"] == pytest.approx(float(np.linalg.norm(mean)))
    assert two["variance_norm_ratio"] == pytest.approx(5**0.5 / float(np.linalg.norm(mean)))


class _Engine:
    """What :class:`EngineObserver` reads of an engine: its counters."""

    def __init__(self) -> None:
        self.stats: dict[str, int] = {"sent": 5, "bytes": 40}


def test_engine_counters_are_per_step_differences() -> None:
    engine = _Engine()
    obs = EngineObserver(engine)  # type: ignore[arg-type]
    engine.stats = {"sent": 8, "bytes": 64, "in_flight": 2}
    record = _collect(obs)
    assert (record["messages_sent"], record["bytes_sent"], record["in_flight"]) == (3, 24, 2)
    engine.stats = {"sent": 9, "bytes": 72}
    assert _collect(obs)["messages_sent"] == 1
    assert obs.summary()["total_messages_sent"] == 9


# --------------------------------------------------------------------------- sweeps
@pytest.mark.parametrize("order", [("rule", "rule.name"), ("rule.name", "rule")])
def test_overlapping_grid_keys_are_refused_in_either_order(order: tuple[str, str]) -> None:
    values: dict[str, list[Any]] = {"rule": [{"name": "median"}], "rule.name": ["krum"]}
    with pytest.raises(ConfigError, match="overlap"):
        plan_sweep(dict(TINY), {key: values[key] for key in order})


def test_a_sweep_run_lives_under_the_first_16_digits_of_its_hash(tmp_path: Path) -> None:
    plan = plan_sweep(dict(TINY), {"seed": [0, 1]})
    for config in plan.configs:  # the documented layout: an earlier sweep's runs are found again
        assert plan.directory(tmp_path, config) == tmp_path / "runs" / config_hash(config)[:16]


# --------------------------------------------------------------------------- reports
def _finished(root: Path, config: Config, final: float, rounds: list[int]) -> None:
    """A finished run of ``config`` (its files only): accuracy ``final`` at ``rounds``."""
    rd = RunDir(root / "runs" / config_hash(config)[:16])
    rd.write_config(config)
    records = [{"round": t, "test_accuracy": final} for t in rounds]
    rd.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {"hash": config_hash(config), "final_accuracy": final, "best_accuracy": final,
               "kept_byzantine_mean": None, "seconds": 1.0, "diverged": False}  # fmt: skip
    rd.summary_path.write_text(json.dumps(summary))


def test_the_worst_case_is_the_lowest_attack_mean_over_seeds(tmp_path: Path) -> None:
    accuracies = {("alie", 0): 0.8, ("alie", 1): 0.6, ("ipm", 0): 0.3, ("ipm", 1): 0.5}
    for (attack, seed), acc in accuracies.items():
        _finished(tmp_path, _config(attack={"name": attack}, seed=seed), acc, [0, 2, 4])
    worst = (report.build_report(tmp_path) / "worst.md").read_text()
    row = next(line for line in worst.splitlines() if line.startswith("| median"))
    assert [c.strip() for c in row.strip("|").split("|")] == ["median", "0.400"]


def test_a_repeated_round_in_the_metrics_is_a_damaged_run(tmp_path: Path) -> None:
    _finished(tmp_path, _config(), 0.5, [0, 2, 2, 4])
    with pytest.raises(ValueError, match="round 2 comes after round 2"):
        report.collect(tmp_path)


def test_a_run_that_ends_early_carries_its_last_accuracy_on() -> None:
    rounds, means = report._mean_curve([([0, 5, 10], [0.1, 0.5, 0.9]), ([0, 5], [0.2, 0.4])])
    assert rounds == [0, 5, 10]
    assert means == pytest.approx([0.15, 0.45, 0.65])


def test_the_attack_options_and_diverged_runs_are_named() -> None:
    config = _config(attack={"name": "ipm", "options": {"epsilon": 10.0}})
    assert report.describe(config)["attack"] == "ipm(epsilon=10.0)"
    runs = [
        report.RunRecord(Path("a"), config, {"diverged": True}, ([], [])),
        report.RunRecord(Path("b"), config, {"diverged": False}, ([], [])),
    ]
    assert report._curve_label("median", runs) == "median (diverged: 1 of 2 runs)"
    assert report._curve_label("median", runs[1:]) == "median"


# --------------------------------------------------------------------------- parallel sweeps
def test_each_job_gets_its_share_of_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 8)
    assert [parallel.threads_per_job(j) for j in (1, 3, 4, 16)] == [8, 2, 2, 1]


def test_a_runs_threads_are_lowered_to_its_share_never_raised() -> None:
    assert parallel._capped(_config(threads=1), 4).threads == 1
    assert parallel._capped(_config(threads=8), 2).threads == 2


def test_numpy_booleans_are_yes_or_no_in_a_table() -> None:
    assert (fmt(np.bool_(True)), fmt(np.bool_(False))) == ("yes", "no")
