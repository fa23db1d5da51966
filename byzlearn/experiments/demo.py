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

from byzlearn.experiments._warm import compiling_ahead
from byzlearn.experiments.config import Config, ConfigError, parse_config
from byzlearn.experiments.plots import accuracy_curves
from byzlearn.experiments.runner import RunResult, run
from byzlearn.experiments.store import (
    RunCollisionError,
    RunDir,
    RunDirError,
    lock_directory,
    temporary_names,
    write_text_atomically,
)
from byzlearn.experiments.tables import markdown_table

__all__ = ["DEMO_RULES", "DemoResult", "check_demo", "demo_config", "run_demo"]

DEMO_RULES = ("average", "krum", "median", "trimmed_mean", "bulyan", "nnm+krum")


def demo_config(rule: str, *, steps: int = 200, seed: int = 0, **overrides: Any) -> Config:
    """The demo's config for one rule (``overrides`` are top-level config fields)."""
    return parse_config(_demo_data(rule, steps=steps, seed=seed, **overrides))


def _demo_data(rule: str, *, steps: int, seed: int, **overrides: Any) -> dict[str, Any]:
    """The fields of :func:`demo_config`, before they are checked."""
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
    return data


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


def _run_dir(directory: Path, rule: str) -> Path:
    return directory / rule.replace("+", "_")


def _warm_up(config: Config, first: bool) -> None:
    """One-off costs out of the timed run: the rule's kernels (compiled, or loaded from the
    cache) on inputs of the run's shape, plain and attacked as in the demo (close honest rows
    and f rows at -10 x their mean: a distance-based rule then refines its Gram pass on a
    central row, as on the first rounds), and, before the first rule, one untimed training
    step (the batched forward/backward's first call)."""
    import torch

    import byzlearn.aggregators as agg
    from byzlearn.experiments.trainer import Trainer

    X = torch.randn(config.n, 4096, generator=torch.Generator().manual_seed(0))
    attacked = X[0] + 1e-3 * X
    attacked[config.n - config.f :] = -10.0 * attacked[: config.n - config.f].mean(0)
    for inputs in (X, attacked):
        agg.aggregate(config.rule.full_name, inputs, f=config.f, **config.rule.options)
    if first:
        with torch.random.fork_rng(devices=[]):
            Trainer(config).step()


def _row(rule: str, result: RunResult) -> list[Any]:
    s = result.summary
    return [rule, s["final_accuracy"], s["best_accuracy"], s["kept_byzantine_mean"], s["seconds"]]


def check_demo(
    directory: str | Path, *, rules: Sequence[str] = DEMO_RULES, steps: int = 200, seed: int = 0
) -> dict[str, Config]:
    """The configs of the demo's runs, after checking (before anything is written) that
    ``directory`` holds no demo of other settings: raises
    :class:`~byzlearn.experiments.store.RunDirError` in one line naming a directory to use
    (a rule given twice is a :class:`~byzlearn.experiments.config.ConfigError`), and that the
    finished runs of other rules the table will show can be read (a damaged file is one line
    before training, not after)."""
    directory = Path(directory)
    configs = _claimed(directory, rules, steps, seed)
    if directory.is_dir():  # the other rules' runs the table shows: a damaged file is found now
        _earlier_runs(directory, steps, seed, set(configs))
    return configs


def _claimed(directory: Path, rules: Sequence[str], steps: int, seed: int) -> dict[str, Config]:
    """The configs of the demo's runs, after checking that ``directory`` may hold them (see
    :func:`check_demo`; nothing is read but what tells)."""
    if directory.exists() and not directory.is_dir():
        raise RunDirError(f"{directory}: is a file, not a directory")
    twice = sorted({rule for rule in rules if list(rules).count(rule) > 1})
    if twice:
        raise ConfigError(f"rules: {', '.join(twice)} given twice; give each rule once")
    # checking a config compiles its rule's kernels on a fresh install: a second process
    # compiles the later rules' meanwhile (_warm)
    fields = {rule: _demo_data(rule, steps=steps, seed=seed) for rule in rules}
    with compiling_ahead(list(fields.values())):
        configs = {rule: parse_config(data) for rule, data in fields.items()}
    for rule, config in configs.items():
        try:
            RunDir(_run_dir(directory, rule)).claim(config)
        except RunCollisionError:
            raise RunCollisionError(
                f"{directory}: holds a demo with other settings ({_run_dir(directory, rule)}); "
                f"nothing was written. Use another directory, e.g. --out "
                f"{directory}-steps{steps}-seed{seed}"
            ) from None
    return configs


def run_demo(
    directory: str | Path,
    *,
    rules: Sequence[str] = DEMO_RULES,
    steps: int = 200,
    seed: int = 0,
    on_start: Callable[[str], None] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> DemoResult:
    """Run the demo into ``directory``; return its results and Markdown table.

    :func:`check_demo` runs first: a demo with other settings (``--steps``, ``--seed``) in the
    same directory is refused, not overwritten, and so is a directory another live demo (or
    run) works in (:class:`~byzlearn.experiments.store.RunLockedError`). The table and the
    figure cover every rule whose run the directory holds (a later ``--rules krum`` adds to
    them, it does not replace them).
    The seconds exclude the one-off compilation of the aggregation kernels (each rule runs
    once on inputs of the demo's shape before its timed run).
    """
    directory = Path(directory)
    configs = _claimed(directory, rules, steps, seed)  # refused before anything is written
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # (not the dataset's fault, as the command would otherwise say)
        raise RunDirError(f"{directory}: cannot create the directory ({e.strerror})") from None
    # one demo at a time in the folder (its table covers every rule's run: two at once would
    # each write a table lacking the other's); the temporary files of a killed one are removed
    with lock_directory(directory, _TEMPORARY):
        # the other rules' runs the table shows, as they are now: a damaged file is found now
        earlier = _earlier_runs(directory, steps, seed, set(configs))
        return _run_locked(directory, configs, earlier, on_start, callback)


# the temporary files of the demo's table and figure (write_atomically's names)
_TEMPORARY = temporary_names(r"table\.md|accuracy\.png")


def _run_locked(
    directory: Path,
    configs: dict[str, Config],
    earlier: dict[str, RunResult],
    on_start: Callable[[str], None] | None,
    callback: Callable[[dict[str, Any]], None] | None,
) -> DemoResult:
    """:func:`run_demo` in the locked ``directory``."""
    start = time.perf_counter()
    results: dict[str, RunResult] = {}
    for i, (rule, config) in enumerate(configs.items()):
        if on_start is not None:
            on_start(rule)
        if not RunDir(_run_dir(directory, rule)).finished:
            _warm_up(config, first=i == 0)
        results[rule] = run(config, _run_dir(directory, rule), callback=callback)
    seconds = time.perf_counter() - start
    results = {**earlier, **results}
    order = {rule: i for i, rule in enumerate(DEMO_RULES)}
    results = dict(sorted(results.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
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
    # atomically, and never through a link at table.md (it would write outside the directory)
    write_text_atomically(directory / "table.md", f"# byzlearn demo\n\n{title}\n\n{table}")
    return DemoResult(results, table, directory, seconds)


def _earlier_runs(
    directory: Path, steps: int, seed: int, exclude: set[str]
) -> dict[str, RunResult]:
    """Finished demo runs of the same settings already in ``directory`` (other rules)."""
    found: dict[str, RunResult] = {}
    for path in sorted(p for p in directory.iterdir() if p.is_dir()):
        rd = RunDir(path)
        try:
            config = rd.read_config() if rd.finished else None
        except (ValueError, OSError):
            continue
        if config is None or config.rule.full_name in exclude:
            continue
        rule = config.rule.full_name
        if config != demo_config(rule, steps=steps, seed=seed):
            continue
        summary = rd.summary() or {}
        found[rule] = RunResult(config, rd.metrics(), summary, None, path, status="loaded")
    return found
