"""Parallel sweeps: up to N runs at a time, in local processes or as Ray tasks.

Every run is the same :func:`~byzlearn.experiments.runner.run` as in a sequential sweep, into its
own directory (``OUT/runs/<hash[:16]>``), so the store's guarantees hold unchanged: a plan holds
each config once (no two jobs write one run, and the directory lock keeps out any other
process), metrics are written as they come, and a sweep killed mid-way resumes from the runs'
checkpoints when run again. Finished runs are loaded in the calling process, never submitted.

Local processes (``jobs > 1``) come from a :class:`concurrent.futures.ProcessPoolExecutor` with
the ``forkserver`` start method (``spawn`` where it is missing): a fresh interpreter per worker,
no inherited threads or locks. Each worker runs torch on ``max(1, cpus // jobs)`` threads (a
run's ``threads`` is lowered to that, never raised; it is not part of the config hash), so N
jobs do not oversubscribe the cores. Ray (``ray=True``) submits each run as a task of one CPU
on the cluster of ``address`` (a local instance when None); the sweep directory must then be on
a filesystem every node sees. Ray is imported only then. As with any process pool, a script
that calls ``run_sweep(..., jobs=N)`` must do so under ``if __name__ == "__main__":`` (the
workers import the script's module).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.managers import SyncManager
from pathlib import Path
from typing import Any

import torch

from byzlearn._lifetime import end_with
from byzlearn.allocator import keep_freed_memory, kept
from byzlearn.experiments.config import Config, parse_config

__all__ = ["JobError", "RoundCallback", "run_in_sweep", "run_parallel", "threads_per_job"]

#: ``on_round(i, record)``: run ``i`` of the plan finished a round
RoundCallback = Callable[[int, dict[str, Any]], None]


class JobError(RuntimeError):
    """A job could not run: its worker process or Ray task died (killed, out of memory), or
    the Ray cluster cannot be reached. One line naming the run or the address."""


def threads_per_job(jobs: int) -> int:
    """Torch threads each of ``jobs`` concurrent runs gets: the CPUs shared out, at least 1."""
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def _capped(config: Config, threads: int) -> Config:
    if config.threads <= threads:
        return config
    return config.model_copy(update={"threads": threads})


# --------------------------------------------------------------------------- worker side
_PROGRESS: Any = None  # the worker's queue of (i, record) progress messages


def _init_worker(
    threads: int, progress: Any, keep_memory: bool = False, driver: int | None = None
) -> None:
    """Process-pool initializer: torch threads for this job, the progress queue, the
    parent's malloc thresholds (:mod:`byzlearn.allocator`) when it had set them, and an end
    with the ``driver`` process (the sweep's command: :func:`byzlearn._lifetime.end_with`)."""
    global _PROGRESS
    if driver is not None:
        end_with(driver)
    torch.set_num_threads(threads)
    _PROGRESS = progress
    if keep_memory:
        keep_freed_memory(environment=False)


def _report(i: int) -> Callable[[dict[str, Any]], None] | None:
    if _PROGRESS is None:
        return None
    progress = _PROGRESS

    def callback(record: dict[str, Any]) -> None:
        progress.put((i, {"round": record["round"], "test_accuracy": record.get("test_accuracy")}))

    return callback


def run_in_sweep(
    config: Config, directory: str | Path, callback: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Run, resume or load one run of a sweep; return its summary. A directory holding another
    config's results is an error whose remedy fits a sweep (the run's directory is not chosen
    by the user, unlike ``byzlearn run --out``)."""
    from byzlearn.experiments.runner import run
    from byzlearn.experiments.store import RunCollisionError

    try:
        return run(config, directory, callback=callback).summary
    except RunCollisionError:
        raise RunCollisionError(
            f"{directory}: holds the results of another config than the one of its name (a "
            "copied or damaged run); nothing was written. Move that folder away, or sweep into "
            "another directory (--out)"
        ) from None


def run_job(
    i: int, config: dict[str, Any], directory: str, keep_memory: bool = False
) -> dict[str, Any]:
    """Run (or resume) one run of a sweep; return its summary. Executed in a worker process
    or a Ray task (configs travel as plain mappings); ``keep_memory``: the driver's malloc
    thresholds (:mod:`byzlearn.allocator`), for a Ray task."""
    if keep_memory:
        keep_freed_memory(environment=False)
    return run_in_sweep(parse_config(config), directory, callback=_report(i))


# --------------------------------------------------------------------------- driver side
def _context() -> multiprocessing.context.BaseContext:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # The server imports these once and each worker is a fork of it: without them every worker
    # spends about 2 s importing (torch._dynamo is pulled in by the first torch.func.vmap).
    context.set_forkserver_preload(
        ["byzlearn.experiments.runner", "byzlearn.attacks", "torch._dynamo"]
    )
    return context


def run_parallel(
    todo: list[tuple[int, Config, Path]],
    jobs: int,
    *,
    ray: bool = False,
    address: str | None = None,
    on_round: RoundCallback | None = None,
    on_done: Callable[[int, dict[str, Any]], None] | None = None,
) -> dict[int, dict[str, Any]]:
    """Run the ``(i, config, directory)`` of ``todo``, ``jobs`` at a time; return the summaries
    by ``i``.

    The first run that fails stops the submission of new ones; the runs already going finish
    (or resume later), then its error is raised. ``on_round(i, record)`` follows the rounds of
    local jobs; ``on_done(i, summary)`` is called as each run finishes.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    threads = threads_per_job(jobs)
    # absolute paths: a Ray worker's working directory is not the driver's
    work = [
        (i, _capped(c, threads).model_dump(mode="json"), str(Path(d).resolve())) for i, c, d in todo
    ]
    if ray:
        return _run_ray(work, jobs, address, on_done)
    return _run_processes(work, jobs, threads, on_round, on_done)


def _run_processes(
    work: list[tuple[int, dict[str, Any], str]],
    jobs: int,
    threads: int,
    on_round: RoundCallback | None,
    on_done: Callable[[int, dict[str, Any]], None] | None,
) -> dict[int, dict[str, Any]]:
    context = _context()
    manager = _manager(context) if on_round is not None else None
    progress = manager.Queue() if manager is not None else None
    summaries: dict[int, dict[str, Any]] = {}
    error: BaseException | None = None
    work_dirs = {w[0]: w[2] for w in work}
    try:
        with ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=context,
            initializer=_init_worker,
            initargs=(threads, progress, kept(), os.getpid()),
        ) as pool:
            pending: dict[Future, int] = {pool.submit(run_job, *w): w[0] for w in work}
            while pending:
                done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(progress, on_round)
                for future in done:
                    i = pending.pop(future)
                    try:
                        summaries[i] = future.result()
                    except BrokenProcessPool:
                        err = JobError(
                            f"{work_dirs[i]}: its worker process died (killed, out of memory, or "
                            "a calling script without an `if __name__ == '__main__':` guard); run "
                            "the sweep again to resume"
                        )
                        error = error or err
                        continue
                    except BaseException as err:  # the run's own error, raised below
                        if error is None:
                            error = err
                            for other in pending:
                                other.cancel()  # not started yet: left for a later resume
                        continue
                    if on_done is not None:
                        on_done(i, summaries[i])
                pending = {f: i for f, i in pending.items() if not f.cancelled()}
            _drain(progress, on_round)
    finally:
        if manager is not None:
            manager.shutdown()
    if error is not None:
        raise error
    return summaries


def _manager(context: multiprocessing.context.BaseContext) -> SyncManager:
    """``context.Manager()`` (the progress queue's server process), ending with this process:
    every child of the forkserver keeps it alive, so a manager left running after a kill of
    this process alone would keep the forkserver (torch imported) and the resource tracker
    too."""
    manager = SyncManager(ctx=context)
    manager.start(end_with, (os.getpid(),))
    return manager


def _drain(progress: Any, on_round: RoundCallback | None) -> None:
    if progress is None or on_round is None:
        return
    while True:
        try:
            i, record = progress.get_nowait()
        except queue.Empty:
            return
        on_round(i, record)


def _run_ray(
    work: list[tuple[int, dict[str, Any], str]],
    jobs: int,
    address: str | None,
    on_done: Callable[[int, dict[str, Any]], None] | None,
) -> dict[int, dict[str, Any]]:
    try:
        import ray
    except ImportError:
        raise ImportError("--ray needs the ray extra: pip install -e '.[ray]'") from None
    if not ray.is_initialized():
        try:
            if address is None:
                ray.init(  # a new local instance, never a cluster found on the machine
                    address="local", num_cpus=jobs, include_dashboard=False, log_to_driver=False
                )
            else:
                ray.init(address=address, log_to_driver=False)
        except Exception as err:  # any failure to start or reach Ray is one line
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise JobError(f"cannot start or reach {where}: {err}") from None
    task = ray.remote(num_cpus=1, max_retries=0)(run_job)
    work_dirs = {w[0]: w[2] for w in work}
    summaries: dict[int, dict[str, Any]] = {}
    queued = list(work)
    running: dict[Any, int] = {}
    error: BaseException | None = None
    while queued or running:
        while queued and len(running) < jobs and error is None:
            i, config, directory = queued.pop(0)
            running[task.remote(i, config, directory, kept())] = i
        if not running:
            break
        ready, _ = ray.wait(list(running), num_returns=1)
        for ref in ready:
            i = running.pop(ref)
            try:
                summaries[i] = ray.get(ref)
            except ray.exceptions.RayTaskError as err:  # the run's own error
                error = error or getattr(err, "cause", None) or err
                queued.clear()
                continue
            except ray.exceptions.RayError as err:  # the task or its worker died
                error = error or JobError(
                    f"{work_dirs[i]}: its Ray task failed ({type(err).__name__}); run the sweep "
                    "again to resume"
                )
                queued.clear()
                continue
            if on_done is not None:
                on_done(i, summaries[i])
    if error is not None:
        raise error
    return summaries
