"""The run directory: resolved config, metrics written as they come, checkpoints, summary.

Layout of a run directory::

    config.yaml      the resolved config (every field, defaults filled in)
    metrics.jsonl    one JSON object per round (and one for round 0), flushed as written
    checkpoint.pt    the latest checkpoint (written atomically every ``checkpoint_every`` rounds)
    summary.json     written when the run finishes: final/best accuracy, seconds, ...
    model.pt         the final flat parameter vector

A run is *finished* when ``summary.json`` exists. On resume, ``metrics.jsonl`` is cut back to the
checkpoint's round, so the finished file equals an uninterrupted run's.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

from byzlearn.experiments.config import Config, parse_config, to_yaml

__all__ = ["MetricsWriter", "RunDir", "read_metrics"]


def _clean(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics file (a torn last line, from a crash mid-write, is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


class MetricsWriter:
    """Append-only JSON-lines file, flushed after every record."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fh: IO[str] = open(self.path, "a")  # noqa: SIM115 - closed in close()

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` and flush it to the OS."""
        self._fh.write(json.dumps(_clean(record), allow_nan=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        """Close the file (fsync first, so a finished run survives a machine crash)."""
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunDir:
    """Paths and file operations of one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.yaml")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    checkpoint_path = property(lambda self: self.path / "checkpoint.pt")
    summary_path = property(lambda self: self.path / "summary.json")
    model_path = property(lambda self: self.path / "model.pt")

    @property
    def finished(self) -> bool:
        """Whether the run completed (its summary exists)."""
        return self.summary_path.exists()

    # ------------------------------------------------------------------ config
    def write_config(self, config: Config) -> None:
        """Create the directory and write the resolved config."""
        self.path.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(self.config_path, to_yaml(config))

    def read_config(self) -> Config:
        """The resolved config of this run."""
        import yaml

        return parse_config(yaml.safe_load(self.config_path.read_text()))

    # ------------------------------------------------------------------ metrics
    def metrics(self) -> list[dict[str, Any]]:
        """The records written so far."""
        return read_metrics(self.metrics_path)

    def truncate_metrics(self, last_round: int) -> list[dict[str, Any]]:
        """Keep only the records of rounds ``<= last_round``; return them."""
        kept = [r for r in self.metrics() if int(r.get("round", 0)) <= last_round]
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept)
        _atomic_write_text(self.metrics_path, text)
        return kept

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write ``state`` atomically (a kill mid-write leaves the previous checkpoint)."""
        tmp = self.checkpoint_path.with_name("checkpoint.pt.tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_path)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The latest checkpoint, or None."""
        if not self.checkpoint_path.exists():
            return None
        return torch.load(self.checkpoint_path, weights_only=False)

    # ------------------------------------------------------------------ summary
    def write_summary(self, summary: dict[str, Any]) -> None:
        """Mark the run finished with its summary."""
        _atomic_write_text(self.summary_path, json.dumps(_clean(summary), indent=2) + "\n")

    def summary(self) -> dict[str, Any] | None:
        """The summary of a finished run, or None."""
        if not self.finished:
            return None
        return json.loads(self.summary_path.read_text())


def iter_runs(root: str | Path) -> Iterator[RunDir]:
    """Every run directory (one holding a ``config.yaml``) under ``root``, sorted by path."""
    for cfg in sorted(Path(root).rglob("config.yaml")):
        yield RunDir(cfg.parent)
