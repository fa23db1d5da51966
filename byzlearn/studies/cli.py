"""``byzlearn study``: list the paper studies, or run one and write its report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["study"]

console = Console()


def study(
    name: Annotated[str | None, typer.Argument(help="The study to run (see --list).")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the studies and exit.")] = False,
    scale: Annotated[
        str, typer.Option(help="tiny (smoke test), small (default: digits, minutes), paper.")
    ] = "small",
    jobs: Annotated[int, typer.Option(min=1, help="Runs trained at a time.")] = 1,
    out: Annotated[
        Path | None, typer.Option(help="Study directory (default: studies/<name>).")
    ] = None,
) -> None:
    """Reproduce a paper's key result: a resumable set of runs, then DIR/report.md with
    figures, a table, the paper's claim and a verdict."""
    from byzlearn.studies import SCALES, STUDIES, run_study

    if list_ or name is None:
        for key, item in STUDIES.items():
            console.print(f"{key:20s} {item.title}", highlight=False, markup=False)
        if name is None and not list_:
            console.print("run one with: byzlearn study NAME [--scale small]", highlight=False)
        return
    if name not in STUDIES:
        _fail(f"unknown study {name!r} (known: {', '.join(STUDIES.names())})")
    if scale not in SCALES:
        _fail(f"--scale: expected one of {', '.join(SCALES)}, got {scale!r}")
    target = out or Path("studies") / name
    if target.exists() and not target.is_dir():
        _fail(f"{target}: is a file, not a study directory")

    from byzlearn.experiments.cli import CHECKING, Waiting

    checking = Waiting(CHECKING.format(what="study's configs"), console)

    def on_run(i: int, total: int, item, finished: bool) -> None:
        checking.stop()
        state = "loaded" if finished else "training"
        console.print(f"[{i + 1}/{total}] {state} {item.label}", highlight=False, markup=False)

    from byzlearn.experiments.config import ConfigError
    from byzlearn.experiments.store import RunDirError
    from byzlearn.studies.base import StudyDirError

    try:
        with checking:  # erased before an error or the first run's line
            report, analysis = run_study(name, scale, target, jobs=jobs, on_run=on_run)
    except (ConfigError, RunDirError, StudyDirError, OSError, ImportError) as err:
        _fail(str(err))  # OSError: a folder that cannot be written, a file in the path
    console.print(f"verdict: {analysis.verdict}. {analysis.reason}", highlight=False, markup=False)
    console.print(f"report written to {report}", highlight=False)


def _fail(message: str) -> NoReturn:
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)
