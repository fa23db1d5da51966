"""The config schema: defaults, unknown keys, errors naming the field, overrides, hashing."""

from __future__ import annotations

from pathlib import Path

import pytest

from byzlearn.experiments import (
    Config,
    ConfigError,
    apply_overrides,
    config_hash,
    load_config,
    parse_config,
)


def test_every_field_has_a_default() -> None:
    config = parse_config({})
    assert config == Config()
    assert config.rule.full_name == "average" and config.n == 25 and config.f == 5


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"nope": 1}, "nope"),
        ({"optimizer": {"lrr": 0.1}}, "optimizer.lrr"),
        ({"optimizer": {"lr": -1}}, "optimizer.lr"),
        ({"rule": {"name": "krumm"}}, "rule.name"),
        ({"rule": {"pre": ["nope"], "name": "krum"}}, "rule.pre"),
        ({"attack": {"name": "nope"}}, "attack.name"),
        ({"dataset": {"name": "imagenet"}}, "dataset.name"),
        ({"model": {"name": "gpt"}}, "model.name"),
        ({"partition": {"kind": "weird"}}, "partition.kind"),
        ({"n": 5, "f": 5}, "f"),
        ({"n": 10, "f": 3, "rule": {"name": "bulyan"}}, "rule.name"),
        ({"byzantine": [0, 0, 1], "f": 3}, "byzantine"),
        ({"steps": 0}, "steps"),
        ({"optimizer": {"momentum_at": "moon"}}, "optimizer.momentum_at"),
        ({"attack": {"name": "ipm", "options": {"eps": 1}}}, "attack.options"),
        ({"rule": {"name": "krum", "options": {"radius": 1}}}, "rule.options"),
        ({"engine": "spark"}, "engine.name"),
        ({"engine": {"name": "ray", "actors": 0}}, "engine.actors"),
        ({"engine": {"name": "local", "vectorize": True}}, "engine.vectorize"),
        ({"protocol": {"name": "gossip"}}, "protocol.name"),
        ({"protocol": {"name": "kardam", "q": 3}}, "protocol.q"),
        ({"protocol": {"name": "kardam"}, "n": 10, "f": 4}, "protocol.name"),
        ({"protocol": {"name": "parameter_server", "on_missing": "panic"}}, "protocol.on_missing"),
        ({"protocol": {"name": "kardam"}, "q": 3}, "q"),
        ({"num_byzantine": 25}, "num_byzantine"),
        ({"network": {"compute_time": {"dist": "gamma"}}}, "network.compute_time.dist"),
        ({"network": {"compute_time": 0}}, "network.compute_time.mean"),
        ({"network": {"link_delay": {"dist": "pareto", "shape": 1.0}}}, "network.link_delay.shape"),
    ],
)
def test_bad_configs_name_the_field(data: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert f"{field}:" in str(err.value)


def test_the_ray_engine_without_its_extra_is_one_line(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    with pytest.raises(ConfigError) as err:
        parse_config({"engine": "ray"})
    assert str(err.value) == (
        "invalid config: engine.name: the ray engine needs the optional extra: "
        'pip install -e ".[ray]"'
    )


def test_bulyan_error_states_the_requirement() -> None:
    with pytest.raises(ConfigError, match=r"rule\.name: .*4f"):
        parse_config({"n": 10, "f": 3, "rule": {"name": "bulyan"}})


def test_overrides_parse_yaml_values_and_nested_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("rule: {name: krum}\nn: 11\nf: 2\n")
    config = load_config(
        path,
        [
            "rule.name=median",
            "f=3",
            "optimizer.milestones=[5, 9]",
            "attack.options.epsilon=0.5",
            "attack.name=ipm",
        ],
    )
    assert config.rule.name == "median" and config.f == 3
    assert config.optimizer.milestones == [5, 9]
    assert config.attack.options == {"epsilon": 0.5}
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["rule.name"])
    with pytest.raises(ConfigError, match="n: is not a section"):
        apply_overrides({"n": 3}, ["n.x=1"])
    with pytest.raises(ConfigError, match=r"optimizer\.lrr"):
        load_config(path, ["optimizer.lrr=1"])


def test_composed_rule_names() -> None:
    assert parse_config({"rule": {"name": "krum", "pre": ["nnm"]}}).rule.full_name == "nnm+krum"
    assert parse_config({"rule": {"name": "nnm+krum"}}).rule.full_name == "nnm+krum"


def test_hash_ignores_names_and_threads_but_not_results_fields() -> None:
    a = parse_config({"seed": 1})
    assert config_hash(a) == config_hash(parse_config({"seed": 1, "name": "x", "threads": 2}))
    assert config_hash(a) != config_hash(parse_config({"seed": 2}))
    assert len(config_hash(a)) == 64


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_shipped_examples_are_valid() -> None:
    examples = sorted(Path(__file__).parents[2].joinpath("examples").glob("*.yaml"))
    configs = [p for p in examples if "sweep" not in p.name]
    assert configs, "examples/*.yaml missing"
    for path in configs:
        load_config(path)


@pytest.mark.parametrize(
    "name", ["../../escaped", "/tmp/x", "a/b", "..", ".hidden", "a\\b", "x" * 101]
)
def test_a_name_never_leaves_the_runs_folder(name: str) -> None:
    with pytest.raises(ConfigError, match="name: a folder name"):
        parse_config({"name": name})


def test_names_of_the_demo_and_the_examples_are_accepted() -> None:
    for name in ("demo-nnm+krum", "digits-alie-multikrum", "a_b.c", "f=5,lr=0.1", ""):
        assert parse_config({"name": name}).name == name


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_seeds_are_32_bit_and_non_negative(seed: int) -> None:
    with pytest.raises(ConfigError, match="seed"):
        parse_config({"seed": seed})


@pytest.mark.parametrize(
    "rule, message",
    [
        ({"name": "nnm"}, "rule.name: 'nnm' is a pre-aggregator, not a rule: put it in rule.pre"),
        ({"name": "bucketing+nnm"}, "rule.name: 'nnm' is a pre-aggregator"),
        ({"name": "krum", "pre": ["median"]}, "rule.pre: 'median' is a rule, not a pre-aggregator"),
        ({"name": "median+krum"}, "rule.name: 'median' is a rule, not a pre-aggregator"),
        ({"name": "krum", "pre": ["nnmm"]}, "rule.pre: 'nnmm' is unknown"),
    ],
)
def test_rule_and_pre_aggregators_are_told_apart(rule: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"n": 25, "f": 2, "rule": rule})
    assert message in str(err.value)


def test_negative_crash_rounds_and_absurd_thread_counts_are_refused() -> None:
    with pytest.raises(ConfigError, match="a crash round must be >= 0, got -1 for worker 0"):
        parse_config({"network": {"crashes": {0: -1}}})
    with pytest.raises(ConfigError, match="threads"):
        parse_config({"threads": 100_000})


def test_data_too_small_for_the_workers_is_a_config_error(tmp_path: Path) -> None:
    from byzlearn.experiments.runner import run

    data = {"name": "synthetic", "options": {"num_samples": 3}}
    config = parse_config(
        {"dataset": data, "model": {"name": "logistic"}, "n": 5, "f": 1, "steps": 2}
    )
    with pytest.raises(ConfigError, match="cannot give each of n=5 workers a sample out of 2"):
        run(config, tmp_path / "r")
    assert not any((tmp_path / "r").iterdir())  # nothing written


def test_exponent_floats_without_a_dot_are_numbers(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optimizer:\n  lr: 1e-3\n  weight_decay: 5E-4\nname: run1\n")
    config = load_config(path, ["optimizer.gamma=2e-1"])
    assert (config.optimizer.lr, config.optimizer.weight_decay) == (0.001, 0.0005)
    assert config.optimizer.gamma == 0.2 and config.name == "run1"


@pytest.mark.parametrize(
    "poisoning, message",
    [
        ({"kind": "flip_labels", "mapping": [99]}, "poisoning.mapping: .*needs num_classes=4"),
        ({"kind": "flip_labels", "mapping": [-1, 0, 1, 2]}, "poisoning.mapping"),
        ({"kind": "targeted_flip", "target": 99}, "poisoning.target: a class in 0..3, got 99"),
        ({"kind": "targeted_flip", "source": -7}, "poisoning.source: a class in 0..3, got -7"),
    ],
)
def test_poisoning_classes_must_exist(poisoning: dict, message: str) -> None:
    data = {"name": "synthetic", "options": {"num_classes": 4}}
    with pytest.raises(ConfigError, match=message):
        parse_config({"dataset": data, "model": {"name": "logistic"}, "poisoning": poisoning})
    ok = {"kind": "flip_labels", "mapping": [1, 0, 3, 2]}
    assert parse_config({"dataset": data, "model": {"name": "logistic"}, "poisoning": ok})


def test_a_model_that_does_not_take_the_inputs_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"model\.name: resnet does not take synthetic's inputs"):
        parse_config({"dataset": {"name": "synthetic"}, "model": {"name": "resnet"}})


def test_worker_and_batch_counts_have_a_ceiling() -> None:
    with pytest.raises(ConfigError, match="n: Input should be less than or equal to 1000000"):
        parse_config({"n": 10**11})
    with pytest.raises(ConfigError, match="batch_size"):
        parse_config({"batch_size": 10**8})
