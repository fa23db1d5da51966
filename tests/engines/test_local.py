"""The local engine: round tagging, first-q gathering, deadlines, faults, the omniscient group."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from byzlearn.attacks.behaviours import Crash, Delay, Omission
from byzlearn.engines import LocalEngine, Message

SERVER = 100


class Echo:
    """Replies to each request with the member's id as payload; records its calls."""

    def __init__(self, compute: dict[int, float] | None = None) -> None:
        self.calls: list[list[int]] = []

    def handle(self, inbox: Sequence[Message], observed: Sequence[Message] = ()) -> list[Message]:
        self.calls.append([m.dest for m in inbox])
        return [
            Message(
                sender=m.dest,
                role="worker",
                round=m.round,
                version=m.version,
                payload=torch.tensor([float(m.dest)]),
                dest=m.sender,
            )
            for m in inbox
        ]


class Spy:
    """Omniscient group: replies with the sum of the payloads it observed."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def handle(self, inbox: Sequence[Message], observed: Sequence[Message] = ()) -> list[Message]:
        self.seen = sorted(m.sender for m in observed)
        total = sum(float(m.payload[0]) for m in observed)
        return [
            Message(m.dest, "worker", m.round, m.version, torch.tensor([total]), dest=m.sender)
            for m in inbox
        ]


def _request(t: int) -> Message:
    return Message(sender=SERVER, role="server", round=t, version=t - 1, payload=None)


def _engine(**kw) -> tuple[LocalEngine, Echo]:
    engine = LocalEngine(**kw)
    group = Echo()
    engine.add_group(range(5), "worker", group)
    return engine, group


def test_broadcast_and_gather_all_in_one_vectorised_call() -> None:
    engine, group = _engine()
    engine.broadcast(_request(1), role="worker")
    replies = engine.gather(SERVER, round=1, q=5)
    assert [m.sender for m in replies] == [0, 1, 2, 3, 4]
    assert group.calls == [[0, 1, 2, 3, 4]]  # one call for the whole group
    assert all(m.round == 1 and m.dest == SERVER for m in replies)


def test_loop_mode_calls_each_member_alone() -> None:
    engine, group = _engine(vectorise=False)
    engine.broadcast(_request(1), role="worker")
    assert len(engine.gather(SERVER, round=1, q=5)) == 5
    assert group.calls == [[0], [1], [2], [3], [4]]


def test_gather_first_q_by_arrival_then_stale_replies_dropped() -> None:
    # node 0 is the slowest, so it is not among the first 4
    engine, _ = _engine(compute_time={0: 5.0, 1: 1.0, 2: 2.0, 3: 1.5, 4: 3.0})
    engine.broadcast(_request(1), role="worker")
    first = engine.gather(SERVER, round=1, q=4)
    assert [m.sender for m in first] == [1, 3, 2, 4]
    assert engine.clock == pytest.approx(3.0)
    # next round: the leftover round-1 reply of node 0 is stale and never mixed in
    engine.broadcast(_request(2), role="worker")
    second = engine.gather(SERVER, round=2, q=5)
    assert {m.round for m in second} == {2}
    assert len(second) == 5
    assert engine.dropped == 1


def test_deadline_returns_what_arrived_in_time() -> None:
    engine, _ = _engine(compute_time={0: 5.0, 1: 1.0, 2: 2.0, 3: 1.5, 4: 3.0})
    engine.broadcast(_request(1), role="worker")
    got = engine.gather(SERVER, round=1, q=5, deadline=2.5)
    assert sorted(m.sender for m in got) == [1, 2, 3]


def test_faults_crash_omission_delay() -> None:
    faults = {0: Crash(2), 1: Omission(1.0), 2: Delay(3)}
    engine, _ = _engine(faults=faults)
    engine.broadcast(_request(1), role="worker")
    r1 = engine.gather(SERVER, round=1, q=5, deadline=1.5)
    assert sorted(m.sender for m in r1) == [0, 3, 4]  # 1 omits, 2 is late
    engine.broadcast(_request(2), role="worker")
    r2 = engine.gather(SERVER, round=2, q=5, deadline=1.5)
    assert sorted(m.sender for m in r2) == [3, 4]  # 0 crashed at round 2
    assert engine.dropped >= 3


def test_omniscient_group_moves_last_and_sees_the_honest_replies() -> None:
    engine = LocalEngine()
    spy = Spy()
    engine.add_group([5, 6], "worker", spy, omniscient=True)  # registered first, runs last
    engine.add_group(range(5), "worker", Echo())
    engine.broadcast(_request(1), role="worker")
    replies = engine.gather(SERVER, round=1, q=7)
    assert spy.seen == [0, 1, 2, 3, 4]
    byz = [m for m in replies if m.sender in (5, 6)]
    assert [float(m.payload[0]) for m in byz] == [10.0, 10.0]


def test_coordinate_drop_is_seeded_nan() -> None:
    def payloads(seed: int) -> torch.Tensor:
        engine = LocalEngine(seed=seed, coordinate_drop=0.5)

        class Big(Echo):
            def handle(self, inbox, observed=()):
                out = super().handle(inbox, observed)
                for m in out:
                    m.payload = torch.ones(200)
                return out

        engine.add_group(range(3), "worker", Big())
        engine.broadcast(_request(1), role="worker")
        return torch.stack([m.payload for m in engine.gather(SERVER, 1, q=3)])

    a, b = payloads(0), payloads(0)
    assert torch.equal(a.isnan(), b.isnan())
    assert 0.3 < a.isnan().float().mean() < 0.7
    assert not torch.equal(a.isnan(), payloads(1).isnan())


def test_duplicate_registration_and_missing_destination_raise() -> None:
    engine, _ = _engine()
    with pytest.raises(ValueError, match="already registered"):
        engine.add_group([3], "worker", Echo())
    with pytest.raises(ValueError, match="destination"):
        engine.send(_request(1))


def test_state_dict_roundtrip() -> None:
    engine, _ = _engine(compute_time=2.0)
    engine.broadcast(_request(1), role="worker")
    engine.gather(SERVER, 1, q=5)
    state = engine.state_dict()
    other, _ = _engine()
    other.load_state_dict(state)
    assert other.clock == engine.clock == pytest.approx(2.0)
