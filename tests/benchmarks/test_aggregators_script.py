"""benchmarks/aggregators.py runs end to end on a small input, and refuses a missing GPU."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def script():
    folder = str(REPO / "benchmarks")
    if folder not in sys.path:  # its shared helpers (_common), as when the script runs
        sys.path.append(folder)
    path = REPO / "benchmarks" / "aggregators.py"
    spec = importlib.util.spec_from_file_location("bench_aggregators", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)
    module.DEVICE = "cpu"


def test_small_run_checks_the_references_and_prints_the_floor(script, capsys):
    threads = torch.get_num_threads()
    try:
        code = script.main(["--quick", "--d", "2e4", "--rules", "median", "krum", "--markdown"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert code == 0  # the library agrees with the plain references
    assert "| honest | 1 | median |" in out and "| nan | 1 | krum |" in out
    assert "- device: cpu" in out and "MISMATCH" not in out


def test_sweep_bounds_use_the_best_rate_measured_before_each_n(script, capsys, monkeypatch):
    """--scale-n measures the sgemm and syrk rates before each n and divides by the best of the
    run (a later, faster measurement tightens the earlier n's bounds too)."""
    sgemm = iter([1e9, 4e9])  # multiply-adds per second, before n = 10 and before n = 25
    syrk = iter([2e9, 1e9])
    monkeypatch.setattr(script, "sgemm_rate", lambda threads: next(sgemm))
    monkeypatch.setattr(script, "syrk_rate", lambda threads: next(syrk))
    # fixed timings (ours 10 ms, floor 2 ms), so that the ratios are exact
    monkeypatch.setattr(script, "paired", lambda *args: (0.010, 0.002, None, 5.0, None, None))
    threads = torch.get_num_threads()
    try:
        code = script.main(["--scale-n", "--scale-values", "10", "25", "--scale-d", "2e4",
                            "--rules", "median", "krum", "--repeats", "1", "--min-time", "0",
                            "--markdown"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert code == 0
    assert "best of the run: 4.0 G multiply-adds/s" in out and "before each n: 1.0, 4.0" in out
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 12 and cells[0].isdigit():
            rows[int(cells[0]), cells[3]] = cells
    for n in (10, 25):
        krum = rows[n, "krum"]
        bound = n * n * 2e4 / 2 / 4e9  # seconds, at the best sgemm rate of the run
        assert krum[7] == f"{bound * 1e3:.1f}"
        assert krum[8] == f"{0.010 / (bound + 0.002):.2f}"
        sbound = n * n * 2e4 / 2 / 2e9  # at the best syrk rate
        assert krum[10] == f"{0.010 / (sbound + 0.002):.2f}"
        assert rows[n, "median"][7] == "-" and rows[n, "median"][8] == "5.00"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_device_is_one_line(script, capsys):
    assert script.main(["--quick", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --device cuda: no CUDA device is available to torch here"]


def test_rule_requirements_are_one_line(script, capsys):
    assert script.main(["--quick", "--n", "5", "--f", "2", "--rules", "median", "krum"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: krum needs n >= 2f + 3, got n=5, f=2"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--threads", "0"],
        ["--d", "-5"],
        ["--d", "1.5"],
        ["--min-time", "nan"],
        ["--scale-n", "--scale-values", "0"],
        ["--repeats", "0"],
    ],
)
def test_bad_arguments_are_refused_by_the_parser(script, argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        script.main(argv)
    assert exit_.value.code == 2
    assert ": error: argument --" in capsys.readouterr().err.strip().splitlines()[-1]


def test_script_runs_as_a_program_after_being_imported(script):
    """The script's compiled read is not cached on disk under the name the tests import it as
    (loading that cache when the script runs as ``__main__`` failed)."""
    import subprocess

    script.compiled_read(torch.ones(2, 3))  # compiled under the tests' module name
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "aggregators.py"), "--quick", "--d", "2e4",
         "--rules", "median", "--inputs", "honest"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "median" in result.stdout


def test_peak_memory_counts_an_output_placed_in_resident_freed_memory(script):
    """An allocation that reuses memory freed earlier and still resident leaves the resident set
    as it was; the peak counts it through malloc's own tally where glibc gives it."""
    if script.heap_in_use() is None:
        pytest.skip("no mallinfo2 in this C library")
    size = 5 * 2**20  # 20 MB of float32: malloc's heap once its thresholds have adapted
    for _ in range(3):
        scratch = torch.empty(size)
        scratch.fill_(1.0)
        del scratch
    with script.PeakMemory() as mem:
        kept = torch.empty(size)
        kept.fill_(1.0)
    assert mem.peak >= 0.9 * kept.numel() * kept.element_size()
    with script.PeakMemory() as mem:
        pass
    assert mem.peak < 2**20  # nothing allocated: nothing counted
