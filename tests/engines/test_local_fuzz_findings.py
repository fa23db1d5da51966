"""Regression tests for what differential fuzzing of the local engine found (each failed before
its fix)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from byzlearn.engines import Delay, LocalEngine, Message, NetworkModel, Node
from byzlearn.engines.topology import ErdosRenyi, Explicit, RandomRegular, Ring


class Holder:
    """Answers each message with a model it holds: no compute time (``computed=False``)."""

    def handle(self, inbox: Sequence[Message], observed: Sequence[Message] = ()) -> list[Message]:
        out = []
        for m in inbox:
            reply = m.reply(None, kind="model")
            reply.computed = False
            out.append(reply)
        return out


@pytest.mark.parametrize("vectorise", [True, False])
def test_equal_arrivals_break_ties_the_same_way_with_or_without_vectorisation(
    vectorise: bool,
) -> None:
    """Both answers leave at 0 and arrive together; the per-message loop ordered its calls (and
    so the replies' sequence numbers, the tie-break) by the finish times the messages would have
    had if they took compute time (worker 0 is slower), so ``recv(1)`` took worker 1's answer
    where the vectorised call took worker 0's."""
    engine = LocalEngine(
        vectorise=vectorise,
        network=NetworkModel(compute=Delay(mean=1.0), slowdown={0: 2.0}),
    )
    ids = engine.add_group("worker", 2, Holder())
    server = engine.add_node("server")
    server.multicast(Message(kind="pull", round=1), ids)
    (first,) = server.recv(1)
    assert (first.sender, first.arrival) == (ids[0], 0.0)


class Echo:
    def handle(self, inbox: Sequence[Message], observed: Sequence[Message] = ()) -> list[Message]:
        return [m.reply(None, kind="echo") for m in inbox]


def _star() -> tuple[LocalEngine, Node, list[int]]:
    engine = LocalEngine()
    ids = engine.add_group("worker", 2, Echo())
    return engine, engine.add_node("server"), ids


@pytest.mark.parametrize("dest", [1.5, "1", True, 2.0])
def test_a_destination_that_is_not_an_int_is_refused_not_lost(dest: object) -> None:
    """``dest=1.5`` was admitted as node 1 but never matched node 1's members: the message
    vanished (counted sent, never delivered nor in flight)."""
    engine, server, _ = _star()
    with pytest.raises(TypeError, match="message destination must be an int, got"):
        server.send(Message(kind="ask", dest=dest))
    with pytest.raises(TypeError, match="message destination must be an int, got"):
        server.multicast(Message(kind="ask"), [dest])
    server.send(Message(kind="ask", dest=np.int64(1)))  # a numpy integer is an id
    (reply,) = server.recv(5)
    assert reply.sender == 1 and type(reply.dest) is int
    s = engine.stats
    assert s["sent"] == s["delivered"] + s["in_flight"] + s["dropped"] + s["blocked"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda e, s: s.send(Message(kind="ask", dest=0, round=1.5)), "message round must be"),
        (lambda e, s: s.send(Message(kind="ask", dest=0, round=-1)), "message round must be"),
        (lambda e, s: s.recv(1.5), "q must be an int"),
        (lambda e, s: s.recv(None), "q must be an int"),
        (lambda e, s: s.recv(1, deadline=True), "deadline must be a number"),
        (lambda e, s: s.recv(1, deadline="2"), "deadline must be a number"),
        (lambda e, s: e.reserve("worker", 2.5), "count must be an int"),
        (lambda e, s: e.driven(2.5), "a node id must be an int"),
        (lambda e, s: e.send("server", Message(kind="ask", dest=0)), "a node id must be an int"),
        (lambda e, s: e.now("0"), "a node id must be an int"),
        (lambda e, s: e.compute(s.id, 1.5), "round must be an int"),
        (lambda e, s: e.alarm([0], "soon", 1), "alarm's time must be a number"),
        (lambda e, s: e.alarm([0], 1.0, 1.5), "alarm's round must be an int"),
        (lambda e, s: e.set_topology("ring"), "topology must be a Topology"),
    ],
)
def test_bad_arguments_get_one_line_naming_them(call, message: str) -> None:
    """Each was truncated by ``int()`` (q 1.5 as 1, node 2.5 as node 2, count 2.5 as 2, a bool
    deadline as 1 s), failed deep inside (``could not convert string to float``, a key part
    that is a float) or only at the first send (a topology that is a str)."""
    engine, server, _ = _star()
    with pytest.raises((TypeError, ValueError), match=message):
        call(engine, server)


def test_an_alarm_with_one_bad_node_sets_none() -> None:
    engine, server, ids = _star()
    with pytest.raises(ValueError, match="not a reactive node"):
        engine.alarm([ids[0], server.id], 1.0, 1)
    assert engine.stats["alarms"] == 0 and engine.stats["in_flight"] == 0


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Ring(range(5), 1.5), "ring: k must be an int"),
        (lambda: Ring(range(5), True), "ring: k must be an int"),
        (lambda: Ring([0.5, 1.5, 2.5]), "topology: a node id must be an int"),
        (lambda: ErdosRenyi(range(5), "0.5"), "erdos_renyi: p must be a number"),
        (lambda: ErdosRenyi(range(5), 0.5, seed=-3), "erdos_renyi: seed must be an integer >= 0"),
        (lambda: RandomRegular(range(6), 2.5), "random_regular: degree must be an int"),
        (lambda: RandomRegular(range(6), 2, seed=1.5), "random_regular: seed must be an int"),
        (lambda: Explicit([0, 1, 2], [(0,)]), "an edge is a pair of node ids"),
        (lambda: Explicit([0, 1, 2], [(0, 1.5)]), "a node id in an edge must be an int"),
        (lambda: LocalEngine(topology="ring"), "topology must be a Topology"),  # type: ignore[arg-type]
        (lambda: LocalEngine(network="fast"), "network must be a NetworkModel"),  # type: ignore[arg-type]
    ],
)
def test_bad_topology_parameters_get_one_line(build, message: str) -> None:
    """Each failed deep inside (``'float' object cannot be interpreted as an integer``, a key
    part that is a float, ``not enough values to unpack``) or was truncated (node 0.5 as 0,
    ``k=True`` as 1)."""
    with pytest.raises((TypeError, ValueError), match=message):
        build()


class Tick:
    """A reactive node answering its timer with one message to ``dest``."""

    def __init__(self, dest: int) -> None:
        self.dest = dest

    def handle(self, inbox: Sequence[Message], observed: Sequence[Message] = ()) -> list[Message]:
        return [
            Message(kind="tick", dest=self.dest, sender=int(m.dest), round=m.round, reply_to=m.seq)
            for m in inbox
        ]


def _accounted(engine: LocalEngine) -> bool:
    s = engine.stats
    return (
        s["sent"] == s["delivered"] + s["discarded"] + s["dropped"] + s["blocked"] + s["in_flight"]
    )


def test_timers_are_neither_delivered_nor_in_flight() -> None:
    """An alarm is not a network message (counted in ``alarms``, not ``sent``), yet a pending one
    was counted ``in_flight`` and a fired one ``delivered``: ``sent = delivered + discarded +
    dropped + blocked + in_flight`` failed with timers (LiuBei starts every step with them)."""
    engine = LocalEngine()
    ids = engine.add_group("server", 2, Tick(dest=2))
    peer = engine.add_node("peer")
    engine.alarm(ids, 1.0, 1)
    assert engine.stats["in_flight"] == 0 and _accounted(engine)
    engine.settle()
    assert engine.stats["delivered"] == 0 and engine.stats["in_flight"] == 2
    assert _accounted(engine)
    assert len(peer.recv(2)) == 2
    s = engine.stats
    assert (s["alarms"], s["sent"], s["delivered"], s["in_flight"]) == (2, 2, 2, 0)


def test_a_pending_timer_survives_a_checkpoint_as_a_timer() -> None:
    def build() -> tuple[LocalEngine, Node, list[int]]:
        engine = LocalEngine()
        ids = engine.add_group("server", 2, Tick(dest=2))
        return engine, engine.add_node("peer"), ids

    full, peer, ids = build()
    full.alarm(ids, 1.0, 1)
    resumed, _, _ = build()
    resumed.alarm(ids, 1.0, 1)
    fresh, peer3, _ = build()
    fresh.load_state_dict(resumed.state_dict())
    assert fresh.stats == full.stats
    assert [m.arrival for m in peer3.recv(2)] == [m.arrival for m in peer.recv(2)]
    assert fresh.stats == full.stats and _accounted(fresh)
