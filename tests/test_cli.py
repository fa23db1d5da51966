"""The ``byzlearn`` console script's own handling: usage errors are one line."""

from __future__ import annotations

import pytest

from byzlearn.cli import run_app


@pytest.mark.parametrize(
    ("args", "needle", "helps"),
    [
        (["run", "--bogus"], "--bogus", "byzlearn run --help"),
        (["sweep"], "SPEC", "byzlearn sweep --help"),
        (["study", "fep-2017", "--jobs", "0"], "--jobs", "byzlearn study --help"),
        (["nosuchcommand"], "nosuchcommand", "byzlearn --help"),
        (["neurons", "nosuchcommand"], "nosuchcommand", "byzlearn neurons --help"),
    ],
)
def test_a_usage_error_is_one_line_naming_the_help(args, needle, helps, capsys):
    """click's framed usage block (five lines) was printed for these; now one ``error:`` line
    that names the command's help, and status 2 as before (click's wording differs between the
    typer versions, which carry their own click from 0.22 on)."""
    assert run_app(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert needle.lower() in lines[0].lower()
    assert lines[0].endswith(f"(see '{helps}')")


def test_help_and_the_commands_own_errors_keep_their_status(capsys, tmp_path):
    assert run_app(["--help"]) == 0
    assert "Usage: byzlearn" in capsys.readouterr().out
    assert run_app(["run", str(tmp_path / "missing.yaml")]) == 2
    captured = capsys.readouterr()
    assert (captured.out + captured.err).strip().endswith("missing.yaml: no such file")
