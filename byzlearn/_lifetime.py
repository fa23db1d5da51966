"""Ending a helper process with the process it works for.

A sweep's worker processes (``--jobs N``) and the background compilation of
:mod:`byzlearn.experiments._warm` work for the command that started them. When that command is
killed on its own (``kill -9`` of its process, not of its process group, which the workers
would receive too), they used to go on: the workers finished their runs, holding those runs'
locks until then. :func:`end_with` makes such a process end (SIGTERM to itself) as soon as the
command's process does: a daemon thread waits on a pidfd of that process (Linux 5.3 on), or
checks it every ``POLL_SECONDS`` where pidfds are missing. A run ended this way resumes from its
checkpoint as after any kill: its files are written as they come and its lock is released by
the kernel with the process.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time

__all__ = ["POLL_SECONDS", "end_with"]

# Seconds between two checks of the watched process where a pidfd cannot be had.
POLL_SECONDS = 1.0


def end_with(pid: int) -> None:
    """End this process (SIGTERM to itself) when process ``pid`` ends, at once if it has."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        _end()
        return
    except (AttributeError, OSError):  # (no pidfds: not Linux, or a kernel before 5.3)
        threading.Thread(target=_poll, args=(pid,), name="byzlearn-end-with", daemon=True).start()
        return
    threading.Thread(target=_wait, args=(fd,), name="byzlearn-end-with", daemon=True).start()


def _wait(fd: int) -> None:
    select.select([fd], [], [])  # a pidfd reads ready when its process ends
    _end()


def _poll(pid: int) -> None:
    while True:
        time.sleep(POLL_SECONDS)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            _end()
            return
        except PermissionError:  # (alive, another user's: cannot be ours)
            continue


def _end() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
