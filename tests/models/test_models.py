"""Reference models: shapes, options, and that they run under the vmapped functional path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from byzlearn.engines import FlatModel
from byzlearn.models import build_model, names


@pytest.mark.parametrize(
    ("name", "shape", "options"),
    [
        ("logistic", (20,), {}),
        ("mlp", (1, 8, 8), {"hidden": [16, 8]}),
        ("cnn", (1, 8, 8), {"channels": [4, 8]}),
        ("cnn", (3, 32, 32), {}),
        ("resnet", (3, 16, 16), {"depth": 8, "width": 8, "groups": 4}),
    ],
)
def test_models_build_and_vmap(name: str, shape: tuple, options: dict) -> None:
    torch.manual_seed(0)
    module = build_model(name, shape, 7, **options)
    x = torch.randn(2, 3, *shape)
    assert module(x[0]).shape == (3, 7)
    flat = FlatModel(module)
    grads, _ = flat.batched_grads(flat.flatten(), x, torch.randint(0, 7, (2, 3)))
    assert grads.shape == (2, flat.dim) and torch.isfinite(grads).all()
    assert not list(module.buffers())  # nothing updated in forward (no BatchNorm)


def test_errors() -> None:
    assert names() == ["cnn", "logistic", "mlp", "resnet"]
    with pytest.raises(ValueError, match="unknown model"):
        build_model("gpt", (4,), 2)
    with pytest.raises(ValueError, match="6k"):
        build_model("resnet", (3, 8, 8), 2, depth=10)
    with pytest.raises(ValueError, match="C, H, W"):
        build_model("cnn", (64,), 2)


@pytest.mark.parametrize("hidden", [[1.5], [0], [8, -1], "64", [True]])
def test_mlp_widths_are_positive_integers_never_truncated(hidden) -> None:
    with pytest.raises(ValueError, match=r"hidden: .*positive integers"):
        build_model("mlp", (8,), 3, hidden=hidden)


def test_cnn_takes_two_channel_counts() -> None:
    with pytest.raises(ValueError, match="channels: 2 positive integers"):
        build_model("cnn", (1, 8, 8), 3, channels=[4])
    assert build_model("mlp", (8,), 3, hidden=(np.int64(4),))[1].out_features == 4
