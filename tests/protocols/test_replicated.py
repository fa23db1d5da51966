"""ByzSGD and LiuBei: requirements, equivocation, Byzantine servers, messages, resume."""

from __future__ import annotations

import pytest
import torch

from byzlearn.engines import LocalEngine, Message
from byzlearn.experiments.config import ConfigError, parse_config
from byzlearn.experiments.runner import run
from byzlearn.protocols import ByzantineNodes, NodeAttackConfig
from byzlearn.protocols.replicated import ModelFilter, _median
from tests.resume import kill_run, without_times

BASE = dict(n=13, f=3, steps=30, eval_every=10, attack={"name": "alie"})


def cfg(**protocol):
    return parse_config({**BASE, "protocol": {"name": "byzsgd", **protocol}})


# ------------------------------------------------------------------ requirements
@pytest.mark.parametrize("name", ["byzsgd", "liubei"])
def test_server_requirement_is_one_clear_error(name):
    with pytest.raises(ConfigError, match=r"servers >= 3 f_servers \+ 1, got servers=3"):
        parse_config({**BASE, "protocol": {"name": name, "servers": 3, "f_servers": 1}})


def test_worker_requirement_and_quorums():
    with pytest.raises(ConfigError, match=r"n >= 3f \+ 1 workers, got n=8, f=3"):
        parse_config({**BASE, "n": 8, "protocol": {"name": "byzsgd"}})
    with pytest.raises(ConfigError, match="model_quorum"):
        cfg(model_quorum=1)
    with pytest.raises(ConfigError, match="gradient_quorum"):
        cfg(gradient_quorum=14)
    with pytest.raises(ConfigError, match="unknown attack 'nope'"):
        cfg(server_attack={"name": "nope"})
    with pytest.raises(ConfigError, match="takes no options"):
        cfg(server_attack={"name": "silent", "equivocate": True})


def test_liubei_is_refused_on_an_engine_it_cannot_run_on(monkeypatch):
    """Whether or not the ray extra is installed here (the README's install leaves it out):
    parsing only asks whether ray can be found, so the check runs as where it is installed."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: real("json") if name == "ray" else real(name, *a),
    )
    with pytest.raises(ConfigError, match=r"engine\.name: liubei runs on the local engine only"):
        parse_config({**BASE, "protocol": {"name": "liubei"}, "engine": {"name": "ray"}})


def test_mda_is_the_default_rule_and_any_rule_is_allowed():
    assert cfg().rule.name == "mda"
    c = parse_config({**BASE, "rule": {"name": "median"}, "protocol": {"name": "byzsgd"}})
    assert c.rule.name == "median"
    with pytest.raises(ConfigError, match="bulyan needs"):  # on n - f = 10 inputs, f = 3
        parse_config({**BASE, "rule": {"name": "bulyan"}, "protocol": {"name": "byzsgd"}})


# ------------------------------------------------------------------ the adversary's nodes
def test_observe_is_for_byzantine_nodes_and_sees_the_latest_honest_message():
    eng = LocalEngine()
    honest = [eng.add_node("server") for _ in range(3)]
    bad = eng.add_node("server", adversary=True)
    sink = eng.add_node("worker")
    for k, node in enumerate(honest):
        node.send(Message(kind="model", dest=sink.id, round=1, payload=torch.full((2,), float(k))))
        node.send(Message(kind="model", dest=sink.id, round=2, payload=torch.full((2,), 10.0 + k)))
    seen = bad.observe(lambda m: m.round == 1)
    assert [float(m.payload[0]) for m in seen] == [0.0, 1.0, 2.0]
    assert [float(m.payload[0]) for m in bad.observe()] == [10.0, 11.0, 12.0]
    bad.send(Message(kind="model", dest=sink.id, round=2, payload=torch.zeros(2)))
    assert len(bad.observe()) == 3  # its own messages are not honest ones
    with pytest.raises(ValueError, match="not a Byzantine driven node"):
        sink.observe()


def test_equivocation_sends_the_attack_and_its_reflection_alternately():
    eng = LocalEngine()
    honest = [eng.add_node("server") for _ in range(3)]
    bad = eng.add_node("server", adversary=True)
    workers = [eng.add_node("worker") for _ in range(4)]
    X = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]])
    for node, x in zip(honest, X, strict=True):
        node.multicast(Message(kind="model", round=1, payload=x), [w.id for w in workers])
    coalition = ByzantineNodes(
        [bad], NodeAttackConfig(name="sign_flip", equivocate=True), seed=0
    )
    sent = coalition.send(1, "model", lambda _: [w.id for w in workers],
                          observe=lambda m: m.kind == "model")
    assert sent == 4
    mean = X.mean(0)
    got = [w.recv(4, lambda m: m.sender == bad.id)[0].payload for w in workers]
    a = -mean  # sign_flip: -mean (scale 1)
    for r, vec in enumerate(got):
        expected = a if r % 2 == 0 else 2 * mean - a
        torch.testing.assert_close(vec, expected)
    assert not torch.allclose(got[0], got[1])


def test_silent_nodes_send_nothing():
    eng = LocalEngine()
    bad = eng.add_node("server", adversary=True)
    sink = eng.add_node("worker")
    coalition = ByzantineNodes([bad], NodeAttackConfig(name="silent"))
    assert coalition.send(1, "model", lambda _: [sink.id], observe=lambda m: True) == 0
    assert coalition.silent == 1


def test_model_filter_distance_and_lipschitz():
    flt = ModelFilter(slack=1.0, lipschitz_factor=3.0)
    state = {"theta": torch.zeros(3), "t": 1, "g": torch.ones(3), "g_norm": 2.0, "k": []}
    # one step of lr 0.1 with aggregates up to (1 + slack) ||g|| = 4: radius 0.4
    assert flt.distance_ok(torch.tensor([0.4, 0.0, 0.0]), state, t=2, lr=0.1)
    assert not flt.distance_ok(torch.tensor([0.41, 0.0, 0.0]), state, t=2, lr=0.1)
    assert flt.distance_ok(torch.tensor([0.8, 0.0, 0.0]), state, t=3, lr=0.1)  # two steps
    assert not flt.distance_ok(torch.tensor([float("nan"), 0, 0]), state, t=2, lr=0.1)
    first = {"theta": torch.zeros(3), "t": 0, "g": None, "g_norm": None, "k": []}
    assert flt.distance_ok(torch.zeros(3), first, t=1, lr=0.1)  # the known initial model
    assert not flt.distance_ok(torch.full((3,), 1e-3), first, t=1, lr=0.1)
    k = flt.lipschitz(torch.tensor([1.0, 0, 0]), torch.tensor([1.0, 1, 1]) + 2, state)
    assert k == pytest.approx(float(torch.tensor([2.0, 2, 2]).norm()) / 1.0)
    state["k"] = [1.0] * 10
    assert flt.lipschitz_ok(2.9, state) and not flt.lipschitz_ok(3.1, state)


def test_median_read_is_the_coordinate_wise_median():
    models = [torch.tensor([1.0, 9.0]), torch.tensor([2.0, -1.0]), torch.tensor([100.0, 0.0])]
    torch.testing.assert_close(_median(models), torch.tensor([2.0, 0.0]))


def test_median_of_models_keeps_a_coordinate_no_model_has_finite():
    inf, nan = float("inf"), float("nan")
    models = [
        torch.tensor([inf, 1.0, nan]),
        torch.tensor([-inf, 3.0, 2.0]),
        torch.tensor([nan, 2.0, 4.0]),
    ]
    out = _median(models)
    assert out[0] == inf  # the first model's
    assert out[1] == 2.0 and out[2] == 3.0  # the medians of the finite values


@pytest.mark.parametrize("name", ["byzsgd", "liubei"])
def test_a_diverging_run_is_marked_diverged_not_aborted(name):
    """lr = 1e300: every server's model overflows at the first step; the median of the
    models had no finite value to take and raised (found by a CLI fuzz)."""
    quiet = dict(n=10, f=1, steps=3, eval_every=1, optimizer={"lr": 1e300})
    result = run(parse_config({**quiet, "protocol": {"name": name}}))
    assert result.summary["diverged"]


# ------------------------------------------------------------------ messages
def test_messages_per_step_against_the_single_server():
    quiet = dict(n=10, f=3, num_byzantine=0, steps=2, eval_every=1, attack={"name": "none"})
    ps = run(parse_config({**quiet, "rule": {"name": "mda"}}))
    byz = run(parse_config({**quiet, "protocol": {"name": "byzsgd", "byzantine_servers": 0}}))
    assert [r["messages_sent"] for r in ps.records[1:]] == [2 * 10] * 2
    # models 4 x 10, gradients 10 x 4, gather 4 x 3
    assert [r["messages_sent"] for r in byz.records[1:]] == [40 + 40 + 12] * 2


def test_liubei_sends_one_model_per_worker_and_pulls_on_rejection():
    quiet = dict(n=10, f=3, num_byzantine=0, steps=3, eval_every=1, attack={"name": "none"})
    res = run(parse_config({**quiet, "protocol": {"name": "liubei", "byzantine_servers": 0}}))
    # one model per worker, gradients 10 x 4, gather 4 x 3; nothing rejected, nothing pulled
    assert [r["messages_sent"] for r in res.records[1:]] == [10 + 40 + 12] * 3
    assert all(r["reads_pulls"] == 0 and r["reads_accepted"] == 10 for r in res.records[1:])
    garbage = run(parse_config({**quiet, "protocol": {"name": "liubei"}}))
    for r in garbage.records[1:]:  # the Byzantine server's workers reject and pull the next
        rejected = r["reads_rejected"]
        assert rejected > 0 and r["reads_pulls"] == rejected and r["reads_accepted"] == 10
        assert r["messages_sent"] == 10 + 2 * rejected + 40 + 12  # pulls and their replies


def test_liubei_workers_of_a_silent_server_time_out_and_pull():
    c = {**BASE, "steps": 4, "eval_every": 2,
         "protocol": {"name": "liubei", "server_attack": {"name": "silent"}, "timeout": 2.5,
                      "gradient_quorum": 13}}  # servers wait for every worker
    res = run(parse_config(c))
    steps = res.records[1:]
    assert all(r["reads_timeouts"] > 0 for r in steps)
    assert all(r["reads_timeouts"] == r["reads_pulls"] for r in steps)
    assert all(r["reads_accepted"] == 10 for r in steps)  # every honest worker got a model
    # the step ends once the workers that timed out (at 2.5) pulled and computed (1 s)
    assert steps[0]["time"] >= 3.5


# ------------------------------------------------------------------ resume
@pytest.mark.parametrize("protocol", [{"name": "byzsgd"}, {"name": "liubei"}])
def test_killed_run_resumes_bit_for_bit(tmp_path, protocol):
    c = parse_config({**BASE, "steps": 12, "eval_every": 4, "checkpoint_every": 5,
                      "protocol": {**protocol, "server_attack": {"name": "alie",
                                                                 "equivocate": True}}})
    whole = run(c)
    kill_run(c, tmp_path, at=7)
    resumed = run(c, tmp_path)
    assert without_times(resumed.records) == without_times(whole.records)


# ------------------------------------------------------------------ learning (digits)
DRIFT = 0.1  # the model's norm is about 5 on digits' MLP
# random link delays: servers' quorums differ, so correct servers drift apart between gathers
TRAIN = dict(n=13, f=3, steps=150, eval_every=50, attack={"name": "alie"}, seed=1,
             network={"link_delay": {"dist": "exponential", "mean": 0.1}})


def final(protocol: dict | None = None, **extra):
    data = {**TRAIN, **extra}
    if protocol is not None:
        data["protocol"] = protocol
    else:
        data.setdefault("rule", {"name": "mda"})
    return run(parse_config(data))


@pytest.mark.slow
@pytest.mark.parametrize(
    "protocol",
    [
        {"name": "byzsgd", "model_quorum": 4},
        {"name": "byzsgd", "model_quorum": 4, "server_attack": {"name": "alie", "equivocate": True},
         "gather_every": 5},
        {"name": "byzsgd", "variant": "sync"},
        {"name": "liubei"},
        {"name": "liubei", "server_attack": {"name": "sign_flip", "equivocate": True}},
    ],
)
def test_one_byzantine_server_of_four_is_tolerated(protocol):
    trusted = final().summary["final_accuracy"]
    res = final(protocol)
    assert res.summary["final_accuracy"] >= trusted - 0.05
    last = [r for r in res.records if "accuracies" in r][-1]
    assert len(last["accuracies"]) == 3  # the three correct servers
    assert last["test_accuracy_min"] >= trusted - 0.05
    diameters = [r["server_diameter"] for r in res.records if "server_diameter" in r]
    assert max(diameters) < DRIFT  # correct servers stay close (bounded drift)


@pytest.mark.slow
def test_gathers_contract_the_correct_servers():
    def drift(every: int) -> list[float]:
        res = final({"name": "byzsgd", "model_quorum": 4, "gather_every": every,
                     "server_attack": {"name": "alie", "equivocate": True}})
        return [r["server_diameter"] for r in res.records if "server_diameter" in r]

    every_step, rarely = drift(1), drift(20)
    assert max(every_step) == 0.0  # all correct servers take the median of the same models
    assert 0 < max(rarely) < DRIFT  # they drift apart between gathers, boundedly


@pytest.mark.slow
def test_a_single_byzantine_server_makes_training_fail():
    res = final({"name": "byzsgd", "servers": 1, "f_servers": 0, "byzantine_servers": 1})
    assert res.summary["final_accuracy"] < 0.3
