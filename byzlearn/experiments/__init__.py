"""Experiments: config schema, runner, result store, sweeps, reports and the demo.

Python API mirroring the CLI::

    from byzlearn.experiments import load_config, run
    result = run(load_config("examples/digits.yaml", ["rule.name=krum"]), "runs/krum")
    result.summary["final_accuracy"], result.records[-1]

``run_demo``, ``plan_sweep``/``run_sweep`` and ``build_report`` mirror ``byzlearn demo``,
``byzlearn sweep`` and ``byzlearn report``.
"""

from byzlearn.experiments.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_hash,
    load_config,
    parse_config,
    to_yaml,
)
from byzlearn.experiments.demo import DemoResult, demo_config, run_demo
from byzlearn.experiments.report import build_report, collect
from byzlearn.experiments.runner import RunResult, run, summarise
from byzlearn.experiments.store import RunDir, read_metrics
from byzlearn.experiments.sweep import SweepPlan, load_sweep, plan_sweep, run_sweep
from byzlearn.experiments.trainer import Trainer

__all__ = [
    "Config",
    "ConfigError",
    "DemoResult",
    "RunDir",
    "RunResult",
    "SweepPlan",
    "Trainer",
    "apply_overrides",
    "build_report",
    "collect",
    "config_hash",
    "demo_config",
    "load_config",
    "load_sweep",
    "parse_config",
    "plan_sweep",
    "read_metrics",
    "run",
    "run_demo",
    "run_sweep",
    "summarise",
    "to_yaml",
]
