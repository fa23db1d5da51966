"""RobustStrategy and ByzantineClientApp: behaviours no other test could see change
(mutation-testing findings)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import byzlearn.aggregators as agg
from byzlearn.integrations.flower import ByzantineClientApp, LocalGrid, RobustStrategy
from byzlearn.integrations.flower.byzantine import round_of
from byzlearn.integrations.flower.strategy import BYZANTINE_KEY
from tests.integrations.test_flower import (
    assert_bitwise,
    clients,
    flat_update,
    idle_app,
    model,
    record,
    reply,
    sent_messages,
)


def test_byzantine_kept_counts_only_the_kept_byzantine_replies() -> None:
    """Krum keeps one honest reply: 2 Byzantine replies aggregated, none kept."""
    n, f = 9, 2
    strategy = RobustStrategy("krum", f=f, simulation=True)
    sent = model(2)
    messages = sent_messages(strategy, sent, n)
    arrays = clients(sent, n, 3, byzantine=f)  # the first f are far off: never selected
    mark = {BYZANTINE_KEY: ConfigRecord({"byzantine": True})}
    replies = [
        reply(m, a, extra=mark if i < f else None)
        for i, (m, a) in enumerate(zip(messages, arrays, strict=True))
    ]
    _, metrics = strategy.aggregate_train(1, replies)
    X = torch.from_numpy(np.stack([flat_update(a, sent) for a in arrays]))
    kept = agg.aggregate("krum", X, f=f).kept
    assert kept is not None and int(kept[0]) >= f
    assert metrics["byzantine"] == f and metrics["byzantine-kept"] == 0
    assert metrics["kept"] == 1
    report = strategy.reports[-1]
    assert report.kept == [report.aggregated[int(kept[0])]]
    assert report.byzantine_kept == 0


@pytest.mark.parametrize("beta", [1.0, -0.1, 1.5])
def test_server_momentum_outside_0_1_is_refused(beta: float) -> None:
    with pytest.raises(ValueError, match=r"server_momentum must be in \[0, 1\)"):
        RobustStrategy("median", f=1, server_momentum=beta)
    RobustStrategy("median", f=1, server_momentum=0.999)  # just below 1 is fine


def test_server_momentum_accumulates_over_three_rounds() -> None:
    """m_t = beta m_{t-1} + a_t: the third step holds beta^2 a_1 (two rounds cannot tell
    m_2 = beta a_1 + a_2 from m_2 = a_2)."""
    n, f, beta, eta = 7, 1, 0.5, 0.25
    strategy = RobustStrategy("median", f=f, server_momentum=beta, server_lr=eta)
    sent = model(4)
    momentum = None
    for t in (1, 2, 3):
        messages = sent_messages(strategy, sent, n, t)
        arrays = clients(sent, n, 40 + t)
        new, metrics = strategy.aggregate_train(
            t, [reply(m, a) for m, a in zip(messages, arrays, strict=True)]
        )
        assert new is not None and metrics["skipped"] == 0
        X = torch.from_numpy(np.stack([flat_update(a, sent) for a in arrays])).double()
        a_t = agg.aggregate("median", X, f=f).vector.numpy()
        momentum = a_t if momentum is None else beta * momentum + a_t
        got = np.concatenate([(new[k].numpy() - sent[k]).reshape(-1) for k in ("w", "b", "v")])
        np.testing.assert_allclose(got, eta * momentum, rtol=1e-4, atol=1e-6)
        sent = {k: new[k].numpy() for k in new}


@pytest.mark.parametrize("bad", [math.inf, math.nan, -5.0, 0.0])
def test_an_infinite_or_non_positive_example_count_is_rejected(bad: float) -> None:
    sent = model(4)
    strategy = RobustStrategy("geometric_median", f=1, weighting="examples")
    messages = sent_messages(strategy, sent, 5)
    arrays = clients(sent, 5, 3)
    counts = [10.0, 30.0, bad, 20.0, 40.0]
    new, metrics = strategy.aggregate_train(
        1, [reply(m, a, c) for m, a, c in zip(messages, arrays, counts, strict=True)]
    )
    assert metrics["rejected"] == 1 and metrics["aggregated"] == 4 and metrics["skipped"] == 0
    assert "missing or not positive" in strategy.reports[-1].rejected[0].reason
    X = torch.from_numpy(np.stack([flat_update(a, sent) for i, a in enumerate(arrays) if i != 2]))
    w = torch.tensor([10.0, 30.0, 20.0, 40.0], dtype=torch.float64)
    assert_bitwise(new, sent, agg.aggregate("geometric_median", X, f=1, weights=w / w.sum()).vector)


def test_client_metrics_are_averaged_over_the_kept_replies_only() -> None:
    """Krum keeps one reply: the round's train_loss is that reply's, not the mean of all."""
    n, f = 9, 2
    strategy = RobustStrategy("krum", f=f)
    sent = model(6)
    messages = sent_messages(strategy, sent, n)
    arrays = clients(sent, n, 8, byzantine=f)
    replies = []
    for i, (m, a) in enumerate(zip(messages, arrays, strict=True)):
        r = reply(m, a)
        r.content["metrics"]["train_loss"] = float(i)  # 0 and 1: the Byzantine replies
        replies.append(r)
    _, metrics = strategy.aggregate_train(1, replies)
    X = torch.from_numpy(np.stack([flat_update(a, sent) for a in arrays]))
    kept = agg.aggregate("krum", X, f=f).kept
    assert kept is not None and metrics["kept"] == 1
    assert metrics["train_loss"] == float(kept[0])


def test_a_non_finite_client_metric_is_left_out_of_the_mean() -> None:
    n = 5
    strategy = RobustStrategy("median", f=1)
    sent = model(7)
    messages = sent_messages(strategy, sent, n)
    losses = [1.0, math.nan, 2.0, math.inf, 6.0]
    replies = []
    for m, a, loss in zip(messages, clients(sent, n, 9), losses, strict=True):
        r = reply(m, a)
        r.content["metrics"]["train_loss"] = loss
        replies.append(r)
    _, metrics = strategy.aggregate_train(1, replies)
    assert metrics["kept"] == n and metrics["train_loss"] == 3.0


@pytest.mark.parametrize(("nodes", "warned"), [(5, True), (7, False)])
def test_too_few_available_nodes_are_warned_of_when_a_round_starts(
    caplog: pytest.LogCaptureFixture, nodes: int, warned: bool
) -> None:
    strategy = RobustStrategy("krum", f=2)  # needs 7
    grid = LocalGrid([idle_app() for _ in range(nodes)])
    with caplog.at_level(logging.WARNING):
        list(strategy.configure_train(1, record(model(0)), ConfigRecord(), grid))
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("krum needs 7 replies with f=2" in m for m in said) == warned


@pytest.mark.parametrize(("index", "f"), [(2, 2), (-1, 2), (0, 0), (5, 3)])
def test_a_byzantine_index_outside_the_coalition_is_refused(index: int, f: int) -> None:
    with pytest.raises(ValueError, match=r"need ints f >= 1 and 0 <= index < f"):
        ByzantineClientApp(idle_app(), attack="gaussian", index=index, f=f)
    ByzantineClientApp(idle_app(), attack="gaussian", index=1, f=2)  # the last member


def _echo_app() -> ClientApp:
    """Replies the arrays it was sent, to train and to evaluate messages."""
    app = ClientApp()

    def echo(message: Message, context: Context) -> Message:
        content = RecordDict({"arrays": message.content["arrays"]})
        content["metrics"] = MetricRecord({"num-examples": 5})
        return Message(content, reply_to=message)

    app.train()(echo)
    app.evaluate()(echo)
    return app


@pytest.mark.parametrize(("kind", "altered"), [("train", True), ("evaluate", False)])
def test_only_train_replies_are_attacked(kind: str, altered: bool) -> None:
    sent = model(1)
    grid = LocalGrid([ByzantineClientApp(_echo_app(), attack="gaussian", f=1, mark=False)])
    content = RecordDict({"arrays": record(sent), "config": ConfigRecord({"server-round": 1})})
    (node,) = grid.get_node_ids()
    (answer,) = grid.send_and_receive([grid.create_message(content, kind, node, "1")])
    got = {k: v.numpy() for k, v in answer.content["arrays"].items()}
    same = all(np.array_equal(got[k], sent[k]) for k in sent)
    assert same != altered


def _message(config: dict, group: str) -> Message:
    content = RecordDict({"config": ConfigRecord(config)})
    return Message(content, 1, "train", group_id=group)


@pytest.mark.parametrize(
    ("config", "group", "expected"),
    [
        ({"server-round": 3}, "7", 3),
        ({"server-round": True}, "7", 7),  # a bool is not a round number
        ({"other": 1}, "12", 12),  # no round in the config: the group id
        ({}, "not-a-number", 0),
    ],
)
def test_round_of_reads_the_config_then_the_group_id(
    config: dict, group: str, expected: int
) -> None:
    assert round_of(_message(config, group)) == expected


def test_weighting_by_examples_refuses_weights_in_the_rule_options() -> None:
    with pytest.raises(ValueError, match=r"weighting='examples' sets the weights"):
        RobustStrategy(
            "geometric_median",
            f=1,
            weighting="examples",
            rule_options={"weights": torch.ones(5) / 5},
        )


@pytest.mark.parametrize(
    ("fraction", "min_train", "warned"), [(0.5, 2, True), (0.5, 8, False), (1.0, 2, False)]
)
def test_the_shortfall_warning_counts_the_nodes_flower_samples(
    caplog: pytest.LogCaptureFixture, fraction: float, min_train: int, warned: bool
) -> None:
    """10 nodes, fraction 0.5: Flower samples max(5, min_train_nodes) of them. With
    min_train_nodes = 8 it asks 8 nodes, enough for Krum with f = 2 (7): no warning (it
    warned from the 5 of the fraction alone)."""
    strategy = RobustStrategy(
        "krum", f=2, fraction_train=fraction, min_train_nodes=min_train, min_available_nodes=2
    )
    grid = LocalGrid([idle_app() for _ in range(10)])
    with caplog.at_level(logging.WARNING):
        sent = list(strategy.configure_train(1, record(model(0)), ConfigRecord(), grid))
    assert len(sent) == max(int(10 * fraction), min_train)
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("krum needs 7 replies with f=2" in m for m in said) == warned
