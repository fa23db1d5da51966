"""The ``byzlearn`` console script's own handling: usage errors are one line."""

from __future__ import annotations

import pytest

from byzlearn.cli import run_app


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--bogus"], "error: No such option '--bogus'"),
        (["sweep"], "error: Missing argument 'SPEC'."),
        (["study", "fep-2017", "--jobs", "0"], "error: Invalid value for '--jobs'"),
        (["nosuchcommand"], "error: No such command 'nosuchcommand'."),
        (["neurons", "nosuchcommand"], "error: No such command 'nosuchcommand'."),
    ],
)
def test_a_usage_error_is_one_line_naming_the_help(args, message, capsys):
    """click's framed usage block (five lines) was printed for these; now one ``error:`` line
    that names the command's help, and status 2 as before."""
    assert run_app(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(message) and "--help')" in lines[0]


def test_help_and_the_commands_own_errors_keep_their_status(capsys, tmp_path):
    assert run_app(["--help"]) == 0
    assert "Usage: byzlearn" in capsys.readouterr().out
    assert run_app(["run", str(tmp_path / "missing.yaml")]) == 2
    captured = capsys.readouterr()
    assert (captured.out + captured.err).strip().endswith("missing.yaml: no such file")
