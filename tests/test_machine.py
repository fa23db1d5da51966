"""byzlearn.machine: the facts the benchmarks print, with fallbacks off Linux."""

from __future__ import annotations

import re

from byzlearn import machine


def test_reads_the_proc_files_here(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU @ 2.00GHz\nflags\t: x\n")
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24641536 kB\nMemFree: 1 kB\nMemAvailable: 3 kB\n")
    real = machine._proc_field
    paths = {"/proc/cpuinfo": str(cpuinfo), "/proc/meminfo": str(meminfo)}
    monkeypatch.setattr(machine, "_proc_field", lambda path, key: real(paths[path], key))
    assert machine.cpu_name() == "Some CPU @ 2.00GHz"
    assert machine.memory() == "23.5 GiB"
    assert machine.available_bytes() == 3 * 1024


def test_falls_back_without_proc(monkeypatch):
    monkeypatch.setattr(machine, "_proc_field", lambda path, key: None)
    monkeypatch.setattr(machine.platform, "processor", lambda: "")
    monkeypatch.setattr(machine.platform, "machine", lambda: "arm64")
    assert machine.cpu_name() == "arm64"
    assert machine.memory() == "unknown"
    assert machine.available_bytes() is None
    assert machine._proc_field("/nonexistent/cpuinfo", "model name") is None


def test_this_machine():
    assert machine.cpu_name()
    assert re.fullmatch(r"\d+\.\d GiB|unknown", machine.memory())


_READ = machine._proc_field


def _from(tmp_path, monkeypatch, cpuinfo: bytes, meminfo: bytes) -> None:
    (tmp_path / "cpuinfo").write_bytes(cpuinfo)
    (tmp_path / "meminfo").write_bytes(meminfo)
    paths = {"/proc/cpuinfo": str(tmp_path / "cpuinfo"), "/proc/meminfo": str(tmp_path / "meminfo")}
    monkeypatch.setattr(machine, "_proc_field", lambda path, key: _READ(paths[path], key))


def test_odd_proc_contents_are_unknown_not_errors(tmp_path, monkeypatch):
    """Found by a random search over /proc contents: a ``model name`` line without a colon
    raised IndexError, a non-number ``MemTotal`` ValueError, a byte that is not UTF-8
    UnicodeDecodeError, and ``MemTotal: -5 kB`` gave ``-0.0 GiB``."""
    monkeypatch.setattr(machine.platform, "processor", lambda: "")
    monkeypatch.setattr(machine.platform, "machine", lambda: "x86_64")
    _from(tmp_path, monkeypatch, b"model name\n", b"MemTotal: abc kB\nMemAvailable\n")
    assert machine.cpu_name() == "x86_64"
    assert machine.memory() == "unknown"
    assert machine.available_bytes() is None
    _from(tmp_path, monkeypatch, b"model name\t: Caf\xe9 CPU\n", b"MemTotal: -5 kB\n\xff\n")
    assert machine.cpu_name() == "Caf\ufffd CPU"
    assert machine.memory() == "unknown"
    assert machine.available_bytes() is None


def test_a_field_is_found_by_its_whole_name(tmp_path, monkeypatch):
    """``MemTotalHuge: 1 kB`` before ``MemTotal`` was taken for it (a prefix matched)."""
    _from(
        tmp_path,
        monkeypatch,
        b"model names\t: no\nmodel name\t: Some CPU\n",
        b"MemTotalHuge: 1 kB\nMemTotal: 2097152 kB\nMemAvailable: 3 kB\n",
    )
    assert machine.cpu_name() == "Some CPU"
    assert machine.memory() == "2.0 GiB"
    assert machine.available_bytes() == 3 * 1024
