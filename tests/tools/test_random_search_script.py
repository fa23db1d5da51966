"""``tools/random_search.py``: each family draws cases and finds nothing on the library, a wrong
rule is found, and the command line prints each family's summary and exits 0 when it found
nothing."""

from __future__ import annotations

import pytest

import byzlearn.aggregators as agg
from tests.tools import load_tool

tool = load_tool("random_search")


@pytest.mark.parametrize("family", sorted(tool.FAMILIES))
def test_each_family_runs_clean_on_the_library(family):
    found = tool.search(family, seconds=1.0, seed=7)
    assert found.cases >= 1
    assert found.mismatches == []


def test_a_wrong_rule_is_found():
    def off_median(name):  # the median off by a little everywhere
        rule = agg.get(name)
        return (lambda X, f: rule(X, f=f) * 1.001 + 1e-3) if name == "median" else rule

    found = tool.search("coordinatewise", seconds=0.5, seed=1, get_rule=off_median)
    assert any(line.startswith("median ") for line in found.mismatches)

    calls = []

    def drifting(name):  # each call one more off: the two paths disagree
        rule = agg.get(name)

        def run(X, f):
            calls.append(name)
            return rule(X, f=f) + 1e-3 * len(calls)

        return run

    found = tool.search("torch_path", seconds=0.0, seed=3, get_rule=drifting)
    assert found.cases == 1 and len(found.mismatches) == 1


def test_the_command_line_reports_in_its_exit_status(capsys):
    assert tool.main(["--families", "selection", "--seconds", "0.5"]) == 0
    assert "selection:" in capsys.readouterr().out
