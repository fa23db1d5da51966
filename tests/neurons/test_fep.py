"""Worst-case FEP bounds (When Neurons Fail, IPDPS 2017) against measured worst cases."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import byzlearn.neurons as bn
from byzlearn.neurons.fep import byzantine_interval
from byzlearn.neurons.inject import evaluate_configs

from .helpers import random_mlp

TOL = 1e-5  # float32 forward passes


def test_paper_method_is_the_closed_form() -> None:
    model = random_mlp([5, 7, 6, 4, 2], "tanh", seed=3)
    net = bn.extract_network(model)
    w_m = max(float(lay.weight.detach().abs().max()) for lay in net.layers)
    for f in ([1, 0, 0], [0, 2, 0], [2, 1, 3], [0, 0, 0]):
        closed = bn.paper_fep(net.hidden_sizes, f, K=1.0, w_m=w_m, e_max=1.0)
        assert bn.fep_bound(net, f, method="paper") == pytest.approx(closed, rel=1e-6)
        # Byzantine neurons of tanh: e_max = 2 (values in [-1, 1])
        closed_b = bn.paper_fep(net.hidden_sizes, f, K=1.0, w_m=w_m, e_max=2.0)
        assert bn.fep_bound(net, f, mode="byzantine", method="paper") == pytest.approx(closed_b)


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu"])
def test_tight_never_exceeds_paper_and_grows_with_failures(act: str) -> None:
    x = torch.rand(40, 6)
    net = bn.extract_network(random_mlp([6, 8, 8, 3], act, seed=4), data=x)
    for mode in ("crash", "byzantine"):
        prev = 0.0
        for n in range(0, 9):
            f = [n, 1]
            t = bn.fep_bound(net, f, mode=mode)
            assert t <= bn.fep_bound(net, f, mode=mode, method="paper") + 1e-12
            assert t >= prev - 1e-12
            prev = t
    s = [2, 1, 3]
    assert bn.fep_bound(net, None, s) <= bn.fep_bound(net, None, s, method="paper") + 1e-12
    assert bn.fep_bound(net, [0, 0]) == 0.0


def _grid_configs(
    net: bn.Network, f: list[int], s: list[int], mode: str, points: int = 3
) -> list[list[bn.inject.Unit]]:
    """Every placement of the failures, Byzantine values on a grid (not only the endpoints)."""
    groups = []
    for l, n in enumerate(f):
        if n:
            lay = net.layers[l]
            groups.append(("neuron", l, n, lay.n_out, lay.lo, lay.hi))
    for k, n in enumerate(s):
        if n:
            lo, hi = (
                (net.in_lo, net.in_hi) if k == 0 else (net.layers[k - 1].lo, net.layers[k - 1].hi)
            )
            lay = net.layers[k]
            groups.append(("synapse", k, n, lay.n_out * lay.n_in, lo, hi))
    per_group = []
    for kind, layer, n, size, lo, hi in groups:
        if mode == "crash":
            values = [0.0]
        else:
            blo, bhi = byzantine_interval(lo, hi, None)
            values = torch.linspace(blo, bhi, points).tolist()
        per_group.append(
            [
                [(kind, layer, i, v) for i, v in zip(sub, vals, strict=True)]
                for sub in itertools.combinations(range(size), n)
                for vals in itertools.product(values, repeat=n)
            ]
        )
    return [list(itertools.chain.from_iterable(c)) for c in itertools.product(*per_group)]


@pytest.mark.parametrize("act", ["sigmoid", "tanh"])
@pytest.mark.parametrize(
    ("f", "s"),
    [
        ([1, 0], [0, 0, 0]),
        ([0, 2], [0, 0, 0]),
        ([2, 1], [0, 0, 0]),
        ([0, 0], [0, 2, 1]),
        ([1, 0], [1, 0, 1]),
        ([0, 0], [2, 0, 0]),
    ],
)
@pytest.mark.parametrize("mode", ["crash", "byzantine"])
def test_exhaustive_tiny_network_stays_below_bound(
    act: str, f: list[int], s: list[int], mode: str
) -> None:
    """Exact worst case over every failure pattern (and a grid of Byzantine values) and many
    inputs of the input box: it never exceeds the bound."""
    model = random_mlp([3, 4, 3, 2], act, seed=5, scale=2.0)
    g = torch.Generator().manual_seed(0)
    corners = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)))
    x = torch.cat([corners, torch.rand(56, 3, generator=g)])
    net = bn.extract_network(model, input_bounds=(0.0, 1.0))
    configs = _grid_configs(net, f, s, mode)
    worst = float(evaluate_configs(net, x, configs, "max").max())
    bound = bn.fep_bound(net, f, s, mode=mode)
    assert worst <= bound + TOL
    assert worst > 0
    # the endpoint-only exhaustive search finds the same worst case for the last layer
    found = bn.worst_case_search(net, x, f, s, mode=mode)
    assert found.method == "exhaustive"
    assert found.error <= bound + TOL


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mode", ["crash", "byzantine"])
def test_random_networks_greedy_worst_case_below_bound(seed: int, mode: str) -> None:
    act = ["sigmoid", "tanh", "relu"][seed % 3]
    x = torch.rand(32, 10, generator=torch.Generator().manual_seed(seed))
    model = random_mlp([10, 20, 15, 4], act, seed=seed, scale=1.5)
    net = bn.extract_network(model, data=x)  # ReLU: C observed on x, valid on x
    for f, s in (([3, 0], None), ([0, 4], None), ([2, 2], None), (None, [0, 3, 2])):
        found = bn.worst_case_search(
            net, x, f, s, mode=mode, exhaustive_limit=500, restarts=1, max_rounds=3
        )
        rand = bn.random_faults(net, x, f, s, mode=mode, reps=30, seed=seed)
        bound = bn.fep_bound(net, f, s, mode=mode)
        assert rand.max <= bound + TOL
        assert found.error <= bound + TOL
        assert found.error >= rand.mean - TOL


def test_trained_digits_mlp_bounds_hold(digits_mlp: nn.Module, digits: tuple) -> None:
    x = digits[2][:100]
    for model in (digits_mlp, nn.Sequential(digits_mlp, nn.Softmax(dim=-1))):
        net = bn.extract_network(model, data=x)
        for mode in ("crash", "byzantine"):
            for f in ([2, 0], [0, 2], [1, 1]):
                found = bn.worst_case_search(net, x, f, mode=mode, restarts=1, max_rounds=3)
                assert found.error <= bn.fep_bound(net, f, mode=mode) + TOL
            found = bn.worst_case_search(
                net, x, None, [0, 2, 0], mode=mode, restarts=0, max_rounds=2
            )
            assert found.error <= bn.fep_bound(net, None, [0, 2, 0], mode=mode) + TOL


def _saturated_net(act: type[nn.Module]) -> nn.Sequential:
    """1 hidden layer whose neurons sit at their maximum: the bound is (almost) attained."""
    lin1, lin2 = nn.Linear(2, 4), nn.Linear(4, 1)
    with torch.no_grad():
        lin1.weight.zero_()
        lin1.bias.fill_(20.0)
        lin2.weight.fill_(0.7)
        lin2.bias.zero_()
    return nn.Sequential(lin1, act(), lin2).eval()


def test_bound_is_nearly_attained_so_wrong_bounds_are_caught() -> None:
    """The test harness can fail: a bound 5% too small, or a Byzantine bound computed as if
    the neuron crashed, is violated by the measured worst case."""
    x = torch.rand(16, 2)
    net = bn.extract_network(_saturated_net(nn.Tanh))
    for n in (1, 2, 3):
        crash = bn.worst_case_search(net, x, [n]).error
        bound = bn.fep_bound(net, [n])
        assert bound == pytest.approx(0.7 * n)
        assert 0.95 * bound < crash <= bound + TOL
        byz = bn.worst_case_search(net, x, [n], mode="byzantine").error
        assert byz > bn.fep_bound(net, [n], mode="crash") + 0.5  # wrong model of the fault
        assert byz <= bn.fep_bound(net, [n], mode="byzantine") + TOL
    # the paper bound with w_m replaced by the mean |w| would be wrong as soon as weights differ
    net2 = bn.extract_network(_saturated_net(nn.Sigmoid))
    with torch.no_grad():
        net2.layers[1].weight[0, 0] = 3.0
    worst = bn.worst_case_search(net2, x, [1]).error
    mean_w = float(net2.layers[1].weight.detach().abs().mean())
    assert worst > mean_w * 1.0  # "FEP" with the mean weight underestimates
    assert worst <= bn.fep_bound(net2, [1]) + TOL


def test_user_byzantine_bound() -> None:
    x = torch.rand(16, 2)
    net = bn.extract_network(_saturated_net(nn.Sigmoid))
    # values in [-5, 5] while the fault-free value is ~1: error up to 6 per neuron
    assert bn.neuron_error(net, 0, "byzantine", byzantine_bound=5.0) == pytest.approx(6.0)
    found = bn.worst_case_search(net, x, [2], mode="byzantine", byzantine_bound=5.0)
    b = bn.fep_bound(net, [2], mode="byzantine", byzantine_bound=5.0)
    assert found.error == pytest.approx(b, rel=1e-3)


def test_max_failures_and_tolerates(digits_mlp: nn.Module, digits: tuple) -> None:
    net = bn.extract_network(nn.Sequential(digits_mlp, nn.Softmax(dim=-1)), data=digits[2])
    eps = 0.3
    for mode in ("crash", "byzantine"):
        tol = bn.max_failures(net, eps, mode)
        assert len(tol) == 2
        for l, n in enumerate(tol):
            f = [0, 0]
            f[l] = n
            assert bn.tolerates(net, f, eps, mode=mode)
            if n < net.hidden_sizes[l]:
                f[l] = n + 1
                assert not bn.tolerates(net, f, eps, mode=mode)
    syn = bn.max_failures(net, eps, kind="synapses")
    assert len(syn) == 3 and all(v >= 0 for v in syn)
    assert bn.tolerates(net, [0, 0], 0.01)
    with pytest.raises(ValueError, match="epsilon_prime"):
        bn.tolerates(net, [0, 0], 0.1, epsilon_prime=0.2)


def test_bad_arguments() -> None:
    net = bn.extract_network(random_mlp([3, 4, 2], seed=0))
    with pytest.raises(ValueError, match="needs 1 entries"):
        bn.fep_bound(net, [1, 1])
    with pytest.raises(ValueError, match=r"neurons\[0\] must be an integer in \[0, 4\]"):
        bn.fep_bound(net, [5])
    with pytest.raises(ValueError, match="integer"):
        bn.fep_bound(net, [-1])
    with pytest.raises(ValueError, match="synapses needs 2"):
        bn.fep_bound(net, None, [1])
    with pytest.raises(ValueError, match="mode"):
        bn.fep_bound(net, [1], mode="omission")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="method"):
        bn.fep_bound(net, [1], method="loose")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epsilon"):
        bn.max_failures(net, 0.0)
    with pytest.raises(ValueError, match="kind"):
        bn.max_failures(net, 0.1, kind="edges")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="input layer"):
        bn.fep_bound(net, None, [1, 0])  # no input interval known


@pytest.mark.parametrize("mode", ["crash", "byzantine"])
def test_convolutional_network_bounds_hold(mode: str) -> None:
    """Unrolled convolutions: every output unit is a neuron; the FEP bound still holds."""
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1, stride=2),
        nn.Tanh(),
        nn.Conv2d(3, 2, 2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(18, 4),
    ).eval()
    x = torch.rand(24, 1, 8, 8)
    net = bn.extract_network(model, data=x, input_shape=(1, 8, 8))
    for f, s in (([2, 0], None), ([0, 2], None), ([1, 1], None), (None, [0, 2, 0])):
        found = bn.worst_case_search(net, x, f, s, mode=mode, restarts=1, max_rounds=3)
        assert 0 < found.error <= bn.fep_bound(net, f, s, mode=mode) + TOL


def test_byzantine_subsumes_crash_with_observed_intervals() -> None:
    """ReLU interval observed on data with lo > 0: a Byzantine neuron may still send 0."""
    model = random_mlp([4, 5, 2], "relu", seed=7)
    with torch.no_grad():
        model[0].bias.fill_(5.0)  # every hidden activation is > 0 on [0, 1]^4
    x = torch.rand(30, 4)
    net = bn.extract_network(model, data=x)
    assert net.layers[0].lo > 0
    assert bn.neuron_error(net, 0, "byzantine") >= bn.neuron_error(net, 0, "crash")
    for n in (1, 3):
        crash = bn.worst_case_search(net, x, [n]).error
        byz = bn.worst_case_search(net, x, [n], mode="byzantine")
        assert byz.error >= crash - TOL
        assert byz.error <= bn.fep_bound(net, [n], mode="byzantine") + TOL
