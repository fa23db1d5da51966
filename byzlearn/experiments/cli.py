"""The experiment commands of ``byzlearn``: ``demo``, ``run``, ``sweep``, ``report``.

:func:`register` adds them to the top-level Typer app (``byzlearn/cli.py`` mounts them).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.spinner import Spinner

from byzlearn.experiments.demo import DEMO_RULES

__all__ = ["CHECKING", "Waiting", "register"]

console = Console()

# shown while a command checks its configs: each check runs the rule once, which on a fresh
# install compiles its kernels (numba; cached on disk afterwards)
CHECKING = "checking the {what} (a first run compiles kernels: a minute or so)"


class Waiting:
    """A spinner with ``message`` on a terminal from creation to :meth:`stop` (or the end of a
    ``with`` block), then erased, so that an error printed next stands alone; nothing where
    the output is not a terminal. Stopping twice is harmless."""

    def __init__(self, message: str, on: Console | None = None) -> None:
        on = on or console
        self._live: Live | None = None
        if on.is_terminal:
            self._live = Live(Spinner("dots", message), console=on, transient=True)
            self._live.start(refresh=True)  # drawn now, not at the refresh thread's first tick

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def __enter__(self) -> Waiting:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _fail(message: str) -> NoReturn:
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _directory(value: str, option: str = "--out") -> Path:
    """The directory given to ``option``; an empty value is refused (as a Path it would be
    ``.``, the current directory, which the user did not name)."""
    if not value.strip():
        _fail(f"{option}: empty; give a directory (--out . for the current one)")
    return Path(value)


@contextmanager
def _user_errors(dataset: str | None = None) -> Iterator[None]:
    """Turn the errors a user can cause (a bad config or file, a run directory in use or
    holding another config, a missing dataset or extra) into one line and exit code 2."""
    from byzlearn.experiments.config import ConfigError
    from byzlearn.experiments.store import RunDirError

    try:
        yield
    except (ConfigError, RunDirError) as err:
        _fail(str(err))
    except (FileNotFoundError, ImportError) as err:  # dataset files or optional extras missing
        _fail(f"dataset.name={dataset}: {err}" if dataset else str(err))
    except OSError as err:  # an output folder that cannot be written, a file in its path
        _fail(str(err))


class _LazyProgress:
    """A progress bar that appears at its first update, so that an error raised before any
    work (a refused directory, a bad checkpoint) prints alone; until then, ``before`` (if
    given) shows as a :class:`Waiting` spinner."""

    def __init__(self, total: int, description: str, before: str | None = None) -> None:
        columns = (
            TextColumn("[bold]{task.description}", justify="left"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self.bar = Progress(*columns, console=console, transient=False)
        self.task = self.bar.add_task(description, total=total, status="")
        self.started = False
        self.waiting = Waiting(before) if before else None

    def update(self, task: Any = None, **fields: Any) -> None:
        if not self.started:
            self.stop()
            self.bar.reset(self.task)  # the elapsed time from the first update, not the checks
            self.bar.start()
            self.started = True
        self.bar.update(self.task, **fields)

    def stop(self) -> None:
        if self.waiting is not None:
            self.waiting.stop()
        if self.started:
            self.bar.stop()


@contextmanager
def _progress(
    total: int, description: str, before: str | None = None
) -> Iterator[tuple[_LazyProgress, Any]]:
    progress = _LazyProgress(total, description, before)
    try:
        yield progress, progress.task
    finally:
        progress.stop()


def _status(record: dict[str, Any]) -> str:
    acc = record.get("test_accuracy")
    return f"acc {acc:.3f}" if acc is not None else ""


def demo(
    out: Annotated[
        str, typer.Option(metavar="PATH", help="Run directory for the table, figure and runs.")
    ] = "runs/demo",
    steps: Annotated[int, typer.Option(min=1, help="Training rounds per rule.")] = 200,
    rules: Annotated[
        str, typer.Option(help="Comma-separated rules (compositions with '+').")
    ] = ",".join(DEMO_RULES),
    seed: Annotated[int, typer.Option(help="Seed of every run.")] = 0,
) -> None:
    """Digits, n=25, f=5, omniscient attack: average collapses, robust rules keep learning."""
    from byzlearn.experiments.demo import run_demo

    directory = _directory(out)
    names = [r.strip() for r in rules.split(",") if r.strip()]
    if not names:
        _fail("--rules: give at least one rule")
    # run_demo checks the directory before any work: a refusal prints alone (the bar is lazy)
    checking = CHECKING.format(what="demo's configs")
    with (
        _user_errors("digits"),
        _progress(len(names) * steps, "demo", checking) as (progress, task),
    ):

        def on_start(rule: str) -> None:
            progress.update(task, description=f"demo: {rule}")

        def callback(record: dict[str, Any]) -> None:
            progress.update(task, advance=1, status=_status(record))

        result = run_demo(
            directory, rules=names, steps=steps, seed=seed, on_start=on_start, callback=callback
        )
        progress.update(task, completed=len(names) * steps)
    console.print()
    console.print(result.table, highlight=False, markup=False)
    console.print(
        f"{len(names)} run(s) in {result.seconds:.1f} s; table and figure in "
        f"{result.directory / 'table.md'}, {result.directory / 'accuracy.png'}",
        highlight=False,
    )


def run_command(
    config: Annotated[Path, typer.Argument(help="YAML config file.", show_default=False)],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key=value overrides, e.g. rule.name=krum f=3")
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(
            metavar="PATH",
            help="Run directory (default: runs/<name>-<config hash>, one per config).",
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Resume a killed run of this config from its checkpoint.")
    ] = True,
) -> None:
    """Train one run from CONFIG (plus overrides); metrics go to the run directory.

    A directory holding a run of another config is refused (nothing is written): the default
    directory carries the config hash, so different configs never share one.
    """
    from byzlearn.experiments.config import config_hash, load_config
    from byzlearn.experiments.runner import run
    from byzlearn.experiments.tables import markdown_table

    chosen = None if out is None else _directory(out)
    with _user_errors(), Waiting(CHECKING.format(what="config")):
        cfg = load_config(config, list(overrides or []))
    h = config_hash(cfg)[:16]
    directory = chosen or Path("runs") / (f"{cfg.name}-{h[:8]}" if cfg.name else h)
    # run() claims the directory before any work: a refusal prints alone (the bar is lazy)
    with (
        _user_errors(cfg.dataset.name),
        _progress(cfg.steps, cfg.name or config.stem) as (
            progress,
            task,
        ),
    ):
        result = run(
            cfg,
            directory,
            resume=resume,
            callback=lambda r: progress.update(task, completed=r["round"], status=_status(r)),
        )
        progress.update(task, completed=cfg.steps)
    what = {
        "started": "trained a new run",
        "resumed": f"resumed from the checkpoint of round {result.resumed_from}",
        "loaded": "loaded the finished run (same config; nothing retrained)",
    }[result.status]
    console.print(f"{what} in {directory}", highlight=False, markup=False)
    s = result.summary
    if cfg.protocol.name == "parameter_server":
        headers = ["rule", "attack", "f", "final acc", "best acc", "Byz kept/round", "seconds"]
        row = [cfg.rule.full_name, cfg.attack.name, cfg.f, s["final_accuracy"],
               s["best_accuracy"], s["kept_byzantine_mean"], s["seconds"]]  # fmt: skip
    else:
        headers = ["protocol", "attack", "f", "final acc", "best acc", "honest rejected",
                   "Byz rejected", "seconds"]  # fmt: skip
        row = [cfg.protocol.name, cfg.attack.name, cfg.f, s["final_accuracy"],
               s["best_accuracy"], _fraction(s, "honest"), _fraction(s, "byzantine"),
               s["seconds"]]  # fmt: skip
    console.print(markdown_table(headers, [row]), highlight=False, markup=False)
    if s.get("diverged"):
        last = result.records[-1]["round"] if result.records else "?"
        console.print(
            f"diverged at step {last}: the model or the honest loss stopped being finite "
            "(the accuracies above are of the diverged model)",
            highlight=False,
            markup=False,
        )


def _fraction(summary: dict[str, Any], who: str) -> str:
    """``rejected / received`` of the honest or Byzantine gradients of an asynchronous run."""
    rejected = summary.get(f"rejected_{who}") or 0
    total = rejected + (summary.get(f"accepted_{who}") or 0)
    return f"{rejected / total:.1%}" if total else "—"


def sweep(
    spec: Annotated[Path, typer.Argument(help="Sweep file (base + grid).", show_default=False)],
    out: Annotated[
        str | None,
        typer.Option(metavar="PATH", help="Sweep directory (default: runs/<sweep file name>)."),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="List the runs without training.")] = False,
    report: Annotated[bool, typer.Option(help="Build the report when done.")] = True,
    jobs: Annotated[
        int, typer.Option(min=1, help="Runs at a time (local processes; Ray tasks with --ray).")
    ] = 1,
    ray: Annotated[bool, typer.Option("--ray", help="Run the runs as Ray tasks.")] = False,
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster address for --ray (default: a local Ray instance)."),
    ] = None,
) -> None:
    """Run a grid of configs; finished runs are skipped, so an interrupted sweep resumes."""
    from byzlearn.experiments.store import RunDir
    from byzlearn.experiments.sweep import load_sweep, plan_sweep, run_sweep

    if address is not None and not ray:
        _fail("--address: only with --ray")
    chosen = None if out is None else _directory(out)
    with _user_errors(), Waiting(CHECKING.format(what="sweep's configs")):
        base, grid = load_sweep(spec)
        plan = plan_sweep(base, grid)
    out_dir = chosen or Path("runs") / spec.stem
    if out_dir.exists() and not out_dir.is_dir():
        _fail(f"{out_dir}: is a file, not a sweep directory")
    done = [RunDir(plan.directory(out_dir, c)).finished for c in plan.configs]
    console.print(
        f"{len(plan.configs)} runs ({sum(done)} already finished), {len(plan.invalid)} invalid "
        f"combinations skipped; directory {out_dir}",
        highlight=False,
        markup=False,
    )
    for point, err in plan.invalid:
        reason = err.splitlines()[-1].strip().removeprefix("invalid config: ")
        console.print(f"  skipped {point}: {reason}", highlight=False, markup=False)
    for point, earlier in plan.repeats:  # values the config hash leaves out (e.g. name)
        console.print(
            f"  {point}: the config of {earlier}, run once", highlight=False, markup=False
        )
    if not plan.configs:
        _fail(f"{spec}: no valid run in the grid (every combination was rejected, see above)")
    if dry_run:
        for i, (point, config) in enumerate(zip(plan.points, plan.configs, strict=True)):
            state = "finished" if done[i] else "to run"
            where = plan.directory(out_dir, config)
            console.print(f"  {where}  [{state}]  {point}", highlight=False, markup=False)
        return
    from byzlearn.experiments.parallel import JobError

    total = sum(c.steps for c in plan.configs)
    # the bar stops before an error is printed: the error is the last line
    try:
        with _user_errors(), _progress(total, "sweep") as (progress, task):
            rounds = [0] * len(plan.configs)
            finished = {"runs": 0}

            def on_start(i: int, config: Any, was_finished: bool) -> None:
                if was_finished:
                    rounds[i] = config.steps
                if jobs == 1 and not ray:
                    progress.update(task, description=f"sweep {i + 1}/{len(plan.configs)}")

            def on_round(i: int, record: dict[str, Any]) -> None:
                rounds[i] = record["round"]
                if jobs > 1 or ray:
                    finished["runs"] = sum(
                        r >= c.steps for r, c in zip(rounds, plan.configs, strict=True)
                    )
                    progress.update(
                        task, description=f"sweep {finished['runs']}/{len(plan.configs)} done"
                    )
                progress.update(task, completed=sum(rounds), status=_status(record))

            run_sweep(
                plan,
                out_dir,
                on_start=on_start,
                on_round=on_round,
                jobs=jobs,
                ray=ray,
                address=address,
            )
            progress.update(task, completed=total)
    except JobError as err:  # a worker died, Ray unreachable: one line, rerun resumes
        _fail(str(err))
    if report:
        _report(out_dir)


def _report(directory: Path, metric: str = "final_accuracy") -> None:
    from byzlearn.experiments.report import build_report

    try:
        where = build_report(directory, metric=metric)
    except (ValueError, OSError) as err:  # missing or damaged run files (config, summary, ...)
        _fail(str(err))
    console.print((where / "worst.md").read_text(), highlight=False, markup=False)
    console.print(f"report written to {where}", highlight=False)


def report(
    directory: Annotated[Path, typer.Argument(help="A sweep or runs directory.")],
    metric: Annotated[
        str, typer.Option(help="Summary field of the heatmaps: final_accuracy or best_accuracy.")
    ] = "final_accuracy",
) -> None:
    """Tables and figures of the finished runs under DIRECTORY (into DIRECTORY/report)."""
    if metric not in ("final_accuracy", "best_accuracy"):
        _fail(f"--metric: expected final_accuracy or best_accuracy, got {metric!r}")
    if not directory.is_dir():
        _fail(f"no such directory: {directory}")
    _report(directory, metric)


def register(app: typer.Typer) -> None:
    """Add ``demo``, ``run``, ``sweep`` and ``report`` to ``app``."""
    app.command("demo")(demo)
    app.command("run")(run_command)
    app.command("sweep")(sweep)
    app.command("report")(report)
