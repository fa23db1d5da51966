"""The experiment commands through Typer's CliRunner: run, demo, sweep (with resume), report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from byzlearn.experiments.cli import register
from byzlearn.experiments.store import RunDir
from tests.resume import kill_run

SMALL = {
    "dataset": {"name": "synthetic", "options": {"num_samples": 600, "num_features": 10}},
    "model": {"name": "logistic"},
    "n": 9,
    "f": 2,
    "steps": 12,
    "eval_every": 4,
    "batch_size": 8,
}


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_commands_are_registered(app: typer.Typer, runner: CliRunner) -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("demo", "run", "sweep", "report"):
        assert name in result.output


def test_run_with_overrides(app: typer.Typer, runner: CliRunner, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(SMALL))
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["run", str(cfg), "rule.name=median", "attack.name=alie", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "| median" in result.output and "final acc" in result.output
    rd = RunDir(out)
    assert rd.finished and rd.read_config().rule.name == "median"
    records = [json.loads(x) for x in rd.metrics_path.read_text().splitlines()]
    assert [r["round"] for r in records] == list(range(13))
    assert {"train_loss", "agg_seconds", "dist_honest_mean"} <= set(records[1])


def test_run_config_errors_name_the_field(
    app: typer.Typer, runner: CliRunner, tmp_path: Path
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**SMALL, "optimizer": {"lrr": 1}}))
    result = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "optimizer.lrr" in result.output and "unknown key" in result.output
    cfg.write_text(yaml.safe_dump(SMALL))
    result = runner.invoke(app, ["run", str(cfg), "rule.name=krumm"])
    assert result.exit_code == 2 and "rule.name" in result.output
    result = runner.invoke(app, ["run", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "missing.yaml: no such file" in result.output


@pytest.mark.slow
def test_demo_small(app: typer.Typer, runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = runner.invoke(
        app, ["demo", "--out", str(out), "--steps", "20", "--rules", "average,krum"]
    )
    assert result.exit_code == 0, result.output
    assert "| average" in result.output and "| krum" in result.output
    assert (out / "accuracy.png").stat().st_size > 1000
    table = (out / "table.md").read_text()
    assert "Byzantine kept/round" in table
    avg = RunDir(out / "average").summary()["final_accuracy"]
    krum = RunDir(out / "krum").summary()["final_accuracy"]
    assert avg < 0.2 < 0.5 < krum  # averaging collapses, Krum keeps learning
    config = RunDir(out / "krum").read_config()
    assert (config.dataset.name, config.n, config.f) == ("digits", 25, 5)


def _sweep_file(tmp_path: Path) -> Path:
    spec = {
        "base": SMALL,
        "grid": {
            "rule.name": ["average", "median", "bulyan"],
            "attack": [{"name": "ipm", "options": {"epsilon": 10.0}}, {"name": "alie"}],
            "f": [1, 2],
            "partition": [{"kind": "iid"}, {"kind": "dirichlet", "alpha": 0.5}],
        },
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.slow
def test_sweep_resumes_and_reports(app: typer.Typer, runner: CliRunner, tmp_path: Path) -> None:
    from byzlearn.experiments.sweep import load_sweep, plan_sweep

    spec = _sweep_file(tmp_path)
    out = tmp_path / "sweep"
    plan = plan_sweep(*load_sweep(spec))
    # bulyan needs n >= 4f + 3: f = 2 is invalid with n = 9 -> 2 x 2 combinations skipped
    assert len(plan.configs) == 20 and len(plan.invalid) == 4
    dry = runner.invoke(app, ["sweep", str(spec), "--out", str(out), "--dry-run"])
    assert dry.exit_code == 0 and "20 runs (0 already finished), 4 invalid" in dry.output

    # interrupt the sweep: finish a few runs, kill one mid-way
    from byzlearn.experiments.runner import run

    for config in plan.configs[:3]:
        run(config, plan.directory(out, config))
    victim = plan.configs[3]
    kill_run(victim.model_copy(update={"checkpoint_every": 5}), plan.directory(out, victim), at=6)
    mtimes = [
        plan.directory(out, c).joinpath("summary.json").stat().st_mtime_ns for c in plan.configs[:3]
    ]
    result = runner.invoke(app, ["sweep", str(spec), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "20 runs (3 already finished)" in result.output
    assert all(RunDir(plan.directory(out, c)).finished for c in plan.configs)
    victim_rounds = [r["round"] for r in RunDir(plan.directory(out, victim)).metrics()]
    assert victim_rounds == list(range(13))  # resumed from round 5, cut back, no duplicates
    assert (
        mtimes
        == [  # finished runs were skipped, not retrained
            plan.directory(out, c).joinpath("summary.json").stat().st_mtime_ns
            for c in plan.configs[:3]
        ]
    )
    report = out / "report"
    assert (report / "runs.md").exists() and (report / "worst.md").exists()
    assert len(list(report.glob("worst_rule_f_heterogeneity=*.png"))) == 2  # one per level
    assert len(list(report.glob("worst_heterogeneity_f_*.png"))) == 3
    assert len(list(report.glob("curves_*.png"))) == 2 * 2 * 2  # attack x f x heterogeneity
    worst = (report / "worst.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in worst.splitlines() if "|" in line}
    # worst case over attacks: averaging collapses, the median does not
    avg_f1 = float(rows["average"].split("|")[2])
    med_f1 = float(rows["median"].split("|")[2])
    assert avg_f1 < 0.5 < med_f1
    # report alone, on the same directory
    again = runner.invoke(app, ["report", str(out), "--metric", "best_accuracy"])
    assert again.exit_code == 0, again.output
    assert "best_accuracy" in (report / "worst.md").read_text()


def test_sweep_and_report_errors(app: typer.Typer, runner: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base": SMALL, "grid": {"rule.name": []}}))
    result = runner.invoke(app, ["sweep", str(bad)])
    assert result.exit_code == 2 and "grid.rule.name" in result.output
    bad.write_text(yaml.safe_dump({"base": SMALL, "grids": {}}))
    result = runner.invoke(app, ["sweep", str(bad)])
    assert result.exit_code == 2 and "grids" in result.output
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "no finished runs" in result.output


def test_run_with_missing_dataset_files_fails_clearly(
    app: typer.Typer, runner: CliRunner, tmp_path: Path
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**SMALL, "dataset": {"name": "mnist", "root": str(tmp_path)}}))
    result = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "dataset.name=mnist" in result.output and "download" in result.output
