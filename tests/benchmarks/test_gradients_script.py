"""benchmarks/gradients.py prints the road beside vmap, with the road's gradients checked."""

from __future__ import annotations

import pytest

from tests.benchmarks import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("gradients")


def test_prints_every_variant_and_a_small_difference(script, capsys):
    script.main(["--workers", "3", "--calls", "1"])
    out = capsys.readouterr().out
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in out.splitlines()
        if line.startswith(("| mlp |", "| cnn |"))
    ]
    assert [(r[0], r[2]) for r in rows] == [
        ("mlp", "shared"),
        ("mlp", "own"),
        ("cnn", "shared"),
        ("cnn", "own"),
    ]
    for r in rows:
        assert float(r[-1]) < 1e-5  # the road's gradients against vmap's
        assert (r[6] == "-") == (r[0] == "mlp") and (r[8] == "-") == (r[0] == "mlp")


def test_bad_arguments_get_one_line(script, capsys):
    with pytest.raises(SystemExit):
        script.main(["--workers", "0"])
    assert "--workers: must be >= 1, got 0" in capsys.readouterr().err
