"""Bad input through the ``byzlearn`` command: one clear line, exit code 2, no traceback, and
no finished result lost when runs are killed, corrupted or collide.

Most cases use Typer's CliRunner on the very app the console script runs
(``byzlearn.cli.app``); a sample also goes through the installed ``byzlearn`` executable.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from byzlearn.cli import app
from byzlearn.experiments import run
from byzlearn.experiments.config import load_config
from byzlearn.experiments.store import RunDir
from tests.resume import kill_run

SMALL = {
    "name": "small",
    "dataset": {"name": "synthetic", "options": {"num_samples": 400, "num_features": 8}},
    "model": {"name": "logistic"},
    "n": 7,
    "f": 1,
    "steps": 10,
    "eval_every": 5,
    "checkpoint_every": 4,
    "batch_size": 8,
}

runner = CliRunner()


def _one_line_error(result, *needles: str) -> None:
    """Exit code 2, one line starting with ``error:`` that holds every needle, no traceback."""
    output = result.output
    assert result.exit_code == 2, output
    assert ("Traceback" not in output and result.exception is None) or isinstance(
        result.exception, SystemExit
    ), output
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, output
    assert len(lines) == 1, output  # nothing else: no progress bar, no stack
    for needle in needles:
        assert needle in errors[0], (needle, output)


def _config(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**SMALL, **changes}))
    return path


# --------------------------------------------------------------------------- config files
def _write(text: str | bytes) -> Callable[[Path], list[str]]:
    def make(tmp_path: Path) -> list[str]:
        path = tmp_path / "bad.yaml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return ["run", str(path)]

    return make


CONFIG_CASES: dict[str, tuple[Callable[[Path], list[str]], tuple[str, ...]]] = {
    "missing file": (lambda p: ["run", str(p / "nope.yaml")], ("nope.yaml: no such file",)),
    "a directory": (lambda p: ["run", str(p)], ("is a directory",)),
    "malformed yaml": (_write("n: [1, 2\nf: 3\n"), ("invalid YAML at line",)),
    "not utf-8": (_write(b"n: 5\nname: \xff\xfe\n"), ("not UTF-8",)),
    "duplicate key": (_write("n: 5\nf: 1\nn: 6\n"), ("'n' written twice (lines 1 and 3)",)),
    "top-level list": (_write("- n: 5\n"), ("top level must be a mapping",)),
    "unknown key": (_write("optimzer: {lr: 0.1}\n"), ("optimzer", "unknown key")),
    "bool for int": (_write("n: true\n"), ("n:", "valid integer")),
    "string for float": (_write("optimizer: {lr: fast}\n"), ("optimizer.lr",)),
    "infinite lr": (_write("optimizer: {lr: .inf}\n"), ("optimizer.lr", "finite")),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config_files_are_one_line(tmp_path: Path, case: str) -> None:
    make, needles = CONFIG_CASES[case]
    _one_line_error(runner.invoke(app, make(tmp_path)), *needles)


OVERRIDE_CASES: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "no equals sign": (["n"], ("override 'n': expected key=value",)),
    "into a scalar": (["n.x=1"], ("n: is not a section",)),
    "unknown rule": (["rule.name=krumm"], ("rule.name", "unknown rule 'krumm'")),
    "rule option value": (
        ["rule.name=centered_clipping", "rule.options.radius=-1"],
        ("rule.options", "radius must be finite and > 0"),
    ),
    "attack option value": (
        ["attack.name=alie", "attack.options.z=abc"],
        ("attack.options", "z must be a number"),
    ),
    "model option value": (
        ["model.name=mlp", "model.options.hidden=[-4]"],
        ("model.options", "hidden: positive integers, got [-4]"),
    ),
    "dataset option name": (["dataset.options.foo=1"], ("dataset.options", "no option 'foo'")),
    "digits takes no option": (
        ["dataset={name: digits, options: {separation: 3}}"],
        ("dataset.options", "digits has no option 'separation'"),
    ),
    "standardise value": (
        ["dataset.options.standardise=pixel"],
        ("dataset.options", "standardise must be one of channel, feature, none"),
    ),
    "test fraction": (
        ["dataset.options.test_fraction=1.5"],
        ("dataset.options", "test_fraction must be in (0, 1)"),
    ),
    "unknown protocol": (["protocol.name=gossip"], ("protocol.name", "unknown protocol")),
    "kardam needs 3f+1": (["protocol.name=kardam", "n=5", "f=2"], ("kardam needs n >= 3f + 1",)),
    "q beyond n": (["protocol.q=50"], ("protocol.q", "must be <= n")),
    "crash of no worker": (["network.crashes={99: 3}"], ("network.crashes", "[0, 7)")),
    "bad distribution": (
        ["network.compute_time={dist: gamma}"],
        ("network.compute_time.dist",),
    ),
    "negative drop": (["network.coordinate_drop=-0.5"], ("network.coordinate_drop",)),
    "unknown engine": (["engine.name=spark"], ("engine.name", "unknown engine 'spark'")),
}


@pytest.mark.parametrize("case", sorted(OVERRIDE_CASES))
def test_bad_overrides_are_one_line(tmp_path: Path, case: str) -> None:
    overrides, needles = OVERRIDE_CASES[case]
    result = runner.invoke(app, ["run", str(_config(tmp_path)), *overrides])
    _one_line_error(result, *needles)
    assert not (Path("runs").exists() and any(Path("runs").glob("small-*/metrics.jsonl")))


def test_missing_dataset_keeps_the_install_hint_brackets(tmp_path: Path) -> None:
    cfg = _config(tmp_path, dataset={"name": "mnist", "root": str(tmp_path / "data")})
    result = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "r")])
    _one_line_error(result, "dataset.name=mnist")
    result = runner.invoke(
        app, ["run", str(cfg), "dataset.download=true", "--out", str(tmp_path / "r2")]
    )
    if result.exit_code == 2 and "torchvision" in result.output:  # no vision extra here
        assert "byzlearn[vision]" in result.output


# --------------------------------------------------------------------------- run directories
def test_out_pointing_at_a_file(tmp_path: Path) -> None:
    target = tmp_path / "taken.txt"
    target.write_text("my notes")
    result = runner.invoke(app, ["run", str(_config(tmp_path)), "--out", str(target)])
    _one_line_error(result, "is a file, not a run directory")
    assert target.read_text() == "my notes"


def test_a_finished_run_of_another_config_is_never_touched(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    out = tmp_path / "shared"
    assert runner.invoke(app, ["run", str(cfg), "--out", str(out)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for extra in ([], ["--no-resume"]):
        result = runner.invoke(app, ["run", str(cfg), "f=2", "--out", str(out), *extra])
        _one_line_error(result, "holds the finished run of another config", "--out")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    again = runner.invoke(app, ["run", str(cfg), "--out", str(out)])
    assert again.exit_code == 0 and "loaded the finished run" in again.output


def test_default_directories_differ_between_configs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = _config(tmp_path)
    first = runner.invoke(app, ["run", str(cfg)])
    second = runner.invoke(app, ["run", str(cfg), "rule.name=median"])
    assert first.exit_code == 0 and second.exit_code == 0, second.output
    dirs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(dirs) == 2 and all(d.startswith("small-") for d in dirs)
    assert "trained a new run" in first.output and "trained a new run" in second.output


def test_a_running_directory_is_locked(tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "lock").write_text(f"{os.getpid()} {__import__('socket').gethostname()}\n")
    result = runner.invoke(app, ["run", str(_config(tmp_path)), "--out", str(out)])
    _one_line_error(result, "another byzlearn process", "is running in this directory")
    (out / "lock").write_text("999999999 " + __import__("socket").gethostname() + "\n")
    result = runner.invoke(app, ["run", str(_config(tmp_path)), "--out", str(out)])
    assert result.exit_code == 0, result.output  # a dead process's lock is taken over
    assert not (out / "lock").exists()


def _killed_run(tmp_path: Path) -> Path:
    out = tmp_path / "killed"
    kill_run(load_config(_config(tmp_path)), out, at=6)
    assert (out / "checkpoint.pt").exists()
    return out


@pytest.mark.parametrize(
    "damage",
    [b"", os.urandom(300), b"PK\x03\x04truncated zip", b"\x80\x02}q\x00."],
    ids=["empty", "random", "truncated", "foreign"],
)
def test_corrupt_checkpoints_are_one_line_naming_no_resume(tmp_path: Path, damage) -> None:
    out = _killed_run(tmp_path)
    (out / "checkpoint.pt").write_bytes(damage)
    result = runner.invoke(app, ["run", str(_config(tmp_path)), "--out", str(out)])
    _one_line_error(result, "checkpoint.pt", "--no-resume")
    fresh = runner.invoke(app, ["run", str(_config(tmp_path)), "--out", str(out), "--no-resume"])
    assert fresh.exit_code == 0 and "trained a new run" in fresh.output


def test_a_pickle_in_a_checkpoint_never_runs(tmp_path: Path) -> None:
    out = _killed_run(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import torch

    torch.save({"round": 4, "hash": "x", "trainer": Evil()}, out / "checkpoint.pt")
    result = runner.invoke(app, ["run", str(_config(tmp_path)), "--out", str(out)])
    _one_line_error(result, "checkpoint.pt")
    assert not marker.exists()


def test_damaged_metrics_are_named_not_silently_cut(tmp_path: Path) -> None:
    out = tmp_path / "done"
    assert runner.invoke(app, ["run", str(_config(tmp_path)), "--out", str(out)]).exit_code == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    lines[3] = lines[3][:10]  # a damaged record in the middle
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["run", str(_config(tmp_path)), "--out", str(out)])
    _one_line_error(result, "metrics.jsonl: line 4 is not a JSON record")


def test_a_killed_run_resumes_and_says_so(tmp_path: Path) -> None:
    out = _killed_run(tmp_path)
    result = runner.invoke(app, ["run", str(_config(tmp_path)), "--out", str(out)])
    assert result.exit_code == 0 and "resumed from the checkpoint of round 4" in result.output
    other = runner.invoke(app, ["run", str(_config(tmp_path)), "f=2", "--out", str(out)])
    _one_line_error(other, "another config")


# --------------------------------------------------------------------------- sweeps, reports, demo
def _sweep(tmp_path: Path, text: str) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return str(path)


SWEEP_CASES: dict[str, tuple[Callable[[Path], list[str]], tuple[str, ...]]] = {
    "missing sweep file": (lambda p: ["sweep", str(p / "nope.yaml")], ("no such file",)),
    "malformed sweep": (lambda p: ["sweep", _sweep(p, "grid: {n: [1,\n")], ("invalid YAML",)),
    "missing base file": (
        lambda p: ["sweep", _sweep(p, "base: gone.yaml\ngrid: {n: [5]}\n")],
        ("base: no such config file",),
    ),
    "grid key typo": (
        lambda p: ["sweep", _sweep(p, "grid: {rule.nam: [krum]}\n")],
        ("grid: 'rule.nam' is not a config field",),
    ),
    "unknown top-level key": (
        lambda p: ["sweep", _sweep(p, "grids: {n: [5]}\n")],
        ("unknown key 'grids'",),
    ),
    "empty grid values": (
        lambda p: ["sweep", _sweep(p, "grid: {n: []}\n")],
        ("grid.n: must be a non-empty list",),
    ),
    "out is a file": (
        lambda p: [
            "sweep",
            _sweep(p, "grid: {seed: [0]}\n"),
            "--out",
            str(p / "s.yaml"),
        ],
        ("is a file, not a sweep directory",),
    ),
    "report of a file": (lambda p: ["report", str(p / "x")], ("no such directory",)),
    "report of an empty directory": (lambda p: ["report", str(p)], ("no finished runs",)),
    "report metric": (
        lambda p: ["report", str(p), "--metric", "speed"],
        ("--metric: expected final_accuracy or best_accuracy",),
    ),
    "demo unknown rule": (
        lambda p: ["demo", "--rules", "krumm", "--out", str(p / "d")],
        ("unknown rule 'krumm'",),
    ),
    "demo out is a file": (
        lambda p: ["demo", "--out", _sweep(p, "x: 1\n")],
        ("is a file, not a directory",),
    ),
}


@pytest.mark.parametrize("case", sorted(SWEEP_CASES))
def test_bad_sweeps_reports_and_demos_are_one_line(tmp_path: Path, case: str) -> None:
    make, needles = SWEEP_CASES[case]
    _one_line_error(runner.invoke(app, make(tmp_path)), *needles)


def test_a_sweep_whose_every_combination_is_invalid_fails(tmp_path: Path) -> None:
    spec = _sweep(tmp_path, "base: {n: 5}\ngrid: {f: [3, 4], rule.name: [bulyan]}\n")
    result = runner.invoke(app, ["sweep", spec, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no valid run in the grid" in result.output
    assert "Traceback" not in result.output


def test_dry_run_lists_the_runs(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({**SMALL, "name": ""}))
    spec = _sweep(tmp_path, "base: base.yaml\ngrid: {rule.name: [krum, median], seed: [0, 1]}\n")
    result = runner.invoke(app, ["sweep", spec, "--out", str(tmp_path / "o"), "--dry-run"])
    assert result.exit_code == 0, result.output
    listed = [line for line in result.output.splitlines() if "[to run]" in line]
    assert len(listed) == 4 and all("'rule.name'" in line for line in listed)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_demo_of_other_settings_is_refused_and_nothing_is_lost(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--rules", "average,krum"]
    assert runner.invoke(app, [*args, "--steps", "4"]).exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    result = runner.invoke(app, [*args, "--steps", "5"])
    _one_line_error(result, "holds a demo with other settings", "--out")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    more = runner.invoke(app, ["demo", "--out", str(out), "--rules", "median", "--steps", "4"])
    assert more.exit_code == 0
    table = (out / "table.md").read_text()
    assert all(f"| {rule}" in table for rule in ("average", "krum", "median"))


# --------------------------------------------------------------------------- the installed command
@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "nope.yaml"], "nope.yaml: no such file"),
        (["run", "bad.yaml"], "written twice"),
        (["sweep", "bad.yaml"], "written twice"),
        (["report", "nowhere"], "no such directory"),
    ],
)
def test_the_installed_command_prints_one_line(tmp_path: Path, args, needle) -> None:
    exe = shutil.which("byzlearn") or str(Path(sys.executable).parent / "byzlearn")
    (tmp_path / "bad.yaml").write_text("n: 5\nn: 6\n")
    proc = subprocess.run(
        [exe, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2, output
    assert "Traceback" not in output and len(output.splitlines()) == 1 and needle in output


def test_run_directories_of_the_same_config_resume_not_collide(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path))
    first = run(config, tmp_path / "r")
    assert first.status == "started"
    second = run(config, tmp_path / "r")
    assert second.status == "loaded" and second.summary == first.summary
    assert RunDir(tmp_path / "r").owner_hash() == first.summary["hash"]


def test_error_lines_keep_square_brackets(capsys) -> None:
    import typer

    from byzlearn.experiments.cli import _fail

    with pytest.raises(typer.Exit):
        _fail("needs torchvision: pip install 'byzlearn[vision]'")
    assert "pip install 'byzlearn[vision]'" in capsys.readouterr().out


def test_a_diverged_run_says_so(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path, optimizer={"lr": 1e20}, attack={"name": "ipm", "options": {"epsilon": 1e20}}
    )
    result = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0 and "diverged at step" in result.output
