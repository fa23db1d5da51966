"""Test helpers for killed and resumed runs: kill a run at a chosen round, and compare records
without their wall-clock fields."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from byzlearn.experiments.runner import run

#: record fields that measure wall-clock time (they differ between two runs of one config)
TIME_FIELDS = ("seconds", "agg_seconds")


class KilledError(Exception):
    """What :func:`kill_at`'s callback raises: the run is killed there."""


def kill_at(round: int) -> Callable[[dict[str, Any]], None]:
    """A run callback that kills the run (raises :class:`KilledError`) after ``round``."""

    def kill(record: dict[str, Any]) -> None:
        if record["round"] == round:
            raise KilledError

    return kill


def kill_run(config: Any, directory: Any, at: int) -> None:
    """Run ``config`` into ``directory`` and kill it after round ``at`` (checked)."""
    with pytest.raises(KilledError):
        run(config, directory, callback=kill_at(at))


def without_times(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records without their wall-clock fields (:data:`TIME_FIELDS`)."""
    return [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in records]
