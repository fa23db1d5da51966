"""The spinner the commands show while they check their configs (a fresh install compiles the
rules' kernels then: a minute with nothing else on the screen), on a terminal only, erased
before an error or the progress bar."""

from __future__ import annotations

import io
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import typer
import yaml
from rich.console import Console
from typer.testing import CliRunner

from byzlearn.experiments import cli as experiments_cli
from byzlearn.experiments.cli import Waiting, register
from byzlearn.studies import cli as studies_cli

SMALL = {
    "dataset": {"name": "synthetic", "options": {"num_samples": 200, "num_features": 6}},
    "model": {"name": "logistic"},
    "n": 7,
    "f": 1,
    "steps": 3,
    "batch_size": 8,
}


def screen(raw: str) -> list[str]:
    """The non-blank lines a terminal shows after ``raw``: text written at the cursor
    (overwriting), carriage returns, erased lines (ESC[2K) and cursor-up moves (ESC[1A)
    applied; other escape sequences (colours, the cursor hidden or shown) dropped."""
    lines: list[list[str]] = [[]]
    row = col = 0
    for token in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|\r|\n|[^\x1b\r\n]+", raw):
        if token == "\n":
            row, col = row + 1, 0
            if row == len(lines):
                lines.append([])
        elif token == "\r":
            col = 0
        elif token == "\x1b[2K":
            lines[row] = []
        elif token == "\x1b[1A":
            row = max(row - 1, 0)
        elif not token.startswith("\x1b"):
            line = lines[row] + [" "] * max(0, col - len(lines[row]))
            line[col : col + len(token)] = list(token)
            lines[row], col = line, col + len(token)
    return [text for text in ("".join(line) for line in lines) if text.strip()]


def terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=120), out


def test_waiting_shows_then_erases_its_message_on_a_terminal() -> None:
    console, out = terminal()
    waiting = Waiting("checking the config", on=console)
    waiting.stop()
    waiting.stop()  # twice: harmless
    assert "checking the config" in out.getvalue()
    assert screen(out.getvalue()) == []


def test_waiting_prints_nothing_off_a_terminal() -> None:
    out = io.StringIO()
    with Waiting("checking the config", on=Console(file=out, width=120)):
        pass
    assert out.getvalue() == ""


@pytest.fixture
def tty(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """The commands' console is a terminal writing into the returned buffer."""
    console, out = terminal()
    monkeypatch.setattr(experiments_cli, "console", console)
    monkeypatch.setattr(studies_cli, "console", console)
    return out


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_a_refused_demo_prints_its_error_alone_after_the_spinner(
    tty: io.StringIO, tmp_path: Path
) -> None:
    out = tmp_path / "demo"
    (out / "krum").mkdir(parents=True)  # another demo's run folder
    (out / "krum" / "config.yaml").write_text("n: 3\n")
    result = CliRunner().invoke(_app(), ["demo", "--out", str(out), "--rules", "krum"])
    assert result.exit_code == 2
    assert "checking the demo's configs" in tty.getvalue()
    lines = screen(tty.getvalue())
    assert len(lines) == 1 and lines[0].startswith("error:"), lines


def test_run_erases_the_spinner_before_the_bar_and_a_config_error(
    tty: io.StringIO, tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(SMALL))
    result = CliRunner().invoke(_app(), ["run", str(config), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "checking the config" in tty.getvalue()
    assert not any("checking" in line for line in screen(tty.getvalue()))
    tty.seek(0)
    tty.truncate()
    config.write_text(yaml.safe_dump({**SMALL, "f": 9}))
    result = CliRunner().invoke(_app(), ["run", str(config), "--out", str(tmp_path / "s")])
    assert result.exit_code == 2
    lines = screen(tty.getvalue())
    assert len(lines) == 1 and lines[0].startswith("error:"), lines


def test_sweep_erases_the_spinner_before_its_plan(tty: io.StringIO, tmp_path: Path) -> None:
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({"base": SMALL, "grid": {"rule.name": ["median"]}}))
    result = CliRunner().invoke(
        _app(), ["sweep", str(spec), "--out", str(tmp_path / "s"), "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "checking the sweep's configs" in tty.getvalue()
    lines = screen(tty.getvalue())
    assert lines[0].startswith("1 runs") and not any("checking" in line for line in lines)


def test_study_erases_the_spinner_before_its_first_line(
    tty: io.StringIO, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import byzlearn.studies

    def run_study(name: str, scale: str, out: Path, *, jobs: int, on_run: Any) -> Any:
        assert "checking the study's configs" in tty.getvalue()  # shown while it plans
        on_run(0, 1, SimpleNamespace(label="krum"), False)
        return out / "report.md", SimpleNamespace(verdict="reproduced", reason="as claimed.")

    monkeypatch.setattr(byzlearn.studies, "run_study", run_study)
    app = typer.Typer()
    app.command()(studies_cli.study)
    result = CliRunner().invoke(app, ["krum-2017", "--out", str(tmp_path / "study")])
    assert result.exit_code == 0, result.output
    lines = screen(tty.getvalue())
    assert lines[0] == "[1/1] training krum", lines
    assert not any("checking" in line for line in lines)

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise byzlearn.studies.base.StudyDirError("study: holds another study")

    monkeypatch.setattr(byzlearn.studies, "run_study", refused)
    tty.seek(0)
    tty.truncate()
    result = CliRunner().invoke(app, ["krum-2017", "--out", str(tmp_path / "other")])
    assert result.exit_code == 2
    lines = screen(tty.getvalue())
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
