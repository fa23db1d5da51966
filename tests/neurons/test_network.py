"""Extraction of layers, Lipschitz constants and ranges; clear errors for unsupported models."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import byzlearn.neurons as bn
from byzlearn.neurons.activations import activation_info

from .helpers import random_mlp


@pytest.mark.parametrize(
    ("module", "K", "lo", "hi"),
    [
        (nn.Sigmoid(), 0.25, 0.0, 1.0),
        (nn.Tanh(), 1.0, -1.0, 1.0),
        (nn.ReLU(), 1.0, 0.0, math.inf),
        (nn.LeakyReLU(0.1), 1.0, -math.inf, math.inf),
        (nn.Softplus(), 1.0, 0.0, math.inf),
        (bn.ScaledSigmoid(0.3), 0.3, 0.0, 1.0),
        (nn.Softmax(dim=-1), 0.5, 0.0, 1.0),
    ],
)
def test_activation_constants(module: nn.Module, K: float, lo: float, hi: float) -> None:
    info = activation_info(module)
    assert info is not None
    assert (info.K, info.lo, info.hi) == (K, lo, hi)
    if info.elementwise:
        # K really is a Lipschitz constant and `derivative` is the derivative
        z = torch.linspace(-6, 6, 2001, dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(info.fn(z).sum(), z)
        assert float(grad.abs().max()) <= K + 1e-9
        torch.testing.assert_close(info.derivative(z.detach()), grad)


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu", "softplus"])
def test_forward_matches_module(act: str) -> None:
    model = random_mlp([6, 9, 7, 3], act, seed=1)
    x = torch.rand(20, 6)
    net = bn.extract_network(model, data=x)
    assert net.hidden_sizes == [9, 7] and net.out_features == 3
    torch.testing.assert_close(net(x), model(x))


def test_nested_sequential_skips_flatten_dropout_and_linear_linear() -> None:
    model = nn.Sequential(
        nn.Flatten(),
        nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Dropout(0.5)),
        nn.Sequential(nn.Linear(5, 3), nn.Identity()),  # linear hidden layer
        bn.CrashDropout(0.2),
        nn.Linear(3, 2),
    ).eval()
    x = torch.rand(8, 2, 2)
    net = bn.extract_network(model, C=10.0)
    assert [lay.name for lay in net.layers] == ["1.0", "2.0", "4"]
    assert net.layers[1].act.name == "Identity"
    assert (net.layers[1].lo, net.layers[1].hi) == (-10.0, 10.0)
    torch.testing.assert_close(net(x), model(x))


def test_intervals_from_C_data_and_inputs() -> None:
    model = random_mlp([5, 6, 2], "relu", seed=2)
    x = torch.rand(30, 5)
    unknown = bn.extract_network(model)
    assert unknown.layers[0].interval_source == "unknown"
    with pytest.raises(ValueError, match="no finite output interval"):
        bn.fep_bound(unknown, [1])
    with_c = bn.extract_network(model, C=3.0)
    assert (with_c.layers[0].lo, with_c.layers[0].hi) == (0.0, 3.0)
    observed = bn.extract_network(model, data=x)
    h = observed.hidden(x)[0].detach()
    assert observed.layers[0].hi == pytest.approx(float(h.max()))
    assert (observed.in_lo, observed.in_hi) == (float(x.min()), float(x.max()))
    given = bn.extract_network(model, input_bounds=(0.0, 1.0))
    assert (given.in_lo, given.in_hi) == (0.0, 1.0)
    with pytest.raises(ValueError, match="C must be > 0"):
        bn.extract_network(model, C=-1.0)
    with pytest.raises(ValueError, match="one per hidden layer"):
        bn.extract_network(model, C=[1.0, 2.0])


def test_unsupported_layers_are_named() -> None:
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(NotImplementedError, match=r"'0' \(Conv2d\)"):
        bn.extract_network(conv)
    bnorm = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"'1' \(BatchNorm1d\) is not supported"):
        bn.extract_network(bnorm)
    hidden_softmax = nn.Sequential(nn.Linear(4, 4), nn.Softmax(dim=-1), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="only supported as the output"):
        bn.extract_network(hidden_softmax)


def test_malformed_models() -> None:
    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    with pytest.raises(TypeError, match=r"other than nn\.Sequential"):
        bn.extract_network(nn.Sequential(Custom()))
    with pytest.raises(ValueError, match="before the first Linear"):
        bn.extract_network(nn.Sequential(nn.ReLU(), nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="follows another activation"):
        bn.extract_network(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Tanh(), nn.Linear(2, 1)))
    with pytest.raises(ValueError, match="no Linear"):
        bn.extract_network(nn.Sequential(nn.Flatten()))
    with pytest.raises(ValueError, match="shape mismatch"):
        bn.extract_network(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(4, 1)))
    with pytest.raises(TypeError, match=r"nn\.Module"):
        bn.extract_network("model.pt")  # type: ignore[arg-type]


def test_layer_index_checked() -> None:
    net = bn.extract_network(random_mlp([3, 4, 2], seed=0))
    for bad in (-1, 1, 0.5):
        with pytest.raises(ValueError, match="hidden layer index"):
            net.check_hidden(bad)  # type: ignore[arg-type]


def _conv_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1, stride=2),
        nn.Tanh(),
        nn.Conv2d(3, 2, 2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(18, 4),
    ).eval()


def test_convolutions_unrolled_with_input_shape() -> None:
    model = _conv_model()
    x = torch.rand(10, 1, 8, 8)
    with pytest.raises(NotImplementedError, match="input_shape"):
        bn.extract_network(model)
    net = bn.extract_network(model, data=x, input_shape=(1, 8, 8))
    assert net.hidden_sizes == [48, 18]  # 3 channels x 4 x 4, 2 channels x 3 x 3
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x))
        torch.testing.assert_close(net(x.flatten(1)), model(x))
    conv1d = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(12, 2)).eval()
    x1 = torch.rand(5, 2, 6)
    net1 = bn.extract_network(conv1d, input_shape=(2, 6))
    with torch.no_grad():
        torch.testing.assert_close(net1(x1), conv1d(x1))
    no_flatten = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Linear(6, 2))
    with pytest.raises(ValueError, match=r"add nn\.Flatten"):
        bn.extract_network(no_flatten, input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="cannot take inputs"):
        bn.extract_network(model, input_shape=(2, 8, 8))
