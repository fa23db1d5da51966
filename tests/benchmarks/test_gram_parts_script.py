"""benchmarks/gram_parts.py times the Gram pass's parts and refuses what it cannot split."""

from __future__ import annotations

import pytest

from byzlearn.aggregators import _gram_kernel
from tests.benchmarks import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("gram_parts")


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_one_row_per_rows_and_width_with_every_part(script, capsys):
    script.main(
        [
            "--n",
            "7",
            "12",
            "--d",
            "5000",
            "--widths",
            "512",
            "1024",
            "--repeats",
            "1",
            "--hot-kib",
            "64",
        ]
    )
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| n |"))
    rows = [_cells(line) for line in out.splitlines() if line.startswith(("| 7 |", "| 12 |"))]
    assert [(row[0], row[1]) for row in rows] == [
        ("7", "512"),
        ("7", "1024"),
        ("12", "512"),
        ("12", "1024"),
    ]
    assert len(_cells(header)) == len(rows[0]) == 13
    assert _cells(header)[-2:] == ["row stats (ms, / floor)", "row stats, signs (ms, / floor)"]
    assert _cells(header)[4] == "pass, buffer (ms, / floor)"  # beside the library's pass
    for row in rows:
        assert float(row[2]) > 0  # the floor
        for cell in row[3:]:
            ms, ratio = cell.split(" (")
            assert float(ms) >= 0 and float(ratio.rstrip(")")) >= 0


def test_the_library_width_by_default(script, capsys):

    script.main(["--n", "5", "--d", "3000", "--repeats", "1", "--hot-kib", "64"])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| 5 |"))
    width = _gram_kernel.tile_lanes(_gram_kernel.padded_rows(4), 5 * 3000 * 4)  # float32
    assert _cells(row)[1] == str(width)
    assert _gram_kernel.tile_lanes(3) == 2 * _gram_kernel.LANES  # the widths are restored
    mode = _gram_kernel.FUSED_LONG if _gram_kernel.separate_add_pipes() else _gram_kernel.FUSED
    assert mode == _gram_kernel.FUSED_CENTRING  # and the choice


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--widths", "300"], "error: --widths must be multiples of 256"),
        (["--n", "600"], f"error: --n must be under {_gram_kernel.BLAS_MIN_ROWS}"),
    ],
)
def test_what_it_cannot_split_is_one_line(script, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.main(argv)
    assert exit_info.value.code == 2  # argparse's error line
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and sum("error:" in line for line in err) == 1
