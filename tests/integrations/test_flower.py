"""byzlearn inside Flower: RobustStrategy, ByzantineClientApp, LocalGrid (needs the flower extra).

The strategy's aggregate is checked bit for bit against byzlearn's rule on updates built here
independently (numpy, key by key); malformed replies are built as Flower messages by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("flwr")

from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg

import byzlearn.aggregators as agg
import byzlearn.attacks as atk
from byzlearn import keyed
from byzlearn.attacks.behaviours import Crash, Delay, Omission
from byzlearn.integrations.flower import (
    ByzantineClientApp,
    LocalGrid,
    RobustStrategy,
    byzantine_clients,
)

pytestmark = pytest.mark.timeout(120)  # a strategy waiting for nodes must fail, not hang

SHAPES = {"w": (3, 4), "b": (4,), "v": (2, 1, 3)}


def model(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    arrays["steps"] = np.array([7], dtype=np.int64)  # a counter: not aggregated, kept as sent
    return arrays


def record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def idle_app() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:  # never called by these tests
        raise AssertionError("not used")

    return app


def sent_messages(strategy: RobustStrategy, sent: dict[str, np.ndarray], n: int, t: int = 1):
    """The strategy's messages to n nodes (Flower's real configure_train path; Flower waits
    for min_available_nodes nodes, so the grid has at least that many and n are used)."""
    grid = LocalGrid([idle_app() for _ in range(max(n, strategy.min_available_nodes))])
    messages = strategy.configure_train(t, record(sent), ConfigRecord(), grid)
    return sorted(messages, key=lambda m: m.metadata.dst_node_id)[:n]  # the strategy's row order


def reply(
    message: Message,
    arrays: dict[str, np.ndarray] | ArrayRecord | None,
    examples: float | None = 10.0,
    extra: dict | None = None,
) -> Message:
    content = RecordDict(extra or {})
    if arrays is not None:
        content["arrays"] = arrays if isinstance(arrays, ArrayRecord) else record(arrays)
    metrics = MetricRecord({"train_loss": 0.5})
    if examples is not None:
        metrics["num-examples"] = examples
    content["metrics"] = metrics
    return Message(content, reply_to=message)


def flat_update(client: dict[str, np.ndarray], sent: dict[str, np.ndarray]) -> np.ndarray:
    """The reference update: per key, client - sent in float32, concatenated in key order."""
    return np.concatenate([(client[k] - sent[k]).reshape(-1) for k in SHAPES])


def unflatten(vector: np.ndarray) -> dict[str, np.ndarray]:
    out, start = {}, 0
    for k, s in SHAPES.items():
        size = math.prod(s)
        out[k] = vector[start : start + size].reshape(s)
        start += size
    return out


def clients(sent: dict[str, np.ndarray], n: int, seed: int, byzantine: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        scale = 50.0 if i < byzantine else 0.1
        out.append(
            {
                **{
                    k: (v + scale * rng.normal(size=v.shape)).astype(np.float32)
                    for k, v in sent.items()
                    if k in SHAPES
                },
                "steps": np.array([8 + i], dtype=np.int64),
            }
        )
    return out


def assert_bitwise(new: ArrayRecord, sent: dict[str, np.ndarray], expected: torch.Tensor) -> None:
    step = unflatten(expected.numpy())
    assert list(new.keys()) == list(sent)  # every key, in the order sent
    for k in SHAPES:
        np.testing.assert_array_equal(new[k].numpy(), sent[k] + step[k], strict=True)
    np.testing.assert_array_equal(new["steps"].numpy(), sent["steps"])  # kept as sent


# ------------------------------------------------------------------------- bit for bit
@pytest.mark.parametrize(
    "rule",
    [
        "krum",
        "multi_krum",
        "nnm+krum",
        "bucketing+median",
        "trimmed_mean",
        "geometric_median",
        "centered_clipping",
        "dnc",
        "average",
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_aggregate_is_the_rule_bit_for_bit(rule: str, seed: int) -> None:
    n, f = 11, 2
    sent = model(seed)
    strategy = RobustStrategy(rule, f=f, seed=seed)
    messages = sent_messages(strategy, sent, n)
    replies_arrays = clients(sent, n, seed + 10, byzantine=f)
    replies = [reply(m, a) for m, a in zip(messages, replies_arrays, strict=True)]
    nodes = [m.metadata.dst_node_id for m in messages]

    new, metrics = strategy.aggregate_train(1, replies)

    X = torch.from_numpy(np.stack([flat_update(a, sent) for a in replies_arrays]))
    options = {}
    if agg.accepts(rule, "generator"):
        options["generator"] = keyed.generator((seed, "rule", 1))  # documented keying
    expected = agg.aggregate(rule, X, f=f, **options)
    assert new is not None and metrics is not None
    assert_bitwise(new, sent, expected.vector)
    report = strategy.reports[-1]
    assert torch.equal(report.aggregate, expected.vector)
    kept = list(range(n)) if expected.kept is None else expected.kept.tolist()
    assert report.kept == [nodes[i] for i in kept]
    assert metrics["kept"] == len(kept) and metrics["f"] == f and metrics["skipped"] == 0
    assert metrics["aggregated"] == n and metrics["rejected"] == 0
    assert metrics["train_loss"] == pytest.approx(0.5)
    # the order replies arrive in (Flower samples nodes in random order) changes nothing
    again = RobustStrategy(rule, f=f, seed=seed)
    sent_messages(again, sent, n)
    shuffled, _ = again.aggregate_train(1, replies[::-1])
    assert_bitwise(shuffled, sent, expected.vector)


@given(
    n=st.integers(1, 12),
    f=st.integers(0, 3),
    rule=st.sampled_from(["krum", "nnm+krum", "median", "bucketing+median", "geometric_median"]),
    seed=st.integers(0, 2**16),
)
def test_any_round_is_the_rule_on_its_replies_or_a_documented_skip(
    n: int, f: int, rule: str, seed: int
) -> None:
    sent = model(seed)
    strategy = RobustStrategy(rule, f=f, seed=seed)
    messages = sent_messages(strategy, sent, n)
    arrays = clients(sent, n, seed + 1, byzantine=min(f, n))
    new, metrics = strategy.aggregate_train(
        1, [reply(m, a) for m, a in zip(messages, arrays, strict=True)]
    )
    used = agg.largest_f(rule, n, f)  # the shrink policy
    if used is None:
        assert new is None and metrics["skipped"] == 1
        return
    X = torch.from_numpy(np.stack([flat_update(a, sent) for a in arrays]))
    options = {"generator": keyed.generator((seed, "rule", 1))} if "bucketing" in rule else {}
    assert metrics["f"] == used
    assert_bitwise(new, sent, agg.aggregate(rule, X, f=used, **options).vector)


def test_momentum_and_centred_clipping_state_over_two_rounds() -> None:
    n, f, beta, eta = 9, 2, 0.9, 0.5
    strategy = RobustStrategy(
        "centered_clipping", f=f, server_momentum=beta, server_lr=eta, rule_options={"radius": 1.0}
    )
    sent = model(3)
    outputs = []
    for t in (1, 2):
        messages = sent_messages(strategy, sent, n, t)
        arrays = clients(sent, n, 20 + t, byzantine=f)
        new, _ = strategy.aggregate_train(
            t, [reply(m, a) for m, a in zip(messages, arrays, strict=True)]
        )
        X = torch.from_numpy(np.stack([flat_update(a, sent) for a in arrays]))
        options = {"radius": 1.0} if t == 1 else {"radius": 1.0, "center": outputs[0]}
        outputs.append(agg.aggregate("centered_clipping", X, f=f, **options).vector)
        step = outputs[0] if t == 1 else beta * outputs[0] + outputs[1]
        assert_bitwise(new, sent, eta * step)
        sent = {k: new[k].numpy() for k in new}


# ------------------------------------------------------------------------- bad replies
def test_malformed_replies_are_rejected_and_nan_follows_the_rule_policy() -> None:
    n, f, rule = 12, 2, "krum"
    sent = model(5)
    strategy = RobustStrategy(rule, f=f)
    messages = sent_messages(strategy, sent, n)
    good = clients(sent, n, 7)
    nan_row = {**good[1], "w": np.full((3, 4), np.nan, dtype=np.float32)}  # 12 of 31 missing
    inf_few = {**good[2], "b": np.array([np.inf, 0, 0, 0], dtype=np.float32) + good[2]["b"]}
    bad = {
        3: {**good[3], "w": np.zeros((4, 3), dtype=np.float32)},  # wrong shape
        4: {k: v for k, v in good[4].items() if k != "b"},  # missing tensor
        5: {**good[5], "extra": np.zeros(2, dtype=np.float32)},  # extra tensor
        6: {**good[6], "w": np.array([["a"] * 4] * 3)},  # not numbers
    }
    replies = [
        reply(messages[0], good[0]),
        reply(messages[1], nan_row),
        reply(messages[2], inf_few),
    ]
    replies += [reply(messages[i], a) for i, a in bad.items()]
    corrupt = record(good[7])
    corrupt["w"] = Array(dtype="float32", shape=(3, 4), stype="numpy.ndarray", data=b"junk")
    replies.append(reply(messages[7], corrupt))  # bytes that do not decode
    replies.append(reply(messages[8], None))  # no ArrayRecord
    replies.append(Message(Error(2, "client raised"), reply_to=messages[9]))  # error reply
    replies += [reply(messages[i], good[i]) for i in (10, 11)]
    replies.append(reply(messages[0], good[11]))  # a second reply from node 0

    new, metrics = strategy.aggregate_train(1, replies)

    assert metrics["rejected"] == 7 and metrics["failed"] == 1 and metrics["received"] == 12
    usable = [good[0], nan_row, inf_few, good[10], good[11]]
    X = torch.from_numpy(np.stack([flat_update(a, sent) for a in usable]))
    # 5 rows < 2f + 3 = 7: shrink f to what krum allows on 5 rows (1), then krum's NaN policy
    assert metrics["f"] == agg.largest_f(rule, 5, f) == 1
    expected = agg.aggregate(rule, X, f=1)
    assert_bitwise(new, sent, expected.vector)
    assert np.isfinite(new["w"].numpy()).all()
    reasons = " | ".join(r.reason for r in strategy.reports[-1].rejected)
    for words in (
        "shape (4, 3)",
        "missing tensor 'b'",
        "unexpected tensor 'extra'",
        "not a number",
        "does not decode",
        "no ArrayRecord",
        "second reply",
    ):
        assert words in reasons


@pytest.mark.parametrize("policy", ["shrink", "skip"])
def test_too_few_replies_follow_the_shortfall_policy(policy: str) -> None:
    sent = model(0)
    strategy = RobustStrategy("krum", f=2, on_shortfall=policy)  # needs 7
    messages = sent_messages(strategy, sent, 5)
    arrays = clients(sent, 5, 1)
    new, metrics = strategy.aggregate_train(
        1, [reply(m, a) for m, a in zip(messages, arrays, strict=True)]
    )
    if policy == "skip":
        assert new is None and metrics["skipped"] == 1 and metrics["f"] == -1
        assert "needs 7" in strategy.reports[-1].skipped
    else:
        X = torch.from_numpy(np.stack([flat_update(a, sent) for a in arrays]))
        assert metrics["f"] == 1 and metrics["skipped"] == 0
        assert_bitwise(new, sent, agg.aggregate("krum", X, f=1).vector)


def test_rounds_nothing_can_be_aggregated_from_are_skipped() -> None:
    sent = model(0)
    strategy = RobustStrategy("median", f=1)
    messages = sent_messages(strategy, sent, 4)
    assert strategy.aggregate_train(1, [])[0] is None
    errors = [Message(Error(8, "crashed"), reply_to=m) for m in messages]
    new, metrics = strategy.aggregate_train(1, errors)
    assert new is None and metrics["failed"] == 4 and metrics["skipped"] == 1
    # every coordinate of w NaN in all replies: median cannot aggregate it -> skipped, no crash
    arrays = [{**a, "w": np.full((3, 4), np.nan, np.float32)} for a in clients(sent, 4, 2)]
    new, metrics = strategy.aggregate_train(
        1, [reply(m, a) for m, a in zip(messages, arrays, strict=True)]
    )
    assert new is None and metrics["skipped"] == 1
    assert "could not aggregate" in strategy.reports[-1].skipped


def test_weighting_by_examples_goes_to_the_rule_weights() -> None:
    sent = model(4)
    strategy = RobustStrategy("geometric_median", f=1, weighting="examples")
    messages = sent_messages(strategy, sent, 5)
    arrays = clients(sent, 5, 3)
    counts = [10.0, 30.0, 20.0, None, 40.0]  # node 3 sends no count: rejected
    new, metrics = strategy.aggregate_train(
        1, [reply(m, a, c) for m, a, c in zip(messages, arrays, counts, strict=True)]
    )
    assert metrics["rejected"] == 1
    X = torch.from_numpy(np.stack([flat_update(a, sent) for i, a in enumerate(arrays) if i != 3]))
    w = torch.tensor([10.0, 30.0, 20.0, 40.0], dtype=torch.float64)
    assert_bitwise(new, sent, agg.aggregate("geometric_median", X, f=1, weights=w / w.sum()).vector)
    # uniform (the default) ignores the counts, even absurd ones
    uniform = RobustStrategy("geometric_median", f=1)
    messages = sent_messages(uniform, sent, 5)
    new, _ = uniform.aggregate_train(
        1, [reply(m, a, 1e12) for m, a in zip(messages, arrays, strict=True)]
    )
    X = torch.from_numpy(np.stack([flat_update(a, sent) for a in arrays]))
    assert_bitwise(new, sent, agg.aggregate("geometric_median", X, f=1).vector)


def test_bad_configurations_raise_one_clear_error() -> None:
    with pytest.raises(KeyError, match=r"unknown aggregator 'nope'"):
        RobustStrategy("nope", f=1)
    with pytest.raises(TypeError, match="bogus"):
        RobustStrategy("krum", f=1, rule_options={"bogus": 1})
    with pytest.raises(ValueError, match="f must be"):
        RobustStrategy("krum", f=-1)
    with pytest.raises(ValueError, match="weights"):
        RobustStrategy("krum", f=1, weighting="examples")
    with pytest.raises(ValueError, match="on_shortfall"):
        RobustStrategy("krum", f=1, on_shortfall="wait")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rule-aware"):
        ByzantineClientApp(idle_app(), attack="leeway")
    with pytest.raises(ValueError, match="Delay"):
        ByzantineClientApp(idle_app(), behaviour=Delay(1))
    with pytest.raises(RuntimeError, match="configure_train"):
        RobustStrategy("krum", f=1).aggregate_train(1, [])


# ------------------------------------------------------------------------- Byzantine clients
def shift_app(step: float) -> ClientApp:
    """Honest node p replies the model moved by (p + 1) * step on every coordinate."""
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        p = int(context.node_config["partition-id"])
        arrays = {k: v.numpy() for k, v in message.content["arrays"].items()}
        moved = {
            k: (v + (p + 1) * step).astype(v.dtype) if k in SHAPES else v for k, v in arrays.items()
        }
        content = RecordDict(
            {
                "arrays": record(moved),
                "metrics": MetricRecord({"num-examples": 5, "train_loss": 1.0}),
            }
        )
        return Message(content, reply_to=message)

    return app


@pytest.mark.parametrize("attack", ["alie", "gaussian", "min_max", "bitflip"])
def test_byzantine_clients_send_the_attack_on_the_rounds_honest_updates(attack: str) -> None:
    h, f = 6, 3
    honest_app = shift_app(0.01)
    apps = [honest_app] * h + byzantine_clients([honest_app] * f, attack, seed=4)
    grid = LocalGrid(apps)
    strategy = RobustStrategy("median", f=f, simulation=True)
    sent = model(1)
    messages = list(strategy.configure_train(3, record(sent), ConfigRecord(), grid))
    replies = {r.metadata.src_node_id: r for r in grid.send_and_receive(messages)}
    nodes = list(grid.get_node_ids())
    updates = {
        node: flat_update({k: v.numpy() for k, v in replies[node].content["arrays"].items()}, sent)
        for node in nodes
    }
    honest = torch.from_numpy(np.stack([updates[node] for node in nodes[:h]]))
    options = {}
    if attack == "bitflip":  # each Byzantine node negates its own honest update
        options["own"] = torch.from_numpy(
            np.stack(
                [np.full(honest.shape[1], (p + 1) * 0.01, np.float32) for p in range(h, h + f)]
            )
        )
    expected = atk.get(attack)(honest, f, generator=keyed.generator((4, "attack", 3)), **options)
    for i, node in enumerate(nodes[h:]):
        got = torch.from_numpy(updates[node])  # (sent + b_i) - sent in float32: rounding only
        assert torch.allclose(got, expected[i], rtol=1e-5, atol=1e-4), (attack, i)
    if attack == "gaussian":  # distinct by default: f different rows
        assert not torch.allclose(
            torch.from_numpy(updates[nodes[h]]), torch.from_numpy(updates[nodes[h + 1]])
        )
    _, metrics = strategy.aggregate_train(3, list(replies.values()))
    assert metrics["byzantine"] == f  # simulation report from the Byzantine mark


@pytest.mark.parametrize("attack", atk.names())
def test_every_attack_runs_as_a_flower_client(attack: str) -> None:
    app = shift_app(0.01)
    grid = LocalGrid([app] * 7 + byzantine_clients([app] * 2, attack, rule="median"))
    strategy = RobustStrategy("median", f=2, simulation=True)
    messages = list(strategy.configure_train(1, record(model(0)), ConfigRecord(), grid))
    new, metrics = strategy.aggregate_train(1, grid.send_and_receive(messages))
    assert metrics["failed"] == 0 and metrics["rejected"] == 0 and metrics["byzantine"] == 2
    assert new is not None and np.isfinite(new["w"].numpy()).all()


def test_behaviours_crash_and_omission_give_error_replies() -> None:
    app = shift_app(0.01)
    crash = ByzantineClientApp(app, behaviour=Crash(2))
    omit = ByzantineClientApp(app, behaviour=Omission(1.0))
    grid = LocalGrid([app, app, app, crash, omit])
    strategy = RobustStrategy("median", f=1)
    sent = model(0)
    for t, expected_failed in ((1, 1), (2, 2)):
        messages = list(strategy.configure_train(t, record(sent), ConfigRecord(), grid))
        _, metrics = strategy.aggregate_train(t, grid.send_and_receive(messages))
        assert metrics["failed"] == expected_failed and metrics["skipped"] == 0


def test_a_raising_client_app_is_an_error_reply() -> None:
    strategy = RobustStrategy("median", f=1)
    grid = LocalGrid([shift_app(0.01)] * 3 + [idle_app()])  # idle_app raises in train
    messages = list(strategy.configure_train(1, record(model(0)), ConfigRecord(), grid))
    _, metrics = strategy.aggregate_train(1, grid.send_and_receive(messages))
    assert metrics["failed"] == 1 and metrics["aggregated"] == 3


# ------------------------------------------------------------------------- end to end
def test_simulation_on_digits_robust_strategy_learns_where_fedavg_fails() -> None:
    from byzlearn.data import iid, load_dataset
    from byzlearn.integrations.flower.clients import torch_client_app
    from byzlearn.models import build_model

    data = load_dataset("digits")
    n, f, rounds = 10, 3, 12
    parts = iid(data.y_train.numpy(), n, seed=0)

    def model_fn() -> torch.nn.Module:
        return build_model("logistic", data.input_shape, data.num_classes)

    app = torch_client_app(model_fn, data.x_train, data.y_train, parts, local_steps=2, lr=0.5)

    def accuracy(t: int, arrays: ArrayRecord) -> MetricRecord:
        m = model_fn()
        m.load_state_dict(arrays.to_torch_state_dict())
        with torch.no_grad():
            acc = (m(data.x_test).argmax(1) == data.y_test).float().mean()
        return MetricRecord({"accuracy": float(acc)})

    final = {}
    for name in ("fedavg", "nnm+krum"):
        torch.manual_seed(0)
        initial = ArrayRecord(model_fn().state_dict())
        byzantine = byzantine_clients([app] * f, "sign_flip", attack_options={"scale": 10.0})
        grid = LocalGrid([app] * (n - f) + byzantine)
        strategy = (
            FedAvg(fraction_evaluate=0.0)
            if name == "fedavg"
            else RobustStrategy(name, f=f, fraction_evaluate=0.0, simulation=True)
        )
        result = strategy.start(
            grid=grid, initial_arrays=initial, num_rounds=rounds, evaluate_fn=accuracy
        )
        final[name] = result.evaluate_metrics_serverapp[rounds]["accuracy"]
        if name != "fedavg":
            train = result.train_metrics_clientapp
            assert all(train[t]["byzantine"] == f for t in train)
            assert all(train[t]["byzantine-kept"] == 0 for t in train)
    assert final["nnm+krum"] > 0.85, final
    assert final["fedavg"] < 0.3, final


def test_example_flower_app_runs_its_serverapp_on_a_local_grid(monkeypatch) -> None:
    """examples/flower/app: the ServerApp and ClientApp that `flwr run` deploys, two rounds."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "examples" / "flower" / "app"
    monkeypatch.syspath_prepend(str(root))
    from byzflower.client_app import app as client_app
    from byzflower.server_app import app as server_app

    config = {"num-server-rounds": 2, "rule": "nnm+krum", "f": 1, "local-steps": 1}
    grid = LocalGrid([client_app] * 4 + byzantine_clients([client_app], "alie"), run_config=config)
    context = Context(run_id=0, node_id=1, node_config={}, state=RecordDict(), run_config=config)
    server_app(grid, context)  # runs main(grid, context): RobustStrategy.start on the grid
