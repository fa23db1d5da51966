"""The local engine beyond the contract: vectorised vs per-member calls, the simulated network
(compute-time and link-delay distributions, faults, lost coordinates), all keyed on the seed."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from byzlearn.attacks.behaviours import Crash, Delay, Omission
from byzlearn.engines import Delay as Time
from byzlearn.engines import LocalEngine, Message, NetworkModel


class Echo:
    def __init__(self, size: int = 1) -> None:
        self.calls: list[list[int]] = []
        self.size = size

    def handle(self, inbox: Sequence[Message], observed: Sequence[Message] = ()) -> list[Message]:
        self.calls.append([int(m.dest) for m in inbox])
        return [m.reply(torch.full((self.size,), float(m.dest)), kind="gradient") for m in inbox]


def _engine(workers: int = 5, **network):
    engine = LocalEngine(vectorise=network.pop("vectorise", True), network=NetworkModel(**network))
    echo = Echo(network.pop("size", 1) if "size" in network else 1)
    ids = engine.add_group("worker", workers, echo)
    return engine, engine.add_node("server"), ids, echo


def test_vectorised_group_gets_one_call_and_the_loop_one_per_message() -> None:
    _, server, ids, echo = _engine()
    server.multicast(Message(kind="model", round=1), ids)
    assert len(server.gather(1, q=5)) == 5
    assert echo.calls == [ids]
    _, server, ids, echo = _engine(vectorise=False)
    server.multicast(Message(kind="model", round=1), ids)
    assert len(server.gather(1, q=5)) == 5
    assert echo.calls == [[i] for i in ids]


def test_timings_do_not_depend_on_vectorisation() -> None:
    def arrivals(vectorise: bool) -> list[tuple[int, float]]:
        _, server, ids, _ = _engine(
            vectorise=vectorise, seed=2, compute=Time("pareto", 1.0, shape=1.5)
        )
        out = []
        for t in (1, 2, 3):
            server.multicast(Message(kind="model", round=t), ids)
            out += [(int(m.sender), m.arrival) for m in server.gather(t, q=5)]
        return out

    assert arrivals(True) == arrivals(False)


@pytest.mark.parametrize("dist", ["constant", "exponential", "lognormal", "pareto"])
def test_delay_distributions_have_the_stated_mean(dist: str) -> None:
    d = Time(dist, mean=2.0, sigma=0.5, shape=3.0)
    draws = np.array([d.sample((7, "x", i)) for i in range(20000)])
    assert draws.min() >= 0
    assert draws.mean() == pytest.approx(2.0, rel=0.05)
    if dist != "constant":
        assert draws.std() > 0.1
    with pytest.raises(ValueError, match="unknown distribution"):
        Time("gamma")
    with pytest.raises(ValueError, match="shape"):
        Time("pareto", shape=1.0)


def test_faults_crash_omission_and_delay_by_whole_steps() -> None:
    engine, server, ids, _ = _engine(
        faults={0: Crash(2), 1: Omission(1.0), 2: Delay(3)}, step_time=1.0
    )
    server.multicast(Message(kind="model", round=1), ids)
    r1 = server.gather(1, q=5, deadline=1.5)
    assert sorted(int(m.sender) for m in r1) == [0, 3, 4]  # 1 omits, 2 is 3 steps late
    server.multicast(Message(kind="model", round=2), ids)
    r2 = server.gather(2, q=5, deadline=1.5)
    assert sorted(int(m.sender) for m in r2) == [3, 4]  # 0 crashed at round 2
    assert engine.stats["dropped"] == 3 and engine.stats["late"] == 2
    late = server.gather(1, q=1)  # the delayed round-1 reply is still in flight
    assert [int(m.sender) for m in late] == [2] and late[0].arrival == pytest.approx(4.0)


def test_lost_coordinates_are_keyed_nan_on_gradients_only() -> None:
    def payloads(seed: int) -> torch.Tensor:
        engine = LocalEngine(network=NetworkModel(seed=seed, coordinate_drop=0.5))
        seen = []

        class Big(Echo):
            def handle(self, inbox, observed=()):
                seen.extend(m.payload for m in inbox)
                return [m.reply(torch.ones(200), kind="gradient") for m in inbox]

        ids = engine.add_group("worker", 3, Big())
        server = engine.add_node("server")
        server.multicast(Message(kind="model", payload=torch.ones(200), round=1), ids)
        got = torch.stack([m.payload for m in server.gather(1, q=3)])
        assert all(not p.isnan().any() for p in seen)  # models travel whole
        return got

    a, b = payloads(0), payloads(0)
    assert torch.equal(a.isnan(), b.isnan())
    assert 0.3 < a.isnan().float().mean() < 0.7
    assert not torch.equal(a.isnan(), payloads(1).isnan())


def test_a_busy_node_queues_its_messages() -> None:
    engine, server, ids, _ = _engine(workers=1, compute=Time(mean=2.0))
    server.send(Message(kind="model", dest=ids[0], round=1))
    server.send(Message(kind="model", dest=ids[0], round=2))
    got = server.recv(2)
    assert [(m.round, m.arrival) for m in got] == [(1, 2.0), (2, 4.0)]
    assert engine.now(ids[0]) == pytest.approx(4.0)


def test_reactive_nodes_that_never_stop_talking_are_caught() -> None:
    engine = LocalEngine()

    class PingPong:
        def handle(self, inbox, observed=()):
            return [
                Message(kind="ping", dest=(int(m.dest) + 1) % 2 + a, sender=int(m.dest))
                for m in inbox
                for a in [engine.nodes("peer")[0]]
            ]

    peers = engine.add_group("peer", 2, PingPong())
    server = engine.add_node("server")
    server.send(Message(kind="ping", dest=peers[0]))
    with pytest.raises(RuntimeError, match="kept messaging each other"):
        server.recv(1)


def test_clock_of_a_fresh_engine_and_unknown_nodes() -> None:
    engine, server, ids, _ = _engine()
    assert engine.clock == 0.0 and server.clock == 0.0
    with pytest.raises(ValueError, match="unknown node"):
        engine.now(99)
    assert not math.isnan(engine.now(ids[0]))


@pytest.mark.parametrize("history", [1, 2, 3])
@pytest.mark.parametrize("blocked_last", [False, True])
def test_a_multicast_leaves_what_sends_one_by_one_leave(history: int, blocked_last: bool) -> None:
    """The engine's multicast copies only the messages the adversary's memory keeps (the last
    ``history``); its memory, counters and messages in flight equal those of one ``send`` per
    destination, also when the topology blocks the last destination."""
    from byzlearn.engines.topology import Explicit

    def run(multicast: bool) -> LocalEngine:
        engine = LocalEngine(network=NetworkModel(), history=history)
        ids = engine.add_group("worker", 5, Echo())
        engine.add_group("byzantine", 2, Echo(), adversary=True)
        server = engine.add_node("server")
        everyone = [*ids, 5, 6]
        if blocked_last:  # no edge from the server to the last destination
            edges = [(d, server.id) for d in ids[:-1]]
            engine.set_topology(Explicit([*everyone, server.id], edges))
        msg = Message(kind="model", payload=torch.ones(3), round=1)
        if multicast:
            server.multicast(msg, ids)
        else:
            for dest in ids:
                server.send(msg.to(dest))
        return engine

    def memory(engine: LocalEngine) -> dict:
        return {s: [(m.dest, m.seq, m.sent_at) for m in kept] for s, kept in engine._seen.items()}

    a, b = run(True), run(False)
    assert memory(a) == memory(b)
    assert a.stats == b.stats
    assert [(m.dest, m.seq, m.arrival) for m in a._pending] == [
        (m.dest, m.seq, m.arrival) for m in b._pending
    ]
    kept = a._seen[7]
    assert len(kept) == min(history, 4 if blocked_last else 5)
    assert kept[-1].dest == (ids_of(a)[-2] if blocked_last else ids_of(a)[-1])
    assert not any(m is p for m in kept for p in a._pending)  # copies, not those in flight
    assert a.stats["blocked"] == (1 if blocked_last else 0)


def ids_of(engine: LocalEngine) -> list[int]:
    return engine.nodes("worker")


def test_constant_compute_time_only_when_every_node_and_round_take_the_same() -> None:
    assert NetworkModel(compute=Time("constant", 0.5)).constant_compute_time() == 0.5
    assert NetworkModel(compute=Time("exponential", 0.5)).constant_compute_time() is None
    straggler = NetworkModel(compute=Time("constant", 0.5), slowdown={3: 2.0})
    assert straggler.constant_compute_time() is None
