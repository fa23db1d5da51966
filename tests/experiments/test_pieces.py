"""Small pieces: schedules, Byzantine ids, the metrics store, tables, sweep planning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from byzlearn.experiments import RunDir, load_sweep, parse_config, plan_sweep
from byzlearn.experiments.config import ConfigError
from byzlearn.experiments.schedules import learning_rate
from byzlearn.experiments.store import MetricsWriter, read_metrics
from byzlearn.experiments.tables import markdown_table
from byzlearn.experiments.trainer import byzantine_ids

ROOT = Path(__file__).parents[2]


def test_schedules() -> None:
    cfg = parse_config({"optimizer": {"lr": 1.0, "schedule": "step", "milestones": [3, 5]}})
    lr = learning_rate(cfg.optimizer, 10)
    assert [lr(t) for t in (1, 3, 4, 5)] == pytest.approx([1.0, 0.1, 0.1, 0.01])
    cos = learning_rate(parse_config({"optimizer": {"schedule": "cosine"}}).optimizer, 10)
    assert cos(1) == pytest.approx(0.1) and cos(6) == pytest.approx(0.05)
    inv = parse_config({"optimizer": {"schedule": "inverse", "decay_steps": 10}}).optimizer
    assert learning_rate(inv, 5)(10) == pytest.approx(0.05)


def test_byzantine_ids() -> None:
    assert byzantine_ids(parse_config({"n": 6, "f": 2, "byzantine": "first"})) == [0, 1]
    assert byzantine_ids(parse_config({"n": 6, "f": 2, "byzantine": "last"})) == [4, 5]
    assert byzantine_ids(parse_config({"n": 6, "f": 2, "byzantine": [5, 1]})) == [1, 5]
    a = byzantine_ids(parse_config({"n": 25, "f": 5, "seed": 0}))
    assert a == byzantine_ids(parse_config({"n": 25, "f": 5, "seed": 0}))
    assert a != byzantine_ids(parse_config({"n": 25, "f": 5, "seed": 1}))


def test_metrics_are_flushed_per_record_and_a_torn_line_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    writer = MetricsWriter(path)
    writer.write({"round": 1, "loss": float("nan")})
    assert read_metrics(path) == [{"round": 1, "loss": None}]  # visible before close
    writer.close()
    with open(path, "a") as fh:
        fh.write('{"round": 2, "lo')
    assert read_metrics(path) == [{"round": 1, "loss": None}]
    rd = RunDir(tmp_path)
    path.rename(rd.metrics_path)
    assert rd.truncate_metrics(0) == []


def test_markdown_table() -> None:
    text = markdown_table(["rule", "acc"], [["krum", 0.91234], ["avg", None]])
    lines = text.splitlines()
    assert lines[0].startswith("| rule") and "0.912" in text and "—" in text
    assert lines[1] == "| ---- | ----: |"
    assert lines[3] == "| avg  |     — |"


def test_sweep_planning_and_errors(tmp_path: Path) -> None:
    base, grid = load_sweep(ROOT / "examples" / "sweep_digits.yaml")
    plan = plan_sweep(base, grid)
    assert len(plan.configs) == 4 * 3 * 2 * 2 and not plan.invalid
    hashes = {plan.directory(tmp_path, c).name for c in plan.configs}
    assert len(hashes) == len(plan.configs)
    (tmp_path / "base.yaml").write_text("n: 7\nf: 1\n")
    (tmp_path / "s.yaml").write_text("base: base.yaml\ngrid: {rule.name: [krum, nope]}\n")
    plan = plan_sweep(*load_sweep(tmp_path / "s.yaml"))
    assert [c.rule.name for c in plan.configs] == ["krum"] and plan.configs[0].n == 7
    assert "rule.name" in plan.invalid[0][1]
    for typo in ("n.x", "rule.nam", "optimzer.lr"):  # refused when the sweep file is read
        (tmp_path / "s.yaml").write_text(f"grid: {{{typo}: [1]}}\n")
        with pytest.raises(ConfigError, match=f"grid: '{typo}' is not a config field"):
            load_sweep(tmp_path / "s.yaml")
    (tmp_path / "s.yaml").write_text("grid: {attack.options.z: [1.5], protocol.q: [3]}\n")
    assert load_sweep(tmp_path / "s.yaml")[1] == {"attack.options.z": [1.5], "protocol.q": [3]}
    (tmp_path / "s.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_sweep(tmp_path / "s.yaml")


def test_report_labels_asynchronous_runs_by_protocol() -> None:
    from byzlearn.experiments import parse_config
    from byzlearn.experiments.report import describe

    sync = parse_config({"rule": {"name": "krum", "pre": ["nnm"]}})
    kardam = parse_config({"protocol": {"name": "kardam"}, "n": 10, "f": 3})
    plain = parse_config({"protocol": {"name": "async_sgd"}, "n": 10, "f": 3})
    assert [describe(c)["rule"] for c in (sync, kardam, plain)] == [
        "nnm+krum",
        "kardam/exp",
        "async_sgd/none",
    ]


def test_parts_dealt_to_all_to_the_honest_or_the_whole_set() -> None:
    import numpy as np

    from byzlearn.experiments.config import parse_config
    from byzlearn.experiments.trainer import deal

    labels = torch.arange(100) % 10
    byz = [1, 4]
    every = deal(parse_config({"n": 6, "f": 2}), labels, byz)
    assert sorted(np.concatenate(every).tolist()) == list(range(100))  # disjoint, all 6
    honest = deal(parse_config({"n": 6, "f": 2, "partition": {"among": "honest"}}), labels, byz)
    mine = [honest[i] for i in range(6) if i not in byz]
    assert sorted(np.concatenate(mine).tolist()) == list(range(100))  # the honest 4 share it
    assert all(len(honest[i]) == 100 for i in byz)  # Byzantine workers: the whole set
    full = deal(parse_config({"n": 6, "f": 2, "partition": {"kind": "full"}}), labels, byz)
    assert all(np.array_equal(p, np.arange(100)) for p in full)
    label = parse_config({"partition": {"kind": "dirichlet", "alpha": 0.3, "among": "honest"}})
    assert label.partition.label() == "dirichlet(0.3)/honest"


def test_report_means_refuse_a_damaged_summary_value() -> None:
    from byzlearn.experiments.report import _mean

    assert _mean([0.5, None, float("nan"), 1.0]) == 0.75
    with pytest.raises(ValueError, match="holds 'abc' where a number belongs"):
        _mean([0.5, "abc"])  # type: ignore[list-item]


def test_report_names_a_finished_run_without_its_config(tmp_path: Path) -> None:
    from byzlearn.experiments.report import build_report
    from byzlearn.experiments.runner import run

    data = {"name": "synthetic"}
    config = parse_config({"dataset": data, "model": {"name": "logistic"}, "n": 5, "f": 1,
                           "rule": {"name": "median"}, "steps": 2, "eval_every": 1})  # fmt: skip
    run(config, tmp_path / "runs" / "a")
    (tmp_path / "runs" / "a" / "config.yaml").unlink()
    with pytest.raises(ValueError, match=r"a finished run without its config\.yaml"):
        build_report(tmp_path / "runs")
    assert not (tmp_path / "runs" / "report").exists()


def test_report_errors_name_the_damaged_file(tmp_path: Path) -> None:
    import json

    from byzlearn.experiments.report import build_report
    from byzlearn.experiments.runner import run

    data = {"name": "synthetic"}
    config = parse_config({"dataset": data, "model": {"name": "logistic"}, "n": 5, "f": 1,
                           "rule": {"name": "median"}, "steps": 2, "eval_every": 1})  # fmt: skip
    runs = tmp_path / "runs"
    run(config, runs / "a")
    (runs / "report").write_text("")  # a file where the report folder goes
    with pytest.raises(ValueError, match="is a file, not the report folder"):
        build_report(runs)
    (runs / "report").unlink()
    with (runs / "a" / "config.yaml").open("a") as fh:
        fh.write("bogus_key: 1\n")
    with pytest.raises(ConfigError, match=r"a/config\.yaml: invalid config: bogus_key"):
        build_report(runs)
    (runs / "a" / "config.yaml").write_text(RunDir(runs / "a").config_path.read_text()[:-13])
    metrics = runs / "a" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    record = json.loads(lines[-1])
    record["test_accuracy"] = "x"
    metrics.write_text("\n".join([*lines[:-1], json.dumps(record)]) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl: a test_accuracy that is not a number"):
        build_report(runs)
