"""Sweeps: a grid over config fields, each run stored under the hash of its resolved config.

A sweep file::

    base:                     # a config (inline), or a path to a config file
      dataset: {name: digits}
      steps: 200
    grid:                     # dotted field -> list of values; the runs are the product
      rule.name: [average, krum, median]
      attack: [{name: ipm, options: {epsilon: 10}}, {name: alie}]
      f: [3, 5]
      partition.alpha: [0.1, 1.0]
      seed: [0, 1]

Run ``i`` lives in ``OUT/runs/<hash[:16]>/``. Finished runs (same resolved config) are skipped,
a killed run resumes from its checkpoint, so running an interrupted sweep again finishes it.
``run_sweep(..., jobs=N)`` runs N at a time (local processes; ``ray=True``: Ray tasks), with
the same directories, skips and resumes (:mod:`byzlearn.experiments.parallel`).
Combinations the config schema rejects (e.g. Bulyan with too many Byzantine workers) are
listed as invalid and skipped, not fatal; combinations of one config (values that differ only
in fields left out of the config hash) are listed as repeats and run once. A grid of more than
:data:`MAX_COMBINATIONS` combinations, a base or grid of the wrong type, a grid key that is not
a config field or overlaps another are one-line :class:`ConfigError`.
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any

from byzlearn.experiments._warm import compiling_ahead
from byzlearn.experiments.config import (
    Config,
    ConfigError,
    config_hash,
    field_path_exists,
    parse_config,
    read_yaml,
)
from byzlearn.experiments.parallel import RoundCallback, run_in_sweep, run_parallel
from byzlearn.experiments.runner import Callback

__all__ = ["MAX_COMBINATIONS", "SweepPlan", "load_sweep", "plan_sweep", "run_sweep", "set_path"]

#: the most grid points a sweep expands (each is a config checked when planned)
MAX_COMBINATIONS = 100_000


def set_path(data: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted ``key`` of nested ``data`` to ``value`` (creating sections; the old
    shorthand ``engine: local`` counts as the section ``engine: {name: local}``)."""
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if i == 0 and part == "engine" and isinstance(child, str):
            child = node[part] = {"name": child}
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])}: is not a section")
        node = child
    node[parts[-1]] = value


@dataclass
class SweepPlan:
    """The valid configs of a sweep (with the grid point of each), the combinations the
    schema rejected, and the ``repeats``: combinations whose config is that of an earlier one
    (``(point, earlier point)``; e.g. values differing only in ``name``, ``threads`` or
    ``checkpoint_every``, left out of the config hash), run once."""

    configs: list[Config]
    invalid: list[tuple[dict[str, Any], str]]
    points: list[dict[str, Any]] = field(default_factory=list)
    repeats: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)

    def directory(self, out: str | Path, config: Config) -> Path:
        """Where the run of ``config`` is stored."""
        return Path(out) / "runs" / config_hash(config)[:16]


def load_sweep(path: str | Path) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """Read a sweep file: ``(base config mapping, grid)``."""
    path = Path(path)
    data = read_yaml(path)
    if data is None:
        raise ConfigError(f"{path}: sweep file is empty (a sweep has base and grid)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with 'base' and 'grid'")
    unknown = sorted(set(data) - {"base", "grid"})
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (a sweep has base and grid)")
    base = data.get("base")
    if base is None:  # no base: the defaults
        base = {}
    if isinstance(base, str):
        base_path = path.parent / base  # an absolute base stays absolute
        try:
            found, folder = base_path.is_file(), base_path.is_dir()
        except OSError as err:  # a name too long, a folder that cannot be searched
            raise ConfigError(f"{path}: base: {err.strerror}: {base[:80]!r}") from None
        if folder:
            raise ConfigError(f"{path}: base: {base_path} is a directory, not a config file")
        if not found:
            raise ConfigError(f"{path}: base: no such config file {base_path}")
        base = read_yaml(base_path)
        if base is None:
            raise ConfigError(f"{path}: base: config file {base_path} is empty")
    if not isinstance(base, dict):
        raise ConfigError(f"{path}: base: must be a config mapping or a path to a config file")
    grid = data.get("grid")
    if grid is None:  # no grid: one run, the base
        grid = {}
    if not isinstance(grid, dict):
        raise ConfigError(f"{path}: grid: must map dotted config fields to lists of values")
    for key, values in grid.items():
        if not isinstance(key, str) or not field_path_exists(key):
            raise ConfigError(f"{path}: grid: {key!r} is not a config field")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: grid.{key}: must be a non-empty list of values")
    return base, grid


def _check_overlap(grid: dict[str, list[Any]]) -> None:
    """Refuse two grid keys where one is (or holds) the other, e.g. ``rule`` and ``rule.name``:
    whichever is set last would silently replace the other's values."""
    for a, b in itertools.combinations(map(str, grid), 2):
        if a.startswith(b + ".") or b.startswith(a + "."):
            raise ConfigError(
                f"grid: {a} and {b} overlap (one would replace the other's values): "
                "keep one key, or put both in one section"
            )


def plan_sweep(base: dict[str, Any], grid: dict[str, list[Any]]) -> SweepPlan:
    """Expand the grid over ``base``; validate every combination (a grid whose keys overlap
    is a :class:`ConfigError`)."""
    import copy

    _check_overlap(grid)
    keys = list(grid)
    combinations = prod(len(grid[k]) for k in keys)
    if combinations > MAX_COMBINATIONS:
        sizes = " x ".join(str(len(grid[k])) for k in keys)
        raise ConfigError(
            f"grid: {sizes} = {combinations:,} combinations, at most {MAX_COMBINATIONS:,}"
        )
    configs: list[Config] = []
    invalid: list[tuple[dict[str, Any], str]] = []
    points: list[dict[str, Any]] = []
    repeats: list[tuple[dict[str, Any], dict[str, Any]]] = []
    seen: dict[str, int] = {}  # config hash -> its index in configs
    filled: list[tuple[dict[str, Any], dict[str, Any] | str]] = []  # point, fields or error
    for values in itertools.product(*(grid[k] for k in keys)):
        data = copy.deepcopy(base)
        point = dict(zip(keys, values, strict=True))
        try:
            for key, value in point.items():
                set_path(data, key, copy.deepcopy(value))
            filled.append((point, data))
        except ConfigError as err:
            filled.append((point, str(err)))
    # checking a config compiles its rule's kernels on a fresh install: a second process
    # compiles the later configs' meanwhile (_warm)
    with compiling_ahead([fields for _, fields in filled if isinstance(fields, dict)]):
        for point, fields in filled:
            if isinstance(fields, str):
                invalid.append((point, fields))
                continue
            try:
                config = parse_config(fields)
            except ConfigError as err:
                invalid.append((point, str(err)))
                continue
            h = config_hash(config)
            if h in seen:
                repeats.append((point, points[seen[h]]))
                continue
            seen[h] = len(configs)
            configs.append(config)
            points.append(point)
    return SweepPlan(configs, invalid, points, repeats)


def run_sweep(
    plan: SweepPlan,
    out: str | Path,
    *,
    on_start: Callable[[int, Config, bool], None] | None = None,
    callback: Callback | None = None,
    jobs: int = 1,
    ray: bool = False,
    address: str | None = None,
    on_round: RoundCallback | None = None,
) -> list[dict[str, Any]]:
    """Run every config of ``plan`` under ``out`` (finished runs are loaded, not rerun).

    ``on_start(i, config, finished)`` is called before each run (in parallel: as it is
    submitted); ``callback(record)`` after every round of a sequential sweep, and
    ``on_round(i, record)`` after every round of run ``i`` in either mode (Ray tasks report
    only their last round). ``jobs > 1`` runs that many at a time in local processes, ``ray``
    as Ray tasks on the cluster at ``address`` (a local instance when None); see
    :mod:`byzlearn.experiments.parallel`. Returns the summaries, in plan order.
    """
    from byzlearn.experiments.store import RunDir

    if isinstance(jobs, bool) or not isinstance(jobs, numbers.Integral) or jobs < 1:
        raise ConfigError(f"--jobs: a whole number >= 1, got {jobs!r}")
    jobs = int(jobs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if jobs == 1 and not ray:
        summaries = []
        for i, config in enumerate(plan.configs):
            directory = plan.directory(out, config)
            finished = RunDir(directory).finished
            if on_start is not None:
                on_start(i, config, finished)

            def each_round(record: dict[str, Any], i: int = i) -> None:
                if callback is not None:
                    callback(record)
                if on_round is not None:
                    on_round(i, record)

            summaries.append(
                run_in_sweep(config, directory, callback=None if finished else each_round)
            )
        return summaries

    by_index: dict[int, dict[str, Any]] = {}
    todo = []
    for i, config in enumerate(plan.configs):
        directory = plan.directory(out, config)
        finished = RunDir(directory).finished
        if on_start is not None:
            on_start(i, config, finished)
        if finished:  # loaded here, never submitted (checked and locked as any run)
            by_index[i] = run_in_sweep(config, directory)
        else:
            todo.append((i, config, directory))

    def done(i: int, summary: dict[str, Any]) -> None:
        if on_round is not None:
            on_round(i, {"round": plan.configs[i].steps})  # finished (or diverged early)

    by_index.update(
        run_parallel(todo, jobs, ray=ray, address=address, on_round=on_round, on_done=done)
    )
    return [by_index[i] for i in range(len(plan.configs))]
