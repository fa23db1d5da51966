"""Findings of a random search over sweep files (:mod:`byzlearn.experiments.sweep`): a base or
grid of the wrong type is one line (it was read as "none" and the defaults ran), so is a grid
too big to expand and a base path the system refuses; the old ``engine: local`` shorthand of a
base takes grid keys below it."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from typer.testing import CliRunner

from byzlearn.cli import app
from byzlearn.experiments import sweep
from byzlearn.experiments.config import ConfigError, parse_config
from byzlearn.experiments.parallel import run_job
from byzlearn.experiments.store import RunCollisionError
from byzlearn.experiments.sweep import load_sweep, plan_sweep, run_sweep

BASE = "base: {n: 5, f: 1, steps: 2, model: {name: logistic}}\n"


def _sweep(tmp_path: Path, text: str) -> Path:
    spec = tmp_path / "s.yaml"
    spec.write_text(text)
    return spec


@pytest.mark.parametrize("value", ["[]", "0", "false", "''", "[seed]"])
def test_a_grid_that_is_not_a_mapping_is_one_line(tmp_path: Path, value: str) -> None:
    # before: a falsy grid (`grid: []`, `grid: 0`) was taken for no grid, the base ran alone
    spec = _sweep(tmp_path, BASE + f"grid: {value}\n")
    with pytest.raises(ConfigError, match="grid: must map dotted config fields to lists"):
        load_sweep(spec)


@pytest.mark.parametrize("value", ["[]", "0", "false", "[n: 5]"])
def test_a_base_that_is_not_a_mapping_or_a_path_is_one_line(tmp_path: Path, value: str) -> None:
    # before: a falsy base (`base: 0`, `base: []`) was taken for no base: the default config ran
    spec = _sweep(tmp_path, f"base: {value}\ngrid: {{seed: [0, 1]}}\n")
    with pytest.raises(ConfigError, match="base: must be a config mapping or a path"):
        load_sweep(spec)


def test_a_missing_or_null_base_and_grid_stay_the_defaults(tmp_path: Path) -> None:
    assert load_sweep(_sweep(tmp_path, "grid: {seed: [0]}\n")) == ({}, {"seed": [0]})
    assert load_sweep(_sweep(tmp_path, "base:\ngrid:\n")) == ({}, {})


def test_a_base_name_too_long_for_the_system_is_one_line(tmp_path: Path) -> None:
    # before: an OSError (File name too long) from deep inside pathlib
    spec = _sweep(tmp_path, "base: " + "a" * 5000 + "\ngrid: {seed: [0]}\n")
    with pytest.raises(ConfigError, match=r"s\.yaml: base: File name too long: 'aaaa") as err:
        load_sweep(spec)
    assert len(str(err.value)) < 200


@pytest.mark.parametrize("value", ["''", "."])
def test_a_base_that_is_a_directory_says_so(tmp_path: Path, value: str) -> None:
    spec = _sweep(tmp_path, f"base: {value}\ngrid: {{seed: [0]}}\n")
    with pytest.raises(ConfigError, match="is a directory, not a config file"):
        load_sweep(spec)


def test_a_grid_too_big_to_expand_is_one_line(tmp_path: Path) -> None:
    # before: 10 axes of 10 values were expanded one by one (10^10 configs to check)
    big = {f"rule.options.o{i}": list(range(10)) for i in range(10)}
    with pytest.raises(
        ConfigError, match=r"grid: 10 x 10 x .* = 10,000,000,000 combinations, at most 100,000"
    ):
        plan_sweep({}, big)
    keys = " ".join(f"rule.options.o{i}: [0,1,2,3,4,5,6,7,8,9]," for i in range(10))
    result = CliRunner().invoke(app, ["sweep", str(_sweep(tmp_path, f"grid: {{{keys}}}\n"))])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "combinations, at most 100,000" in result.output


def test_a_grid_at_the_cap_is_expanded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweep, "MAX_COMBINATIONS", 4)
    base = {"n": 5, "f": 1, "steps": 2, "model": {"name": "logistic"}}
    assert len(plan_sweep(base, {"seed": [0, 1], "optimizer.lr": [0.1, 0.2]}).configs) == 4
    with pytest.raises(ConfigError, match="grid: 5 = 5 combinations, at most 4"):
        plan_sweep(base, {"seed": [0, 1, 2, 3, 4]})


def test_the_old_engine_shorthand_takes_grid_keys_below_it() -> None:
    # before: every point was invalid ("engine: is not a section"): "no valid run in the grid"
    base = {"n": 5, "f": 1, "steps": 2, "model": {"name": "logistic"}, "engine": "local"}
    plan = plan_sweep(base, {"engine.vectorise": [True, False]})
    assert not plan.invalid
    assert [c.engine.vectorise for c in plan.configs] == [True, False]


def _valid(data: dict) -> bool:
    try:
        parse_config(data)
    except ConfigError:
        return False
    return True


def test_a_plan_is_the_cartesian_product_in_order_without_repeats() -> None:
    base = {"n": 5, "steps": 2, "model": {"name": "logistic"}}
    grid = {"rule.name": ["median", "krum"], "f": [1, 3, 1], "seed": [0, 1]}
    plan = plan_sweep(base, grid)
    points = [dict(zip(grid, p, strict=True)) for p in itertools.product(*grid.values())]
    data = [
        {**base, "rule": {"name": p["rule.name"]}, "f": p["f"], "seed": p["seed"]} for p in points
    ]
    valid = [(p, d) for p, d in zip(points, data, strict=True) if _valid(d)]
    unique = [(p, d) for i, (p, d) in enumerate(valid) if d not in [e for _, e in valid[:i]]]
    assert 0 < len(unique) < len(valid) < len(points)  # repeats and invalid points both seen
    assert plan.points == [p for p, _ in unique]
    assert plan.configs == [parse_config(d) for _, d in unique]
    invalid = [p for p, d in zip(points, data, strict=True) if not _valid(d)]
    assert [p for p, _ in plan.invalid] == invalid


def test_combinations_that_repeat_a_config_are_listed_not_dropped_silently() -> None:
    # before: the plan only kept the first of them; nothing said why the runs were fewer
    base = {"n": 5, "f": 1, "steps": 2, "model": {"name": "logistic"}}
    plan = plan_sweep(base, {"name": ["a", "b"], "seed": [0, 0, 1]})
    assert plan.points == [{"name": "a", "seed": 0}, {"name": "a", "seed": 1}]
    assert plan.repeats == [
        ({"name": "a", "seed": 0}, {"name": "a", "seed": 0}),
        ({"name": "b", "seed": 0}, {"name": "a", "seed": 0}),
        ({"name": "b", "seed": 0}, {"name": "a", "seed": 0}),
        ({"name": "b", "seed": 1}, {"name": "a", "seed": 1}),
    ]


def test_the_command_line_lists_the_repeats(tmp_path: Path) -> None:
    spec = _sweep(tmp_path, BASE + "grid: {name: [a, b]}\n")
    result = CliRunner().invoke(
        app, ["sweep", str(spec), "--out", str(tmp_path / "o"), "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "{'name': 'b'}: the config of {'name': 'a'}, run once" in result.output


@pytest.mark.parametrize("jobs", [0, 1.5, "2", True])
def test_jobs_must_be_a_whole_number_and_nothing_is_written(tmp_path: Path, jobs) -> None:
    plan = plan_sweep({"n": 5, "f": 1, "steps": 2, "model": {"name": "logistic"}}, {})
    with pytest.raises(ConfigError, match="--jobs: a whole number >= 1"):
        run_sweep(plan, tmp_path / "out", jobs=jobs)
    assert not (tmp_path / "out").exists()  # before: created, then the error


def test_a_run_folder_of_another_config_names_a_remedy_that_fits_a_sweep(tmp_path: Path) -> None:
    # before: "Use another directory, e.g. --out OUT/runs/<hash>-<hash>", the remedy of
    # `byzlearn run`: a sweep given that --out starts a whole new sweep inside the old one
    plan = plan_sweep({"n": 5, "f": 1, "steps": 2, "model": {"name": "logistic"}}, {})
    out = tmp_path / "out"
    folder = plan.directory(out, plan.configs[0])
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"not this config's")
    needle = "nothing was written. Move that folder away, or sweep into another directory"
    with pytest.raises(RunCollisionError, match=needle) as err:
        run_sweep(plan, out)
    assert "-" + folder.name[:8] not in str(err.value)
    config = plan.configs[0].model_dump(mode="json")
    with pytest.raises(RunCollisionError, match=needle):  # what a parallel job runs
        run_job(0, config, str(folder))
    assert [p.name for p in folder.iterdir()] == ["checkpoint.pt"]
