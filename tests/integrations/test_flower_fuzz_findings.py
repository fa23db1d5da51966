"""Regressions found by a random search of the Flower integration (needs the flower extra)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import byzlearn.aggregators as agg
from byzlearn.integrations.flower import ByzantineClientApp, LocalGrid, RobustStrategy
from byzlearn.integrations.flower.strategy import fewest_inputs

pytestmark = pytest.mark.timeout(120)


def idle_app() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:  # never called
        raise AssertionError("not used")

    return app


def sent_messages(strategy: RobustStrategy, sent: dict[str, np.ndarray], n: int) -> list[Message]:
    grid = LocalGrid([idle_app() for _ in range(max(n, 2))])
    arrays = ArrayRecord({k: Array(v) for k, v in sent.items()})
    messages = strategy.configure_train(1, arrays, ConfigRecord(), grid)
    return sorted(messages, key=lambda m: m.metadata.dst_node_id)[:n]


def reply(message: Message, arrays: dict[str, np.ndarray], examples: float = 1.0) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": examples}),
        }
    )
    return Message(content, reply_to=message)


def test_a_huge_f_is_refused_at_once_not_after_minutes() -> None:
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"krum cannot run with f=1000000"):
        RobustStrategy("krum", f=10**6)  # was a scan of 100000 n, each checking every f' <= f
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("rule", ["krum", "nnm+krum", "bucketing+median", "median", "mda"])
def test_fewest_inputs_and_shrink_match_the_registry(rule: str) -> None:
    for f in range(6):
        needed = fewest_inputs(rule, f, {})
        assert agg.largest_f(rule, needed, f) == f and agg.largest_f(rule, needed - 1, f) != f
        for n in range(0, 20):
            assert agg.largest_f(rule, n, f) == _largest_f_by_scan(rule, n, f)


def _largest_f_by_scan(rule: str, n: int, f: int) -> int | None:
    """The largest f' <= f the rule runs with, every f' tried from f down."""
    for g in range(f, -1, -1):
        try:
            agg.check(rule, n, g)
        except ValueError:
            continue
        return g
    return None


def test_missing_or_invalid_rule_options_raise_when_built_not_in_a_round() -> None:
    with pytest.raises(TypeError, match="max_norm"):
        RobustStrategy("clipping+average", f=1)  # aggregate_train raised TypeError before
    with pytest.raises(ValueError, match="max_norm"):
        RobustStrategy("clipping+average", f=1, rule_options={"max_norm": -1.0})
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    RobustStrategy("bucketing+median", f=1, rule_options={"generator": g})
    assert torch.equal(g.get_state(), state)  # the construction check does not draw from it


@pytest.mark.parametrize(
    "options",
    [
        {"server_lr": "x"},
        {"server_lr": True},
        {"server_momentum": "x"},
        {"seed": "abc"},
        {"seed": 1.5},
        {"rule_options": [1]},
        {"simulation": "no"},
    ],
)
def test_badly_typed_strategy_options_raise_one_clear_line(options: dict) -> None:
    name = next(iter(options))
    with pytest.raises(ValueError, match=name):
        RobustStrategy("krum", f=1, **options)


@pytest.mark.parametrize(
    "options", [{"index": 0.5, "f": 2}, {"index": True, "f": 2}, {"seed": "x"}]
)
def test_badly_typed_byzantine_client_options_raise_one_clear_line(options: dict) -> None:
    with pytest.raises(ValueError, match=r"index|seed"):
        ByzantineClientApp(idle_app(), attack="alie", **options)


def test_the_new_model_keeps_the_dtype_of_every_tensor() -> None:
    rng = np.random.default_rng(0)
    sent = {
        "h": rng.normal(size=(2, 3)).astype(np.float16),
        "s": rng.normal(size=4).astype(np.float32),
        "d": rng.normal(size=2).astype(np.float64),
    }
    strategy = RobustStrategy("median", f=1)
    messages = sent_messages(strategy, sent, 5)
    arrays = [
        {k: (v + 0.1 * rng.normal(size=v.shape)).astype(v.dtype) for k, v in sent.items()}
        for _ in messages
    ]
    new, _ = strategy.aggregate_train(
        1, [reply(m, a) for m, a in zip(messages, arrays, strict=True)]
    )
    assert new is not None
    rows = [
        np.concatenate([(a[k].astype(np.float64) - sent[k]).ravel() for k in sent]) for a in arrays
    ]
    step = agg.aggregate("median", torch.from_numpy(np.stack(rows)), f=1).vector.numpy()
    start = 0
    for k, v in sent.items():
        got = new[k].numpy()
        assert got.dtype == v.dtype  # was float64 for every tensor of a model with a float64 one
        expected = (v.astype(np.float64) + step[start : start + v.size].reshape(v.shape)).astype(
            v.dtype
        )
        np.testing.assert_array_equal(got, expected)
        start += v.size


def test_a_second_reply_after_a_malformed_one_is_rejected() -> None:
    sent = {"w": np.zeros(3, np.float32)}
    strategy = RobustStrategy("average", f=0)
    messages = sent_messages(strategy, sent, 2)
    malformed = reply(messages[0], {"w": np.zeros(4, np.float32)})
    second = reply(messages[0], {"w": np.full(3, 100.0, np.float32)})
    good = reply(messages[1], {"w": np.ones(3, np.float32)})
    new, metrics = strategy.aggregate_train(1, [malformed, second, good])
    assert metrics["rejected"] == 2 and metrics["aggregated"] == 1
    np.testing.assert_array_equal(new["w"].numpy(), np.ones(3, np.float32))
    assert "second reply" in strategy.reports[-1].rejected[-1].reason


def test_example_counts_near_the_float_maximum_do_not_skip_the_round() -> None:
    sent = {"w": np.zeros(3, np.float32)}
    strategy = RobustStrategy("geometric_median", f=1, weighting="examples")
    messages = sent_messages(strategy, sent, 4)
    counts = [1e308, 1e308, 5.0, 5.0]  # their sum overflowed: every weight became 0
    replies = [
        reply(m, {"w": np.full(3, float(i), np.float32)}, c)
        for i, (m, c) in enumerate(zip(messages, counts, strict=True))
    ]
    new, metrics = strategy.aggregate_train(1, replies)
    assert new is not None and metrics["skipped"] == 0


def test_a_payload_declaring_a_huge_array_is_rejected_without_allocating_it() -> None:
    import io

    import numpy.lib.format as npy

    sent = {"w": np.zeros(3, np.float32)}
    strategy = RobustStrategy("average", f=0)
    messages = sent_messages(strategy, sent, 2)
    header = io.BytesIO()
    npy.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**13,)})
    huge = Array(dtype="float32", shape=(3,), stype="numpy.ndarray", data=header.getvalue())
    bad = Message(RecordDict({"arrays": ArrayRecord({"w": huge})}), reply_to=messages[0])
    good = reply(messages[1], {"w": np.ones(3, np.float32)})
    new, metrics = strategy.aggregate_train(1, [bad, good])  # was a MemoryError: server crash
    assert metrics["rejected"] == 1 and metrics["aggregated"] == 1
    np.testing.assert_array_equal(new["w"].numpy(), np.ones(3, np.float32))


def test_new_weights_that_overflow_skip_the_round_and_keep_the_state() -> None:
    """A finite aggregate times a huge server_lr overflowed to inf weights, which were sent to
    every client; now the round is skipped (model and server momentum unchanged)."""
    sent = {"w": np.zeros(3, np.float32)}
    strategy = RobustStrategy("median", f=0, server_lr=1e30, server_momentum=0.5)
    messages = sent_messages(strategy, sent, 3)
    replies = [reply(m, {"w": np.full(3, 1e10, np.float32)}) for m in messages]
    new, metrics = strategy.aggregate_train(1, replies)
    assert new is None and metrics["skipped"] == 1 and metrics["f"] == -1
    assert "are not finite" in strategy.reports[-1].skipped
    assert strategy.momentum is None and strategy.previous is None
    replies = [reply(m, {"w": np.full(3, 1e-30, np.float32)}) for m in messages]
    new, metrics = strategy.aggregate_train(2, replies)
    assert new is not None and metrics["skipped"] == 0
    assert np.isfinite(new["w"].numpy()).all()
