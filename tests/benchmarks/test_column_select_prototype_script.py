"""benchmarks/column_select_prototype.py: the prototype's medians equal the library's, and a bad
argument or a missing compiler is one line."""

from __future__ import annotations

import shutil

import pytest

from tests.benchmarks import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("column_select_prototype")


def test_the_bitonic_pairs_sort_every_zero_one_input(script):
    import itertools

    pairs = script.bitonic_pairs(8)
    for bits in itertools.product((0, 1), repeat=8):
        v = list(bits)
        for a, b in pairs:
            v[a], v[b] = min(v[a], v[b]), max(v[a], v[b])
        assert v == sorted(bits)


def test_too_few_rows_is_one_argparse_line(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--n", "10"])
    assert exit_info.value.code == 2
    assert "must be >= 64" in capsys.readouterr().err


def test_without_gcc_it_says_so_in_one_line(script, monkeypatch):
    monkeypatch.setattr(script.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--n", "64", "--d", "64"])
    assert str(exit_info.value) == "error: this prototype needs gcc on the PATH"


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("gcc") is None or not load_script("column_select_prototype").has_avx512(),
    reason="needs gcc and an AVX-512 CPU",
)
def test_the_prototype_gives_the_library_median_on_every_input(script, capsys):
    script.main(["--n", "64", "131", "--d", "3000", "--repeats", "1"])
    rows = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| 64 ") or line.startswith("| 131 ")
    ]
    assert len(rows) == 8
    assert all(row.split("|")[7].strip() == "yes" for row in rows)
