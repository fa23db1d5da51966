"""``python -m byzlearn.aggregators``: the demo table for any n and f, and bad arguments refused
with one line."""

from __future__ import annotations

import pytest

import byzlearn.aggregators as agg
from byzlearn.aggregators.__main__ import main


def _rows(out: str) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] in agg.names("rule"):
            rows[cells[0]] = cells
    return rows


def test_rules_that_refuse_n_and_f_say_so_and_the_others_run(capsys):
    main(["--n", "7", "--f", "2", "--d", "200"])  # Bulyan needs n >= 4f + 3 = 11
    rows = _rows(capsys.readouterr().out)
    assert set(rows) == set(agg.names("rule"))
    assert rows["bulyan"][2:] == ["refused (bulyan needs n >= 4f + 3, got n=7, f=2)"] * 3 + ["-"]
    median = rows["median"]
    assert all(float(cell) < 2 for cell in median[2:5]) and float(median[5]) >= 0


def test_more_byzantine_than_honest_inputs_still_make_n_rows(capsys, monkeypatch):
    shapes = []
    real_get = agg.get

    def recording_get(name):
        rule = real_get(name)

        def run(X, **options):
            shapes.append(tuple(X.shape))
            return rule(X, **options)

        return run

    monkeypatch.setattr(agg, "get", recording_get)
    main(["--n", "6", "--f", "4", "--d", "50"])  # 2 honest rows; no attack repeats them twice
    assert shapes and set(shapes) == {(6, 50)}
    rows = _rows(capsys.readouterr().out)
    assert float(rows["average"][2]) < 1e-6  # 3 copies of each honest row: their mean


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--n", "0"], "argument --n: must be >= 2, got 0"),
        (["--f", "-1"], "argument --f: must be >= 0, got -1"),
        (["--d", "0"], "argument --d: must be >= 1, got 0"),
        (["--d", "x"], "argument --d: not an integer: 'x'"),
        (["--n", "5", "--f", "4"], "needs n - f >= 2 honest vectors, got n=5, f=4"),
        (["--seed", str(2**64)], f"argument --seed: must be <= {2**64 - 1}, got {2**64}"),
    ],
)
def test_bad_arguments_are_one_error_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"python -m byzlearn.aggregators: error: {message}"


def test_inputs_larger_than_the_memory_are_one_error_line(capsys, monkeypatch):
    """n x d beyond the memory available: one line (was a RuntimeError traceback from torch's
    allocator); the check reads /proc/meminfo, faked here."""
    from byzlearn import machine

    monkeypatch.setattr(machine, "available_bytes", lambda: 10 * 2**30)
    with pytest.raises(SystemExit) as exit_:
        main(["--n", "1000", "--d", "1000000"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "python -m byzlearn.aggregators: error: n=1000 x d=1000000 needs about 22.4 GiB, "
        "10.0 GiB available: lower --n or --d"
    )
