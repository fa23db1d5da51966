"""Bad arguments to the benchmark scripts end with one ``error:`` line (argparse's, exit status
2) before any work: sizes beyond the available memory (faked here, nothing large is allocated),
thread counts torch cannot start, values a run cannot use. They were allocator tracebacks,
segmentation faults, out-of-bounds reads or runs that could never end as asked."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from types import ModuleType

import pytest

from tests.benchmarks import REPO, load_script

GIB = 2**30


@pytest.fixture
def little_memory(monkeypatch):
    """The machine has 1 GiB available (what ``check_memory`` reads)."""
    from byzlearn import machine

    load_script("_common")  # puts benchmarks/ on the path, as the scripts import it
    import _common

    monkeypatch.setattr(machine, "available_bytes", lambda: GIB)
    return _common


@pytest.fixture
def script(monkeypatch):
    """``script(name)``: ``benchmarks/<name>.py`` as a module, registered in ``sys.modules``
    for the test (its dataclasses look their module up there)."""

    def load(name: str) -> ModuleType:
        load_script("_common")  # benchmarks/ on the import path
        path = REPO / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"bench_bad_{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)
        spec.loader.exec_module(module)
        return module

    return load


def _refused(script, name: str, argv: list[str], capsys) -> str:
    """The one error line of ``benchmarks/<name>.py`` on ``argv`` (argparse's exit status 2)."""
    with pytest.raises(SystemExit) as exit_:
        script(name).main(argv)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert sum("error:" in line for line in lines) == 1, captured.err
    return lines[-1]


@pytest.mark.parametrize(
    "name, argv, what",
    [
        ("aggregators", ["--d", "1e12", "--rules", "median"], "n=25 x d=1000000000000"),
        (
            "aggregators",
            ["--n", "10", "--d", "1e11", "--dtype", "float64"],
            "n=10 x d=100000000000",
        ),
        (
            "aggregators",
            [
                "--scale-n",
                "--scale-values",
                "10",
                "600",
                "--scale-d-large",
                "1e12",
                "--rules",
                "median",
            ],
            "n=600 x d=1000000000000",
        ),
        ("attack_matrix", ["--d", "1000000000000"], "n=25 x d=1000000000000"),
        ("first_call", ["--d", "1e12", "--rules", "median"], "n=25 x d=1000000000000"),
        ("gradients", ["--workers", "100000000", "--models", "mlp"], "100000000 workers"),
        ("gram_parts", ["--d", "1e12"], "n=25 x d=1000000000000"),
        ("column_select_prototype", ["--n", "64", "--d", "1e12"], "n=64 x d=1000000000000"),
        ("selection_ab", ["--rev", "HEAD", "--n", "10", "100000000"], "n=100000000"),
        ("sharded", ["--d", "1e12", "--k", "1", "--rules", "average"], "n=10 x d=1000000000000"),
    ],
)
def test_sizes_beyond_the_available_memory_are_one_line(
    name, argv, what, little_memory, script, capsys
):
    line = _refused(script, name, argv, capsys)
    assert f"error: {what} needs about " in line and "1.0 GiB available: lower --" in line


def test_the_memory_check_says_nothing_when_it_fits_or_is_unknown(little_memory, monkeypatch):
    parser = argparse.ArgumentParser()
    little_memory.check_memory(parser, GIB, "this")  # exactly what is available
    from byzlearn import machine

    monkeypatch.setattr(machine, "available_bytes", lambda: None)
    little_memory.check_memory(parser, 1e30, "this")  # unknown (no /proc/meminfo): no check


@pytest.mark.parametrize(
    "name, argv",
    [
        ("aggregators", ["--threads", "1", "100000"]),
        ("attack_matrix", ["--threads", "100000"]),
        ("gradients", ["--threads", "100000"]),
        ("training", ["--threads", "100000"]),
        ("engines", ["--threads", "100000"]),
        ("protocols", ["--threads", "100000"]),
        ("sharded", ["--threads", "100000"]),
    ],
)
def test_thread_counts_torch_cannot_start_are_refused(name, argv, script, capsys):
    """Far beyond the cores torch crashes (a segmentation fault at 100000 threads)."""
    line = _refused(script, name, argv, capsys)
    assert "argument --threads: must be <= 1024, got 100000" in line


@pytest.mark.parametrize(
    "name, argv, message",
    [
        ("aggregators", ["--seed", str(2**64), "--d", "10"], "argument --seed: must be <= "),
        ("aggregators", ["--seed", "-1", "--d", "10"], "argument --seed: must be >= 0"),
        ("gram_parts", ["--widths", "300"], "error: --widths must be multiples of 256"),
        ("gram_parts", ["--n", "4", "--d", "100"], "error: --d must be at least the pass width"),
        ("selection_ab", ["--rev", "HEAD", "--n", "2"], "argument --n: must be >= 3, got 2"),
        ("selection_ab", ["--rev", "HEAD", "--calls", "0"], "argument --calls: must be >= 1"),
        ("protocols", ["--target", "2"], "argument --target: an accuracy, at most 1, got 2"),
        ("sharded", ["--d", "10", "--k", "1", "16"], "error: --k 16 shards for d=10 coordinates"),
        ("cuda_select_variants", ["--repeats", "0"], "argument --repeats: must be >= 1, got 0"),
    ],
)
def test_values_a_run_cannot_use_are_one_line(name, argv, message, script, capsys):
    assert message in _refused(script, name, argv, capsys)


def test_engines_checks_n_against_the_data_before_ray_starts(script, capsys):
    """digits has 1437 training images: more workers were a traceback once Ray had started."""
    assert script("engines").main(["--n", "2000", "--models", "mlp"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        "error: partition: cannot give each of n=2000 workers a sample out of 1437"
    ]
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_gram_parts_hot_slice_stays_within_the_input(script, monkeypatch, capsys):
    """A slice of --hot-kib wider than the input made the centring step read past its end."""
    gram_parts = script("gram_parts")
    passes, centring, tiles = gram_parts._compiled_loops()
    seen = []

    def checked(X, rows, centre, spans, m, C, *rest):
        seen.append(int(spans.max()) + C.shape[1] <= X.shape[1])
        return centring(X, rows, centre, spans, m, C, *rest)

    monkeypatch.setattr(gram_parts, "_compiled_loops", lambda: (passes, checked, tiles))
    gram_parts.main(["--n", "5", "--d", "3000", "--widths", "1024", "--repeats", "1"])
    assert "| 5 | 1024 |" in capsys.readouterr().out
    assert seen and all(seen)
