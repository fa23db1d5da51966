"""Findings of a fuzz of the run-directory files (metrics, checkpoint, model, links), fixed at
the source: a resume whose metrics and checkpoint disagree is refused (never a finished run with
gaps or repeated rounds), damaged run files are one line naming them, and nothing is ever
written through a symbolic link planted in a run or report directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from byzlearn.cli import app
from byzlearn.experiments.config import load_config
from byzlearn.experiments.store import MetricsWriter, RunDir, RunDirError
from tests.experiments.test_cli_errors import SMALL
from tests.resume import kill_run

runner = CliRunner()


def _one_line_error(result: Any, *needles: str) -> str:
    """Exit code 2, one line starting with ``error:`` holding every needle, no traceback."""
    output = result.output
    assert result.exit_code == 2, output
    assert result.exception is None or isinstance(result.exception, SystemExit), output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), output
    for needle in needles:
        assert needle in lines[0], (needle, output)
    return lines[0]


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    return path


def _run(tmp_path: Path, out: Path, *args: str) -> Any:
    return runner.invoke(app, ["run", str(_config(tmp_path)), "--out", str(out), *args])


def _killed(tmp_path: Path) -> Path:
    """A run killed after round 6, its checkpoint of round 4."""
    out = tmp_path / "killed"
    kill_run(load_config(_config(tmp_path)), out, at=6)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["round"] == 4
    return out


def _finished(tmp_path: Path) -> Path:
    out = tmp_path / "done"
    assert _run(tmp_path, out).exit_code == 0
    return out


def _rounds(out: Path) -> list[int]:
    return [json.loads(line)["round"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != "lock"}


# ------------------------------------------------------------------- 1. metrics vs checkpoint
def _keep_lines(keep: list[int]) -> Any:
    def damage(out: Path) -> None:
        lines = (out / "metrics.jsonl").read_text().splitlines(True)
        (out / "metrics.jsonl").write_text("".join(lines[i] for i in keep))

    return damage


METRICS_VS_CHECKPOINT = {
    "cut before the checkpoint": (_keep_lines([0, 1, 2]), "end at round 2"),
    "a record missing": (_keep_lines([0, 1, 3, 4, 5, 6]), "round 3 where round 2 belongs"),
    "a record repeated": (_keep_lines([0, 1, 2, 2, 3, 4, 5]), "round 2 where round 3 belongs"),
    "empty": (_keep_lines([]), "hold no record"),
}


@pytest.mark.parametrize("case", sorted(METRICS_VS_CHECKPOINT))
def test_metrics_that_disagree_with_the_checkpoint_are_refused(tmp_path: Path, case: str) -> None:
    out = _killed(tmp_path)
    damage, needle = METRICS_VS_CHECKPOINT[case]
    damage(out)
    before = _snapshot(out)
    line = _one_line_error(_run(tmp_path, out), str(out), "disagree", needle, "--no-resume")
    assert "checkpoint is of round 4" in line or "belongs" in line
    assert _snapshot(out) == before  # refused before anything is written
    assert not (out / "summary.json").exists()  # never a finished run with a gap
    fresh = _run(tmp_path, out, "--no-resume")
    assert fresh.exit_code == 0, fresh.output
    assert _rounds(out) == list(range(11))


@pytest.mark.parametrize(
    "value",
    [-5, 10**9, 11, 3, "4", 4.0, True, None],
    ids=["negative", "huge", "past steps", "not its state's", "str", "float", "bool", "none"],
)
def test_a_checkpoint_round_must_be_the_step_it_holds(tmp_path: Path, value: Any) -> None:
    out = _killed(tmp_path)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["round"] = value
    torch.save(state, out / "checkpoint.pt")
    metrics = (out / "metrics.jsonl").read_bytes()
    _one_line_error(_run(tmp_path, out), "checkpoint.pt", "--no-resume")
    assert (out / "metrics.jsonl").read_bytes() == metrics
    assert not (out / "summary.json").exists()


def test_a_plain_resume_still_gives_every_round_once(tmp_path: Path) -> None:
    out = _killed(tmp_path)
    result = _run(tmp_path, out)
    assert result.exit_code == 0 and "resumed from the checkpoint of round 4" in result.output
    assert _rounds(out) == list(range(11))
    assert json.loads((out / "summary.json").read_text())["rounds"] == 10


# --------------------------------------------------------------------------- 2. damaged run files
def _replace_round(value: str) -> Any:
    def damage(out: Path) -> None:
        lines = (out / "metrics.jsonl").read_text().splitlines(True)
        lines[2] = lines[2].replace('"round": 2', f'"round": {value}', 1)
        assert lines[2].startswith('{"round": ' + value)
        (out / "metrics.jsonl").write_text("".join(lines))

    return damage


ROUNDS = {"abc": '"abc"', "str": '"2"', "nan": "NaN", "negative": "-1", "float": "2.0"}


@pytest.mark.parametrize("case", sorted(ROUNDS))
@pytest.mark.parametrize("when", ["killed", "finished"])
def test_a_damaged_round_is_one_line_naming_the_line(tmp_path: Path, case: str, when: str) -> None:
    out = _killed(tmp_path) if when == "killed" else _finished(tmp_path)
    _replace_round(ROUNDS[case])(out)
    before = _snapshot(out)
    _one_line_error(_run(tmp_path, out), "metrics.jsonl: line 3 has round")
    assert _snapshot(out) == before


def test_a_damaged_round_in_a_report_is_one_line(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    assert _run(tmp_path, root / "runs" / "a").exit_code == 0
    _replace_round('"abc"')(root / "runs" / "a")
    result = runner.invoke(app, ["report", str(root)])
    _one_line_error(result, "metrics.jsonl: line 3 has round")


def test_checkpoint_tensors_of_the_wrong_shape_are_one_line(tmp_path: Path) -> None:
    out = _killed(tmp_path)
    state = torch.load(out / "checkpoint.pt", weights_only=True)

    def shrink(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.dim() >= 1:
            return torch.zeros(3)
        if isinstance(x, dict):
            return {k: shrink(v) for k, v in x.items()}
        if isinstance(x, list):
            return [shrink(v) for v in x]
        return x

    state["trainer"] = shrink(state["trainer"])
    torch.save(state, out / "checkpoint.pt")
    _one_line_error(_run(tmp_path, out), "checkpoint.pt", "does not fit", "shape", "--no-resume")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


def _model_damage(name: str, tmp_path: Path) -> Any:
    def damage(model: Path) -> None:
        if name == "junk":
            model.write_text("junk\n")
        elif name == "truncated":
            model.write_bytes(model.read_bytes()[:40])
        elif name == "empty":
            model.write_bytes(b"")
        elif name == "pickle":
            torch.save({"theta": _Evil(tmp_path / "pwned")}, model)
        else:  # a readable file that is not a flat parameter vector
            torch.save({"theta": torch.zeros(3)}, model)

    return damage


MODELS = ["junk", "truncated", "empty", "pickle", "dict"]


@pytest.mark.parametrize("name", MODELS)
def test_a_damaged_model_of_a_finished_run_is_one_line(tmp_path: Path, name: str) -> None:
    out = _finished(tmp_path)
    _model_damage(name, tmp_path)(out / "model.pt")
    _one_line_error(_run(tmp_path, out), "model.pt", "--no-resume")
    assert not (tmp_path / "pwned").exists()
    fresh = _run(tmp_path, out, "--no-resume")
    assert fresh.exit_code == 0 and "trained a new run" in fresh.output
    assert torch.load(out / "model.pt", weights_only=True).dim() == 1


def test_a_damaged_model_in_a_sweep_rerun_is_one_line(tmp_path: Path) -> None:
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"base": SMALL, "grid": {"seed": [0]}}))
    out = tmp_path / "sweep"
    first = runner.invoke(app, ["sweep", str(sweep), "--out", str(out), "--no-report"])
    assert first.exit_code == 0, first.output
    (model,) = sorted(out.rglob("model.pt"))
    _model_damage("junk", tmp_path)(model)
    again = runner.invoke(app, ["sweep", str(sweep), "--out", str(out), "--no-report"])
    assert again.exit_code == 2 and "Traceback" not in again.output, again.output
    assert isinstance(again.exception, SystemExit), again.output
    errors = [line for line in again.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{model}: not a model file" in errors[0], again.output


# ------------------------------------------------------------------------------ 3. symbolic links
def _plant(out: Path, name: str, tmp_path: Path) -> Path:
    """``out/name`` as a link to a victim file outside ``out``; return the victim."""
    victim = tmp_path / "victim.txt"
    victim.write_text("VICTIM\n")
    link = out / name
    link.unlink(missing_ok=True)
    link.symlink_to(victim)
    return victim


TEMP_NAMES = [
    "config.yaml.tmp",
    "metrics.jsonl.tmp",
    "checkpoint.pt.tmp",
    "summary.json.tmp",
    "model.pt.tmp",
]
RUN_FILES = ["model.pt", "metrics.jsonl", "config.yaml", "checkpoint.pt"]


@pytest.mark.parametrize("name", TEMP_NAMES)
def test_a_link_at_a_temp_name_is_removed_not_written_through(tmp_path: Path, name: str) -> None:
    out = _killed(tmp_path)
    victim = _plant(out, name, tmp_path)
    result = _run(tmp_path, out)
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "VICTIM\n"
    assert not (out / name).is_symlink()
    assert _rounds(out) == list(range(11))


@pytest.mark.parametrize("name", RUN_FILES)
def test_a_link_as_a_run_file_is_refused(tmp_path: Path, name: str) -> None:
    out = _killed(tmp_path)
    if name == "model.pt":
        (out / "model.pt").write_bytes(b"")  # the link replaces nothing the run had
    victim = _plant(out, name, tmp_path)
    _one_line_error(_run(tmp_path, out), f"{name}: is a symbolic link")
    assert victim.read_text() == "VICTIM\n"
    assert (out / name).is_symlink()  # left as it was


@pytest.mark.parametrize("name", ["model.pt", "summary.json.tmp", "model.pt.tmp"])
def test_no_resume_on_a_finished_run_never_writes_through_a_link(tmp_path: Path, name: str) -> None:
    out = _finished(tmp_path)
    victim = _plant(out, name, tmp_path)
    result = _run(tmp_path, out, "--no-resume")
    assert victim.read_text() == "VICTIM\n"
    if name == "model.pt":
        _one_line_error(result, "model.pt: is a symbolic link")
    else:
        assert result.exit_code == 0 and "trained a new run" in result.output
        assert (out / "summary.json").is_file() and not (out / name).exists()


def test_a_lock_link_is_neither_read_nor_written_through(tmp_path: Path) -> None:
    out = _killed(tmp_path)
    victim = _plant(out, "lock", tmp_path)
    victim.write_text(f"{os.getpid()} {__import__('socket').gethostname()}\n")  # a live pid
    before = victim.read_text()
    assert _run(tmp_path, out).exit_code == 0
    assert victim.read_text() == before


def test_the_metrics_writer_never_appends_through_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("VICTIM\n")
    (tmp_path / "m.jsonl").symlink_to(victim)
    with pytest.raises(RunDirError, match="is a symbolic link"):
        MetricsWriter(tmp_path / "m.jsonl")
    assert victim.read_text() == "VICTIM\n"


def test_a_report_link_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    assert _run(tmp_path, root / "runs" / "a").exit_code == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "runs.md").write_text("VICTIM\n")
    (root / "report").symlink_to(elsewhere, target_is_directory=True)
    _one_line_error(runner.invoke(app, ["report", str(root)]), "report: is a symbolic link")
    assert [p.name for p in elsewhere.iterdir()] == ["runs.md"]
    assert (elsewhere / "runs.md").read_text() == "VICTIM\n"


def test_links_inside_the_report_folder_are_replaced_not_written_through(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    assert _run(tmp_path, root / "runs" / "a").exit_code == 0
    (root / "report").mkdir()
    victim = _plant(root / "report", "runs.md", tmp_path)
    png = tmp_path / "victim.png"
    png.write_text("VICTIM\n")
    (root / "report" / "worst_rule_f.png").symlink_to(png)
    (root / "report" / "worst.md.tmp").symlink_to(png)
    result = runner.invoke(app, ["report", str(root)])
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "VICTIM\n" and png.read_text() == "VICTIM\n"
    for name in ("runs.md", "worst_rule_f.png", "worst.md"):
        assert (root / "report" / name).is_file() and not (root / "report" / name).is_symlink()


def test_a_link_in_a_reported_run_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    assert _run(tmp_path, root / "runs" / "a").exit_code == 0
    _plant(root / "runs" / "a", "metrics.jsonl", tmp_path)
    _one_line_error(runner.invoke(app, ["report", str(root)]), "metrics.jsonl: is a symbolic")


def test_claim_refuses_a_linked_run_file(tmp_path: Path) -> None:
    out = _finished(tmp_path)
    _plant(out, "summary.json", tmp_path)
    with pytest.raises(RunDirError, match=r"summary\.json: is a symbolic link"):
        RunDir(out).claim(load_config(_config(tmp_path)))


# --------------------------------------------------------------------- the checks pass real runs
PROTOCOLS = {
    "parameter_server": {"n": 7, "f": 1, "rule": {"name": "krum"}, "attack": {"name": "alie"}},
    "momentum": {"n": 7, "f": 1, "optimizer": {"momentum": 0.9}},
    "async_sgd": {"n": 7, "f": 1, "protocol": {"name": "async_sgd"}},
    "kardam": {"n": 7, "f": 1, "protocol": {"name": "kardam"}},
    "byzsgd": {"n": 10, "f": 1, "protocol": {"name": "byzsgd"}},
    "liubei": {"n": 10, "f": 1, "protocol": {"name": "liubei"}},
    "decentralized": {"n": 10, "f": 1, "protocol": {"name": "decentralized"}},
}


@pytest.mark.parametrize("case", sorted(PROTOCOLS))
def test_every_protocol_still_resumes_through_the_checks(tmp_path: Path, case: str) -> None:
    from byzlearn.experiments import parse_config, run
    from tests.resume import without_times

    config = parse_config({**SMALL, "steps": 12, **PROTOCOLS[case]})
    full = run(config)
    kill_run(config, tmp_path / "r", at=9)
    resumed = run(config, tmp_path / "r")
    assert resumed.status == "resumed" and resumed.resumed_from == 8
    assert without_times(resumed.records) == without_times(full.records)
    assert _rounds(tmp_path / "r") == list(range(13))


def test_a_run_directory_that_is_a_link_is_refused(tmp_path: Path) -> None:
    """A sweep directory from someone else can hold runs/<hash> as a link to any directory:
    nothing is written there (a link among the parents, e.g. runs -> scratch, is followed)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "run"
    link.symlink_to(elsewhere)
    with pytest.raises(RunDirError, match="the run directory is a symbolic link"):
        RunDir(link).claim(load_config(_config(tmp_path)))
    assert list(elsewhere.iterdir()) == []
    parent = tmp_path / "parent"
    parent.symlink_to(elsewhere)
    RunDir(parent / "run").claim(load_config(_config(tmp_path)))  # no error
