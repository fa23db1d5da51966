"""Regressions found by a random search comparing the ``ray`` engine with the ``local`` one
(the actors' start-up and a deadline; deliveries split by ``discard``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest
import torch

pytest.importorskip("ray")

from byzlearn.engines import Message
from byzlearn.engines.ray_engine import RayEngine
from byzlearn.experiments import Trainer, parse_config
from tests.engines.test_contract import Echo

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]


class SlowStart(Echo):
    """Echo whose copy in an actor takes ``seconds`` to unpickle (a slow actor start-up)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def __setstate__(self, state: dict[str, Any]) -> None:
        time.sleep(state["seconds"])
        self.__dict__.update(state)


def test_actor_start_up_does_not_eat_into_the_first_deadline(engines) -> None:
    engine = RayEngine(actors=1)
    engines.append(engine)
    ids = engine.add_group("worker", 2, SlowStart(seconds=3.0))
    server = engine.add_node("server")
    server.multicast(Message(kind="ask", round=1), ids)  # no engine.start(): the recv starts
    got = server.gather(1, q=2, deadline=2.0)  # the actors (3 s), then waits up to 2 s
    assert sorted(int(m.sender) for m in got) == ids
    assert engine.stats["late"] == 0


class Quorum:
    """Honest workers answering a round once ``quorum`` models of it came (one answer to each
    of those models), as ByzSGD's workers do."""

    def __init__(self, quorum: int) -> None:
        self.quorum = quorum
        self.pending: dict[tuple[int, int], list[Message]] = {}

    def handle(self, inbox: Sequence[Message], observed: Sequence[Message] = ()) -> list[Message]:
        out = []
        for m in inbox:
            key = (int(m.dest), m.round)  # type: ignore[arg-type]
            self.pending.setdefault(key, []).append(m)
            if len(self.pending[key]) == self.quorum:
                out += [p.reply(torch.ones(2), kind="grad") for p in self.pending[key]]
        return out


class Watcher:
    """The adversary: answers each model with the honest senders of ``grad`` it observed."""

    def handle(self, inbox: Sequence[Message], observed: Sequence[Message] = ()) -> list[Message]:
        view = sorted(int(m.sender) for m in observed if m.kind == "grad")  # type: ignore[arg-type]
        return [m.reply(torch.zeros(2), kind="grad", view=view) for m in inbox]


def test_discard_does_not_split_a_delivery_several_servers_are_making(engines) -> None:
    engine = RayEngine(actors=1)
    engines.append(engine)
    honest = engine.add_group("worker", 2, Quorum(quorum=2))
    byz = engine.add_group("worker", 1, Watcher(), adversary=True)
    servers = [engine.add_node("server") for _ in range(2)]
    for server in servers:  # each server: drop stale answers, then send its model
        server.discard(lambda m: m.round < 1)
        server.multicast(Message(kind="model", round=1), honest + byz)
    for server in servers:
        got = {int(m.sender): m for m in server.gather(1, q=3, kind="grad")}
        assert sorted(got) == honest + byz
        assert got[byz[0]].meta["view"] == honest  # it saw the honest answers of the round


def test_byzsgd_on_ray_receives_what_it_receives_on_local(ray_instance) -> None:
    config: dict[str, Any] = {
        "dataset": {"name": "digits"},
        "model": {"name": "logistic"},
        "n": 7,
        "f": 1,
        "attack": {"name": "alie"},
        "rule": {"name": "median"},
        "protocol": {"name": "byzsgd"},
        "network": {"crashes": {0: 2}},  # from round 2 the quorum needs the coalition
        "steps": 3,
        "checkpoint_every": 0,
        "seed": 1,
    }
    local = Trainer(parse_config(config))
    remote = Trainer(parse_config({**config, "engine": {"name": "ray", "actors": 1}}))
    try:
        for _ in range(3):
            a, b = local.step(), remote.step()
            assert a["received"] == b["received"] == 6  # the coalition answered every server
        assert torch.allclose(remote.theta, local.theta, atol=1e-5, rtol=1e-4)
    finally:
        remote.engine.close()  # type: ignore[attr-defined]


def test_resources_for_a_role_only_driven_nodes_play_are_refused(engines) -> None:
    from byzlearn.engines.ray_engine import Resources

    engine = RayEngine(resources={"server": Resources(cpus=1)})  # the server runs in the driver
    engines.append(engine)
    ids = engine.add_group("worker", 1, Echo())
    server = engine.add_node("server")
    with pytest.raises(ValueError, match="role 'server', whose nodes run in the driver") as err:
        server.multicast(Message(kind="ask", round=1), ids) or server.recv(1)
    assert "\n" not in str(err.value)


class Unbuildable(Echo):
    """A handler that cannot be unpickled in an actor (e.g. a module missing on that node)."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        raise RuntimeError("no module named 'somewhere'")


class Buggy(Echo):
    """A handler with a bug."""

    def handle(self, inbox: Sequence[Message], observed: Sequence[Message] = ()) -> list[Message]:
        raise ValueError("the handler's own bug")


def _asked(engines: list[Any], handler: Any) -> Any:
    """A server node of a new one-actor engine that has asked two workers running ``handler``
    (the actors start with the delivery, in the server's next gather)."""
    engine = RayEngine(actors=1)
    engines.append(engine)
    ids = engine.add_group("worker", 2, handler)
    server = engine.add_node("server")
    server.multicast(Message(kind="ask", round=1), ids)
    return server


def test_an_actor_that_cannot_start_is_reported_in_one_line(engines) -> None:
    server = _asked(engines, Unbuildable())
    with pytest.raises(RuntimeError, match=r"an actor failed to start .*'somewhere'") as err:
        server.gather(1, q=2)
    assert "\n" not in str(err.value) and "\x1b" not in str(err.value)


def test_a_handlers_exception_is_raised_in_the_driver_with_its_own_message(engines) -> None:
    server = _asked(engines, Buggy())
    with pytest.raises(ValueError) as err:
        server.gather(1, q=2)
    assert str(err.value) == "the handler's own bug"
    assert any("raised in a Ray actor" in note for note in err.value.__notes__)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda e, ids: e.driven(1.5), "node id must be an int"),
        (lambda e, ids: e.attach([7.5], Echo()), "node id must be an int"),
        (lambda e, ids: e.compute("0", 1), "node id must be an int"),
        (lambda e, ids: e.actor_of(True), "node id must be an int"),
        (lambda e, ids: e.observe(0.0), "node id must be an int"),
    ],
)
def test_node_ids_are_ints_as_on_the_local_engine(engines, call, message) -> None:
    # int() made 1.5 node 1 and "0" node 0 (the local engine refuses them: one line)
    engine = RayEngine(actors=1)
    engines.append(engine)
    ids = engine.add_group("worker", 2, Echo())
    engine.add_node("server")
    with pytest.raises((TypeError, ValueError), match=message):
        call(engine, ids)


@pytest.mark.parametrize("actors", [0, 1.5, "2", True])
def test_actors_must_be_a_whole_number_of_at_least_one(actors) -> None:
    with pytest.raises((TypeError, ValueError), match="actors must be"):
        RayEngine(actors=actors)


@pytest.mark.parametrize(
    ("engine", "message"),
    [
        ({"actors": 3}, "the actors need 3 CPUs and 0 GPUs, the cluster has 2"),
        ({"resources": {"server": {"cpus": 1}}}, "role 'server', whose nodes run in the driver"),
        ({"resources": {"foo": {}}}, "role 'foo', which no node plays"),
    ],
)
def test_a_plan_the_cluster_cannot_run_is_one_line_before_the_run_writes(
    ray_instance, tmp_path, engine, message
) -> None:
    """Found by running the docs' commands: these raised at the first delivery, after the run
    directory held config.yaml and metrics.jsonl, and the CLI printed a traceback."""
    from typer.testing import CliRunner

    from byzlearn.cli import app
    from byzlearn.experiments import run
    from byzlearn.experiments.config import ConfigError

    config = {"dataset": {"name": "digits"}, "n": 3, "f": 0, "steps": 2}
    config["engine"] = {"name": "ray", **engine}
    with pytest.raises(ConfigError, match=message) as err:
        run(config, tmp_path / "api")
    assert "\n" not in str(err.value)
    api = tmp_path / "api"
    assert not any(api.glob("*.yaml")) and not any(api.glob("*.jsonl"))
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("dataset: {name: digits}\nn: 3\nf: 0\nsteps: 2\nengine: {name: ray}\n")
    overrides = [f"engine.{k}={v}" for k, v in engine.items()]
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["run", str(yaml_file), *overrides, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not any(out.glob("*.yaml")) and not any(out.glob("*.jsonl"))
