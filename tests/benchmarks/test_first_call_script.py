"""benchmarks/first_call.py times a rule's first call in fresh processes on caches of their
own."""

from __future__ import annotations

import pytest

from tests.benchmarks import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("first_call")


@pytest.mark.slow
def test_a_row_per_rule_with_its_compilations(script, capsys):
    script.main(["--rules", "average", "--n", "5", "--d", "100"])
    out = capsys.readouterr().out
    assert "- n = 5, f = 1, d = 100, float32; a cache per rule" in out
    row = next(line for line in out.splitlines() if line.startswith("| average |"))
    cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
    _, imported, cold, compiled, warm, hot = cells
    assert float(imported) >= 0 and float(cold) > 0 and float(warm) > 0 and float(hot) > 0
    # its own empty caches: the first process compiles the mean's kernel, whatever the
    # installed package's caches hold
    assert int(compiled) > 0
    assert "cold first calls in all:" in out


def test_a_rule_that_fails_is_one_error_line(script):
    with pytest.raises(SystemExit, match=r"^error: nosuchrule failed in its process: "):
        script.main(["--rules", "nosuchrule", "--n", "5", "--d", "10"])
