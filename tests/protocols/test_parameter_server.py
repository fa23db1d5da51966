"""The synchronous parameter server and its worker roles."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

import byzlearn.attacks as atk
from byzlearn.engines import FlatModel, LocalEngine, Message
from byzlearn.models import build_model
from byzlearn.protocols import ByzantineWorkers, ComputeWorkers, ParameterServer


class Fixed:
    """Workers replying with fixed vectors (one row per member)."""

    def __init__(self, ids: Sequence[int], rows: torch.Tensor) -> None:
        self.row = {i: r for r, i in enumerate(ids)}
        self.rows = rows

    def handle(self, inbox: Sequence[Message], observed: Sequence[Message] = ()) -> list[Message]:
        return [
            Message(
                m.dest,
                "worker",
                m.round,
                m.version,
                self.rows[self.row[m.dest]].clone(),
                dest=m.sender,
                meta={"loss": 1.0},
            )
            for m in inbox
        ]


def _server(engine, d: int, **kw) -> ParameterServer:
    return ParameterServer(engine, torch.zeros(d), server_id=99, **kw)


def test_server_update_and_metrics_with_a_selection_rule() -> None:
    engine = LocalEngine()
    honest = torch.ones(6, 3) + 0.01 * torch.arange(6.0)[:, None]
    engine.add_group(range(6), "worker", Fixed(range(6), honest))
    engine.add_group([6], "worker", Fixed([6], torch.full((1, 3), -100.0)))
    server = _server(engine, 3, rule="krum", f=1, lr=lambda t: 0.5, byzantine_ids=[6])
    rec = server.step()
    assert rec["received"] == 7
    assert rec["kept_byzantine"] == 0 and len(rec["kept"]) == 1
    assert rec["kept"][0] in range(6)
    picked = honest[rec["kept"][0]]
    torch.testing.assert_close(server.theta, -0.5 * picked)
    assert rec["dist_honest_mean"] == pytest.approx(float((picked - honest.mean(0)).norm()))
    assert server.version == 1 and server.round == 1
    # averaging keeps no record of selection
    avg = _server(engine, 3, rule="average", f=1, byzantine_ids=[6])
    assert "kept" not in avg.step()


def test_server_momentum_accumulates_the_aggregates() -> None:
    engine = LocalEngine()
    engine.add_group(range(3), "worker", Fixed(range(3), torch.ones(3, 2)))
    server = _server(engine, 2, rule="average", f=0, lr=lambda t: 1.0, momentum=0.5)
    for _ in range(3):
        server.step()
    # G_1 = 1, G_2 = 1.5, G_3 = 1.75: theta = -(1 + 1.5 + 1.75)
    torch.testing.assert_close(server.theta, torch.full((2,), -4.25))


def test_centered_clipping_is_centred_on_the_previous_aggregate() -> None:
    import byzlearn.aggregators as agg

    engine = LocalEngine()
    rows = torch.randn(5, 3, generator=torch.Generator().manual_seed(0)) * 5
    engine.add_group(range(5), "worker", Fixed(range(5), rows))
    server = _server(engine, 3, rule="centered_clipping", f=1, rule_options={"radius": 1.0})
    server.step()
    first = server.previous.clone()
    torch.testing.assert_close(first, agg.get("centered_clipping")(rows, f=1, radius=1.0))
    server.step()
    expected = agg.get("centered_clipping")(rows, f=1, radius=1.0, center=first)
    torch.testing.assert_close(server.previous, expected)
    assert not torch.allclose(expected, first)


def _workers(vectorise: bool, momentum: float = 0.0, local_steps: int = 1):
    torch.manual_seed(0)
    model = FlatModel(build_model("mlp", (4,), 3, hidden=[5]))
    x = torch.randn(60, 4)
    y = torch.randint(0, 3, (60,))
    parts = np.array_split(np.arange(60), 5)
    workers = ComputeWorkers(
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
    engine = LocalEngine(vectorise=vectorise)
    engine.add_group(range(5), "worker", workers)
    server = ParameterServer(
        engine, model.flatten(), server_id=5, rule="median", f=1, lr=lambda t: 0.1
    )
    return server, workers, model, x, y


@pytest.mark.parametrize("local_steps", [1, 3])
def test_vectorised_workers_equal_the_per_worker_loop(local_steps: int) -> None:
    a, *_ = _workers(True, momentum=0.9, local_steps=local_steps)
    b, *_ = _workers(False, momentum=0.9, local_steps=local_steps)
    for _ in range(4):
        ra, rb = a.step(), b.step()
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-5)
    torch.testing.assert_close(a.theta, b.theta, rtol=1e-5, atol=1e-6)


def test_worker_momentum_is_the_discounted_sum_of_gradients() -> None:
    server, workers, model, x, y = _workers(True, momentum=0.9)
    theta0 = server.theta.clone()
    engine = server.engine
    # round 1: m = g_1; capture the vectors the workers send
    engine.broadcast(Message(5, "server", 1, 0, theta0, meta={"lr": 0.1}), role="worker")
    m1 = torch.stack([m.payload for m in engine.gather(5, 1, q=5)])
    idx = workers._indices(1)[0]
    g1, _ = model.batched_grads(theta0, x[idx], y[idx])
    torch.testing.assert_close(m1, g1)
    engine.broadcast(Message(5, "server", 2, 0, theta0, meta={"lr": 0.1}), role="worker")
    m2 = torch.stack([m.payload for m in engine.gather(5, 2, q=5)])
    idx = workers._indices(2)[0]
    g2, _ = model.batched_grads(theta0, x[idx], y[idx])
    torch.testing.assert_close(m2, 0.9 * g1 + g2)


def test_byzantine_coalition_attacks_with_the_honest_vectors_of_the_round() -> None:
    engine = LocalEngine()
    honest = torch.randn(6, 4)
    engine.add_group(range(6), "worker", Fixed(range(6), honest))
    byz = ByzantineWorkers([6, 7], atk.get("ipm"), rule="krum", options={"epsilon": 10.0})
    engine.add_group([6, 7], "worker", byz, omniscient=True)
    server = _server(engine, 4, rule="average", f=2, lr=lambda t: 1.0, byzantine_ids=[6, 7])
    server.step()
    expected = (honest.sum(0) + 2 * (-10.0) * honest.mean(0)) / 8
    torch.testing.assert_close(server.theta, -expected)


def test_no_reply_round_is_recorded_as_skipped() -> None:
    engine = LocalEngine(faults={0: atk.Crash(0)})
    engine.add_group([0], "worker", Fixed([0], torch.ones(1, 2)))
    server = _server(engine, 2, rule="average", f=0)
    rec = server.step()
    assert rec["received"] == 0 and rec["skipped"]
    assert torch.equal(server.theta, torch.zeros(2))


class Liar(Fixed):
    """Replies tagged with a wrong version or role: the server must drop them."""

    def handle(self, inbox: Sequence[Message], observed: Sequence[Message] = ()) -> list[Message]:
        out = super().handle(inbox, observed)
        out[0].version += 7
        out[1].role = "server"
        return out


def test_mislabelled_replies_are_dropped_not_mixed() -> None:
    engine = LocalEngine()
    engine.add_group(range(4), "worker", Liar(range(4), torch.ones(4, 2)))
    server = _server(engine, 2, rule="average", f=0, lr=lambda t: 1.0)
    rec = server.step()
    assert rec["received"] == 2
    torch.testing.assert_close(server.theta, -torch.ones(2))


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
