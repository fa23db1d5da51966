"""The synchronous parameter server and its worker roles, on the local engine."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

import byzlearn.aggregators as agg
import byzlearn.attacks as atk
from byzlearn.engines import FlatModel, LocalEngine, Message, NetworkModel
from byzlearn.experiments.observers import TruthObserver
from byzlearn.models import build_model
from byzlearn.protocols import ByzantineWorkers, ComputeWorkers, Events, ParameterServer


class Fixed:
    """Workers replying with fixed vectors (one row per member)."""

    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows
        self.row: dict[int, int] = {}

    def handle(self, inbox: Sequence[Message], observed: Sequence[Message] = ()) -> list[Message]:
        return [
            m.reply(self.rows[self.row[int(m.dest)]].clone(), kind="gradient", loss=1.0)
            for m in inbox
        ]


def _group(engine: LocalEngine, rows: torch.Tensor, **kw) -> list[int]:
    handler = Fixed(rows)
    ids = engine.add_group("worker", len(rows), handler, **kw)
    handler.row = {i: r for r, i in enumerate(ids)}
    return ids


def _server(engine: LocalEngine, workers: list[int], d: int, **kw) -> ParameterServer:
    return ParameterServer(engine.add_node("server"), torch.zeros(d), workers, **kw)


def test_server_update_kept_inputs_and_observed_metrics() -> None:
    engine = LocalEngine()
    honest = torch.ones(6, 3) + 0.01 * torch.arange(6.0)[:, None]
    ids = _group(engine, honest) + _group(engine, torch.full((1, 3), -100.0))
    events = Events()
    truth = TruthObserver(byzantine=[ids[6]], workers=ids)
    events.subscribe(truth)
    server = _server(engine, ids, 3, rule="krum", f=1, lr=lambda t: 0.5, events=events)
    rec = server.step()
    truth.collect(rec)
    assert rec["received"] == 7 and len(rec["kept"]) == 1 and rec["kept"][0] in ids[:6]
    assert rec["kept_byzantine"] == 0 and rec["train_loss"] == pytest.approx(1.0)
    picked = honest[ids.index(rec["kept"][0])]
    torch.testing.assert_close(server.theta, -0.5 * picked)
    assert rec["dist_honest_mean"] == pytest.approx(float((picked - honest.mean(0)).norm()))
    # sqrt(E ||h - mean||^2) / ||mean|| over the honest rows, by loops in float64
    rows = honest.double().tolist()
    mean = [sum(r[j] for r in rows) / len(rows) for j in range(3)]
    spread = (sum(sum((r[j] - mean[j]) ** 2 for j in range(3)) for r in rows) / len(rows)) ** 0.5
    ratio = spread / sum(v * v for v in mean) ** 0.5
    assert rec["variance_norm_ratio"] == pytest.approx(ratio, rel=1e-5)
    assert server.version == 1 and server.round == 1 and rec["time"] == pytest.approx(1.0)


def test_server_momentum_accumulates_the_aggregates() -> None:
    engine = LocalEngine()
    ids = _group(engine, torch.ones(3, 2))
    server = _server(engine, ids, 2, rule="average", f=0, lr=lambda t: 1.0, momentum=0.5)
    for _ in range(3):
        server.step()
    # G_1 = 1, G_2 = 1.5, G_3 = 1.75: theta = -(1 + 1.5 + 1.75)
    torch.testing.assert_close(server.theta, torch.full((2,), -4.25))


def test_centered_clipping_is_centred_on_the_previous_aggregate() -> None:
    engine = LocalEngine()
    rows = torch.randn(5, 3, generator=torch.Generator().manual_seed(0)) * 5
    ids = _group(engine, rows)
    server = _server(engine, ids, 3, rule="centered_clipping", f=1, rule_options={"radius": 1.0})
    server.step()
    first = server.previous.clone()
    torch.testing.assert_close(first, agg.centered_clipping(rows, f=1, radius=1.0))
    server.step()
    expected = agg.centered_clipping(rows, f=1, radius=1.0, center=first)
    torch.testing.assert_close(server.previous, expected)
    assert not torch.allclose(expected, first)


def test_the_rule_runs_once_per_round_and_bucketing_kept_rows_are_those_applied(
    monkeypatch,
) -> None:
    engine = LocalEngine()
    rows = torch.randn(10, 4, generator=torch.Generator().manual_seed(1))
    ids = _group(engine, rows)
    calls = {"n": 0}
    real = agg.aggregate

    def counting(*args, **kw):
        calls["n"] += 1
        return real(*args, **kw)

    monkeypatch.setattr(agg, "aggregate", counting)
    server = _server(engine, ids, 4, rule="bucketing+krum", f=1, lr=lambda t: 1.0, seed=5)
    rec = server.step()
    assert calls["n"] == 1
    from byzlearn import keyed

    again = real("bucketing+krum", rows, f=1, generator=keyed.generator((5, "rule", 1)))
    torch.testing.assert_close(server.theta, -again.vector)
    assert rec["kept"] == [ids[i] for i in again.kept.tolist()]
    # the update is the mean of exactly the kept rows' bucket
    torch.testing.assert_close(-server.theta, rows[again.kept].mean(0))


def _workers(vectorise: bool, momentum: float = 0.0, local_steps: int = 1):
    torch.manual_seed(0)
    model = FlatModel(build_model("mlp", (4,), 3, hidden=[5]))
    x = torch.randn(60, 4)
    y = torch.randint(0, 3, (60,))
    parts = np.array_split(np.arange(60), 5)
    engine = LocalEngine(vectorise=vectorise)
    ids = engine.reserve("worker", 5)
    workers = ComputeWorkers(
        ids,
        range(5),
        model,
        x,
        y,
        parts,
        batch_size=4,
        seed=3,
        momentum=momentum,
        local_steps=local_steps,
    )
    engine.attach(ids, workers)
    server = ParameterServer(
        engine.add_node("server"), model.flatten(), ids, rule="median", f=1, lr=lambda t: 0.1
    )
    return server, workers, model, x, y


@pytest.mark.parametrize("local_steps", [1, 3])
def test_vectorised_workers_equal_the_per_worker_loop(local_steps: int) -> None:
    a, *_ = _workers(True, momentum=0.9, local_steps=local_steps)
    b, *_ = _workers(False, momentum=0.9, local_steps=local_steps)
    for _ in range(4):
        a.step()
        b.step()
    torch.testing.assert_close(a.theta, b.theta, rtol=1e-5, atol=1e-6)


def test_worker_momentum_is_the_discounted_sum_of_gradients() -> None:
    server, workers, model, x, y = _workers(True, momentum=0.9)
    theta0 = server.theta.clone()
    node = server.node
    node.multicast(Message(kind="model", round=1, payload=theta0, meta={"lr": 0.1}), workers.ids)
    m1 = torch.stack([m.payload for m in sorted(node.gather(1, q=5), key=lambda m: m.sender)])
    idx = workers.indices_for(range(5), [1] * 5)[0]
    g1, _ = model.batched_grads(theta0, x[idx], y[idx])
    torch.testing.assert_close(m1, g1)
    node.multicast(Message(kind="model", round=2, payload=theta0, meta={"lr": 0.1}), workers.ids)
    m2 = torch.stack([m.payload for m in sorted(node.gather(2, q=5), key=lambda m: m.sender)])
    idx = workers.indices_for(range(5), [2] * 5)[0]
    g2, _ = model.batched_grads(theta0, x[idx], y[idx])
    torch.testing.assert_close(m2, 0.9 * g1 + g2)


def test_two_requests_to_one_worker_in_one_delivery_get_their_own_models() -> None:
    _, workers, model, x, y = _workers(True)
    w = workers.ids[0]
    a, b = torch.zeros(model.dim), torch.full((model.dim,), 0.1)
    inbox = [
        Message(kind="model", payload=a, dest=w, round=4, sender=99, seq=0),
        Message(kind="model", payload=b, dest=w, round=5, sender=99, seq=1),
        Message(kind="model", payload=a, dest=workers.ids[1], round=4, sender=99, seq=2),
    ]
    replies = workers.handle(inbox)
    assert [(int(r.sender), r.round) for r in replies] == [(w, 4), (workers.ids[1], 4), (w, 5)]
    for reply, theta in ((replies[0], a), (replies[2], b)):
        idx = workers.indices_for([0], [reply.round])[0]
        g, _ = model.grad(theta, x[idx[0]], y[idx[0]])
        torch.testing.assert_close(reply.payload, g, rtol=1e-5, atol=1e-6)


def test_minibatches_are_keyed_on_worker_and_round_not_on_grouping() -> None:
    _, workers, *_ = _workers(True)
    together = workers.indices_for([0, 1, 2], [7, 7, 7])
    alone = workers.indices_for([1], [7])
    assert torch.equal(together[:, 1], alone[:, 0])
    assert not torch.equal(workers.indices_for([1], [8]), alone)


def test_one_batched_backward_per_round_for_all_honest_workers(monkeypatch) -> None:
    server, _, model, *_ = _workers(True)
    calls = {"batched": 0, "single": 0}
    batched, single = model.batched_grads, model.grad

    def count_batched(*args, **kw):
        calls["batched"] += 1
        return batched(*args, **kw)

    def count_single(*args, **kw):
        calls["single"] += 1
        return single(*args, **kw)

    monkeypatch.setattr(model, "batched_grads", count_batched)
    monkeypatch.setattr(model, "grad", count_single)
    for _ in range(3):
        server.step()
    assert calls == {"batched": 3, "single": 0}
    loop, _, loop_model, *_ = _workers(False)
    monkeypatch.setattr(loop_model, "grad", count_single)
    loop.step()
    assert calls["single"] == 5  # the reference loop: one forward/backward per worker


def test_byzantine_coalition_attacks_with_the_honest_vectors_of_the_round() -> None:
    engine = LocalEngine()
    honest = torch.randn(6, 4)
    ids = _group(engine, honest)
    byz = engine.reserve("worker", 2)
    coalition = ByzantineWorkers(byz, atk.get("ipm"), rule="krum", options={"epsilon": 10.0})
    engine.attach(byz, coalition, adversary=True)
    server = _server(engine, ids + byz, 4, rule="average", f=2, lr=lambda t: 1.0)
    server.step()
    expected = (honest.sum(0) + 2 * (-10.0) * honest.mean(0)) / 8
    torch.testing.assert_close(server.theta, -expected)


def test_no_reply_round_is_recorded_as_skipped() -> None:
    from byzlearn.attacks import Crash

    engine = LocalEngine(network=NetworkModel(faults={0: Crash(0)}))
    ids = _group(engine, torch.ones(1, 2))
    server = _server(engine, ids, 2, rule="average", f=0)
    rec = server.step()
    assert rec["received"] == 0 and rec["skipped"] and "received 0" in rec["skip_reason"]
    assert torch.equal(server.theta, torch.zeros(2))


@pytest.mark.parametrize("policy", ["shrink", "skip", "wait"])
def test_failure_policy_when_replies_are_too_few(policy: str) -> None:
    from byzlearn.attacks import Crash

    crashed = {i: Crash(2) for i in range(3)}  # from round 2, 6 of 9 replies: krum needs 9
    engine = LocalEngine(network=NetworkModel(faults=crashed))
    rows = torch.randn(9, 3, generator=torch.Generator().manual_seed(2))
    ids = _group(engine, rows)
    server = _server(
        engine, ids, 3, rule="krum", f=3, lr=lambda t: 1.0, on_missing=policy, deadline=2.0
    )
    assert not server.step().get("skipped")
    rec = server.step()
    assert rec["received"] == 6
    if policy == "shrink":  # krum with the largest f' that 6 inputs allow: n >= 2f' + 3
        assert rec["f_used"] == 1 and not rec.get("skipped") and server.version == 2
    else:  # waiting brings nothing from crashed workers: skipped after max_waits deadlines
        assert rec["skipped"] and "6 of the 9" in rec["skip_reason"] and server.version == 1
    if policy == "wait":
        assert rec["time"] == pytest.approx(1.0 + 2.0 * 4)


def test_replies_of_another_kind_or_round_are_not_mixed() -> None:
    engine = LocalEngine()

    class Liar(Fixed):
        def handle(self, inbox, observed=()):
            out = super().handle(inbox, observed)
            out[0].round += 7  # another round
            out[1].kind = "model"  # another kind
            return out

    handler = Liar(torch.ones(4, 2))
    ids = engine.add_group("worker", 4, handler)
    handler.row = {i: r for r, i in enumerate(ids)}
    server = _server(engine, ids, 2, rule="average", f=0, lr=lambda t: 1.0)
    rec = server.step()
    assert rec["received"] == 2
    torch.testing.assert_close(server.theta, -torch.ones(2))
    server.step()  # the stray messages of round 1 are discarded and counted
    assert engine.stats["discarded"] >= 1


@pytest.mark.parametrize("dampened", [False, True])
def test_worker_and_server_momentum_heavy_ball_or_dampened(dampened):
    from byzlearn.experiments.config import parse_config
    from byzlearn.experiments.trainer import Trainer

    c = parse_config({"n": 3, "f": 0, "steps": 3, "optimizer": {
        "momentum": 0.9, "momentum_at": "worker", "dampened": dampened}})
    trainer = Trainer(c)
    compute = trainer.protocol.workers.compute
    theta = trainer.theta
    g1 = compute.gradients(compute.ids, theta, 1)[0]
    g2 = compute.gradients(compute.ids, theta, 2)[0]
    compute.submit(compute.ids, theta, [1, 1, 1])
    m2, _ = compute.submit(compute.ids, theta, [2, 2, 2])
    scale = 0.1 if dampened else 1.0
    torch.testing.assert_close(m2, 0.9 * scale * g1 + scale * g2)
    from byzlearn.protocols.base import accumulate

    torch.testing.assert_close(
        accumulate(torch.ones(2), torch.full((2,), 3.0), 0.5, dampened),
        torch.full((2,), 0.5 + (1.5 if dampened else 3.0)),
    )
