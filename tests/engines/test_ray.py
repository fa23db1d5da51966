"""The ``ray`` engine on a local Ray instance (num_cpus=2): real time, real crashes, the
adversary's view, object-store transfers, checkpoints, and whole runs against the ``local``
engine. The engine-independent contract runs on it in ``test_contract.py``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest
import torch

pytest.importorskip("ray")

from byzlearn.attacks import Omission
from byzlearn.engines import Message, NetworkModel, Ring
from byzlearn.engines.ray_engine import RayEngine, Resources
from byzlearn.experiments import ConfigError, Trainer, parse_config
from tests.engines.test_contract import Echo, Impostor

pytestmark = [pytest.mark.ray, pytest.mark.timeout(90)]

HALF = {"worker": Resources(cpus=0.5)}  # four actors fit on the two CPUs


def _engine(made: list[RayEngine], **kw: Any) -> RayEngine:
    made.append(RayEngine(**kw))
    return made[-1]


class Sleepy(Echo):
    """Echo whose members in ``slow`` take ``seconds`` per message (real stragglers)."""

    def __init__(self, slow: Sequence[int] = (), seconds: float = 0.0) -> None:
        super().__init__()
        self.slow, self.seconds = set(slow), seconds

    def handle(self, inbox, observed=()):
        if any(int(m.dest) in self.slow for m in inbox):
            time.sleep(self.seconds)
        return super().handle(inbox, observed)


class Spy:
    """The adversary: answers with the sum of the honest echoes it observed, and says which
    senders it saw (in ``meta``: the handler runs in its actor)."""

    def handle(self, inbox, observed=()):
        answers = [m for m in observed if m.kind == "echo"]
        view = sorted(int(m.sender) for m in answers)
        total = sum(float(m.payload[0]) for m in answers)
        return [m.reply(torch.tensor([total, 0.0, 0.0]), kind="echo", view=view) for m in inbox]


class Counter:
    """Counts the messages it handled (state that lives in the actor)."""

    def __init__(self) -> None:
        self.count = 0

    def handle(self, inbox, observed=()):
        self.count += len(inbox)
        return [m.reply(torch.tensor([float(self.count)]), kind="count") for m in inbox]

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])


def _balanced(s: dict[str, int]) -> bool:
    keys = ("delivered", "discarded", "dropped", "blocked", "in_flight")
    return s["sent"] == sum(s[k] for k in keys)


# ---------------------------------------------------------------------- time
def test_deadline_is_real_time_and_late_answers_stay_in_flight(engines) -> None:
    engine = _engine(engines, actors=2)  # actors: [0, 1] and [2]
    ids = engine.add_group("worker", 3, Sleepy(slow=[2], seconds=2.5))
    server = engine.add_node("server")
    engine.start()  # (the first delivery would start the actors otherwise)
    server.multicast(Message(kind="ask", round=1), ids)
    start = server.clock
    early = server.gather(1, q=3, deadline=1.0)
    assert sorted(int(m.sender) for m in early) == ids[:2]
    assert server.clock == pytest.approx(start + 1.0, abs=0.05)  # the deadline
    late = server.gather(1, q=1, deadline=20.0)
    assert [int(m.sender) for m in late] == [ids[2]]
    assert start + 2.5 < server.clock < start + 20.0  # the straggler's real arrival
    s = engine.stats
    assert s["late"] == 1 and s["in_flight"] == 0 and _balanced(s)


def test_q_met_before_the_deadline_returns_at_the_qth_arrival(engines) -> None:
    engine = _engine(engines, actors=2)
    ids = engine.add_group("worker", 3, Sleepy(slow=[2], seconds=6.0))
    server = engine.add_node("server")
    engine.start()
    server.multicast(Message(kind="ask", round=1), ids)
    start = time.time()
    got = server.gather(1, q=2, deadline=20.0)
    assert sorted(int(m.sender) for m in got) == ids[:2]
    assert time.time() - start < 5.0  # did not wait for the straggler or the deadline
    assert engine.stats["late"] == 0
    server.discard(lambda m: True)


# ---------------------------------------------------------------------- the adversary
def test_the_adversary_sees_every_honest_answer_of_its_delivery_by_default(engines) -> None:
    engine = _engine(engines, actors=1)
    byz = engine.add_group("worker", 1, Spy(), adversary=True)
    honest = engine.add_group("worker", 3, Echo())
    server = engine.add_node("server")
    server.multicast(Message(kind="ask", round=1), byz + honest)
    replies = {int(m.sender): m for m in server.recv(4)}
    assert replies[byz[0]].meta["view"] == honest
    assert float(replies[byz[0]].payload[0]) == sum(honest)


def test_adversary_wait_bounds_how_long_the_adversary_waits_for_stragglers(engines) -> None:
    engine = _engine(engines, actors=2, resources=HALF, adversary_wait=1.5)
    byz = engine.add_group("worker", 1, Spy(), adversary=True)
    honest = engine.add_group("worker", 3, Sleepy(slow=[3], seconds=6.0))  # actors [1, 2], [3]
    server = engine.add_node("server")
    engine.start()
    server.multicast(Message(kind="ask", round=1), byz + honest)
    replies = {int(m.sender): m for m in server.recv(3, lambda m: m.sender != 3)}
    assert replies[byz[0]].meta["view"] == honest[:2]  # not the straggler


# ---------------------------------------------------------------------- crashes, faults
def kill_and_wait(actor, timeout: float = 30.0) -> None:
    """Kill a Ray actor and wait until it is dead (``ray.kill`` returns before the process
    goes; on a loaded machine the actor could still answer the next call)."""
    import time

    import ray
    from ray.exceptions import RayActorError

    ray.kill(actor)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            ray.get(actor.where.remote(), timeout=timeout)
        except RayActorError:
            return
        time.sleep(0.05)
    raise AssertionError("the killed actor still answers")


def test_a_killed_actor_is_a_crashed_node_and_the_rest_go_on(engines) -> None:

    engine = _engine(engines, actors=2, resources=HALF)
    ids = engine.add_group("worker", 4, Echo())  # actors: [0, 1] and [2, 3]
    server = engine.add_node("server")
    server.multicast(Message(kind="ask", round=1), ids)
    assert len(server.gather(1, q=4)) == 4
    kill_and_wait(engine.actor_of(ids[0]))
    for t in (2, 3):
        server.multicast(Message(kind="ask", round=t), ids)
        got = server.gather(t, q=4)  # no deadline: returns when nothing more can arrive
        assert sorted(int(m.sender) for m in got) == ids[2:]
    assert sorted(engine.crashed) == ids[:2]
    s = engine.stats
    assert s["crashed"] == 2 and s["dropped"] == 4 and s["in_flight"] == 0 and _balanced(s)


def test_accounting_with_omissions_impostors_topology_and_late_answers(engines) -> None:
    network = NetworkModel(seed=4, faults={1: Omission(0.5)})
    engine = _engine(engines, network=network, actors=1, resources=HALF)
    honest = engine.add_group("worker", 4, Sleepy(slow=[3], seconds=0.3))
    liars = engine.add_group("worker", 2, Impostor(victim=honest[0]))
    server = engine.add_node("server")
    engine.set_topology(Ring([*honest, *liars, server.id], k=2))
    for t in range(1, 6):
        server.discard(lambda m, t=t: m.round < t)
        server.multicast(Message(kind="ask", round=t), honest + liars)
        server.gather(t, q=4, deadline=0.1)
    s = engine.stats
    assert _balanced(s)
    assert s["dropped"] > 0 and s["blocked"] > 0 and s["impostor"] > 0


def test_lost_coordinates_are_the_local_engines_keyed_draws(engines) -> None:
    from byzlearn.engines import LocalEngine

    def answers(engine) -> list[list[bool]]:
        ids = engine.add_group("worker", 3, Echo())
        server = engine.add_node("server")
        server.multicast(Message(kind="ask", payload=1.0, round=2), ids)
        got = sorted(server.gather(2, q=3), key=lambda m: m.sender)
        return [torch.isnan(m.payload).tolist() for m in got]

    net = dict(seed=7, coordinate_drop=0.5, lossy_kinds=("echo",))
    ray_engine = _engine(engines, network=NetworkModel(**net), actors=1)
    assert answers(ray_engine) == answers(LocalEngine(network=NetworkModel(**net)))


# ---------------------------------------------------------------------- transfers
def test_a_broadcast_is_put_in_the_object_store_once(engines) -> None:
    engine = _engine(engines, actors=2)
    ids = engine.add_group("worker", 6, Echo())
    server = engine.add_node("server")
    server.multicast(Message(kind="model", payload=torch.ones(1000), round=1), ids)
    assert len(server.gather(1, q=6)) == 6
    assert engine.stats["object_puts"] == 1  # one put for six receivers on two actors
    assert engine.stats["bytes"] == 6 * 4000 + 6 * 12


# ---------------------------------------------------------------------- checkpoints
def test_checkpoint_keeps_mail_and_the_handler_state_held_in_the_actors(engines, tmp_path) -> None:
    def build():
        engine = _engine(engines, actors=1)
        ids = engine.add_group("worker", 2, Counter())
        return engine, engine.add_node("server"), ids

    engine, server, ids = build()
    for t in (1, 2):
        server.multicast(Message(kind="ask", round=t), ids)
    assert len(server.gather(1, q=2)) == 2
    state = engine.state_dict()  # waits for nothing: all answered; round 2 still in the mail
    assert state["handlers"] == [[{"count": 4}]] and len(state["mail"][server.id]) == 2
    torch.save(state, tmp_path / "engine.pt")
    engine.close()
    engine2, server2, ids2 = build()
    engine2.load_state_dict(torch.load(tmp_path / "engine.pt", weights_only=True))
    assert len(server2.gather(2, q=2)) == 2  # the saved mail
    server2.multicast(Message(kind="ask", round=3), ids2)
    got = server2.gather(3, q=2)
    assert [float(m.payload[0]) for m in got] == [6.0, 6.0]  # the count went on from 4
    assert engine2.stats["sent"] == 12 and _balanced(engine2.stats)


# ---------------------------------------------------------------------- bad input
def test_bad_settings_fail_with_one_clear_line(engines) -> None:
    too_many = _engine(engines, actors=3)  # 3 actors of 1 CPU on 2 CPUs
    too_many.add_group("worker", 3, Echo())
    server = too_many.add_node("server")
    with pytest.raises(ValueError, match="need 3 CPUs and 0 GPUs, the cluster has 2"):
        server.multicast(Message(kind="ask", round=1), [0, 1, 2]) or server.recv(1)
    typo = _engine(engines, resources={"wroker": Resources()})
    typo.add_group("worker", 1, Echo())
    server = typo.add_node("server")
    with pytest.raises(ValueError, match="role 'wroker', which no node plays"):
        server.multicast(Message(kind="ask", round=1), [0]) or server.recv(1)
    with pytest.raises(ValueError, match="cpus must be finite and >= 0"):
        Resources(cpus=-1)
    # num_cpus with an address used to be ignored silently (the cluster's CPUs count)
    with pytest.raises(ValueError, match="with an address the cluster's own CPUs count"):
        RayEngine(address="auto", num_cpus=4)


def test_the_config_refuses_what_real_time_cannot_honour() -> None:
    ok = parse_config({"engine": {"name": "ray", "actors": 2, "resources": {"worker": {}}}})
    assert ok.engine.name == "ray" and ok.engine.resources["worker"].cpus == 1.0
    with pytest.raises(ConfigError, match="engine: num_cpus sizes the local instance"):
        parse_config({"engine": {"name": "ray", "address": "auto", "num_cpus": 2}})
    for network, key in (
        ({"compute_time": 2.0}, "compute_time"),
        ({"link_delay": {"dist": "exponential", "mean": 0.1}}, "link_delay"),
        ({"stragglers": 1}, "stragglers"),
    ):
        with pytest.raises(ConfigError, match=f"network.{key}: simulated time only") as err:
            parse_config({"engine": {"name": "ray"}, "network": network})
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"engine\.vectorise: unknown key"):
        parse_config({"engine": {"name": "ray", "vectorise": False}})
    kept = parse_config(
        {"engine": "ray", "network": {"crashes": {0: 3}, "omission": 0.1, "coordinate_drop": 0.1}}
    )
    assert kept.network.crashes == {0: 3}  # emulated: keyed per node and round


# ---------------------------------------------------------------------- whole runs
RUN: dict[str, Any] = {
    "dataset": {"name": "digits"},
    "model": {"name": "mlp"},
    "n": 6,
    "f": 1,
    "byzantine": [5],
    "attack": {"name": "alie"},
    "rule": {"name": "median"},
    "steps": 12,
    "checkpoint_every": 0,
    "seed": 3,
}


def _train(config: dict[str, Any], steps: int) -> Trainer:
    trainer = Trainer(parse_config(config))
    for _ in range(steps):
        trainer.step()
    return trainer


def test_a_sync_run_on_ray_computes_what_the_local_engine_computes(ray_instance) -> None:
    local = _train(RUN, 12)  # one vectorised group of 5 honest workers
    two = {"name": "ray", "actors": 2, "resources": {"worker": {"cpus": 0.5}}}
    remote = _train({**RUN, "engine": two}, 12)  # actors [0, 1, 2] and [3, 4], the coalition
    try:
        assert torch.allclose(remote.theta, local.theta, atol=1e-5, rtol=1e-4)
        assert remote.evaluate()[0] == pytest.approx(local.evaluate()[0], abs=0.005)
        assert remote.engine.stats["sent"] == local.engine.stats["sent"]
    finally:
        remote.engine.close()  # type: ignore[attr-defined]


def test_killing_a_worker_actor_mid_run_is_recorded_and_the_run_goes_on(ray_instance) -> None:

    engine = {"name": "ray", "actors": 2}
    config = {**RUN, "attack": {"name": "none"}, "engine": engine}  # worker 5 computes too
    trainer = Trainer(parse_config(config))  # workers in actors [0, 1, 2] and [3, 4, 5]
    try:
        records = [trainer.step() for _ in range(3)]
        kill_and_wait(trainer.engine.actor_of(3))  # type: ignore[attr-defined]  (workers 3, 4, 5)
        records += [trainer.step() for _ in range(4)]
        assert [r["received"] for r in records] == [6, 6, 6, 3, 3, 3, 3]
        assert [r.get("crashed") for r in records][3] == [3, 4, 5]  # the kill is in the records
        assert not any(r.get("skipped") for r in records)  # median: 3 >= 2f + 1 replies
        assert trainer.summary()["crashed_nodes"] == [3, 4, 5]
        assert torch.isfinite(trainer.theta).all()
    finally:
        trainer.engine.close()  # type: ignore[attr-defined]


def test_an_async_kardam_run_completes(ray_instance) -> None:
    config = {
        **RUN,
        "n": 4,
        "byzantine": [3],
        "attack": {"name": "sign_flip"},
        "protocol": {"name": "kardam"},
        "engine": {"name": "ray", "actors": 1},
    }
    trainer = Trainer(parse_config(config))
    try:
        records = [trainer.step() for _ in range(25)]
        assert [r["round"] for r in records] == list(range(1, 26))
        assert all(r["received"] >= 1 for r in records)  # no deadline: always a gradient
        assert records[0].get("bootstrap") and any(r.get("accepted") for r in records[1:])
        assert {r["sender"] for r in records[1:] if "sender" in r} <= {0, 1, 2, 3}
        assert torch.isfinite(trainer.theta).all()
    finally:
        trainer.engine.close()  # type: ignore[attr-defined]


def test_a_killed_ray_run_resumes_from_its_checkpoint_to_the_same_model(
    ray_instance, tmp_path
) -> None:
    import gc

    from byzlearn.experiments import run
    from tests.resume import kill_run

    config = parse_config(
        {
            **RUN,
            "attack": {"name": "none"},  # one actor per run: every worker computes
            "steps": 8,
            "checkpoint_every": 4,
            "optimizer": {"momentum": 0.9, "momentum_at": "worker"},  # state in the actors
            "engine": {"name": "ray", "actors": 1},
        }
    )
    full = run(config)
    kill_run(config, tmp_path / "run", at=6)
    gc.collect()  # the killed run's actors go with its engine
    resumed = run(config, tmp_path / "run")
    assert resumed.status == "resumed" and resumed.resumed_from == 4
    assert full.theta is not None and resumed.theta is not None
    assert torch.allclose(resumed.theta, full.theta, atol=1e-5, rtol=1e-4)


def test_a_dropped_engine_frees_its_actors_without_waiting_for_the_garbage_collector(
    ray_instance,
) -> None:
    import gc

    ray = ray_instance

    def free_cpus(expected: float) -> bool:
        for _ in range(100):
            if ray.available_resources().get("CPU", 0.0) == expected:
                return True
            time.sleep(0.1)
        return False

    gc.disable()  # freed by reference counting alone: no engine <-> node cycle
    try:
        engine = RayEngine(actors=2)
        ids = engine.add_group("worker", 2, Echo())
        server = engine.add_node("server")
        server.multicast(Message(kind="ask", round=1), ids)
        assert len(server.gather(1, q=2)) == 2
        assert free_cpus(0.0)
        del engine, server
        assert free_cpus(2.0)
    finally:
        gc.enable()


def test_a_byzantine_driven_node_observes_the_honest_messages_sent_so_far(engines) -> None:
    engine = _engine(engines, actors=1)
    ids = engine.add_group("worker", 2, Echo())
    server = engine.add_node("server")
    spy = engine.add_node("server", adversary=True)  # a Byzantine server acting on its own
    server.multicast(Message(kind="ask", payload=3.0, round=1), ids)
    spy.send(Message(kind="ask", payload=9.0, dest=ids[0], round=1))
    assert len(server.gather(1, q=2)) == 2
    seen = engine.observe(spy.id, lambda m: m.kind == "echo")
    assert sorted(int(m.sender) for m in seen) == ids  # the workers' answers to the server
    assert spy.clock >= max(m.sent_at for m in seen)
    assert {int(m.sender) for m in engine.observe(spy.id)} == {*ids, server.id}  # not its own
    with pytest.raises(ValueError, match="not a Byzantine driven node"):
        engine.observe(server.id)
    with pytest.raises(ValueError, match="already registered as a Byzantine node"):
        engine.driven(spy.id)
    before = time.time()
    assert engine.compute(server.id, 1) >= before - engine._t0  # real time: the clock is now


@pytest.mark.parametrize("keep", [False, True])
def test_actors_take_the_drivers_malloc_thresholds(keep: bool, monkeypatch) -> None:
    """An actor sets byzlearn.allocator's thresholds when the driver had (``kept()``, passed
    at its start by the engine); built here in-process, with the call recorded."""
    from byzlearn.engines import ray_engine

    calls: list[dict] = []
    monkeypatch.setattr(ray_engine, "keep_freed_memory", lambda **kw: calls.append(kw) or True)
    ray_engine._GroupActor(Echo(), torch.get_num_threads(), None, keep)  # threads unchanged
    assert calls == ([{"environment": False}] if keep else [])  # the driver decided
