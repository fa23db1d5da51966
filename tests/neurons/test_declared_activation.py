"""User-defined activations with a declared Lipschitz constant and range."""

from __future__ import annotations

import math

import pytest
import torch

from byzlearn.neurons import DeclaredActivation, ScaledSigmoid, extract_network, fep_bound
from byzlearn.neurons.activations import activation_info
from byzlearn.neurons.train import make_mlp


def sig4(z: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(4 * z)


def test_the_fep_papers_sigmoid_matches_the_built_in_one():
    declared = DeclaredActivation(sig4, K=1.0, lo=0.0, hi=1.0, name="sig4")
    info = activation_info(declared)
    assert (info.name, info.K, info.lo, info.hi) == ("sig4", 1.0, 0.0, 1.0)
    z = torch.linspace(-3, 3, 101, dtype=torch.float64)
    builtin = activation_info(ScaledSigmoid(1.0))
    torch.testing.assert_close(info.derivative(z), builtin.derivative(z))  # autograd
    torch.manual_seed(0)
    ours = make_mlp([4, 6, 5, 3], declared)
    torch.manual_seed(0)
    theirs = make_mlp([4, 6, 5, 3], "scaled_sigmoid", K=1.0)
    x = torch.randn(20, 4)
    torch.testing.assert_close(ours(x), theirs(x))
    a, b = extract_network(ours), extract_network(theirs)
    assert [layer.act.K for layer in a.layers] == [layer.act.K for layer in b.layers]
    assert fep_bound(a, [1, 0]) == pytest.approx(fep_bound(b, [1, 0]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"K": 0.5, "lo": 0.0, "hi": 1.0}, r"declared K=0.5 but its slope reaches 1 near z=0$"),
        ({"K": 1.0, "lo": 0.0, "hi": 0.9}, r"declared range \[0, 0.9\] but its values reach"),
        ({"K": 1.0, "C": 1.0, "lo": 0.0}, "give C .* or lo/hi, not both"),
        ({"K": -1.0}, "K must be a finite number > 0"),
        ({"K": math.inf}, "K must be a finite number > 0"),
    ],
)
def test_a_wrong_declaration_is_one_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DeclaredActivation(sig4, name="sig4", **kwargs)


def test_unbounded_declared_activations_take_the_range_seen_on_data():
    leaky = DeclaredActivation(lambda z: torch.where(z > 0, z, 0.1 * z), K=1.0, name="leaky")
    net = extract_network(make_mlp([3, 4, 2], leaky), data=torch.randn(50, 3))
    lo, hi = net.layers[0].lo, net.layers[0].hi
    assert math.isfinite(lo) and math.isfinite(hi) and lo < hi
