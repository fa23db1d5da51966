"""A helper process ends with the process it works for (byzlearn._lifetime)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

_WATCHER = textwrap.dedent(
    """
    import os, sys, time
    from byzlearn import _lifetime
    if sys.argv[2] == "poll":  # no pidfds (another OS, an old kernel): checked every so often
        del os.pidfd_open
        _lifetime.POLL_SECONDS = 0.1
    _lifetime.end_with(int(sys.argv[1]))
    print("watching", flush=True)
    time.sleep(60)
    """
)


def _watcher(pid: int, how: str) -> subprocess.Popen:
    watcher = subprocess.Popen(
        [sys.executable, "-c", _WATCHER, str(pid), how], stdout=subprocess.PIPE, text=True
    )
    return watcher


@pytest.mark.parametrize("how", ["pidfd", "poll"])
def test_a_process_ends_when_the_one_it_works_for_does(how):
    watched = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    watcher = _watcher(watched.pid, how)
    try:
        assert watcher.stdout is not None and watcher.stdout.readline() == "watching\n"
        time.sleep(0.3)
        assert watcher.poll() is None  # the watched process runs: so does the watcher
        watched.kill()
        watched.wait()
        assert watcher.wait(timeout=10) == -15  # SIGTERM, soon after
    finally:
        for proc in (watched, watcher):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_process_whose_watched_process_has_ended_ends_at_once():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    watcher = _watcher(gone.pid, "pidfd")
    try:
        assert watcher.wait(timeout=30) == -15
        assert watcher.stdout is not None and watcher.stdout.read() == ""
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
