"""The demo: averaging collapses under an omniscient attack while robust rules keep learning.

scikit-learn's digits (bundled, no download), an MLP, n = 25 workers of which f = 5 are
Byzantine and send ``-10 x`` the honest mean (the omniscient attack of the Krum paper, ``ipm``
with ``epsilon = 10``), one run per rule with the same seed. Writes into the run directory:
``table.md``, ``accuracy.png`` and one sub-directory per rule (config, metrics, summary).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from byzlearn.experiments.config import Config, parse_config
from byzlearn.experiments.plots import accuracy_curves
from byzlearn.experiments.runner import RunResult, run
from byzlearn.experiments.tables import markdown_table

__all__ = ["DEMO_RULES", "DemoResult", "demo_config", "run_demo"]

DEMO_RULES = ("average", "krum", "median", "trimmed_mean", "bulyan", "nnm+krum")


def demo_config(rule: str, *, steps: int = 200, seed: int = 0, **overrides: Any) -> Config:
    """The demo's config for one rule (``overrides`` are top-level config fields)."""
    data: dict[str, Any] = {
        "name": f"demo-{rule}",
        "seed": seed,
        "dataset": {"name": "digits"},
        "model": {"name": "mlp", "options": {"hidden": [64]}},
        "n": 25,
        "f": 5,
        "byzantine": "random",
        "attack": {"name": "ipm", "options": {"epsilon": 10.0}},
        "rule": {"name": rule},
        "optimizer": {"lr": 0.1},
        "batch_size": 32,
        "steps": steps,
        "eval_every": 10,
        "checkpoint_every": 0,
    }
    data.update(overrides)
    return parse_config(data)


@dataclass
class DemoResult:
    """The demo's runs, its Markdown table and where it wrote its files."""

    results: dict[str, RunResult]
    table: str
    directory: Path
    seconds: float


def _label(rule: str, result: RunResult) -> str:
    if result.summary.get("diverged"):
        return f"{rule} (diverged at round {result.records[-1]['round']})"
    return rule


def _row(rule: str, result: RunResult) -> list[Any]:
    s = result.summary
    return [rule, s["final_accuracy"], s["best_accuracy"], s["kept_byzantine_mean"], s["seconds"]]


def run_demo(
    directory: str | Path,
    *,
    rules: Sequence[str] = DEMO_RULES,
    steps: int = 200,
    seed: int = 0,
    on_start: Callable[[str], None] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> DemoResult:
    """Run the demo into ``directory``; return its results and Markdown table."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results: dict[str, RunResult] = {}
    for rule in rules:
        if on_start is not None:
            on_start(rule)
        config = demo_config(rule, steps=steps, seed=seed)
        results[rule] = run(config, directory / rule.replace("+", "_"), callback=callback)
    headers = ["rule", "final acc", "best acc", "Byzantine kept/round", "seconds"]
    table = markdown_table(headers, [_row(rule, r) for rule, r in results.items()])
    first = next(iter(results.values())).config
    title = f"digits, n={first.n}, f={first.f}, attack: -10 x honest mean (ipm, epsilon=10)"
    accuracy_curves(
        {_label(rule, r): r.curve() for rule, r in results.items()},
        directory / "accuracy.png",
        title=title,
        chance=0.1,
    )
    (directory / "table.md").write_text(f"# byzlearn demo\n\n{title}\n\n{table}")
    return DemoResult(results, table, directory, time.perf_counter() - start)
