"""The short road's convolutional part (``byzlearn.engines._convolutional``): per-worker
gradients of chains of Conv2d / ReLU / MaxPool2d layers, then Flatten and linear layers, against
``vmap(grad_and_value(loss))`` through the module."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from byzlearn.engines import FlatModel
from byzlearn.engines._convolutional import to_grouped
from byzlearn.models import CNN, build_model


def _module_path(model: FlatModel) -> FlatModel:
    slow = FlatModel(model.module)
    slow._layers = None
    return slow


def _vmap(model: FlatModel, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    loss = _module_path(model).loss
    dims = (None if theta.dim() == 1 else 0, 0, 0)
    return torch.func.vmap(torch.func.grad_and_value(loss), in_dims=dims)(theta, x, y)


def _check(module: nn.Module, shape: tuple[int, ...], h: int, b: int, seed: int, *, ties: bool):
    torch.manual_seed(seed)
    model = FlatModel(module)
    assert model._layers is not None, "the road must take this chain"
    theta = model.flatten()
    x = torch.randn(h, b, *shape)
    if ties:  # digits-like pixels: small integers, many equal neighbours (ties in the pools)
        x = (x * 4).round().clamp(min=0)
    classes = module.classifier.out_features if isinstance(module, CNN) else module[-1].out_features
    y = torch.randint(0, classes, (h, b))
    own = theta + 0.05 * torch.randn(h, model.dim)  # one model per worker (local steps)
    for th in (theta, own):
        grads, losses = model.batched_grads(th, x, y)
        ref_grads, ref_losses = _vmap(model, th, x, y)
        torch.testing.assert_close(grads, ref_grads, msg=f"{h} x {b}, theta {tuple(th.shape)}")
        torch.testing.assert_close(losses, ref_losses, msg=f"{h} x {b}, theta {tuple(th.shape)}")
    return model, theta, x, y


def test_to_grouped_lays_workers_out_as_channel_groups() -> None:
    x = torch.randn(3, 4, 2, 5, 6)
    g = to_grouped(x)
    assert g.shape == (4, 6, 5, 6) and g.is_contiguous(memory_format=torch.channels_last)
    for w in range(3):
        assert torch.equal(g[:, 2 * w : 2 * w + 2], x[w])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_the_cnn_model_takes_the_road_and_agrees_with_vmap(threads: int, ties: bool) -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for h, b in [(1, 1), (2, 5), (25, 32), (3, 64)]:
            _check(build_model("cnn", (1, 8, 8), 10), (1, 8, 8), h, b, h + b, ties=ties)
    finally:
        torch.set_num_threads(previous)


def _chain(
    features: list[nn.Module], shape: tuple[int, ...], hidden: tuple[int, ...]
) -> nn.Sequential:
    """``features``, Flatten, then Linear layers (ReLU between them) through the ``hidden``
    widths to 5 classes."""
    body = nn.Sequential(*features, nn.Flatten())
    widths = [body(torch.zeros(1, *shape)).shape[1], *hidden, 5]
    tail: list[nn.Module] = []
    for i in range(len(widths) - 1):
        tail += [nn.ReLU()] if i else []
        tail.append(nn.Linear(widths[i], widths[i + 1]))
    return nn.Sequential(*body, *tail)


_STACKS = {
    "two channels in, no bias, odd size": (
        [nn.Conv2d(2, 5, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2)],
        (2, 7, 7),
        (),
    ),
    "stride, dilation, ReLU without pool, pool then ReLU, hidden layer": (
        [
            nn.Conv2d(3, 4, 3, stride=2, padding=2, dilation=2),
            nn.ReLU(),
            nn.Conv2d(4, 6, (3, 2), padding=(1, 0)),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.ReLU(),
        ],
        (3, 9, 8),
        (7,),
    ),
    "overlapping and padded pools": (
        [
            nn.Conv2d(1, 4, 3),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.Conv2d(4, 4, 1),
            nn.MaxPool2d((2, 1), stride=(1, 2), dilation=(2, 1)),
        ],
        (1, 9, 9),
        (),
    ),
    "nested Sequential, pool first": (
        [nn.MaxPool2d(2), nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU())],
        (1, 8, 8),
        (),
    ),
}


@pytest.mark.parametrize("name", sorted(_STACKS))
def test_stacks_of_layers_agree_with_vmap(name: str) -> None:
    features, shape, hidden = _STACKS[name]
    module = _chain(features, shape, hidden)
    for h, b in [(1, 3), (4, 2), (6, 9)]:
        model, theta, x, _ = _check(module, shape, h, b, h * b, ties=True)
    slow = _module_path(model)
    assert torch.equal(model.forward(theta, x[0]), slow.forward(theta, x[0]))


@settings(max_examples=25, deadline=None)
@given(
    cin=st.integers(1, 3),
    c1=st.integers(1, 6),
    kernel=st.integers(1, 3),
    padding=st.integers(0, 1),
    pool=st.integers(1, 3),
    relu_first=st.booleans(),
    size=st.integers(6, 10),
    h=st.integers(1, 5),
    b=st.integers(1, 6),
    seed=st.integers(0, 10_000),
)
def test_random_conv_chains_agree_with_vmap(
    cin: int,
    c1: int,
    kernel: int,
    padding: int,
    pool: int,
    relu_first: bool,
    size: int,
    h: int,
    b: int,
    seed: int,
) -> None:
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, c1, kernel, padding=padding)
    block = [conv, nn.ReLU(), nn.MaxPool2d(pool)] if relu_first else [conv, nn.MaxPool2d(pool)]
    features = nn.Sequential(*block, nn.Flatten())
    width = features(torch.zeros(1, cin, size, size)).shape[1]
    module = nn.Sequential(*features, nn.Linear(width, 4))
    _check(module, (cin, size, size), h, b, seed, ties=seed % 2 == 0)


def test_float64_and_non_finite_values_as_vmap() -> None:
    torch.manual_seed(8)
    model = FlatModel(build_model("cnn", (1, 8, 8), 10).double())
    theta = model.flatten()
    theta[3], theta[200] = float("nan"), float("inf")  # conv1 weight, conv2 weight
    x, y = torch.randn(3, 4, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (3, 4))
    grads, losses = model.batched_grads(theta, x, y)
    ref_grads, ref_losses = _vmap(model, theta, x, y)
    torch.testing.assert_close(grads, ref_grads, equal_nan=True)
    torch.testing.assert_close(losses, ref_losses, equal_nan=True)


class _Doubled(CNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


def test_chains_the_road_does_not_take() -> None:
    assert FlatModel(_Doubled((1, 8, 8), 10))._layers is None  # its own forward
    assert FlatModel(build_model("resnet", (3, 8, 8), 10))._layers is None
    for conv in (
        nn.Conv2d(2, 2, 3, groups=2),
        nn.Conv2d(1, 2, 3, padding="same"),
        nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"),
    ):
        assert FlatModel(nn.Sequential(conv, nn.Flatten()))._layers is None
    late = nn.Sequential(nn.Flatten(), nn.Unflatten(1, (1, 4, 4)), nn.Conv2d(1, 2, 3))
    assert FlatModel(late)._layers is None
    # a Flatten that keeps a spatial dimension: the chain runs directly, its gradients by vmap
    torch.manual_seed(9)
    odd = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(start_dim=2), nn.Flatten(), nn.Linear(8, 3))
    model = FlatModel(odd)
    assert model._layers is not None
    theta, x, y = model.flatten(), torch.randn(2, 3, 1, 4, 4), torch.randint(0, 3, (2, 3))
    grads, _ = model.batched_grads(theta, x, y)  # falls back to vmap
    torch.testing.assert_close(grads, _vmap(model, theta, x, y)[0])


def test_a_hook_on_the_cnn_sends_it_through_the_module() -> None:
    torch.manual_seed(10)
    module = build_model("cnn", (1, 8, 8), 10)
    model = FlatModel(module)
    theta, x = model.flatten(), torch.randn(4, 1, 8, 8)
    plain = model.forward(theta, x)
    handle = module.features.register_forward_hook(lambda m, i, out: out * 0)
    assert torch.equal(model.forward(theta, x), module.classifier(torch.zeros(4, 128)))
    handle.remove()
    assert torch.equal(model.forward(theta, x), plain)
