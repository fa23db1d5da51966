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
