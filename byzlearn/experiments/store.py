"""The run directory: resolved config, metrics written as they come, checkpoints, summary.

Layout of a run directory::

    config.yaml      the resolved config (every field, defaults filled in)
    metrics.jsonl    one JSON object per round (and one for round 0), flushed as written
    checkpoint.pt    the latest checkpoint (written atomically every ``checkpoint_every`` rounds)
    summary.json     written when the run finishes: final/best accuracy, seconds, ...
    model.pt         the final flat parameter vector

    lock             present while a process runs in the directory (its pid and host)

A run is *finished* when ``summary.json`` exists. On resume, ``metrics.jsonl`` is cut back to the
checkpoint's round, so the finished file equals an uninterrupted run's.

Safety. A directory holding any result of another config (its ``config.yaml``, metrics,
checkpoint, summary or model) is never written to: :meth:`RunDir.claim` refuses it before
anything is written. A lock file keeps two processes out of one directory. Checkpoints hold only
tensors, numbers and strings and are read with ``torch.load(..., weights_only=True)``: a run
directory received from someone else cannot run code when resumed. Every such problem raises a
:class:`RunDirError` whose message is one line naming the file and what to do.
"""

from __future__ import annotations

import json
import math
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

from byzlearn.experiments.config import (
    Config,
    ConfigError,
    config_hash,
    parse_config,
    read_yaml,
    to_yaml,
)

__all__ = [
    "CheckpointError",
    "MetricsWriter",
    "RunCollisionError",
    "RunDir",
    "RunDirError",
    "RunLockedError",
    "read_metrics",
]


class RunDirError(ValueError):
    """A run directory cannot be used as asked (one-line message naming the file)."""


class RunCollisionError(RunDirError):
    """The directory holds the results of another config."""


class RunLockedError(RunDirError):
    """Another live process runs in the directory."""


class CheckpointError(RunDirError):
    """The checkpoint cannot be read or is not a byzlearn checkpoint."""


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
    """The records of a metrics file.

    A torn last line (a crash mid-write: no final newline, or not JSON) is ignored; a damaged
    line anywhere else raises :class:`RunDirError` naming it, rather than silently dropping the
    records after it.
    """
    path = Path(path)
    if not path.exists():
        return []
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise RunDirError(f"{path}: not a metrics file (not UTF-8 at byte {err.start})") from None
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        last = number == len(lines)  # no newline after it: possibly torn
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if last:
                break
            raise RunDirError(
                f"{path}: line {number} is not a JSON record (the file is damaged; the records "
                "after it are not read)"
            ) from None
        if not isinstance(record, dict):
            raise RunDirError(f"{path}: line {number} is not a metrics record")
        records.append(record)
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
    lock_path = property(lambda self: self.path / "lock")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    checkpoint_path = property(lambda self: self.path / "checkpoint.pt")
    summary_path = property(lambda self: self.path / "summary.json")
    model_path = property(lambda self: self.path / "model.pt")

    @property
    def finished(self) -> bool:
        """Whether the run completed (its summary exists)."""
        return self.summary_path.exists()

    # ------------------------------------------------------------------ ownership
    _RESULTS = ("config.yaml", "metrics.jsonl", "checkpoint.pt", "summary.json", "model.pt")

    def holds_results(self) -> bool:
        """Whether the directory holds any file of a run."""
        return self.path.is_dir() and any((self.path / f).exists() for f in self._RESULTS)

    def owner_hash(self) -> str | None:
        """The config hash of the run this directory holds (None: no run; ``"?"``: a run
        whose config cannot be read)."""
        if not self.holds_results():
            return None
        try:
            summary_hash = (self.summary() or {}).get("hash")
        except RunDirError:  # an unreadable summary: the config tells
            summary_hash = None
        if summary_hash:
            return str(summary_hash)
        try:
            return config_hash(self.read_config())
        except (ValueError, OSError):
            return "?"

    def claim(self, config: Config) -> None:
        """Check, before anything is written, that this directory may hold a run of
        ``config``: it is not a file, and holds no result of another config."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{self.path}: is a file, not a run directory")
        owner = self.owner_hash()
        mine = config_hash(config)
        if owner is not None and owner != mine:
            what = "finished run" if self.finished else "run"
            raise RunCollisionError(
                f"{self.path}: holds the {what} of another config; nothing was written. "
                f"Use another directory, e.g. --out {self.path}-{mine[:8]}"
            )

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Keep other processes out of this directory while the block runs.

        The lock file holds the owner's pid and host; a lock left by a process that no longer
        runs on this host is taken over.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        me = f"{os.getpid()} {socket.gethostname()}"
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._live_owner():
                    raise RunLockedError(
                        f"{self.path}: another byzlearn process "
                        f"({self.lock_path.read_text().strip()}) is running in this directory"
                    ) from None
                self.lock_path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(me + "\n")
            break
        else:
            raise RunLockedError(f"{self.path}: could not take the lock {self.lock_path}")
        try:
            yield
        finally:
            self.lock_path.unlink(missing_ok=True)

    def _live_owner(self) -> bool:
        try:
            pid_text, _, host = self.lock_path.read_text().strip().partition(" ")
            pid = int(pid_text)
        except (OSError, ValueError):
            return False  # an unreadable lock is stale
        if host != socket.gethostname():
            return True  # another machine's process: cannot check, respect it
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not _zombie(pid)  # a killed process its parent has not reaped yet is gone

    # ------------------------------------------------------------------ config
    def write_config(self, config: Config) -> None:
        """Create the directory and write the resolved config."""
        self.path.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(self.config_path, to_yaml(config))

    def read_config(self) -> Config:
        """The resolved config of this run."""
        data = read_yaml(self.config_path)
        if not isinstance(data, dict):
            raise ConfigError(f"{self.config_path}: not a config mapping")
        try:
            return parse_config(data)
        except ConfigError as err:  # name the file: a report reads many
            raise ConfigError(f"{self.config_path}: {err}") from None

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
        """The latest checkpoint, or None. Read with ``weights_only=True`` (tensors, numbers,
        strings: no code runs); an unreadable one raises :class:`CheckpointError`."""
        path = self.checkpoint_path
        if not path.exists():
            return None
        hint = "rerun with --no-resume to start this run afresh"
        try:
            state = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as err:  # any failure to read is one clear error
            raise CheckpointError(f"{path}: {_checkpoint_problem(err)}; {hint}") from None
        if not isinstance(state, dict) or not {"round", "hash", "trainer"} <= set(state):
            raise CheckpointError(f"{path}: not a byzlearn checkpoint; {hint}")
        return state

    # ------------------------------------------------------------------ summary
    def write_summary(self, summary: dict[str, Any]) -> None:
        """Mark the run finished with its summary."""
        _atomic_write_text(self.summary_path, json.dumps(_clean(summary), indent=2) + "\n")

    def summary(self) -> dict[str, Any] | None:
        """The summary of a finished run, or None."""
        if not self.finished:
            return None
        try:
            summary = json.loads(self.summary_path.read_text())
        except (ValueError, OSError) as err:
            raise RunDirError(f"{self.summary_path}: not a readable summary ({err})") from None
        if not isinstance(summary, dict):
            raise RunDirError(f"{self.summary_path}: not a summary mapping")
        return summary


def _zombie(pid: int) -> bool:
    """Whether process ``pid`` has exited but is not reaped (Linux ``/proc``; False elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _checkpoint_problem(err: Exception) -> str:
    """What a failed ``torch.load(..., weights_only=True)`` says about the file, in words."""
    import pickle

    text = str(err).lower()
    if isinstance(err, EOFError) or "truncated" in text:
        return "empty or truncated, not a readable checkpoint"
    if isinstance(err, pickle.UnpicklingError) and "weights_only" in text:
        return (
            "holds objects other than tensors, numbers and strings (refused: loading them "
            "could run code from the file)"
        )
    if "zip" in text or "magic number" in text:
        return "not a checkpoint file (corrupt, or written by something else)"
    return f"cannot be read as a checkpoint ({type(err).__name__})"


def iter_runs(root: str | Path) -> Iterator[RunDir]:
    """Every run directory (one holding a ``config.yaml``) under ``root``, sorted by path."""
    for cfg in sorted(Path(root).rglob("config.yaml")):
        yield RunDir(cfg.parent)
