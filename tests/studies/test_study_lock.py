"""Two studies never write one folder at once: the folder is locked as a run directory is."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from byzlearn.cli import app
from byzlearn.experiments.store import RunLockedError
from byzlearn.studies import run_study


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_study_folder_another_live_process_works_in_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "fep"
    out.mkdir()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
        try:
            (out / "lock").write_text(f"{other.pid} {socket.gethostname()}\n")
            with pytest.raises(RunLockedError, match=f"another byzlearn process \\({other.pid} "):
                run_study("fep-2017", "tiny", out)
            args = ["study", "fep-2017", "--scale", "tiny", "--out", str(out)]
            res = CliRunner().invoke(app, args)
        finally:
            other.kill()
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0] and str(other.pid) in lines[0]
    assert "Traceback" not in res.output
    assert sorted(p.name for p in out.iterdir()) == ["lock"]  # nothing written, lock kept


def test_the_lock_of_a_killed_study_is_taken_over_and_its_temporaries_removed(
    tmp_path: Path,
) -> None:
    out = tmp_path / "fep"
    out.mkdir()
    (out / "lock").write_text(f"{_dead_pid()} {socket.gethostname()}\n")
    left = ["report.md.0123456789ab.tmp", "results.json.0123456789ab.tmp",
            "study.json.a1b2c3d4e5f6.tmp", "fep2017_bound.png.a1b2c3d4e5f6.tmp"]  # fmt: skip
    for name in left:
        (out / name).write_text("half")
    (out / "notes.tmp").write_text("the user's")  # not the study's: kept
    report, _ = run_study("fep-2017", "tiny", out)
    assert report.is_file()
    names = {p.name for p in out.iterdir()}
    assert not names & set(left) and "notes.tmp" in names
    assert "lock" not in names  # released


def test_the_lock_is_held_while_the_study_runs_and_released_after_an_error(
    tmp_path: Path, monkeypatch
) -> None:
    from byzlearn.studies import base

    out = tmp_path / "fep"
    seen: list[str] = []

    def analyse_and_look(self, *args, **kwargs):
        seen.append((out / "lock").read_text().split()[0])
        raise RuntimeError("analysis failed")

    monkeypatch.setattr(type(base.STUDIES.get("fep-2017")), "analyse", analyse_and_look)
    with pytest.raises(RuntimeError, match="analysis failed"):
        run_study("fep-2017", "tiny", out)
    assert seen == [str(os.getpid())]
    assert not (out / "lock").exists()
