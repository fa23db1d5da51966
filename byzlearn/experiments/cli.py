"""The experiment commands of ``byzlearn``: ``demo``, ``run``, ``sweep``, ``report``.

:func:`register` adds them to the top-level Typer app (``byzlearn/cli.py`` mounts them).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from byzlearn.experiments.demo import DEMO_RULES

__all__ = ["register"]

console = Console()


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


@contextmanager
def _progress(total: int, description: str) -> Iterator[tuple[Progress, Any]]:
    columns = (
        TextColumn("[bold]{task.description}", justify="left"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, status="")
        yield progress, task


def _status(record: dict[str, Any]) -> str:
    acc = record.get("test_accuracy")
    return f"acc {acc:.3f}" if acc is not None else ""


def demo(
    out: Annotated[Path, typer.Option(help="Run directory for the table, figure and runs.")] = Path(
        "runs/demo"
    ),
    steps: Annotated[int, typer.Option(min=1, help="Training rounds per rule.")] = 200,
    rules: Annotated[
        str, typer.Option(help="Comma-separated rules (compositions with '+').")
    ] = ",".join(DEMO_RULES),
    seed: Annotated[int, typer.Option(help="Seed of every run.")] = 0,
) -> None:
    """Digits, n=25, f=5, omniscient attack: average collapses, robust rules keep learning."""
    from byzlearn.experiments.config import ConfigError
    from byzlearn.experiments.demo import run_demo

    names = [r.strip() for r in rules.split(",") if r.strip()]
    if not names:
        _fail("--rules: give at least one rule")
    with _progress(len(names) * steps, "demo") as (progress, task):

        def on_start(rule: str) -> None:
            progress.update(task, description=f"demo: {rule}")

        def callback(record: dict[str, Any]) -> None:
            progress.update(task, advance=1, status=_status(record))

        try:
            result = run_demo(
                out, rules=names, steps=steps, seed=seed, on_start=on_start, callback=callback
            )
        except ConfigError as err:
            _fail(str(err))
            return
        progress.update(task, completed=len(names) * steps)
    console.print()
    console.print(result.table, highlight=False, markup=False)
    console.print(
        f"{len(names)} runs in {result.seconds:.1f} s; table and figure in "
        f"{result.directory / 'table.md'}, {result.directory / 'accuracy.png'}",
        highlight=False,
    )


def run_command(
    config: Annotated[Path, typer.Argument(help="YAML config file.", show_default=False)],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key=value overrides, e.g. rule.name=krum f=3")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run directory (default: runs/<name or config hash>).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Resume a killed run from its checkpoint.")] = True,
) -> None:
    """Train one run from CONFIG (plus overrides); metrics go to the run directory."""
    from byzlearn.experiments.config import ConfigError, config_hash, load_config
    from byzlearn.experiments.runner import run
    from byzlearn.experiments.tables import markdown_table

    if not config.is_file():
        _fail(f"no such config file: {config}")
    try:
        cfg = load_config(config, list(overrides or []))
    except ConfigError as err:
        _fail(str(err))
        return
    directory = out or Path("runs") / (cfg.name or config_hash(cfg)[:16])
    try:
        with _progress(cfg.steps, cfg.name or config.stem) as (progress, task):
            result = run(
                cfg,
                directory,
                resume=resume,
                callback=lambda r: progress.update(task, completed=r["round"], status=_status(r)),
            )
            progress.update(task, completed=cfg.steps)
    except (FileNotFoundError, ImportError) as err:  # dataset files or optional extras missing
        _fail(f"dataset.name={cfg.dataset.name}: {err}")
        return
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
    console.print(f"run directory: {directory}", highlight=False)


def _fraction(summary: dict[str, Any], who: str) -> str:
    """``rejected / received`` of the honest or Byzantine gradients of an asynchronous run."""
    rejected = summary.get(f"rejected_{who}") or 0
    total = rejected + (summary.get(f"accepted_{who}") or 0)
    return f"{rejected / total:.1%}" if total else "—"


def sweep(
    spec: Annotated[Path, typer.Argument(help="Sweep file (base + grid).", show_default=False)],
    out: Annotated[
        Path | None, typer.Option(help="Sweep directory (default: runs/<sweep file name>).")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="List the runs without training.")] = False,
    report: Annotated[bool, typer.Option(help="Build the report when done.")] = True,
) -> None:
    """Run a grid of configs; finished runs are skipped, so an interrupted sweep resumes."""
    from byzlearn.experiments.config import ConfigError
    from byzlearn.experiments.store import RunDir
    from byzlearn.experiments.sweep import load_sweep, plan_sweep, run_sweep

    if not spec.is_file():
        _fail(f"no such sweep file: {spec}")
    try:
        base, grid = load_sweep(spec)
        plan = plan_sweep(base, grid)
    except ConfigError as err:
        _fail(str(err))
        return
    out = out or Path("runs") / spec.stem
    done = sum(RunDir(plan.directory(out, c)).finished for c in plan.configs)
    console.print(
        f"{len(plan.configs)} runs ({done} already finished), {len(plan.invalid)} invalid "
        f"combinations skipped; directory {out}",
        highlight=False,
    )
    for point, err in plan.invalid:
        console.print(
            f"  skipped {point}: {err.splitlines()[-1].strip()}", highlight=False, markup=False
        )
    if dry_run or not plan.configs:
        return
    total = sum(c.steps for c in plan.configs)
    with _progress(total, "sweep") as (progress, task):
        offset = {"steps": 0}

        def on_start(i: int, config: Any, finished: bool) -> None:
            progress.update(
                task, completed=offset["steps"], description=f"sweep {i + 1}/{len(plan.configs)}"
            )
            offset["base"] = offset["steps"]
            offset["steps"] += config.steps

        def callback(record: dict[str, Any]) -> None:
            progress.update(
                task, completed=offset["base"] + record["round"], status=_status(record)
            )

        run_sweep(plan, out, on_start=on_start, callback=callback)
        progress.update(task, completed=total)
    if report:
        _report(out)


def _report(directory: Path, metric: str = "final_accuracy") -> None:
    from byzlearn.experiments.report import build_report

    try:
        where = build_report(directory, metric=metric)
    except FileNotFoundError as err:
        _fail(str(err))
        return
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
