"""The attack options probe shared by the config readers (byzlearn.attacks._probe)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch

import byzlearn.attacks as atk
from byzlearn.attacks import _probe
from byzlearn.attacks._probe import PROBE_DIM, PROBE_VALUES, probe_attack, probe_dim
from byzlearn.experiments.config import ConfigError, parse_config

torch.set_num_threads(1)


class _Spy:
    """Stands for ``atk.get``: records the call the probe makes, then runs the real attack."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, int, dict[str, Any]]] = []

    def __call__(self, name: str):
        def attack(honest: torch.Tensor, f: int, **kwargs: Any) -> torch.Tensor:
            self.calls.append((honest, f, kwargs))
            return atk.get(name)(honest, f, **kwargs)

        return attack


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> _Spy:
    recorder = _Spy()
    monkeypatch.setattr(_probe, "get", recorder)
    return recorder


# ---------------------------------------------------------------------------------- probe_dim
@pytest.mark.parametrize(
    ("options", "rows", "max_dim", "expected"),
    [
        ({}, 10, 1000, PROBE_DIM),  # no integer: the fewest coordinates
        ({"coordinates": 10}, 10, 1000, 11),  # an integer may be a coordinate index
        ({"coordinates": [3, [700]], "b": (5,)}, 10, 1000, 701),  # in (nested) lists too
        ({"flag": True, "z": 1.5e9, "s": "all"}, 10, 1000, PROBE_DIM),  # not indices
        ({"coordinates": 5000}, 10, 1000, 1000),  # at most the model's
        ({"coordinates": 5000}, 10, 2, PROBE_DIM),  # at least PROBE_DIM
        ({"coordinates": 10**9}, 1000, 10**9, PROBE_VALUES // 1000),  # at most the values cap
        ({"coordinates": -7}, 10, 1000, PROBE_DIM),
    ],
)
def test_probe_dim(options: dict[str, Any], rows: int, max_dim: int, expected: int) -> None:
    assert probe_dim(options, rows, max_dim) == expected


# ------------------------------------------------------------------------------- probe_attack
@pytest.mark.parametrize(
    ("name", "options", "error", "message"),
    [
        ("gaussian", {"std": -1.0}, ValueError, "gaussian: std must be > 0"),
        ("alie", {"z": "x"}, TypeError, "alie: z must be a number"),
        ("mimic", {"worker": 7}, ValueError, "mimic: worker must be in [0, h=7)"),
        ("leeway", {"coordinates": 50}, ValueError, "coordinates must lie in [0, d=40)"),
        ("leeway", {"evaluations": 0}, ValueError, "evaluations"),
        ("mimic", {"warmup": 0}, ValueError, "warmup"),
    ],
)
def test_a_bad_value_raises_the_attacks_own_error(
    name: str, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as caught:
        probe_attack(name, options, honest=7, f=2, max_dim=40, rule="krum")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("gaussian", {"std": 3.0}),
        ("mimic", {"worker": 6}),
        ("mimic", {"warmup": 3}),
        ("leeway", {"coordinates": 39}),
        ("leeway", {"coordinates": [0, 39], "evaluations": 1000}),
        ("strategic", {}),
        ("zero", {}),
    ],
)
def test_a_valid_value_passes(name: str, options: dict[str, Any]) -> None:
    probe_attack(name, options, honest=7, f=2, max_dim=40, rule="krum")


def test_the_call_is_a_runs_call(spy: _Spy) -> None:
    probe_attack(
        "gaussian",
        {"std": 2.0},
        honest=6,
        f=3,
        max_dim=100,
        rule="median",
        rule_options={"x": 1},
        identical=False,
    )
    ((honest, f, kwargs),) = spy.calls
    assert honest.shape == (6, PROBE_DIM) and f == 3
    assert kwargs["rule"] == "median" and kwargs["rule_options"] == {"x": 1}
    assert kwargs["identical"] is False and kwargs["std"] == 2.0
    assert isinstance(kwargs["generator"], torch.Generator)
    first = honest.clone()
    probe_attack("gaussian", {"std": 2.0}, honest=6, f=3, max_dim=100)
    assert torch.equal(spy.calls[1][0], first)  # seeded: the same vectors every time


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, {"evaluations": 8, "restarts": 1}),  # the defaults (400, 8) are capped
        ({"evaluations": 3, "restarts": 0}, {"evaluations": 3, "restarts": 0}),  # below: kept
        ({"evaluations": 1000, "restarts": 50}, {"evaluations": 8, "restarts": 1}),
        ({"evaluations": 0}, {"evaluations": 0}),  # an invalid budget stays invalid
        ({"evaluations": 100.0}, {"evaluations": 100.0}),  # a float is not turned into 8
        ({"restarts": True}, {"restarts": True}),
    ],
)
def test_search_budgets_are_capped(
    spy: _Spy, given: dict[str, Any], expected: dict[str, Any]
) -> None:
    with contextlib.suppress(ValueError, TypeError):  # the refused ones: called all the same
        probe_attack("strategic", given, honest=7, f=2, max_dim=10, rule="krum")
    kwargs = spy.calls[0][2]
    assert {k: kwargs[k] for k in expected} == expected
    assert all(type(kwargs[k]) is type(v) for k, v in expected.items())


def test_a_float_budget_above_the_cap_is_refused_as_in_the_run() -> None:
    """min(100.0, 8) gave the int 8: the probe passed, the run failed at its first step."""
    with pytest.raises(TypeError, match="evaluations must be an int, got float"):
        probe_attack("leeway", {"evaluations": 100.0}, honest=7, f=2, max_dim=10, rule="krum")


def test_an_attack_without_budgets_gets_none(spy: _Spy) -> None:
    probe_attack("alie", {}, honest=7, f=2, max_dim=10)
    assert not {"evaluations", "restarts"} & set(spy.calls[0][2])


def test_the_running_state_observes_the_vectors_and_is_passed(spy: _Spy) -> None:
    probe_attack("mimic", {"warmup": 2}, honest=5, f=1, max_dim=10)
    honest, _, kwargs = spy.calls[0]
    assert "warmup" not in kwargs
    state = kwargs["state"]
    assert isinstance(state, atk.MimicState) and state.step == 1 and state.warmup == 2
    assert state.target is not None and 0 <= state.target < honest.shape[0]


def test_a_state_and_a_worker_are_refused_as_in_the_run() -> None:
    """Without the state the probe passed; the run passes it and failed with a TypeError."""
    with pytest.raises(TypeError, match="pass at most one of worker= and state="):
        probe_attack("mimic", {"warmup": 2, "worker": 0}, honest=5, f=1, max_dim=10)


def test_the_rows_are_capped(spy: _Spy) -> None:
    """A huge count (servers before their cap is checked) does not allocate gigabytes."""
    probe_attack("zero", {}, honest=10**9, f=1, max_dim=10)
    honest = spy.calls[0][0]
    assert honest.shape == (PROBE_VALUES // PROBE_DIM, PROBE_DIM)


# ------------------------------------------------------------------------------ the callers
BASE: dict[str, Any] = {"dataset": {"name": "digits"}, "model": {"name": "logistic"}, "steps": 1}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"warmup": 2, "worker": 0}, "attack.options: mimic: pass at most one of worker="),
        ({"worker": 9}, "attack.options: mimic: worker must be in [0, h=6)"),
    ],
)
def test_the_config_refuses_a_bad_worker_attack_value(options: dict, message: str) -> None:
    config = {**BASE, "n": 7, "f": 1, "attack": {"name": "mimic", "options": options}}
    with pytest.raises(ConfigError) as caught:
        parse_config(config)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_config_refuses_a_float_budget() -> None:
    config = {
        **BASE,
        "n": 7,
        "f": 1,
        "rule": {"name": "krum"},
        "attack": {"name": "leeway", "options": {"evaluations": 100.0}},
    }
    with pytest.raises(ConfigError, match=r"attack\.options: leeway: evaluations must be an int"):
        parse_config(config)


def test_the_servers_refuse_a_bad_server_attack_value() -> None:
    attack = {"name": "mimic", "options": {"warmup": 2, "worker": 0}}
    config = {**BASE, "n": 10, "f": 3, "protocol": {"name": "byzsgd", "server_attack": attack}}
    with pytest.raises(ConfigError, match=r"server_attack\.options: mimic: pass at most one"):
        parse_config(config)


def test_a_huge_server_count_gets_its_own_message() -> None:
    """It allocated servers x 4 floats first (400 million servers: 6.4 GB)."""
    protocol = {"name": "byzsgd", "servers": 400_000_000, "f_servers": 0, "byzantine_servers": 1}
    config = {**BASE, "n": 4, "f": 1, "protocol": {**protocol, "server_attack": {"name": "alie"}}}
    with pytest.raises(ConfigError, match=r"protocol\.servers: at most 1000"):
        parse_config(config)
