"""FlatModel: the vmapped per-worker gradients equal a plain loop of forward/backward."""

from __future__ import annotations

import pytest
import torch

from byzlearn.engines import FlatModel
from byzlearn.models import build_model


@pytest.mark.parametrize("name", ["logistic", "mlp", "cnn"])
def test_batched_grads_match_the_per_worker_loop(name: str) -> None:
    torch.manual_seed(0)
    model = FlatModel(build_model(name, (1, 8, 8), 10))
    theta = model.flatten()
    x = torch.randn(4, 6, 1, 8, 8)
    y = torch.randint(0, 10, (4, 6))
    grads, losses = model.batched_grads(theta, x, y)
    assert grads.shape == (4, model.dim)
    for i in range(4):
        g, loss = model.grad(theta, x[i], y[i])
        torch.testing.assert_close(grads[i], g, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(losses[i], loss)


def test_batched_grads_with_per_worker_parameters() -> None:
    torch.manual_seed(1)
    model = FlatModel(build_model("mlp", (5,), 3, hidden=[4]))
    thetas = torch.randn(3, model.dim)
    x, y = torch.randn(3, 7, 5), torch.randint(0, 3, (3, 7))
    grads, _ = model.batched_grads(thetas, x, y)
    for i in range(3):
        g, _ = model.grad(thetas[i], x[i], y[i])
        torch.testing.assert_close(grads[i], g, rtol=1e-4, atol=1e-5)


def test_flatten_load_roundtrip_and_evaluate() -> None:
    model = FlatModel(build_model("logistic", (2,), 2))
    theta = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])  # weight = I, bias = 0
    model.load(theta)
    assert torch.equal(model.flatten(), theta)
    x = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    acc, _ = model.evaluate(theta, x, torch.tensor([0, 1, 1]))
    assert acc == pytest.approx(2 / 3)


def test_model_without_parameters_is_rejected() -> None:
    with pytest.raises(ValueError, match="no parameters"):
        FlatModel(torch.nn.ReLU())
