"""Facts about the machine a benchmark or a study ran on, for the tables they print."""

from __future__ import annotations

import platform


def _proc_field(path: str, key: str) -> str | None:
    """The value of the first ``key: value`` line of a /proc file, or None."""
    try:
        with open(path) as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith(key))
    except (OSError, StopIteration):
        return None


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
    total = _proc_field("/proc/meminfo", "MemTotal")
    return f"{int(total.split()[0]) / 2**20:.1f} GiB" if total else "unknown"


def available_bytes() -> int | None:
    """Memory the system can give now (/proc/meminfo's MemAvailable), or None if unknown."""
    available = _proc_field("/proc/meminfo", "MemAvailable")
    try:
        return int(available.split()[0]) * 1024 if available else None
    except (ValueError, IndexError):
        return None
