"""Regression tests for the random search over the synchronous parameter server, its workers
and the local engine's network model: each case used to be accepted silently, misread, slow or
wrong."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

import byzlearn.aggregators as agg
from byzlearn.engines import FlatModel, LocalEngine, NetworkModel
from byzlearn.engines.network import Delay
from byzlearn.experiments.config import ConfigError, parse_config
from byzlearn.models import build_model
from byzlearn.protocols import ComputeWorkers, ParameterServer
from byzlearn.protocols.parameter_server import _fewest_inputs

BASE = {"n": 5, "f": 1, "dataset": {"name": "digits"}, "rule": {"name": "median"}}


@pytest.mark.parametrize(
    "section",
    [{"q": True}, {"q": "3"}, {"deadline": "2"}, {"deadline": True}, {"max_waits": True}],
)
def test_protocol_options_are_not_coerced(section: dict) -> None:
    # q: true used to be read as q = 1, deadline: "2" as 2.0
    with pytest.raises(ConfigError, match="protocol"):
        parse_config({**BASE, "protocol": {"name": "parameter_server", **section}})


@pytest.mark.parametrize(
    "section",
    [
        {"name": "async_sgd", "deadline": "2"},
        {"name": "async_sgd", "alpha": True},
        {"name": "kardam", "history": True},
        {"name": "kardam", "lipschitz": "yes"},
    ],
)
def test_asynchronous_options_are_not_coerced(section: dict) -> None:
    # as the parameter server's: deadline: "2" was read as 2.0, history: true as 1
    with pytest.raises(ConfigError, match="protocol"):
        parse_config({**BASE, "f": 0, "rule": {"name": "average"}, "protocol": section})
    right = {k: v for k, v in section.items() if k == "name"}
    assert parse_config({**BASE, "f": 0, "rule": {"name": "average"}, "protocol": right})


def test_protocol_options_of_the_right_type_still_parse() -> None:
    c = parse_config({**BASE, "protocol": {"q": 4, "deadline": 2, "max_waits": 2}})
    assert (c.protocol.q, c.protocol.deadline, c.protocol.max_waits) == (4, 2.0, 2)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"on_missing": "shrnk"}, "on_missing"),  # used to skip every short round silently
        ({"q": 0}, "q"),  # used to be read as q = n
        ({"q": True}, "q"),
        ({"deadline": -1.0}, "deadline"),  # used to fail at the first round, deep in recv
        ({"deadline": math.nan}, "deadline"),
        ({"deadline": math.inf}, "deadline"),
        ({"max_waits": 0}, "max_waits"),
    ],
)
def test_the_server_refuses_bad_options_when_built(options: dict, field: str) -> None:
    engine = LocalEngine()
    ids = engine.reserve("worker", 3)
    with pytest.raises(ValueError, match=field):
        ParameterServer(
            engine.add_node("server"), torch.zeros(2), ids, rule="average", f=0, **options
        )


@pytest.mark.parametrize("rule", ["median", "krum", "bulyan", "trimmed_mean", "nnm+krum", "mda"])
def test_fewest_inputs_is_the_smallest_n_the_rule_runs_on(rule: str) -> None:
    for f in range(6):
        brute = next(n for n in range(1, 100) if agg.largest_f(rule, n, f) == f)
        assert _fewest_inputs(rule, f, {}) == brute


def test_fewest_inputs_for_a_large_f_is_fast_and_right() -> None:
    # a scan from n = 1 took about 20 s, then claimed that the median cannot run with f = 60000
    start = time.perf_counter()
    assert _fewest_inputs("median", 60_000, {}) == 120_001
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"step_time": -1.0}, ValueError),  # a Delay behaviour then delivered before sending
        ({"step_time": math.nan}, ValueError),
        ({"slowdown": {0: -2.0}}, ValueError),
        ({"lossy_kinds": "gradient"}, TypeError),  # was matched by substring: "grad" lossy
        ({"compute": 1.0}, TypeError),  # used to fail later with an AttributeError
        ({"coordinate_drop": True}, TypeError),
    ],
)
def test_network_model_refuses_bad_values(kwargs: dict, error: type) -> None:
    with pytest.raises(error):
        NetworkModel(**kwargs)


def test_delay_refuses_a_bool_mean_and_network_keeps_lossy_kinds_a_tuple() -> None:
    with pytest.raises(TypeError, match="mean"):
        Delay(mean=True)  # type: ignore[arg-type]
    net = NetworkModel(coordinate_drop=0.5, lossy_kinds=["model"])  # type: ignore[arg-type]
    assert net.lossy_kinds == ("model",)
    assert not net.lose_coordinates(torch.zeros(50), 0, 1, 1, "mod").isnan().any()


def test_local_steps_with_a_tiny_learning_rate_send_the_sum_of_the_gradients() -> None:
    # (start - end) / lr in float32: the displacement was lost under the model's resolution
    # (lr = 1e-9), and 0 / 0 = NaN when lr rounded to 0 (every round then skipped)
    torch.manual_seed(0)
    model = FlatModel(build_model("logistic", (4,), 3))
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    parts = np.array_split(np.arange(40), 2)
    engine = LocalEngine()
    ids = engine.reserve("worker", 2)
    workers = ComputeWorkers(ids, range(2), model, x, y, parts, batch_size=4, local_steps=3)
    theta = model.flatten() + 1.0
    for lr in (1e-9, 1e-300):
        vec, _ = workers.submit(ids, theta, [1, 1], [lr, lr])
        idx = workers.indices_for([0, 1], [1, 1])
        expected = sum(model.batched_grads(theta, x[idx[k]], y[idx[k]])[0] for k in range(3))
        torch.testing.assert_close(vec, expected, rtol=1e-4, atol=1e-6)


def _workers(**kw):
    torch.manual_seed(0)
    model = FlatModel(build_model("logistic", (4,), 3))
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    engine = LocalEngine()
    ids = engine.reserve("worker", 2)
    return ComputeWorkers(ids, range(2), model, x, y, np.array_split(np.arange(40), 2), **kw)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"batch_size": 0}, "batch_size"),  # used to send the gradient of an empty batch
        ({"local_steps": 0}, "local_steps"),  # used to fail deep in numpy at the first round
        ({"local_steps": True}, "local_steps"),
        ({"momentum": -0.5}, "momentum"),  # used to mean no momentum, silently
        ({"momentum": math.nan}, "momentum"),
        ({"momentum": 1.5}, "momentum"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"clip": -1.0}, "clip"),  # used to flip the sign of every gradient
        ({"clip": 0.0}, "clip"),
        ({"clip": math.nan}, "clip"),
    ],
)
def test_workers_refuse_bad_options_when_built(options: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        _workers(**options)


@pytest.mark.parametrize(
    "options", [{"momentum": -0.5}, {"momentum": 1.0}, {"momentum": math.nan}, {"f": -1}]
)
def test_the_server_refuses_a_bad_momentum_or_f(options: dict) -> None:
    engine = LocalEngine()
    ids = engine.reserve("worker", 2)
    with pytest.raises(ValueError, match=next(iter(options))):
        ParameterServer(
            engine.add_node("server"), torch.zeros(2), ids, **{"rule": "average", "f": 0, **options}
        )


def test_worker_momentum_of_a_float64_model_is_in_float64() -> None:
    """The momentum buffer was float32 whatever the model: with a float64 model, submit failed
    deep inside ("Index put requires the source and destination dtypes match")."""
    torch.manual_seed(0)
    model = FlatModel(build_model("logistic", (4,), 3).double())
    x, y = torch.randn(40, 4, dtype=torch.float64), torch.randint(0, 3, (40,))
    engine = LocalEngine()
    ids = engine.reserve("worker", 2)
    workers = ComputeWorkers(
        ids, range(2), model, x, y, np.array_split(np.arange(40), 2), momentum=0.9
    )
    first, _ = workers.submit(ids, model.flatten(), [1, 1])
    second, _ = workers.submit(ids, model.flatten(), [2, 2])
    assert first.dtype == second.dtype == torch.float64
    assert workers.m is not None and workers.m.dtype == torch.float64


@pytest.mark.parametrize("rule, f, q", [("krum", 1, 3), ("median", 2, 4), ("bulyan", 1, 6)])
def test_the_server_refuses_a_q_below_what_the_rule_needs(rule: str, f: int, q: int) -> None:
    """The config refuses such a q; built directly, the server gathered q replies, took them
    for enough (``min(needed, q)``) and skipped every round with the rule's own error, under
    ``on_missing="shrink"`` too (found by mutation testing)."""
    engine = LocalEngine()
    ids = engine.reserve("worker", 9)
    with pytest.raises(ValueError, match=rf"q={q}: {rule} with f={f} needs at least \d+ "):
        ParameterServer(engine.add_node("server"), torch.zeros(2), ids, rule=rule, f=f, q=q)
    needed = _fewest_inputs(rule, f, {})
    ParameterServer(engine.add_node("server"), torch.zeros(2), ids, rule=rule, f=f, q=needed)
