"""The run directory: resolved config, metrics written as they come, checkpoints, summary.

Layout of a run directory::

    config.yaml      the resolved config (every field, defaults filled in)
    metrics.jsonl    one JSON object per round (and one for round 0), flushed as written
    checkpoint.pt    the latest checkpoint (written atomically every ``checkpoint_every`` rounds)
    summary.json     written when the run finishes: final/best accuracy, seconds, ...
    model.pt         the final flat parameter vector

    lock             present while a process runs in the directory (its pid and host)

A run is *finished* when ``summary.json`` exists. On resume, ``metrics.jsonl`` is cut back to the
checkpoint's round, so the finished file equals an uninterrupted run's; its records must then be
those of rounds ``0, 1, ..., k`` exactly (``k`` the checkpoint's round), else the resume is
refused (:meth:`RunDir.cut_metrics_to`): a finished run never has gaps or repeated rounds.

Safety. A directory holding any result of another config (its ``config.yaml``, metrics,
checkpoint, summary or model) is never written to: :meth:`RunDir.claim` refuses it before
anything is written. A lock file keeps two processes out of one directory
(:func:`lock_directory`, which studies, reports and the demo use for their folders too; the
taking of it is serialised by a ``flock`` of the directory, so that two processes finding one
stale lock never both take it over). Checkpoints hold only tensors, numbers and strings and
are read with ``torch.load(..., weights_only=True)``: a run directory received from someone
else cannot run code when resumed; so is ``model.pt``.

Links. Nothing is ever written through a symbolic link: a run file (``config.yaml``,
``metrics.jsonl``, ``checkpoint.pt``, ``summary.json``, ``model.pt``) that is a link makes
:meth:`RunDir.claim` refuse the directory; files are written to a temporary name of their own,
created afresh (``<name>.<random>.tmp``, ``O_EXCL | O_NOFOLLOW``: two processes writing one
file never meet in it; what a killed run left, links or not, is removed, never followed, when
the directory is next locked), and moved over the final name with ``os.replace`` (which
replaces a link itself, not its target); ``metrics.jsonl`` is appended to with ``O_NOFOLLOW``.

Every such problem raises a :class:`RunDirError` whose message is one line naming the file and
what to do.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import secrets
import socket
from collections.abc import Callable, Iterator
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
    "find_named",
    "iter_runs",
    "lock_directory",
    "read_metrics",
    "temporary_names",
    "write_atomically",
    "write_text_atomically",
]


class RunDirError(ValueError):
    """A run directory cannot be used as asked (one-line message naming the file)."""


class RunCollisionError(RunDirError):
    """The directory holds the results of another config."""


class RunLockedError(RunDirError):
    """Another live process runs in the directory."""


class CheckpointError(RunDirError):
    """The checkpoint cannot be read or is not a byzlearn checkpoint."""


def json_safe(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become null (``None``), as a record is written and
    read back."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
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
        if not _is_round(record.get("round")):
            raise RunDirError(
                f"{path}: line {number} has round {record.get('round')!r}, not a whole number "
                ">= 0 (the file is damaged)"
            )
        records.append(record)
    return records


def _is_round(value: Any) -> bool:
    """Whether ``value`` is a round number: an ``int`` (not a bool) ``>= 0``."""
    return type(value) is int and value >= 0


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # open() flag: fail on a symbolic link


class MetricsWriter:
    """Append-only JSON-lines file, flushed after every record (opened with ``O_NOFOLLOW``: a
    symbolic link there raises :class:`RunDirError`, nothing is written through it)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise RunDirError(_link_message(self.path)) from None
            raise
        self._fh: IO[str] = os.fdopen(fd, "a")

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` and flush it to the OS."""
        self._fh.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
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


def _link_message(path: Path) -> str:
    return (
        f"{path}: is a symbolic link; byzlearn never writes through links (it would change a "
        "file outside the run directory): remove the link or put the file itself there"
    )


_TEMP_BYTES = 6  # random bytes in a temporary file's name (12 hex digits)


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new file beside ``path`` under a name of its own (``<name>.<random>.tmp``, created with
    ``O_EXCL | O_NOFOLLOW``): two processes writing the same file (two reports of one sweep)
    never write into, or publish, each other's temporary file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
    while True:
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(_TEMP_BYTES)}.tmp")
        try:
            return os.open(tmp, flags, 0o644), tmp
        except FileExistsError:  # pragma: no cover (a 48-bit name taken: draw another)
            continue


def write_atomically(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` through ``write(file)``: into a temporary file of this call's own beside
    it (:func:`_create_temp`), synced, then moved over ``path`` with ``os.replace``, which
    replaces the name (a link there included), never the file a link points to. A kill
    mid-write leaves the previous ``path`` (and the temporary file, which the next run of the
    directory removes: :meth:`RunDir.lock`)."""
    path = Path(path)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | Path, text: str) -> None:
    """:func:`write_atomically` of ``text`` in UTF-8 (run files, reports, tables, studies)."""
    write_atomically(path, lambda fh: fh.write(text.encode("utf-8")))


LOCK = "lock"  # the lock file's name in a locked directory


@contextmanager
def lock_directory(path: str | Path, temporary: re.Pattern[str]) -> Iterator[None]:
    """Keep other byzlearn processes out of the directory ``path`` while the block runs (a run
    directory, a study's folder).

    The lock file ``path/lock`` holds the owner's pid and host; another live process's lock
    raises :class:`RunLockedError` in one line naming the directory and that process, while a
    lock left by a process that no longer runs on this host is taken over. Once the lock is
    taken, the temporary files a killed writer left (names matching ``temporary``: no process
    writes one now) are removed; a link among them is removed itself, never followed. Other
    files are the user's and stay.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lock_path = path / LOCK
    with _taking_locks(path):  # one process at a time decides: a live lock is never taken over
        for _ in range(2):
            try:
                fd = os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = _live_owner(lock_path)
                if owner is not None:
                    raise RunLockedError(
                        f"{path}: another byzlearn process ({owner}) is running in this "
                        "directory"
                    ) from None
                lock_path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{os.getpid()} {socket.gethostname()}\n")
            break
        else:
            raise RunLockedError(f"{path}: could not take the lock {lock_path}")
    try:
        for leftover in path.glob("*.tmp"):
            if temporary.fullmatch(leftover.name) and (
                leftover.is_symlink() or leftover.is_file()
            ):
                leftover.unlink(missing_ok=True)
        yield
    finally:
        lock_path.unlink(missing_ok=True)


def temporary_names(names: str) -> re.Pattern[str]:
    """The names :func:`write_atomically` gives the temporary files of the files matching the
    regular expression ``names`` (``<name>.<12 hex digits>.tmp``, and the earlier fixed
    ``<name>.tmp``): what :func:`lock_directory` removes."""
    return re.compile(f"({names})(\\.[0-9a-f]{{{2 * _TEMP_BYTES}}})?\\.tmp")


@contextmanager
def _taking_locks(path: Path) -> Iterator[None]:
    """Serialise the taking of locks in the directory ``path`` among this host's processes: an
    exclusive ``flock`` of the directory, which the kernel releases when its process dies (it is
    never stale). Without it two processes finding one stale lock could both take it over, the
    second removing the first's fresh lock. Where the directory cannot be flocked (no
    ``fcntl``, some network filesystems), nothing is serialised."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover (not POSIX)
        yield
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover (a directory that cannot be opened for reading)
        yield
        return
    try:
        with contextlib.suppress(OSError):  # a filesystem without flock: not serialised
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _live_owner(lock_path: Path) -> str | None:
    """The ``pid host`` of the live process the lock file ``lock_path`` belongs to (one of
    another host is taken to be alive: it cannot be checked); None when there is no lock or it
    is stale (its process is gone, the file is unreadable or a link)."""
    if lock_path.is_symlink():
        return None  # never ours (created with O_EXCL): removed, not read through
    try:
        text = lock_path.read_text().strip()
        pid_text, _, host = text.partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None  # no lock, or an unreadable one: stale
    if host != socket.gethostname():
        return text  # another machine's process: cannot check, respect it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return text
    return None if _zombie(pid) else text  # a killed process not reaped yet is gone


class RunDir:
    """Paths and file operations of one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.yaml")
    lock_path = property(lambda self: self.path / LOCK)
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
    # their temporary files (write_atomically's names, and the earlier fixed ``<name>.tmp``)
    _TEMPORARY = temporary_names("|".join(map(re.escape, _RESULTS)))

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

    def refuse_links(self) -> None:
        """Raise :class:`RunDirError` if a run file of this directory is a symbolic link (a
        directory received from someone else could point one at a file outside it)."""
        for name in self._RESULTS:
            if (self.path / name).is_symlink():
                raise RunDirError(_link_message(self.path / name))

    def claim(self, config: Config) -> None:
        """Check, before anything is written, that this directory may hold a run of
        ``config``: it is not a file or a symbolic link (a sweep directory received from
        someone else could point a run's directory anywhere; a link among its parents is
        followed), holds no symbolic link as a run file (:meth:`refuse_links`) and no result of
        another config."""
        if self.path.is_symlink():
            raise RunDirError(
                f"{self.path}: the run directory is a symbolic link; byzlearn never writes "
                f"through links: give the directory it points to ({self.path.resolve()})"
            )
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{self.path}: is a file, not a run directory")
        self.refuse_links()
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
        """Keep other processes out of this directory while the block runs
        (:func:`lock_directory`; the temporary files of run files a killed process left are
        removed once the lock is taken)."""
        with lock_directory(self.path, self._TEMPORARY):
            yield

    # ------------------------------------------------------------------ config
    def write_config(self, config: Config) -> None:
        """Create the directory and write the resolved config."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomically(self.config_path, to_yaml(config))

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
        kept = [r for r in self.metrics() if r["round"] <= last_round]
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept)
        write_text_atomically(self.metrics_path, text)
        return kept

    def cut_metrics_to(self, last_round: int) -> list[dict[str, Any]]:
        """On resume from the checkpoint of ``last_round``: keep the records of rounds
        ``<= last_round`` (see :meth:`truncate_metrics`) after checking that they are those of
        rounds ``0, 1, ..., last_round`` exactly, in order; a gap, a repeated round or a missing
        end (a cut or damaged file) raises :class:`RunDirError`, before anything is written."""
        rounds = [r["round"] for r in self.metrics() if r["round"] <= last_round]
        problem = _rounds_problem(rounds, last_round)
        if problem is not None:
            raise RunDirError(
                f"{self.path}: {self.metrics_path.name} and {self.checkpoint_path.name} disagree: "
                f"{problem}; rerun with --no-resume to start this run afresh"
            )
        return self.truncate_metrics(last_round)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write ``state`` atomically (a kill mid-write leaves the previous checkpoint)."""
        write_atomically(self.checkpoint_path, lambda fh: torch.save(state, fh))

    def save_model(self, theta: torch.Tensor) -> None:
        """Write the final model ``theta`` atomically."""
        write_atomically(self.model_path, lambda fh: torch.save(theta, fh))

    def load_model(self) -> torch.Tensor | None:
        """The final model (a flat parameter vector), or None without one. Read with
        ``weights_only=True``; an unreadable one raises :class:`RunDirError`."""
        path = self.model_path
        if not path.exists():
            return None
        hint = "rerun with --no-resume to train this run afresh"
        theta = _load_safely(path, "model file", hint, RunDirError)
        if not isinstance(theta, torch.Tensor) or theta.dim() != 1:
            raise RunDirError(f"{path}: not a model file (a flat parameter vector); {hint}")
        return theta

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The latest checkpoint, or None. Read with ``weights_only=True`` (tensors, numbers,
        strings: no code runs); an unreadable one raises :class:`CheckpointError`."""
        path = self.checkpoint_path
        if not path.exists():
            return None
        hint = "rerun with --no-resume to start this run afresh"
        state = _load_safely(path, "checkpoint", hint, CheckpointError)
        if not isinstance(state, dict) or not {"round", "hash", "trainer"} <= set(state):
            raise CheckpointError(f"{path}: not a byzlearn checkpoint; {hint}")
        return state

    # ------------------------------------------------------------------ summary
    def write_summary(self, summary: dict[str, Any]) -> None:
        """Mark the run finished with its summary."""
        write_text_atomically(self.summary_path, json.dumps(json_safe(summary), indent=2) + "\n")

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


def _rounds_problem(rounds: list[int], last_round: int) -> str | None:
    """What is wrong with the metrics' ``rounds`` (those ``<= last_round``, in file order) of a
    run resumed from the checkpoint of ``last_round``; None when they are ``0..last_round``."""
    for expected, got in enumerate(rounds):
        if got != expected:
            return (
                f"the metrics hold round {got} where round {expected} belongs (a record is "
                "missing or repeated)"
            )
    if len(rounds) <= last_round:
        end = f"end at round {len(rounds) - 1}" if rounds else "hold no record"
        return f"the metrics {end} but the checkpoint is of round {last_round} (records are lost)"
    return None


def _load_safely(path: Path, what: str, hint: str, error: type[RunDirError]) -> Any:
    """``torch.load(path, weights_only=True)`` (tensors, numbers, strings: no code runs); any
    failure to read it raises ``error`` in one line naming the file, what it is not, and
    ``hint``."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # any failure to read is one clear error
        raise error(f"{path}: {_load_problem(err, what)}; {hint}") from None


def _load_problem(err: Exception, what: str) -> str:
    """What a failed ``torch.load(..., weights_only=True)`` of a ``what`` (``"checkpoint"``,
    ``"model file"``) says about the file, in words."""
    import pickle

    text = str(err).lower()
    if isinstance(err, EOFError) or "truncated" in text:
        return f"empty or truncated, not a readable {what}"
    if isinstance(err, pickle.UnpicklingError) and "weights_only" in text:
        return (
            "holds objects other than tensors, numbers and strings (refused: loading them "
            "could run code from the file)"
        )
    if "zip" in text or "magic number" in text or isinstance(err, (KeyError, pickle.PickleError)):
        return f"not a {what} (corrupt, or written by something else)"
    return f"cannot be read as a {what} ({type(err).__name__})"


def find_named(root: str | Path, name: str) -> list[Path]:
    """Every entry called ``name`` under ``root``, at any depth, sorted by path.

    Links to directories are followed (a sweep's ``runs`` on a scratch disk is a link among its
    parents), each directory is read once (a link to a parent cannot loop), and a directory that
    cannot be read is left out; whether a run directory that is a link may be used is for the
    caller to say (:meth:`RunDir.claim`, the report)."""
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    todo = [Path(root)]
    while todo:
        folder = todo.pop()
        try:
            st = folder.stat()
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        for entry in entries:
            if entry.name == name:
                found.append(folder / entry.name)
            try:
                is_dir = entry.is_dir()  # follows a link
            except OSError:
                continue
            if is_dir:
                todo.append(folder / entry.name)
    return sorted(found)


def iter_runs(root: str | Path) -> Iterator[RunDir]:
    """Every run directory (one holding a ``config.yaml``) under ``root``, sorted by path (links
    to directories followed, see :func:`find_named`)."""
    for cfg in find_named(root, "config.yaml"):
        yield RunDir(cfg.parent)
