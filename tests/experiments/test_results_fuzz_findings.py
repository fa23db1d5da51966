"""Findings of a fuzz of the results (reports, tables, figures, the run store), fixed at the
source: a report never averages different configs as if they were seeds, never counts a config
twice, never shows a summary of another config or a value that is not a number, its worst case
does not depend on the order of the runs, its figures never overwrite each other, its tables keep
their columns, and it finds runs behind a linked ``runs`` folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import byzlearn.experiments.report as report
from byzlearn.cli import app
from byzlearn.experiments.config import Config, config_hash, parse_config
from byzlearn.experiments.store import RunDir
from byzlearn.experiments.tables import markdown_table
from tests.experiments.test_run_files_fuzz_findings import _one_line_error

runner = CliRunner()
BASE = {
    "dataset": {"name": "synthetic"},
    "model": {"name": "logistic"},
    "n": 5,
    "f": 1,
    "rule": {"name": "median"},
    "attack": {"name": "alie"},
    "steps": 4,
    "eval_every": 2,
}


def _config(**changes: Any) -> Config:
    return parse_config({**BASE, **changes})


def _finished(directory: Path, config: Config, final: float = 0.5, **summary: Any) -> Path:
    """A finished run of ``config`` (its files only, no training): accuracies ``final``."""
    rd = RunDir(directory)
    rd.write_config(config)
    records = [{"round": t, "test_accuracy": final} for t in range(0, config.steps + 1, 2)]
    rd.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    data = {"hash": config_hash(config), "final_accuracy": final, "best_accuracy": final,
            "kept_byzantine_mean": None, "seconds": 1.0, "diverged": False, **summary}  # fmt: skip
    rd.summary_path.write_text(json.dumps(data))
    return directory


def _runs(root: Path, *configs: Config) -> list[Path]:
    return [_finished(root / "runs" / config_hash(c)[:16], c) for c in configs]


def _table(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines]
    return rows[0], rows[2:]


def test_runs_that_differ_in_a_field_the_description_omits_are_not_averaged(
    tmp_path: Path,
) -> None:
    # a sweep over batch_size: the report had shown two rows "seed 0" and averaged both
    # batch sizes into one worst-case cell, as if they were seeds of one config
    small, large = _config(batch_size=8), _config(batch_size=64)
    _finished(tmp_path / "runs" / "a", small, 0.2)
    _finished(tmp_path / "runs" / "b", large, 0.8)
    out = report.build_report(tmp_path)
    headers, rows = _table(out / "runs.md")
    assert headers[0] == "batch_size"
    assert sorted(r[0] for r in rows) == ["64", "8"]
    worst = (out / "worst.md").read_text()
    assert "batch_size=8" in worst and "batch_size=64" in worst
    assert "0.500" not in worst  # never the mean of the two configs
    assert {"curves_batch_size=8.png", "curves_batch_size=64.png"} <= {
        p.name for p in out.iterdir()
    }


def test_seeds_of_one_config_are_still_averaged(tmp_path: Path) -> None:
    _finished(tmp_path / "runs" / "a", _config(seed=0), 0.2)
    _finished(tmp_path / "runs" / "b", _config(seed=1), 0.6)
    out = report.build_report(tmp_path)
    assert _table(out / "runs.md")[0][0] == "seed"
    assert "| median | 0.400 |" in (out / "worst.md").read_text()


def test_the_worst_case_does_not_depend_on_the_order_of_the_runs() -> None:
    # an attack whose runs have no number (NaN mean): min() kept it or not by position
    def pair(attack: str, value: float | None) -> tuple[dict[str, Any], Any]:
        record = report.RunRecord(Path("."), _config(), {"final_accuracy": value}, ([], []))
        return {"rule": "median", "f": 1, "attack": attack}, record

    runs = [pair("alie", None), pair("ipm", 0.5)]
    first = report._worst(runs, "rule", "f", "final_accuracy")[2]
    second = report._worst(runs[::-1], "rule", "f", "final_accuracy")[2]
    assert first.tolist() == second.tolist() == [[0.5]]


def test_a_summary_of_another_config_is_one_line(tmp_path: Path) -> None:
    a, b = _runs(tmp_path, _config(), _config(f=2))
    shutil.copy(b / "config.yaml", a / "config.yaml")  # a's numbers, b's description
    result = runner.invoke(app, ["report", str(tmp_path)])
    _one_line_error(result, str(a), "summary.json is of another config than config.yaml")


def test_two_finished_runs_of_one_config_are_one_line(tmp_path: Path) -> None:
    (a,) = _runs(tmp_path, _config())
    _runs(tmp_path, _config(seed=1))
    shutil.copytree(a, tmp_path / "runs" / "copy")  # a mean over seeds would count it twice
    result = runner.invoke(app, ["report", str(tmp_path)])
    _one_line_error(result, "a second finished run of the config of", "move one of them")


BAD_SUMMARIES = {
    "string accuracy": ("final_accuracy", "0.5"),
    "list accuracy": ("best_accuracy", [0.5]),
    "accuracy above one": ("final_accuracy", 1.5),
    "infinite accuracy": ("final_accuracy", float("inf")),
    "string seconds": ("seconds", "abc"),
    "negative seconds": ("seconds", -1.0),
    "mapping kept": ("kept_byzantine_mean", {"a": 1}),
    "number diverged": ("diverged", 7),
}


@pytest.mark.parametrize("case", sorted(BAD_SUMMARIES))
def test_a_summary_value_that_is_not_a_number_is_one_line(tmp_path: Path, case: str) -> None:
    key, value = BAD_SUMMARIES[case]
    (a,) = _runs(tmp_path, _config())
    summary = json.loads((a / "summary.json").read_text())
    summary[key] = value
    (a / "summary.json").write_text(json.dumps(summary))  # inf is written as Infinity
    result = runner.invoke(app, ["report", str(tmp_path)])
    _one_line_error(result, "summary.json", key)


@pytest.mark.parametrize("value", ['"0.5"', "true", "Infinity", "1.5"])
def test_a_test_accuracy_that_is_not_a_number_is_one_line(tmp_path: Path, value: str) -> None:
    (a,) = _runs(tmp_path, _config())
    lines = (a / "metrics.jsonl").read_text().splitlines()
    lines[1] = '{"round": 2, "test_accuracy": ' + value + "}"
    (a / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["report", str(tmp_path)])
    _one_line_error(result, "metrics.jsonl: a test_accuracy that is not a number")


def test_metrics_whose_rounds_do_not_increase_are_one_line(tmp_path: Path) -> None:
    (a,) = _runs(tmp_path, _config())
    lines = (a / "metrics.jsonl").read_text().splitlines()
    (a / "metrics.jsonl").write_text("\n".join([lines[0], lines[2], lines[1]]) + "\n")
    result = runner.invoke(app, ["report", str(tmp_path)])
    _one_line_error(result, "metrics.jsonl: round 2 comes after round 4")


def test_runs_behind_a_linked_runs_folder_are_reported(tmp_path: Path) -> None:
    # the sweep docs: `runs` on a scratch disk (a link among the parents) is followed
    scratch = tmp_path / "scratch"
    _runs(scratch, _config(), _config(seed=1))
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "runs").symlink_to(scratch / "runs", target_is_directory=True)
    (scratch / "runs" / "loop").symlink_to(sweep, target_is_directory=True)  # no endless walk
    out = report.build_report(sweep)
    assert len(_table(out / "runs.md")[1]) == 2


def test_a_run_directory_that_is_a_link_is_one_line(tmp_path: Path) -> None:
    _runs(tmp_path / "sweep", _config())
    (elsewhere,) = _runs(tmp_path / "elsewhere", _config(seed=1))
    (tmp_path / "sweep" / "runs" / "linked").symlink_to(elsewhere, target_is_directory=True)
    result = runner.invoke(app, ["report", str(tmp_path / "sweep")])
    _one_line_error(result, "linked: the run directory is a symbolic link")


def test_figures_of_different_groups_never_share_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[str] = []
    monkeypatch.setattr(report, "accuracy_curves", lambda c, path, **kw: written.append(path))
    monkeypatch.setattr(report, "heatmap", lambda v, r, c, path, **kw: written.append(path))
    configs = [
        _config(dataset={"name": "synthetic", "root": "a/b"}),  # the same slug: a_b
        _config(dataset={"name": "synthetic", "root": "a(b"}),
        _config(dataset={"name": "synthetic", "root": "x" * 200 + "1"}),  # cut short alike
        _config(dataset={"name": "synthetic", "root": "x" * 200 + "2"}),
    ]
    _runs(tmp_path, *configs)
    report.build_report(tmp_path)
    names = [Path(p).name for p in written]
    assert len(names) == 8 and len(set(names)) == 8, names  # 4 curve figures, 4 heatmaps
    assert all(len(n) <= 160 for n in names)
    assert "curves_dataset.root=a_b.png" in names  # a name that is not taken stays readable


def test_long_figure_names_cut_short_never_collide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # names were cut at 120 characters: two groups differing in a late field (steps: 40, 41)
    # shared one, the second figure overwriting the first
    written: list[str] = []
    monkeypatch.setattr(report, "accuracy_curves", lambda c, path, **kw: written.append(path))
    monkeypatch.setattr(report, "heatmap", lambda v, r, c, path, **kw: None)
    long = {
        "attack": {"name": "ipm", "options": {"epsilon": 10.0}},
        "n": 70,
        "f": 10,
        "partition": {"kind": "dirichlet", "alpha": 0.3, "among": "honest"},
        "optimizer": {"momentum": 0.9, "momentum_at": "worker", "lr": 0.05},
    }
    _runs(
        tmp_path,
        _config(**long, steps=40),
        _config(**long, steps=41),
        _config(model={"name": "mlp"}, optimizer={"lr": 0.1}),
    )
    report.build_report(tmp_path)
    names = [Path(p).name for p in written]
    assert len(set(names)) == 3 and all(len(n) <= 160 for n in names), names


def test_every_group_gets_its_curve_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the report had drawn the first 64 groups only, silently
    written: list[str] = []
    monkeypatch.setattr(report, "accuracy_curves", lambda c, path, **kw: written.append(path))
    monkeypatch.setattr(report, "heatmap", lambda v, r, c, path, **kw: None)
    _runs(tmp_path, *[_config(optimizer={"lr": 0.01 * (i + 1)}) for i in range(66)])
    report.build_report(tmp_path)
    assert len(set(written)) == 66


def test_markdown_cells_keep_their_columns() -> None:
    text = markdown_table(["a|b", "c"], [["x|y", "line\nbreak"], [1.5, None]])
    lines = text.splitlines()
    assert len(lines) == 4
    assert lines[0] == r"| a\|b  | c          |"
    assert lines[2] == r"| x\|y  | line break |"
