"""Atomic writes (``store.write_atomically``): each call writes a temporary file of its own, so
two writers of one file never meet in it; a run directory's lock removes what a killed run left."""

from __future__ import annotations

from pathlib import Path

import pytest

from byzlearn.experiments.store import RunDir, write_atomically


def test_a_second_writer_of_the_same_file_does_not_take_the_first_ones_temporary_file(
    tmp_path: Path,
) -> None:
    target = tmp_path / "runs.md"

    def first(fh) -> None:
        fh.write(b"first, ")
        # another process writes the same file meanwhile (two reports of one sweep): with one
        # shared temporary name it removed this call's file, published its own, and this call
        # failed with FileNotFoundError
        write_atomically(target, lambda other: other.write(b"second"))
        fh.write(b"whole")

    write_atomically(target, first)
    assert target.read_bytes() == b"first, whole"  # the last writer's whole file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.md"]


def test_a_failed_write_leaves_the_previous_file_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "summary.json"
    target.write_bytes(b"before")

    def broken(fh) -> None:
        fh.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        write_atomically(target, broken)
    assert target.read_bytes() == b"before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_the_lock_removes_what_a_killed_run_left_never_following_a_link(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("VICTIM\n")
    (run / "checkpoint.pt.3f2a9c01b7de.tmp").write_bytes(b"half a checkpoint")
    (run / "metrics.jsonl.tmp").symlink_to(victim)
    (run / "metrics.jsonl").write_text("{}\n")
    with RunDir(run).lock():
        assert sorted(p.name for p in run.iterdir()) == ["lock", "metrics.jsonl"]
    assert victim.read_text() == "VICTIM\n"


def test_the_lock_leaves_the_users_own_tmp_files(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.tmp").write_text("mine\n")
    (run / "summary.json.backup.tmp").write_text("mine too\n")
    with RunDir(run).lock():
        pass
    assert sorted(p.name for p in run.iterdir()) == ["notes.tmp", "summary.json.backup.tmp"]
