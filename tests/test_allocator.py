"""``keep_freed_memory``: glibc's thresholds fixed for the process, so that a block freed and
allocated again costs no page faults; ``BYZLEARN_MALLOC=system`` and other C libraries leave
the defaults. Each case runs in a fresh interpreter (the setting is process-wide)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from byzlearn import allocator

GLIBC = platform.system() == "Linux" and allocator._glibc()

# Four times: malloc 16 MiB, write it all, free it; the page faults each write took.
_PROBE = """
import ctypes, json, resource, sys
from byzlearn.allocator import keep_freed_memory
from byzlearn.allocator import kept
mode = sys.argv[1]
applied = {"keep": keep_freed_memory, "follow": lambda: keep_freed_memory(environment=False)}
applied = applied[mode]() if mode in applied else None
applied = None if applied is None else [applied, kept()]
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
size, faults = 16 * 2**20, []
for _ in range(4):
    block = libc.malloc(size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    libc.memset(block, 1, size)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    libc.free(block)
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _probe(mode: str, **env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    return json.loads(out.stdout)


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_a_freed_block_is_reused_without_page_faults() -> None:
    pages = 16 * 2**20 // 4096
    default = _probe("default")
    kept = _probe("keep")
    assert kept["applied"] == [True, True]  # set, and kept() says so
    assert default["faults"][1] > pages // 2  # glibc's default: a fresh mapping again
    assert kept["faults"][0] > pages // 2  # the first write faults in either case
    assert max(kept["faults"][1:]) < pages // 20  # then the freed block is reused


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_the_environment_opts_out() -> None:
    kept = _probe("keep", BYZLEARN_MALLOC="system")
    assert kept["applied"] == [False, False]
    assert kept["faults"][1] > 16 * 2**20 // 4096 // 2


def test_other_c_libraries_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator.os, "confstr", lambda name: None)  # e.g. musl
    assert allocator.keep_freed_memory() is False
    monkeypatch.setattr(allocator.platform, "system", lambda: "Darwin")
    assert allocator.keep_freed_memory() is False


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", "keep"), ("keep", "keep"), (" System ", "system"), ("system", "system")],
)
def test_the_settings(monkeypatch: pytest.MonkeyPatch, value: str, expected: str) -> None:
    monkeypatch.setenv(allocator.ENVIRONMENT, value)
    assert allocator.setting() == expected


@pytest.mark.parametrize("value", ["sytem", "off", "0", "glibc"])
def test_a_misspelt_setting_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """Not silently taken for the default (the opt-out the user meant would be lost)."""
    monkeypatch.setenv(allocator.ENVIRONMENT, value)
    with pytest.raises(ValueError, match=f"BYZLEARN_MALLOC='{value}' is not a setting.*=system"):
        allocator.keep_freed_memory()


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_a_child_process_follows_its_parent_whatever_its_environment() -> None:
    """``environment=False`` (a sweep's workers, Ray tasks and actors: their parent decided)."""
    follow = _probe("follow", BYZLEARN_MALLOC="sytem")
    assert follow["applied"] == [True, True]
    assert max(follow["faults"][1:]) < 16 * 2**20 // 4096 // 20


def test_the_command_refuses_a_misspelt_setting_in_one_line() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "from byzlearn.cli import main; main()", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, allocator.ENVIRONMENT: "sytem"},
    )
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.startswith("error: BYZLEARN_MALLOC='sytem' is not a setting")
    assert out.stderr.count("\n") == 1
