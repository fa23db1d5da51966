"""Facts about the machine a benchmark or a study ran on, for the tables they print.

Each reads a /proc file where there is one; a fact it cannot read (no such file, or contents
of another form: a missing field, a value that is not a number, bytes that are not text) is
``unknown`` (``None``), never an error.
"""

from __future__ import annotations

import platform


def _proc_field(path: str, key: str) -> str | None:
    """The value of the first ``key: value`` line of a /proc file (the name before the colon
    exactly ``key``, spaces and tabs around it aside), or None."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                name, colon, value = line.partition(":")
                if colon and name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return None


def _kib(key: str) -> int | None:
    """A ``key: <n> kB`` field of /proc/meminfo in KiB, or None (not there, or not a count)."""
    value = _proc_field("/proc/meminfo", key)
    words = value.split() if value else []
    return int(words[0]) if words and words[0].isdigit() and words[0].isascii() else None


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` reports."""
    return (
        _proc_field("/proc/cpuinfo", "model name")
        or platform.processor()
        or platform.machine()
        or "unknown"
    )


def memory() -> str:
    """Total memory, e.g. ``23.5 GiB`` (/proc/meminfo), or ``unknown``."""
    total = _kib("MemTotal")
    return f"{total / 2**20:.1f} GiB" if total else "unknown"


def available_bytes() -> int | None:
    """Memory the system can give now (/proc/meminfo's MemAvailable), or None if unknown."""
    available = _kib("MemAvailable")
    return available * 1024 if available is not None else None
