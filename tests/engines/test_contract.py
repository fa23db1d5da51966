"""The engine contract: every engine (``FACTORIES``) must pass these tests.

Nodes and stamping, impostors, topology, deadline semantics, late messages, several messages
per member per delivery, the adversary's view, determinism under a seed, and checkpoints with
messages in flight. A new engine adds its name (and factory) to ``FACTORIES``.

Handlers report what they saw through their replies (a handler may run in another process).
The tests that check simulated times (``simulated(make)``) run on engines with a simulated
clock only; the ``ray`` engine (wall-clock time, marked ``ray``, skipped without the extra)
has their real-time counterparts in ``tests/engines/test_ray.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import pytest
import torch

from byzlearn.engines import (
    STATS,
    Delay,
    Engine,
    LocalEngine,
    Message,
    NetworkModel,
    Ring,
)

Factory = Callable[..., Engine]


def _local(**network) -> Engine:
    return LocalEngine(network=NetworkModel(**network))


def _ray(**network) -> Engine:
    from byzlearn.engines.ray_engine import RayEngine

    return RayEngine(network=NetworkModel(**network), actors=1)


FACTORIES: dict[str, Factory] = {"local": _local, "ray": _ray}
SIMULATED = {"local"}  # engines with a simulated clock
MARKS = {"ray": [pytest.mark.ray, pytest.mark.timeout(60)]}


@pytest.fixture(params=[pytest.param(k, marks=MARKS.get(k, [])) for k in sorted(FACTORIES)])
def make(request) -> Iterator[Factory]:
    if request.param == "ray":
        request.getfixturevalue("ray_instance")
    made: list[Engine] = []

    def factory(**network) -> Engine:
        made.append(FACTORIES[request.param](**network))
        return made[-1]

    factory.simulated = request.param in SIMULATED  # type: ignore[attr-defined]
    yield factory
    for engine in made:
        close = getattr(engine, "close", None)
        if close is not None:
            close()


def simulated(make: Factory) -> None:
    """Skip on engines without a simulated clock (their real-time tests are elsewhere)."""
    if not make.simulated:  # type: ignore[attr-defined]
        pytest.skip("simulated time only (real-time counterpart in test_ray.py)")


class Echo:
    """Answers each message with ``[member, round, payload]``; records its calls."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[int, int]]] = []

    def handle(self, inbox: Sequence[Message], observed: Sequence[Message] = ()) -> list[Message]:
        self.calls.append([(int(m.dest), m.round) for m in inbox])
        out = []
        for m in inbox:
            value = float(m.payload) if isinstance(m.payload, (int, float)) else 0.0
            out.append(m.reply(torch.tensor([float(m.dest), float(m.round), value]), kind="echo"))
        return out


class Impostor(Echo):
    """Answers under the id of ``victim`` (a node of another group)."""

    def __init__(self, victim: int) -> None:
        super().__init__()
        self.victim = victim

    def handle(self, inbox, observed=()):
        out = super().handle(inbox, observed)
        for r in out:
            r.sender = self.victim
        return out


class Spy:
    """The adversary: answers with the sum of the honest payloads it observed."""

    def __init__(self) -> None:
        self.views: list[list[int]] = []

    def handle(self, inbox, observed=()):
        answers = [m for m in observed if m.kind == "echo"]  # (the server's asks are seen too)
        self.views.append(sorted(int(m.sender) for m in answers))
        total = sum(float(m.payload[0]) for m in answers)
        return [m.reply(torch.tensor([total, 0.0, 0.0]), kind="echo") for m in inbox]


KEPT: list[object] = []  # payloads seen by Keep when it runs in this process


class Keep(Echo):
    """Echo that says whether every message of a delivery shares one payload object."""

    def handle(self, inbox, observed=()):
        KEPT.extend(m.payload for m in inbox)
        out = super().handle(inbox, observed)
        for r in out:
            r.meta["shared"] = all(m.payload is inbox[0].payload for m in inbox)
        return out


def _star(engine: Engine, workers: int = 4, handler=None):
    ids = engine.add_group("worker", workers, handler or Echo())
    server = engine.add_node("server")
    return server, ids


def test_ids_are_allocated_by_registration_order_and_roles_are_kept(make) -> None:
    engine = make()
    server = engine.add_node("server")
    workers = engine.add_group("worker", 3, Echo())
    assert server.id == 0 and workers == [1, 2, 3]
    assert engine.nodes("worker") == [1, 2, 3] and engine.nodes() == [0, 1, 2, 3]
    assert engine.role_of(0) == "server" and server.role == "server"
    with pytest.raises(ValueError, match="already registered"):
        engine.attach([1], Echo())
    with pytest.raises(ValueError, match="not reserved"):
        engine.attach([99], Echo())


def test_sender_and_role_are_stamped_from_registration(make) -> None:
    engine = make()
    server, ids = _star(engine)
    msg = Message(kind="ask", payload=1.0, dest=ids[0], round=1)
    msg.sender, msg.role = ids[1], "worker"  # a forged claim is overwritten
    server.send(msg)
    (reply,) = server.recv(1)
    assert msg.sender == server.id and msg.role == "server"
    assert reply.sender == ids[0] and reply.role == "worker" and reply.kind == "echo"
    assert reply.reply_to == msg.seq and reply.round == 1


def test_impostor_messages_are_dropped_and_counted(make) -> None:
    engine = make()
    honest = engine.add_group("worker", 3, Echo())
    liars = engine.add_group("worker", 2, Impostor(victim=honest[0]))
    server = engine.add_node("server")
    server.multicast(Message(kind="ask", round=1), honest + liars)
    got = server.recv(5)
    assert sorted(int(m.sender) for m in got) == honest  # no reply under node 0's id twice
    assert engine.stats["impostor"] == 2


def test_multicast_shares_one_payload_and_reply_fills_the_fields(make) -> None:
    engine = make()
    server, ids = _star(engine, 3, Keep())
    payload = torch.ones(5)
    server.multicast(Message(kind="model", payload=payload, round=2, version=7), ids)
    replies = server.gather(2, q=3, kind="echo")
    assert all(m.meta["shared"] for m in replies)  # one payload object in the delivery
    if make.simulated:  # in process: the very object sent
        assert all(p is payload for p in KEPT)
    assert sorted(int(m.sender) for m in replies) == ids
    assert all(m.version == 7 and m.dest == server.id for m in replies)


def test_several_messages_per_member_in_one_delivery_each_with_its_round(make) -> None:
    engine = make()
    echo = Echo()
    server, ids = _star(engine, 2, echo)
    for t in (3, 4, 5):
        server.send(Message(kind="ask", payload=float(10 * t), dest=ids[0], round=t))
    server.send(Message(kind="ask", payload=1.0, dest=ids[1], round=9))
    replies = server.recv(4)
    by_round = {m.round: m.payload.tolist() for m in replies if m.sender == ids[0]}
    assert by_round == {3: [ids[0], 3, 30.0], 4: [ids[0], 4, 40.0], 5: [ids[0], 5, 50.0]}
    if not make.simulated:
        return
    # a member handles its messages one at a time: answers leave 1 s apart
    times = sorted(m.arrival for m in replies if m.sender == ids[0])
    assert times == pytest.approx([1.0, 2.0, 3.0])


def test_deadline_moves_the_clock_and_late_messages_stay_in_flight(make) -> None:
    simulated(make)
    engine = make(compute=Delay(mean=1.0))
    server, ids = _star(engine, 3)
    engine_net = engine.network  # type: ignore[attr-defined]
    engine_net.slowdown = {ids[2]: 5.0}  # answers at t = 5
    server.multicast(Message(kind="ask", round=1), ids)
    early = server.gather(1, q=3, deadline=2.0)
    assert len(early) == 2 and server.clock == pytest.approx(2.0)  # fewer than q: the deadline
    assert engine.stats["late"] == 1 and engine.stats["in_flight"] == 1
    late = server.gather(1, q=1, deadline=10.0)  # still in flight: delivered later
    assert [int(m.sender) for m in late] == [ids[2]] and server.clock == pytest.approx(5.0)
    assert engine.stats["late"] == 1 and engine.stats["in_flight"] == 0


def test_q_met_before_the_deadline_stops_the_clock_at_the_qth_arrival(make) -> None:
    simulated(make)
    engine = make(compute=Delay(mean=1.0))
    server, ids = _star(engine, 3)
    engine.network.slowdown = {ids[1]: 2.0, ids[2]: 3.0}  # type: ignore[attr-defined]
    server.multicast(Message(kind="ask", round=1), ids)
    got = server.gather(1, q=2, deadline=10.0)
    assert [int(m.sender) for m in got] == [ids[0], ids[1]]
    assert server.clock == pytest.approx(2.0)
    assert engine.stats["late"] == 0  # not taken, but q was met: not late


def test_discarded_messages_are_counted_never_lost_silently(make) -> None:
    engine = make()
    server, ids = _star(engine, 3)
    server.multicast(Message(kind="ask", round=1), ids)
    assert len(server.gather(1, q=1)) == 1
    assert server.discard(lambda m: m.round == 1) == 2
    stats = engine.stats
    assert stats["discarded"] == 2 and stats["in_flight"] == 0
    assert stats["sent"] == stats["delivered"] + stats["discarded"] - 0  # 3 asks + 3 answers
    assert stats["delivered"] == 3 + 1


def test_recv_without_deadline_returns_fewer_when_nothing_more_can_arrive(make) -> None:
    engine = make()
    server, ids = _star(engine, 2)
    server.send(Message(kind="ask", dest=ids[0], round=1))
    got = server.recv(5)
    assert len(got) == 1
    assert server.clock == pytest.approx(1.0) if make.simulated else server.clock >= 0


def test_topology_blocks_and_counts_missing_edges(make) -> None:
    engine = make()
    ids = engine.add_group("worker", 3, Echo())
    server = engine.add_node("server")
    engine.set_topology(Ring([*ids, server.id]))  # server linked to ids[2] and ids[0]
    server.multicast(Message(kind="ask", round=1), ids)
    got = server.recv(3)
    assert sorted(int(m.sender) for m in got) == [ids[0], ids[2]]
    assert engine.stats["blocked"] == 1


def test_the_adversary_moves_last_and_sees_the_honest_messages_sent_by_then(make) -> None:
    simulated(make)
    engine = make()
    spy = Spy()
    byz = engine.add_group("worker", 2, spy, adversary=True)  # registered first, runs last
    honest = engine.add_group("worker", 3, Echo())
    server = engine.add_node("server")
    engine.network.slowdown = {honest[2]: 3.0}  # type: ignore[attr-defined]
    server.multicast(Message(kind="ask", round=1), byz + honest)
    replies = server.recv(5)
    assert spy.views == [honest[:2]]  # the straggler's answer leaves after the adversary's
    by_sender = {int(m.sender): m for m in replies}
    assert float(by_sender[byz[0]].payload[0]) == honest[0] + honest[1]


def test_same_seed_same_schedule_different_seed_different(make) -> None:
    simulated(make)
    def schedule(seed: int) -> list[tuple[int, float]]:
        engine = make(
            seed=seed,
            compute=Delay("exponential", 1.0),
            link=Delay("lognormal", 0.2, sigma=0.5),
        )
        server, ids = _star(engine, 6)
        out = []
        for t in (1, 2):
            server.multicast(Message(kind="ask", round=t), ids)
            out += [(int(m.sender), round(m.arrival, 9)) for m in server.gather(t, q=6)]
        return out

    assert schedule(3) == schedule(3)
    assert schedule(3) != schedule(4)


def test_checkpoint_with_messages_in_flight_resumes_identically(make, tmp_path) -> None:
    simulated(make)
    def build():
        engine = make(seed=1, compute=Delay("exponential", 1.0))
        server, ids = _star(engine, 5)
        return engine, server, ids

    def rounds(engine, server, ids, ts):
        out = []
        for t in ts:
            server.discard(lambda m, t=t: m.round < t)
            server.multicast(Message(kind="ask", round=t), ids)
            got = server.gather(t, q=3, deadline=1.5)
            out.append(([int(m.sender) for m in got], round(server.clock, 9)))
        return out

    engine_full, server, ids = build()
    full = rounds(engine_full, server, ids, range(1, 7))
    engine, server, ids = build()
    first = rounds(engine, server, ids, range(1, 4))
    state = engine.state_dict()
    assert state["mail"][server.id]  # late answers in flight at the checkpoint
    torch.save(state, tmp_path / "engine.pt")
    restored = torch.load(tmp_path / "engine.pt", weights_only=True)  # plain data only
    engine2, server2, ids2 = build()
    engine2.load_state_dict(restored)
    assert first + rounds(engine2, server2, ids2, range(4, 7)) == full
    assert engine2.stats == engine_full.stats


def test_stats_name_every_counter(make) -> None:
    stats = make().stats
    assert set(STATS) <= set(stats) and stats["in_flight"] == 0
    assert all(v == 0 for v in stats.values())


def test_bad_calls_raise_clear_errors(make) -> None:
    engine = make()
    server, ids = _star(engine, 2)
    with pytest.raises(ValueError, match="no destination"):
        server.send(Message(kind="ask"))
    with pytest.raises(ValueError, match="unknown or unregistered node 42"):
        server.send(Message(kind="ask", dest=42))
    with pytest.raises(ValueError, match="deadline"):
        server.recv(1, deadline=-1.0)
    with pytest.raises(ValueError, match="deadline"):
        server.recv(1, deadline=math.inf)
    with pytest.raises(ValueError, match="not a driven node"):
        engine.send(ids[0], Message(kind="ask", dest=server.id))


def test_every_message_sent_is_delivered_discarded_dropped_blocked_or_in_flight(make) -> None:
    simulated(make)
    from byzlearn.attacks import Omission

    engine = make(seed=4, compute=Delay("exponential", 1.0), faults={1: Omission(0.5)})
    honest = engine.add_group("worker", 4, Echo())
    liars = engine.add_group("worker", 2, Impostor(victim=honest[0]))
    server = engine.add_node("server")
    engine.set_topology(Ring([*honest, *liars, server.id], k=2))
    for t in range(1, 6):
        server.discard(lambda m, t=t: m.round < t)
        server.multicast(Message(kind="ask", round=t), honest + liars)
        server.gather(t, q=3, deadline=0.5)
    s = engine.stats
    assert s["sent"] == s["delivered"] + s["discarded"] + s["dropped"] + s["blocked"] + s[
        "in_flight"
    ]
    assert s["dropped"] > 0 and s["blocked"] > 0 and s["impostor"] > 0 and s["late"] > 0


def test_match_all_is_true_when_every_given_condition_is() -> None:
    from byzlearn.engines.base import match_all

    msgs = [Message(kind=k, round=r, dest=d) for k in ("a", "b") for r in (1, 2) for d in (0, 1)]
    conditions = [lambda m: m.kind == "a", lambda m: m.round == 2, lambda m: m.dest == 1]
    for count in range(1, 4):
        for with_none in (False, True):
            given = conditions[:count] + ([None] if with_none else [])
            match = match_all(*given)
            expected = [all(c(m) for c in conditions[:count]) for m in msgs]
            assert [bool(match(m)) for m in msgs] == expected
