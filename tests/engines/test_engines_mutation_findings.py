"""Tests closing gaps found by mutation testing of the local engine's bookkeeping.

Each test fails on a plausible bug (a mutant) that every earlier test let through.
"""

from __future__ import annotations

import torch

from byzlearn.engines import LocalEngine, Message


def test_the_adversary_observes_each_honest_senders_latest_message() -> None:
    """Of an honest node's messages the adversary's view holds the latest sent (by send time,
    then by order of sending), not the first."""
    engine = LocalEngine(history=3)
    honest = engine.add_node("peer")
    sink = engine.add_node("sink")
    spy = engine.add_node("byzantine", adversary=True)
    honest.send(Message(kind="vector", dest=sink.id, round=1, payload=torch.tensor([1.0])))
    honest.compute(1)  # later send time
    honest.send(Message(kind="vector", dest=sink.id, round=2, payload=torch.tensor([2.0])))
    honest.send(Message(kind="vector", dest=sink.id, round=2, payload=torch.tensor([3.0])))
    (seen,) = spy.observe()
    assert seen.sender == honest.id and float(seen.payload[0]) == 3.0
    (first_round,) = spy.observe(lambda m: m.round == 1)
    assert float(first_round.payload[0]) == 1.0


class _Echo:
    def handle(self, inbox, observed=()):
        return [m.reply(m.payload, kind="answer") for m in inbox]


def test_a_late_message_taken_later_is_no_longer_late() -> None:
    """A reply arriving after a deadline is counted late once and stays in flight; once a
    later ``recv`` takes it, it is delivered and leaves the late set (checkpoints keep only
    the messages still in flight)."""
    engine = LocalEngine()
    (worker,) = engine.add_group("worker", 1, _Echo())
    server = engine.add_node("server")
    server.send(Message(kind="ask", dest=worker, round=1, payload=1.0))
    assert server.recv(1, deadline=0.5) == []  # the answer takes the compute time, 1.0
    assert engine.stats["late"] == 1 and engine.state_dict()["late"] != []
    (answer,) = server.recv(1)
    assert answer.payload == 1.0
    assert engine.state_dict()["late"] == [] and engine.stats["late"] == 1


def test_a_message_arriving_exactly_at_the_deadline_is_in_time() -> None:
    engine = LocalEngine()
    (worker,) = engine.add_group("worker", 1, _Echo())
    server = engine.add_node("server")
    server.send(Message(kind="ask", dest=worker, round=1, payload=2.0))
    (answer,) = server.recv(1, deadline=1.0)  # compute time 1.0, no link delay
    assert answer.arrival == 1.0 and engine.stats["late"] == 0


def test_a_late_message_is_counted_late_once_over_several_deadlines() -> None:
    engine = LocalEngine()
    (worker,) = engine.add_group("worker", 1, _Echo())
    server = engine.add_node("server")
    server.send(Message(kind="ask", dest=worker, round=1, payload=3.0))
    assert server.recv(1, deadline=0.25) == []
    assert server.recv(1, deadline=0.25) == []  # clock 0.5, the answer still on its way
    assert engine.stats["late"] == 1


def test_receiving_a_message_that_arrived_earlier_never_moves_the_clock_back() -> None:
    engine = LocalEngine()
    (worker,) = engine.add_group("worker", 1, _Echo())
    server = engine.add_node("server")
    server.send(Message(kind="ask", dest=worker, round=1, payload=4.0))
    server.compute(1)
    server.compute(2)  # clock 2.0; the answer arrived at 1.0
    (answer,) = server.recv(1)
    assert answer.arrival == 1.0 and server.clock == 2.0
