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


@pytest.mark.parametrize(
    "rules, n, f, message",
    [
        (["nosuchrule"], "5", "1", "nosuchrule"),
        (["average", "krum"], "5", "2", "krum"),  # Krum needs n >= 2f + 3
        (["nnm+nosuchrule"], "9", "1", "nosuchrule"),
    ],
)
def test_a_rule_that_cannot_run_is_one_line_before_any_child(script, capsys, rules, n, f, message):
    assert script.main(["--rules", *rules, "--n", n, "--f", f, "--d", "10"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # refused before the table starts: no child ran
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_a_rule_that_fails_in_its_process_is_one_error_line(script, monkeypatch):
    monkeypatch.setattr(script, "_CHILD", "raise SystemExit('boom')")
    with pytest.raises(SystemExit, match=r"^error: average failed in its process: "):
        script.main(["--rules", "average", "--n", "5", "--d", "10"])
