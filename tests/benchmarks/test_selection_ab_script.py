"""benchmarks/selection_ab.py compares against a git revision, and refuses an unknown one."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.benchmarks import REPO, load_script


def _has_history() -> bool:
    if shutil.which("git") is None:
        return False
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", "HEAD"], capture_output=True
    )
    return done.returncode == 0


pytestmark = pytest.mark.skipif(not _has_history(), reason="needs git and the repository's HEAD")


@pytest.fixture(scope="module")
def script():
    return load_script("selection_ab")


@pytest.mark.slow
def test_against_head_prints_every_statistic_with_the_same_outputs(script, capsys):
    script.main(["--rev", "HEAD", "--n", "10", "--repeats", "1", "--calls", "5"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 10 |")]
    assert [row.split("|")[2].strip() for row in rows] == [
        "median", "trimmed_mean", "meamed", "phocas"
    ]
    assert all(row.rstrip(" |").endswith("yes") for row in rows)


def test_an_unknown_revision_is_one_line(script):
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--rev", "no-such-revision-here"])
    message = str(exit_info.value)
    assert message.startswith("error: cannot read _select.py at revision 'no-such-revision-here'")
    assert "\n" not in message
