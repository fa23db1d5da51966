"""Decentralised learning: NNA, mixing rules, topologies, Byzantine peers, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzlearn.experiments.config import ConfigError, parse_config
from byzlearn.experiments.runner import run
from byzlearn.protocols.decentralized import nna
from tests.resume import kill_run, without_times


def nna_reference(own: np.ndarray, received: np.ndarray, f: int) -> np.ndarray:
    """Loops: the m + 1 - f vectors nearest to own (own first on ties), averaged."""
    X = [own, *received]
    dist = [float(np.linalg.norm(x - own)) for x in X]
    order = sorted(range(len(X)), key=lambda i: (dist[i], i))
    keep = order[: len(X) - f]
    return np.mean([X[i] for i in keep], axis=0)


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 9), f=st.integers(0, 4), d=st.integers(1, 6), seed=st.integers(0, 10**6))
def test_nna_matches_the_loop_reference(m, f, d, seed):
    f = min(f, m)
    rng = np.random.default_rng(seed)
    own, received = rng.normal(size=d), rng.normal(size=(m, d))
    got = nna(torch.tensor(own), torch.tensor(received), f)
    # summation order differs: a coordinate whose mean cancels to ~1e-5 keeps an absolute
    # error of a few ulps of the N(0, 1) terms, which rtol alone flagged (m=5, f=0, d=4)
    want = nna_reference(own, received, f)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-14)


def test_nna_ignores_f_far_and_nonfinite_vectors():
    own = torch.zeros(3)
    honest = torch.randn(6, 3) * 0.1
    bad = torch.stack([torch.full((3,), 1e6), torch.full((3,), float("nan"))])
    got = nna(own, torch.cat([honest, bad]), f=2)
    torch.testing.assert_close(got, torch.cat([own[None], honest]).mean(0))


def base(**protocol):
    return {
        "n": 16, "f": 3, "steps": 150, "eval_every": 50, "seed": 0,
        "protocol": {"name": "decentralized", **protocol},
    }


def test_bad_topologies_and_options_are_one_clear_error():
    with pytest.raises(ConfigError, match="topology random_regular needs degree"):
        parse_config(base(topology={"name": "random_regular"}))
    with pytest.raises(ConfigError, match=r"protocol.topology: random_regular: needs 0 <= degree"):
        parse_config(base(topology={"name": "random_regular", "degree": 20}))
    with pytest.raises(ConfigError, match=r"peer indices must be in \[0, 16\), got \[0, 99\]"):
        parse_config(base(topology={"name": "explicit", "edges": [[0, 99]]}))
    with pytest.raises(ConfigError, match="each edge is a pair"):
        parse_config(base(topology={"name": "explicit", "edges": [[0, 1, 2]]}))
    with pytest.raises(ConfigError, match="mixing"):
        parse_config(base(mixing="krum"))
    with pytest.raises(ConfigError, match="bulyan needs"):
        parse_config({**base(mixing="rule", topology={"name": "random_regular", "degree": 8}),
                      "rule": {"name": "bulyan"}})  # 9 inputs, f = 3


def test_messages_follow_the_topology():
    c = parse_config({**base(topology={"name": "ring", "k": 2}), "steps": 2, "eval_every": 1,
                      "attack": {"name": "alie"}})
    res = run(c)
    assert [r["messages_sent"] for r in res.records[1:]] == [16 * 4] * 2
    assert res.records[-1]["received"] == 4  # every peer heard its 4 neighbours


@pytest.mark.parametrize("mixing", ["nna", "rule", "gossip"])
def test_killed_run_resumes_bit_for_bit(tmp_path, mixing):
    c = parse_config({**base(mixing=mixing, topology={"name": "random_regular", "degree": 8}),
                      "steps": 12, "eval_every": 4, "checkpoint_every": 5,
                      "attack": {"name": "mimic", "options": {"warmup": 3}},
                      "rule": {"name": "trimmed_mean"}})
    whole = run(c)
    kill_run(c, tmp_path, at=7)
    assert without_times(run(c, tmp_path).records) == without_times(whole.records)


def test_method_labels_name_the_mixing_and_graph():
    from byzlearn.experiments.report import method

    c = parse_config({**base(mixing="rule", topology={"name": "random_regular", "degree": 8}),
                      "rule": {"name": "trimmed_mean"}})
    assert method(c) == "decentralized/trimmed_mean@random_regular8"
    assert method(parse_config(base())) == "decentralized/nna@complete"


def last_eval(res):
    return [r for r in res.records if "accuracies" in r][-1]


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["alie", "sign_flip"])
@pytest.mark.parametrize(
    "topology", [{"name": "complete"}, {"name": "random_regular", "degree": 8}]
)
@pytest.mark.parametrize("mixing,rule", [("nna", "average"), ("rule", "trimmed_mean")])
def test_robust_mixing_agrees_and_learns(attack, topology, mixing, rule):
    c = parse_config({**base(mixing=mixing, topology=topology), "rule": {"name": rule},
                      "attack": {"name": attack}})
    res = run(c)
    last = last_eval(res)
    assert len(last["accuracies"]) == 13  # the honest peers
    assert last["test_accuracy"] >= 0.85
    spread = [r["peer_diameter"] for r in res.records[1:]]
    assert spread[-1] < 1.0  # honest peers agree (their models stay within a small ball)


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["mda", "centered_clipping"])
def test_averaging_agreement_and_self_centred_clipping_learn(rule):
    c = parse_config({**base(mixing="rule", topology={"name": "random_regular", "degree": 8}),
                      "f": 2, "steps": 100, "rule": {"name": rule},
                      "attack": {"name": "sign_flip", "options": {"scale": 4.0}}})
    assert last_eval(run(c))["test_accuracy"] >= 0.85


@pytest.mark.slow
@pytest.mark.parametrize(
    "attack", [{"name": "sign_flip", "options": {"scale": 4.0}}, {"name": "gaussian"}]
)
def test_gossip_averaging_fails_where_nna_learns(attack):
    # sign flip with scale 4 on models: the complete-graph mean is (13 - 3 * 4) / 16 = 1/16 of
    # the honest mean, every step. (With scale 10 the mean is -1.06 times it: a ReLU network's
    # argmax survives scaling and even sign flips in pairs, so accuracy barely moves.)
    gossip = run(parse_config({**base(mixing="gossip"), "attack": attack}))
    robust = run(parse_config({**base(mixing="nna"), "attack": attack}))
    assert last_eval(gossip)["test_accuracy"] < 0.5
    assert last_eval(robust)["test_accuracy"] >= 0.85
