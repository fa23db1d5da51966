"""The ``byzlearn`` command line: training experiments and neuron fault-tolerance analysis."""

from __future__ import annotations

import sys

import typer

from byzlearn.allocator import keep_freed_memory
from byzlearn.experiments.cli import register as _register_experiment_commands
from byzlearn.neurons.cli import app as _neurons_app
from byzlearn.studies.cli import study as _study

app = typer.Typer(
    name="byzlearn",
    help="Byzantine-resilient distributed learning and robust learning machines.",
    no_args_is_help=True,
    add_completion=False,
)
_register_experiment_commands(app)
app.add_typer(_neurons_app, name="neurons", help="Fault tolerance of neural networks.")
app.command("study")(_study)

# click's UsageError, the base of every usage error, from whichever click typer runs on (typer
# 0.22 and later carry their own copy and no longer install click)
_USAGE_ERROR: type[Exception] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError"
)


def main() -> None:
    """Entry point of the ``byzlearn`` console script: the process keeps the memory it frees
    for reuse (:mod:`byzlearn.allocator`; ``BYZLEARN_MALLOC=system`` opts out, another value is
    one error line and exit status 2)."""
    try:
        keep_freed_memory()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(run_app())


def run_app(args: list[str] | None = None) -> int:
    """Run the command line on ``args`` (default: ``sys.argv[1:]``) and return its exit
    status. A usage error (an unknown option, a value out of its range, a missing argument) is
    one ``error:`` line naming the command's help and status 2, instead of click's framed
    usage block; ``--help`` and the commands' own statuses are unchanged."""
    try:
        status = app(args=args, prog_name="byzlearn", standalone_mode=False)
    except _USAGE_ERROR as err:
        ctx = getattr(err, "ctx", None)
        command = ctx.command_path if ctx is not None else "byzlearn"
        message = err.format_message()  # type: ignore[attr-defined]
        print(f"error: {message} (see '{command} --help')", file=sys.stderr)
        return 2
    except typer.Abort:  # Ctrl-C at a prompt or during a command
        print("aborted", file=sys.stderr)
        return 130
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    main()
