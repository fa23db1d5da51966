"""Fault injection: functional forward vs hooks on the real module, random faults, search."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import byzlearn.neurons as bn

from .helpers import random_mlp


def test_hooks_match_functional_forward() -> None:
    model = nn.Sequential(
        nn.Linear(5, 6), nn.Tanh(), nn.Sequential(nn.Linear(6, 4), nn.ReLU()), nn.Linear(4, 2)
    ).eval()
    x = torch.rand(10, 5)
    net = bn.extract_network(model, data=x)
    masks = {
        0: torch.tensor([1, 0, 0, 1, 0, 0], dtype=torch.bool),
        1: torch.tensor([0, 0, 1, 0], dtype=torch.bool),
    }
    values = {0: torch.tensor([0.3, 0, 0, -0.7, 0, 0]), 1: torch.tensor([0, 0, 2.0, 0])}
    expected = net(x, masks, values)
    with (
        torch.no_grad(),
        bn.module_faults(model, net, {0: [0, 3], 1: [2]}, {0: [0.3, -0.7], 1: 2.0}),
    ):
        got = model(x)
    torch.testing.assert_close(got, expected)
    with torch.no_grad():  # hooks removed on exit
        torch.testing.assert_close(model(x), net(x))
        with bn.module_faults(model, net, {1: [0, 1]}):
            crashed = model(x)
    torch.testing.assert_close(crashed, net(x, {1: torch.tensor([1, 1, 0, 0]).bool()}))


def test_crashed_synapses_copy_matches_functional_forward() -> None:
    model = random_mlp([4, 5, 3], "sigmoid", seed=0)
    x = torch.rand(7, 4)
    net = bn.extract_network(model)
    faulty = bn.with_crashed_synapses(model, net, {0: [(1, 2), (4, 0)], 1: [(2, 3)]})
    m0 = torch.zeros(5, 4, dtype=torch.bool)
    m0[1, 2] = m0[4, 0] = True
    m1 = torch.zeros(3, 5, dtype=torch.bool)
    m1[2, 3] = True
    with torch.no_grad():
        torch.testing.assert_close(faulty(x), net(x, synapse_masks={0: m0, 1: m1}))
        assert not torch.equal(faulty(x), model(x))  # the original is untouched
    with pytest.raises(ValueError, match="Linear index"):
        bn.with_crashed_synapses(model, net, {5: [(0, 0)]})


def test_byzantine_synapse_semantics() -> None:
    """A Byzantine synapse j -> i transmits v instead of h_j."""
    model = random_mlp([3, 2], seed=1)  # a single Linear: output layer only
    net = bn.extract_network(model)
    x = torch.rand(4, 3)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    mask[1, 2] = True
    y = net(x, synapse_masks={0: mask}, synapse_values={0: 5.0})
    x2 = x.clone()
    x2[:, 2] = 5.0
    with torch.no_grad():
        torch.testing.assert_close(y[:, 1], model(x2)[:, 1])
        torch.testing.assert_close(y[:, 0], model(x)[:, 0])


def test_batched_configurations() -> None:
    net = bn.extract_network(random_mlp([4, 6, 2], "tanh", seed=2))
    x = torch.rand(5, 4)
    masks = torch.eye(6, dtype=torch.bool)
    ys = net(x, {0: masks})
    assert ys.shape == (6, 5, 2)
    for i in range(6):
        torch.testing.assert_close(ys[i], net(x, {0: masks[i]}))


def test_random_faults_statistics() -> None:
    net = bn.extract_network(random_mlp([6, 10, 3], "sigmoid", seed=3))
    x = torch.rand(20, 6)
    st = bn.random_faults(net, x, [3], reps=200, seed=1)
    assert st.samples.shape == (200,)
    assert st.low < st.mean < st.high
    assert st.max >= float(st.samples.max())
    again = bn.random_faults(net, x, [3], reps=200, seed=1)
    assert torch.equal(st.samples, again.samples)  # seeded
    boot = bn.random_faults(net, x, [3], reps=200, seed=1, ci="bootstrap")
    assert boot.low < boot.mean < boot.high
    assert boot.high - boot.low == pytest.approx(st.high - st.low, rel=0.25)
    worst = bn.worst_case_search(net, x, [3])
    mx = bn.random_faults(net, x, [3], reps=100, reduce="max", seed=0)
    assert worst.error >= mx.max - 1e-6  # exhaustive over C(10, 3) = 120 sets
    assert bn.random_faults(net, x, [0], reps=5).max == 0.0
    syn = bn.random_faults(net, x, None, [0, 4], mode="byzantine", reps=20)
    assert syn.mean > 0


def test_confidence_interval_coverage() -> None:
    g = torch.Generator().manual_seed(0)
    hits = 0
    for _ in range(200):
        s = torch.randn(50, generator=g) + 3.0
        lo, hi = bn.confidence_interval(s, 0.9)
        hits += lo <= 3.0 <= hi
    assert 0.83 <= hits / 200 <= 0.96
    with pytest.raises(ValueError, match="level"):
        bn.confidence_interval(torch.ones(3), 1.5)
    with pytest.raises(ValueError, match="method"):
        bn.confidence_interval(torch.ones(3), method="t")  # type: ignore[arg-type]


def test_greedy_search_close_to_exhaustive() -> None:
    net = bn.extract_network(random_mlp([5, 12, 8, 2], "tanh", seed=4, scale=1.5))
    x = torch.rand(16, 5)
    exact = bn.worst_case_search(net, x, [3, 0])
    assert exact.method == "exhaustive" and exact.evaluated == 220
    greedy = bn.worst_case_search(net, x, [3, 0], exhaustive_limit=10, restarts=3)
    assert greedy.method == "greedy+local"
    assert greedy.error <= exact.error + 1e-6
    assert greedy.error >= 0.9 * exact.error
    assert len(greedy.units) == 3
    # the reported units reproduce the reported error
    again = bn.evaluate_configs(net, x, [greedy.units])
    assert float(again[0]) == pytest.approx(greedy.error)


def test_injection_bad_arguments() -> None:
    net = bn.extract_network(random_mlp([4, 5, 2], seed=0))
    with pytest.raises(ValueError, match="features"):
        bn.random_faults(net, torch.rand(3, 5), [1])
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        bn.worst_case_search(net, [[0.0] * 4], [1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reps"):
        bn.random_faults(net, torch.rand(3, 4), [1], reps=0)
    with pytest.raises(ValueError, match="mode"):
        bn.worst_case_search(net, torch.rand(3, 4), [1], mode="bad")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite interval"):
        bn.worst_case_search(net, torch.rand(3, 4), None, [1, 0], mode="byzantine")
    assert bn.worst_case_search(net, torch.rand(3, 4), [0]).error == 0.0


def test_hooks_on_convolutional_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(72, 3)).eval()
    x = torch.rand(4, 1, 8, 8)
    net = bn.extract_network(model, input_shape=(1, 8, 8))
    mask = torch.zeros(72, dtype=torch.bool)
    mask[[3, 40]] = True
    with torch.no_grad(), bn.module_faults(model, net, {0: [3, 40]}, {0: 0.5}):
        got = model(x)
    torch.testing.assert_close(got, net(x, {0: mask}, {0: 0.5}))
    with pytest.raises(ValueError, match="shared"):
        bn.with_crashed_synapses(model, net, {0: [(0, 0)]})
