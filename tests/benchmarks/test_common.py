"""The helpers the benchmark scripts share (``benchmarks/_common.py``): argument types that
refuse bad values with one line, and the one-line report of an input the library refused."""

from __future__ import annotations

import argparse

import pytest

from tests.benchmarks import load_script


@pytest.fixture(scope="module")
def common():
    return load_script("_common")


@pytest.mark.parametrize("text, value", [("1e7", 1e7), ("25", 25.0), ("1", 1.0)])
def test_dimension_takes_whole_numbers_written_either_way(common, text, value):
    assert common.dimension(text) == value


@pytest.mark.parametrize("text", ["0", "-5", "1.5", "nan", "inf", "ten"])
def test_dimension_refuses_the_rest(common, text):
    with pytest.raises(argparse.ArgumentTypeError):
        common.dimension(text)


@pytest.mark.parametrize("text", ["-1", "nan", "inf", "x"])
def test_non_negative_refuses_negative_and_non_finite_numbers(common, text):
    with pytest.raises(argparse.ArgumentTypeError):
        common.non_negative(text)
    assert common.non_negative("0") == 0.0 and common.non_negative("0.5") == 0.5


def test_refused_prints_one_line(common, capsys):
    assert common.refused(ValueError("krum needs n >= 2f + 3, got n=3, f=2")) == 2
    assert common.refused(KeyError("unknown attack 'x'")) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: krum needs n >= 2f + 3, got n=3, f=2", "error: unknown attack 'x'"]


@pytest.mark.parametrize(
    "name, argv, line",
    [
        ("attack_matrix", ["--attacks", "foo", "--d", "10"], "error: unknown attack 'foo'"),
        ("attack_matrix", ["--n", "3", "--f", "2"], "error: attack_matrix: needs n - f >= 2"),
    ],
)
def test_scripts_refuse_inputs_the_library_refuses_with_one_line(name, argv, line, capsys):
    assert load_script(name).main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(line), captured.err


@pytest.mark.parametrize(
    "name, argv",
    [
        ("attack_matrix", ["--d", "0"]),
        ("attack_matrix", ["--threads", "0"]),
    ],
)
def test_scripts_refuse_bad_arguments_before_running(name, argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        load_script(name).main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert ": error: argument --" in err[-1]  # argparse's line, naming the argument


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--d", type=float, default=1e8)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--quick", action="store_true")
    return parser


def test_quick_replaces_only_the_defaults_of_options_not_given(common):
    args = common.parse_with_quick(_parser(), ["--quick", "--d", "2e4"], d=1e6, k=[1, 2])
    assert (args.d, args.k) == (2e4, [1, 2])  # --d given: kept; --k not: the smoke test's
    args = common.parse_with_quick(_parser(), ["--quick"], d=1e6, k=[1, 2])
    assert (args.d, args.k) == (1e6, [1, 2])
    args = common.parse_with_quick(_parser(), ["--k", "3"], d=1e6, k=[1, 2])
    assert (args.d, args.k) == (1e8, [3])  # no --quick: the defaults
