"""``tools/random_search.py``: each family draws cases and finds nothing on the library, finds a
wrong rule, and the command line reports both in its exit status."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

import byzlearn.aggregators as agg

ROOT = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("random_search_tool",
                                                  ROOT / "tools" / "random_search.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("random_search_tool", module)  # (its dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


tool = _tool()


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
