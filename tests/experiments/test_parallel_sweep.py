"""Parallel sweeps (``--jobs N``, local processes or Ray tasks): the same runs as a sequential
sweep, and a parallel sweep killed mid-way resumes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from byzlearn import allocator
from byzlearn.cli import app
from byzlearn.experiments.store import RunDir
from byzlearn.experiments.sweep import load_sweep, plan_sweep, run_sweep
from tests.resume import without_times

BASE = {
    "dataset": {"name": "synthetic", "options": {"num_samples": 400, "num_features": 8}},
    "model": {"name": "logistic"},
    "n": 7,
    "f": 1,
    "steps": 10,
    "eval_every": 5,
    "batch_size": 8,
}


def _spec(tmp_path: Path, steps: int = 10, checkpoint_every: int = 0) -> Path:
    base = {**BASE, "steps": steps, "checkpoint_every": checkpoint_every}
    spec = {"base": base, "grid": {"rule.name": ["average", "median"], "seed": [0, 1]}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _runs(out: Path, spec: Path) -> dict[str, list[dict]]:
    """Records (without wall-clock fields) of every run of the sweep, by directory name."""
    plan = plan_sweep(*load_sweep(spec))
    return {
        plan.directory(out, c).name: without_times(RunDir(plan.directory(out, c)).metrics())
        for c in plan.configs
    }


@pytest.mark.timeout(120)
def test_parallel_sweep_equals_sequential_and_skips_finished(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    plan = plan_sweep(*load_sweep(spec))
    sequential = run_sweep(plan, tmp_path / "seq")
    seen: list[tuple[int, int]] = []
    parallel = run_sweep(
        plan, tmp_path / "par", jobs=2, on_round=lambda i, r: seen.append((i, r["round"]))
    )
    strip = ("seconds", "agg_seconds")
    assert [{k: v for k, v in s.items() if k not in strip} for s in parallel] == [
        {k: v for k, v in s.items() if k not in strip} for s in sequential
    ]
    assert _runs(tmp_path / "par", spec) == _runs(tmp_path / "seq", spec)
    assert {i for i, _ in seen} == set(range(4))
    assert {r for _, r in seen} == set(range(1, 11))  # every round, reported from the workers
    # a finished sweep is loaded, not rerun
    summaries = sorted((tmp_path / "par").rglob("summary.json"))
    mtimes = [p.stat().st_mtime_ns for p in summaries]
    again = run_sweep(plan, tmp_path / "par", jobs=2)
    assert again == parallel
    assert mtimes == [p.stat().st_mtime_ns for p in summaries]


def _wait_group_gone(pgid: int, timeout: float = 20.0) -> bool:
    """Wait until every process of group ``pgid`` has exited (zombies count as exited); False
    if some still runs after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = False
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
                alive = True
                break
        if not alive:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.timeout(180)
def test_parallel_sweep_killed_mid_way_resumes(tmp_path: Path) -> None:
    spec = _spec(tmp_path, steps=60, checkpoint_every=5)
    out = tmp_path / "par"
    # the command line, in its own process group, killed (SIGKILL, workers included) once a
    # run has checkpointed and before the sweep is over
    proc = _sweep_until_a_checkpoint(spec, out)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _wait_group_gone(proc.pid)
    _resumes_to_the_sequential_records(spec, out, tmp_path / "seq")


def _sweep_until_a_checkpoint(spec: Path, out: Path) -> subprocess.Popen:
    """``byzlearn sweep --jobs 2`` in its own process group, once a run has checkpointed
    (and the sweep is not over); killed (the whole group) if that does not come."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "byzlearn.cli", "sweep", str(spec), "--out", str(out),
         "--jobs", "2", "--no-report"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while not list(out.rglob("checkpoint.pt")):
            assert proc.poll() is None, "the sweep ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint within 90 s"
            time.sleep(0.02)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return proc


def _resumes_to_the_sequential_records(spec: Path, out: Path, sequential: Path) -> None:
    """The killed parallel sweep in ``out`` (unfinished, checkpointed) run again to the end:
    the records of a sequential sweep, no run left locked."""
    plan = plan_sweep(*load_sweep(spec))
    dirs = [RunDir(plan.directory(out, c)) for c in plan.configs]
    assert not all(d.finished for d in dirs)
    assert any(d.checkpoint_path.exists() for d in dirs)
    result = CliRunner().invoke(
        app, ["sweep", str(spec), "--out", str(out), "--jobs", "2", "--no-report"]
    )
    assert result.exit_code == 0, result.output
    assert all(d.finished and not d.lock_path.exists() for d in dirs)
    run_sweep(plan, sequential)
    assert _runs(out, spec) == _runs(sequential, spec)  # no lost or duplicated round


@pytest.mark.timeout(180)
def test_the_workers_end_with_the_sweep_killed_alone_and_it_resumes(tmp_path: Path) -> None:
    """SIGKILL of the command's process only (not its group): its workers, the progress
    queue's manager and then multiprocessing's forkserver and resource tracker end too, instead
    of finishing their runs (or idling forever) with the runs' locks held."""
    spec = _spec(tmp_path, steps=400, checkpoint_every=5)
    out = tmp_path / "par"
    proc = _sweep_until_a_checkpoint(spec, out)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert _wait_group_gone(proc.pid, timeout=15), "processes of the sweep still run"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # (whatever is left, if the test failed)
        _wait_group_gone(proc.pid)
    _resumes_to_the_sequential_records(spec, out, tmp_path / "seq")


@pytest.mark.timeout(120)
def test_a_failing_run_is_one_line_and_the_others_finish(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    out = tmp_path / "par"
    plan = plan_sweep(*load_sweep(spec))
    busy = RunDir(plan.directory(out, plan.configs[0]))
    busy.path.mkdir(parents=True)
    busy.lock_path.write_text(f"{os.getpid()} {socket.gethostname()}\n")  # a live process
    result = CliRunner().invoke(
        app, ["sweep", str(spec), "--out", str(out), "--jobs", "2", "--no-report"]
    )
    assert result.exit_code == 2
    assert "another byzlearn process" in result.output and "Traceback" not in result.output
    assert not busy.finished and not busy.holds_results()  # nothing written there
    # the runs already going when it failed finished; none is left half-written or locked
    others = [RunDir(plan.directory(out, c)) for c in plan.configs[1:]]
    assert not any(d.lock_path.exists() for d in others)


def test_a_lock_left_by_a_killed_unreaped_process_is_taken_over(tmp_path: Path) -> None:
    # a worker killed with its sweep stays a zombie until its parent reaps it (in a container,
    # possibly never): its lock must not keep the resumed sweep out
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    stat = Path(f"/proc/{child.pid}/stat")
    deadline = time.monotonic() + 20
    while stat.read_text().rpartition(")")[2].split()[0] != "Z":  # exited, not reaped
        assert time.monotonic() < deadline
        time.sleep(0.02)
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    rd.lock_path.write_text(f"{child.pid} {socket.gethostname()}\n")
    try:
        with rd.lock():
            assert rd.lock_path.read_text().split()[0] == str(os.getpid())
    finally:
        child.wait()


def test_jobs_must_be_positive(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["sweep", str(_spec(tmp_path)), "--jobs", "0"])
    assert result.exit_code == 2 and "--jobs" in result.output
    result = CliRunner().invoke(app, ["sweep", str(_spec(tmp_path)), "--address", "x:1"])
    assert result.exit_code == 2 and "--address: only with --ray" in result.output


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_ray_sweep_equals_sequential(
    tmp_path: Path, ray_instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec(tmp_path)
    plan = plan_sweep(*load_sweep(spec))
    run_sweep(plan, tmp_path / "seq")
    monkeypatch.chdir(tmp_path)  # a relative --out: the tasks write where the driver means
    result = CliRunner().invoke(
        app, ["sweep", str(spec), "--out", "ray", "--jobs", "2", "--ray", "--no-report"]
    )
    assert result.exit_code == 0, result.output
    assert _runs(tmp_path / "ray", spec) == _runs(tmp_path / "seq", spec)


@pytest.mark.skipif(not allocator._glibc(), reason="glibc's malloc only")
@pytest.mark.parametrize("keep", [False, True])
def test_worker_processes_keep_freed_memory_as_their_parent(keep: bool, monkeypatch) -> None:
    """A sweep's local workers take the driver's malloc thresholds when it set them
    (``byzlearn.allocator``; the command line does at start), whatever their environment says
    (the driver read it)."""
    from concurrent.futures import ProcessPoolExecutor

    from byzlearn.experiments import parallel

    monkeypatch.setenv(allocator.ENVIRONMENT, "not read by the workers")
    with ProcessPoolExecutor(
        max_workers=1,
        mp_context=parallel._context(),
        initializer=parallel._init_worker,
        initargs=(1, None, keep),
    ) as pool:
        assert pool.submit(allocator.kept).result() is keep
