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


def main() -> None:
    """Entry point of the ``byzlearn`` console script: the process keeps the memory it frees
    for reuse (:mod:`byzlearn.allocator`; ``BYZLEARN_MALLOC=system`` opts out, another value is
    one error line and exit status 2)."""
    try:
        keep_freed_memory()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    app()


if __name__ == "__main__":
    main()
