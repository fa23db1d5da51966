"""Tests closing gaps found by mutation testing of the protocols and the local engine.

Each test fails on a plausible bug (a mutant) that every earlier test let through, and checks
the behaviour against an independent reference (a hand computation or an exact property).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch

import byzlearn.attacks as atk
from byzlearn.engines import FlatModel, LocalEngine, Message, NetworkModel
from byzlearn.engines.network import Delay
from byzlearn.models import build_model
from byzlearn.protocols import (
    AsyncServer,
    ByzantineWorkers,
    ComputeWorkers,
    Events,
    KardamFilter,
    Observer,
    ParameterServer,
)
from byzlearn.protocols.replicated import ModelFilter, ReplicaWorkers
from tests.protocols.test_parameter_server import _group

# digits and the logistic model, no evaluation or checkpoint between steps: the base of the
# tests that build a protocol from a config
DIGITS: dict[str, Any] = {
    "dataset": {"name": "digits"},
    "model": {"name": "logistic"},
    "eval_every": 100,
    "checkpoint_every": 0,
}


def test_kardam_coefficient_is_the_upper_median_of_an_even_number_of_values() -> None:
    """A reference at the very model carries no coefficient: with 2f + 1 = 3 references of
    which one is at ``x``, two coefficients remain and k is the upper (larger) one."""
    flt = KardamFilter(4, 1, gap=1)
    x = torch.tensor([3.0, 0.0])
    # (g_ref, x_ref): coefficients ||g - g_ref|| / ||x - x_ref|| = 1 / 1 and 4 / 1
    flt.accept(0, torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0]), 0)
    flt.accept(1, torch.tensor([4.0, 0.0]), torch.tensor([3.0, 1.0]), 1)
    flt.accept(2, torch.tensor([9.0, 0.0]), x.clone(), 2)  # same model: skipped
    g = torch.tensor([0.0, 0.0])
    assert len(flt.reference(3)) == 3
    assert flt.coefficient(g, x, 3) == 4.0  # upper median of [1, 4]


def test_kardam_frequency_window_counts_the_candidate_itself() -> None:
    """Window 2f + 1 = 3, at most max(f, 1) = 1 per worker: after workers 0, 1, 2 were accepted,
    worker 0 may go again (the window {1, 2, 0} holds it once), but not right after itself."""
    flt = KardamFilter(4, 1, lipschitz=False)
    g, x = torch.ones(2), torch.zeros(2)
    for w in (0, 1, 2):
        assert flt.check(w, g, x, 0).accepted
        flt.accept(w, g, x, 0)
    assert flt.check(0, g, x, 0).reason == "accepted"
    flt.accept(0, g, x, 0)
    assert flt.check(0, g, x, 0).reason == "frequency"  # window {2, 0, 0}: twice
    assert flt.check(1, g, x, 0).reason == "accepted"  # window {2, 0, 1}


class _Aggregated(Observer):
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def on_event(self, name: str, data: dict[str, Any]) -> None:
        if name == "aggregated":
            self.events.append(data)


def test_server_aggregates_replies_in_sender_order_whatever_their_arrival_order() -> None:
    """Random compute times make the replies arrive out of order; the server sorts them by
    sender, so the rule's input (and a rule's tie-breaks or keyed draws) do not depend on the
    arrival order, and row i is sender i's vector."""
    engine = LocalEngine(network=NetworkModel(seed=3, compute=Delay("exponential", 1.0)))
    rows = torch.arange(24.0).reshape(8, 3)
    ids = _group(engine, rows)
    seen = _Aggregated()
    server = ParameterServer(
        engine.add_node("server"), torch.zeros(3), ids, rule="median", f=1, events=Events([seen])
    )
    for _ in range(3):
        server.step()
    assert len(seen.events) == 3
    for data in seen.events:
        assert data["senders"] == sorted(ids)
        assert torch.equal(data["vectors"], rows[[ids.index(s) for s in data["senders"]]])


def test_kardam_server_records_accepted_gradients_for_its_frequency_filter() -> None:
    """Each applied gradient enters the filter's window: a worker three times faster than the
    others is throttled (``frequency``), and no window of 2f + 1 = 3 consecutive updates
    holds one worker twice."""
    from tests.protocols.test_kardam import Ones

    engine = LocalEngine()
    ids = engine.add_group("worker", 4, Ones())
    engine.network.slowdown = {i: 3.0 for i in ids[1:]}
    flt = KardamFilter(4, 1, lipschitz=False)
    server = AsyncServer(engine.add_node("server"), torch.zeros(2), ids, kardam=flt)
    records = [server.step() for _ in range(20)]
    applied = [r["sender"] for r in records if r.get("accepted") and "sender" in r]
    assert any(r.get("reason") == "frequency" for r in records)
    assert len(applied) >= 4
    assert all(len(set(applied[i : i + 3])) == len(applied[i : i + 3]) for i in range(len(applied)))
    assert list(flt.recent) == applied[-2:]


class _WrongRound:
    """Workers answering with ones; worker 1 stamps its replies with a round never sent."""

    def handle(self, inbox: Sequence[Message], observed: Sequence[Message] = ()) -> list[Message]:
        out = [m.reply(torch.ones(2), kind="gradient", loss=0.5) for m in inbox]
        for r in out:
            if r.sender == 1:
                r.round += 1000
        return out


def test_async_staleness_of_a_reply_to_an_unknown_round_uses_the_last_model_sent() -> None:
    """A reply whose round the server never sent that worker is measured against the last
    model the server sent it (version 0 here, while the server is at version 1), not against
    the server's current model (which would make a stale gradient look fresh)."""
    engine = LocalEngine()
    ids = engine.add_group("worker", 2, _WrongRound())
    engine.network.slowdown = {ids[1]: 1.5}
    server = AsyncServer(
        engine.add_node("server"), torch.zeros(2), ids, lr=lambda t: 1.0, dampening="inverse"
    )
    first = server.step()
    assert first["sender"] == ids[0] and first["staleness"] == 0
    second = server.step()
    assert second["sender"] == ids[1] and second["staleness"] == 1
    assert second["weight"] == 0.5


def test_workers_local_steps_with_l2_and_clipping_match_a_per_step_loop() -> None:
    """``local_steps`` SGD steps from the received model, each on the step's minibatch with
    the l2 term added and the gradient clipped to norm ``clip``; the submitted vector is the
    sum of the (clipped) local gradients. Reference: a loop over workers and steps with the
    module's plain gradient."""
    torch.manual_seed(0)
    model = FlatModel(build_model("logistic", (4,), 3))
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    ids = LocalEngine().reserve("worker", 2)
    parts = np.array_split(np.arange(40), 2)
    wd, clip, lr, steps = 0.1, 0.9, 0.7, 3
    options = {"local_steps": steps, "weight_decay": wd, "clip": clip}
    workers = ComputeWorkers(ids, range(2), model, x, y, parts, batch_size=4, **options)
    theta = model.flatten() + 1.0
    vec, _ = workers.submit(ids, theta, [1, 1], [lr, lr])
    idx = workers.indices_for([0, 1], [1, 1])
    clipped = kept = 0
    for r in range(2):
        local, total = theta.clone(), torch.zeros_like(theta)
        for k in range(steps):
            g, _ = model.grad(local, x[idx[k, r]], y[idx[k, r]])
            g = g + wd * local
            norm = float(g.norm())
            if norm > clip:
                g, clipped = g * (clip / norm), clipped + 1
            else:
                kept += 1
            local = local - lr * g
            total = total + g
        torch.testing.assert_close(vec[r], total, rtol=1e-4, atol=1e-6)
    assert clipped > 0 and kept > 0  # gradients above and below the clipping norm


def _gradient(sender: int, rnd: int, value: float) -> Message:
    return Message(kind="gradient", payload=torch.full((2,), value), round=rnd, sender=sender)


def test_byzantine_workers_of_a_synchronous_protocol_attack_with_their_round_only() -> None:
    """``same_round=True``: the round-2 answer is crafted from the round-2 honest vectors
    (IPM with epsilon 1: minus their mean), not from an earlier round's still in view."""
    coalition = ByzantineWorkers([9], atk.get("ipm"), rule="average", options={"epsilon": 1.0})
    observed = [_gradient(0, 1, 100.0), _gradient(1, 1, 100.0)]
    observed += [_gradient(0, 2, 1.0), _gradient(1, 2, 3.0)]
    ask = Message(kind="model", dest=9, round=2, sender=20, seq=5)
    (reply,) = coalition.handle([ask], observed)
    assert reply.dest == 20 and reply.round == 2
    torch.testing.assert_close(reply.payload, torch.full((2,), -2.0))


def test_byzantine_workers_with_fanout_answer_each_round_once() -> None:
    """With ``fanout`` a member sends its vector of a round to every server once, whichever
    server's model reaches it first; a second model of that round brings nothing more."""
    coalition = ByzantineWorkers(
        [9], atk.get("ipm"), rule="average", options={"epsilon": 1.0}, fanout=[20, 21]
    )
    observed = [_gradient(0, 1, 1.0), _gradient(1, 1, 3.0)]
    first = coalition.handle([Message(kind="model", dest=9, round=1, sender=20, seq=1)], observed)
    assert sorted(m.dest for m in first) == [20, 21]
    again = coalition.handle([Message(kind="model", dest=9, round=1, sender=21, seq=2)], observed)
    assert again == []
    observed += [_gradient(0, 2, 1.0), _gradient(1, 2, 3.0)]
    later = coalition.handle([Message(kind="model", dest=9, round=2, sender=21, seq=3)], observed)
    assert sorted(m.dest for m in later) == [20, 21]


def test_minibatches_draw_every_sample_of_a_partition() -> None:
    """Sample positions are uniform over ``[0, size)``: the last sample of a partition is drawn
    too (a partition of 2 samples gets both over a batch of 50)."""
    model = FlatModel(build_model("logistic", (4,), 3))
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    ids = LocalEngine().reserve("worker", 2)
    parts = [np.array([0, 1]), np.array([2, 3, 4])]
    workers = ComputeWorkers(ids, range(2), model, x, y, parts, batch_size=50)
    idx = workers.indices_for([0, 1], [1, 1])
    assert set(idx[0, 0].tolist()) == {0, 1}
    assert set(idx[0, 1].tolist()) == {2, 3, 4}


def test_model_filter_lipschitz_bound_is_a_multiple_of_the_median_coefficient() -> None:
    """k is accepted up to ``lipschitz_factor`` times the *median* of the worker's last
    coefficients: one past outlier (10) does not widen the bound to 30."""
    flt = ModelFilter(lipschitz_factor=3.0)
    state = {"k": [1.0, 1.0, 10.0, 1.0, 1.0]}
    assert flt.lipschitz_ok(3.0, state)
    assert not flt.lipschitz_ok(5.0, state)


class _ScriptedGradients:
    """A stand-in for ComputeWorkers.gradients returning the next scripted gradient."""

    def __init__(self, grads: list[torch.Tensor]) -> None:
        self.grads = iter(grads)

    def gradients(self, nodes, theta, t):
        return next(self.grads)[None], torch.zeros(1)


def test_model_filter_keeps_the_last_25_coefficients() -> None:
    """Models one unit apart with gradients whose steps grow 1, 2, ..., 30: coefficients
    1..30, all accepted; the history is the last 25 of them (6..30), not the first 25."""
    flt = ModelFilter(lipschitz_factor=3.0)
    e = torch.tensor([1.0, 0.0])
    grads, g = [], torch.zeros(2)
    for k in range(31):
        g = g + k * e
        grads.append(g.clone())
    compute = _ScriptedGradients(grads)
    state = ModelFilter.start(torch.zeros(2))
    for t in range(31):
        state["g_norm"] = 1e9  # the distance filter lets everything through
        assert flt.check(compute, 0, t * e, state, t + 1, 1.0) == "accepted"  # type: ignore[arg-type]
    assert state["k"] == [float(k) for k in range(6, 31)]


def _replica_workers() -> tuple[ReplicaWorkers, int, torch.Tensor]:
    torch.manual_seed(0)
    model = FlatModel(build_model("logistic", (4,), 3))
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    ids = LocalEngine().reserve("worker", 1)
    compute = ComputeWorkers(ids, range(1), model, x, y, [np.arange(20)], batch_size=4)
    return ReplicaWorkers(compute, [10, 11, 12], quorum=2), ids[0], model.flatten()


def test_replica_workers_count_the_models_beyond_the_quorum_once_whatever_the_batching() -> None:
    """Three servers' models of a step, quorum 2: the member answers with the first two and
    ignores one, whether the three come in one call (a vectorised group) or one by one."""
    batched, member, theta = _replica_workers()
    single, _, _ = _replica_workers()

    def models() -> list[Message]:
        out = []
        for i in range(3):
            m = Message(kind="model", dest=member, round=1, payload=theta, sender=10 + i, seq=i)
            m.arrival = float(i)
            out.append(m)
        return out

    assert len(batched.handle(models())) == 3  # one vector, sent to each of the 3 servers
    replies = [r for m in models() for r in single.handle([m])]
    assert len(replies) == 3
    assert batched.ignored == single.ignored == 1


def test_poisoning_byzantine_workers_compute_on_flipped_labels_the_honest_on_true_ones() -> None:
    """Data poisoning: the Byzantine workers (no gradient attack) compute, on labels flipped
    ``y -> C - 1 - y``; the honest workers on the true labels."""
    from byzlearn.experiments import parse_config
    from byzlearn.experiments.trainer import Trainer

    config = parse_config(
        {
            "dataset": {"name": "digits"},
            "model": {"name": "logistic"},
            "n": 5,
            "f": 1,
            "attack": {"name": "none"},
            "poisoning": {"kind": "flip_labels"},
            "steps": 1,
        }
    )
    trainer = Trainer(config)
    compute = trainer.protocol.workers.compute  # type: ignore[attr-defined]
    y = trainer.data.y_train
    flipped = trainer.data.num_classes - 1 - y
    assert compute.indices == list(range(5))
    for row, i in enumerate(compute.indices):
        expected = flipped if i in trainer.byzantine else y
        assert torch.equal(compute.labels[row], expected)
    assert len(trainer.byzantine) == 1


class _LossyBootstrap:
    """Worker 0 sends NaN only; worker 1's second gradient lost its first coordinate."""

    def __init__(self) -> None:
        self.calls: dict[int, int] = {}

    def handle(self, inbox: Sequence[Message], observed: Sequence[Message] = ()) -> list[Message]:
        out = []
        for m in inbox:
            w = int(m.dest)  # type: ignore[arg-type]
            self.calls[w] = self.calls.get(w, 0) + 1
            g = torch.ones(2)
            if w == 0:
                g = torch.full((2,), float("nan"))
            elif w == 1 and self.calls[w] == 2:
                g = torch.tensor([float("nan"), 1.0])
            out.append(m.reply(g, kind="gradient"))
        return out


def test_kardam_bootstrap_again_keeps_each_workers_latest_finite_values() -> None:
    """An all-NaN gradient leaves too few finite values for a safe median: nothing is applied
    and the next step bootstraps again with every worker heard, each with the latest finite
    value of each coordinate: worker 1's lost coordinate keeps its first value, so no
    coordinate is left unmoved."""
    engine = LocalEngine()
    ids = engine.add_group("worker", 4, _LossyBootstrap())
    node, kardam = engine.add_node("server"), KardamFilter(4, 1)
    server = AsyncServer(node, torch.zeros(2), ids, lr=lambda t: 1.0, kardam=kardam)
    first = server.step()
    assert first["bootstrap"] and not first["accepted"] and first["unmoved"] == 2
    second = server.step()
    assert second["bootstrap"] and second["accepted"] and second["heard"] == 4
    assert second["unmoved"] == 0
    torch.testing.assert_close(server.theta, -torch.ones(2))


@pytest.mark.parametrize("policy", ["skip", "shrink"])
def test_liubei_servers_follow_the_failure_policy_when_gradients_are_too_few(policy: str) -> None:
    """Worker 3 crashed: each correct server gets 3 of the n - f = 4 gradients it waits for.
    ``skip`` skips the step at every correct server; ``shrink`` aggregates the 3 with f = 0."""
    from byzlearn.experiments import parse_config
    from byzlearn.experiments.runner import run

    protocol = {
        "name": "liubei",
        "servers": 4,
        "f_servers": 1,
        "server_attack": {"name": "silent"},
        "on_missing": policy,
    }
    config = {
        **DIGITS,
        "n": 4,
        "f": 0,
        "steps": 2,
        "network": {"crashes": {3: 0}},
        "protocol": protocol,
    }
    steps = run(parse_config(config)).records[1:]
    if policy == "skip":
        assert all(r["skipped"] and r["servers_skipped"] == 3 for r in steps)
        assert all("f_used" not in r for r in steps)
    else:
        assert all(r["f_used"] == 0 and r["received"] == 3 for r in steps)
        assert all(r["servers_skipped"] == 0 and not r.get("skipped") for r in steps)


def test_gossip_mixing_averages_a_peers_own_vector_with_the_received_ones() -> None:
    """Gossip on the complete graph without faults: every peer averages its own half step
    with the n - 1 others, so all peers hold the same model after one step (excluding its own
    vector would leave each peer a different mean)."""
    from byzlearn.experiments import parse_config
    from byzlearn.experiments.runner import run

    config = {
        **DIGITS,
        "n": 3,
        "f": 0,
        "steps": 1,
        "protocol": {"name": "decentralized", "mixing": "gossip"},
    }
    (step,) = run(parse_config(config)).records[1:]
    assert step["peer_diameter"] < 1e-6


def test_a_ring_peer_has_at_most_n_minus_1_neighbours() -> None:
    """A ring with k neighbours per side on n <= 2k peers: every peer neighbours the n - 1
    others, not 2k; one mixing with the rule takes n inputs."""
    from byzlearn.protocols.decentralized import DecentralizedOptions

    options = DecentralizedOptions(topology={"name": "ring", "k": 2}, mixing="rule")
    assert options.peer_degree(4) == 3
    assert options.rule_arity(4, 1) == (4, 1)
    assert options.peer_degree(7) == 4


# peer 0 has one neighbour (peer 1); every other peer has three
_ONE_NEIGHBOUR = [[0, 1], [1, 2], [2, 3], [3, 4], [4, 5], [5, 1], [1, 3], [2, 4], [3, 5]]


@pytest.mark.parametrize(("mixing", "kept_own"), [("rule", 1), ("nna", 0)])
def test_a_peer_with_too_few_neighbours_keeps_its_own_vector_only_when_mixing_needs_more(
    mixing: str, kept_own: int
) -> None:
    """f = 1. ``rule`` (the median with the declared f) on peer 0's own vector and its one
    neighbour's would need 3 vectors: peer 0 keeps its own (a mutant ran the median with the f
    that fits 2 vectors, 0, and averaged with that neighbour, Byzantine or not). ``nna`` with
    |R| = f averages the |R| + 1 - f = 1 nearest vector, its own: that is a mixing, not a peer
    that kept its own (a mutant counted it as one)."""
    from byzlearn.experiments import Trainer, parse_config

    config = {
        **DIGITS,
        "n": 6,
        "f": 1,
        "steps": 1,
        "rule": {"name": "median"},
        "protocol": {
            "name": "decentralized",
            "mixing": mixing,
            "topology": {"name": "explicit", "edges": _ONE_NEIGHBOUR},
        },
    }
    record = Trainer(parse_config(config)).step()
    assert record["kept_own"] == kept_own
