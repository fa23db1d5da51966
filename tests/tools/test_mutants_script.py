"""``tools/mutants.py``: the mutants file is checked in one line per fault, each mutant runs in
a copy (the checkout untouched) and gets the right verdict, and the repository's own mutants
still apply to the code (an edit that moves their text fails here, not in a later run)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests.tools import ROOT, load_tool

mutants = load_tool("mutants")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A tiny repository: a package, its test, and a folder the copy must leave out."""
    root = tmp_path / "repo"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "m.py").write_text("def f():\n    return 1  # one\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_m.py").write_text("from pkg.m import f\n\ndef test_f():\n"
                                             "    assert f() == 1\n")  # fmt: skip
    (root / ".venv").mkdir()
    (root / ".venv" / "big").write_text("x")
    return root


def _write(path: Path, entries: object) -> Path:
    path.write_text(yaml.safe_dump(entries))
    return path


def _entry(**changes: object) -> dict[str, object]:
    entry = {"name": "m", "file": "pkg/m.py", "old": "return 1", "new": "return 2",
             "tests": ["tests/test_m.py"]}  # fmt: skip
    entry.update(changes)
    return entry


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ({"a": 1}, "expected a non-empty list of mutants"),
        ([], "expected a non-empty list of mutants"),
        ([{"name": "m"}], "mutant 1: expected the keys name, file, old, new, tests"),
        ([_entry(old=3)], "name, file, old, new and tests must be text"),
        ([_entry(), _entry()], "mutant 'm': the name is used twice"),
        ([_entry(file="../outside.py")], "../outside.py is not in the repository"),
        ([_entry(file="pkg/none.py")], "pkg/none.py is not in the repository"),
        ([_entry(tests=["tests/none.py"])], "tests/none.py is not in the repository"),
        ([_entry(old="return 3")], "old is found 0 times, not once in pkg/m.py"),
        ([_entry(old="r")], "old is found 2 times, not once in pkg/m.py"),
        ([_entry(new="return 1")], "old is the same as new in pkg/m.py"),
    ],
)
def test_a_bad_mutants_file_is_one_line(repo: Path, tmp_path: Path, entries, message) -> None:
    (tmp_path / "outside.py").write_text("return 1")
    path = _write(tmp_path / "m.yaml", entries)
    with pytest.raises(mutants.MutantsFileError, match=message.replace("(", r"\(")) as err:
        mutants.load(path, repo)
    assert "\n" not in str(err.value)


def test_each_verdict_and_the_checkout_untouched(repo: Path, tmp_path: Path) -> None:
    path = _write(
        tmp_path / "m.yaml",
        [
            _entry(name="wrong-value"),
            _entry(name="comment-only", old="# one", new="# two"),
            _entry(name="syntax-error", new="return (2"),
        ],
    )
    loaded = mutants.load(path, repo)
    copy = mutants.copy_repository(repo, tmp_path / "scratch")
    assert not (copy / ".venv").exists() and (copy / "pkg" / "m.py").exists()
    env = dict(os.environ, PYTHONPATH=str(copy))
    verdicts = [mutants.run_mutant(m, copy, env) for m in loaded]
    assert [v for v, _, _ in verdicts] == ["killed", "survived", "invalid"]
    assert verdicts[0][2] == "tests/test_m.py::test_f"
    original = "def f():\n    return 1  # one\n"
    assert (copy / "pkg" / "m.py").read_text() == original  # restored after each
    assert (repo / "pkg" / "m.py").read_text() == original  # the checkout never touched


def test_the_repositorys_mutants_still_apply(capsys: pytest.CaptureFixture[str]) -> None:
    assert mutants.main([str(ROOT / "tools" / "mutants.yaml"), "--check"]) == 0
    assert capsys.readouterr().out.strip().endswith("mutants apply")


def test_the_command_line_refuses_a_bad_file_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path / "m.yaml", [])
    assert mutants.main([str(path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert mutants.main([str(ROOT / "tools" / "mutants.yaml"), "--only", "nothing"]) == 2
