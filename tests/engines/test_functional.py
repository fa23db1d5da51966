"""FlatModel: the vmapped per-worker gradients equal a plain loop of forward/backward."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from byzlearn.engines import FlatModel
from byzlearn.engines._sequential import loss_and_gradient
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
        FlatModel(nn.ReLU())


def _module_path(model: FlatModel) -> FlatModel:
    """The same model forced through ``functional_call`` (the reference for the direct path)."""
    slow = FlatModel(model.module)
    slow._layers = None
    return slow


@pytest.mark.parametrize(
    ("module", "shape"),
    [
        (build_model("logistic", (1, 8, 8), 10), (1, 8, 8)),
        (build_model("mlp", (1, 8, 8), 10), (1, 8, 8)),
        (build_model("mlp", (3, 5, 5), 7, hidden=[32, 16]), (3, 5, 5)),
        (nn.Sequential(nn.Linear(6, 9, bias=False), nn.ReLU(), nn.Linear(9, 4)), (6,)),
    ],
)
def test_plain_sequential_runs_direct_with_the_same_numbers(
    module: nn.Sequential, shape: tuple[int, ...]
) -> None:
    torch.manual_seed(2)
    fast = FlatModel(module)
    assert fast._layers is not None
    slow = _module_path(fast)
    x = torch.randn(5, 32, *shape)
    y = torch.randint(0, module[-1].out_features, (5, 32))
    theta = fast.flatten()
    for th in (theta, theta + 0.01 * torch.randn(5, fast.dim)):  # shared, one per worker
        g_fast, l_fast = fast.batched_grads(th, x, y)
        g_slow, l_slow = slow.batched_grads(th, x, y)
        # the hand-written loss gradient rounds differently (see loss_and_gradient)
        torch.testing.assert_close(g_fast, g_slow)
        torch.testing.assert_close(l_fast, l_slow)
    assert torch.equal(fast.forward(theta, x[0]), slow.forward(theta, x[0]))
    assert fast.evaluate(theta, x[0], y[0]) == slow.evaluate(theta, x[0], y[0])


class _Scaled(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


def test_other_modules_and_hooks_go_through_the_module() -> None:
    relu_in_place = nn.Sequential(nn.Linear(3, 3), nn.ReLU(inplace=True))
    assert FlatModel(relu_in_place)._layers is None
    assert FlatModel(_Scaled(nn.Linear(3, 3)))._layers is None
    assert FlatModel(nn.Sequential(nn.Linear(3, 3), nn.Tanh()))._layers is None
    torch.manual_seed(3)
    module = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    model = FlatModel(module)
    theta, x = model.flatten(), torch.randn(5, 3)
    plain = model.forward(theta, x)
    handle = module[1].register_forward_hook(lambda m, i, out: out * 0)  # the hook must run
    assert torch.equal(model.forward(theta, x), module[2](torch.zeros(5, 4)))
    handle.remove()
    assert torch.equal(model.forward(theta, x), plain)


def _vmap_grads(model: FlatModel, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    """The vmapped gradients and losses through the module (``functional_call``): the
    reference of the hand-written road (``theta`` shared, or one row per worker)."""
    loss = _module_path(model).loss
    dims = (None if theta.dim() == 1 else 0, 0, 0)
    return torch.func.vmap(torch.func.grad_and_value(loss), in_dims=dims)(theta, x, y)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    ("hidden", "shape"),
    [(None, (1, 8, 8)), ([64], (1, 8, 8)), ([256], (3, 16, 16)), ([96, 40], (5,))],
)
def test_plain_sequential_gradients_agree_with_vmap(
    hidden: list[int] | None, shape: tuple[int, ...], threads: int
) -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for h, b in [(2, 1), (3, 7), (25, 32), (4, 100)]:
            torch.manual_seed(h * 1000 + b)
            module = (
                build_model("logistic", shape, 10)
                if hidden is None
                else build_model("mlp", shape, 10, hidden=hidden)
            )
            model = FlatModel(module)
            theta = model.flatten()
            x, y = torch.randn(h, b, *shape), torch.randint(0, 10, (h, b))
            own = theta + 0.05 * torch.randn(h, model.dim)  # one model per worker
            for th in (theta, own):
                grads, losses = model.batched_grads(th, x, y)
                ref_grads, ref_losses = _vmap_grads(model, th, x, y)
                torch.testing.assert_close(grads, ref_grads, msg=f"{h} x {b}, {th.dim()}-d")
                torch.testing.assert_close(losses, ref_losses, msg=f"{h} x {b}, {th.dim()}-d")
    finally:
        torch.set_num_threads(previous)


def test_hand_written_gradients_keep_nan_inf_and_float64_as_vmap() -> None:
    torch.manual_seed(5)
    model = FlatModel(build_model("mlp", (1, 8, 8), 10).double())
    theta = model.flatten()
    theta[7], theta[300] = float("nan"), float("inf")
    x, y = torch.randn(4, 9, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (4, 9))
    grads, losses = model.batched_grads(theta, x, y)
    ref_grads, ref_losses = _vmap_grads(model, theta, x, y)
    torch.testing.assert_close(grads, ref_grads, equal_nan=True)
    torch.testing.assert_close(losses, ref_losses, equal_nan=True)
    assert torch.equal(grads.isnan(), ref_grads.isnan())


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 6),
    b=st.integers(1, 9),
    c=st.integers(2, 12),
    scale=st.sampled_from([1e-3, 1.0, 30.0]),
    seed=st.integers(0, 10_000),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_loss_and_gradient_match_per_worker_cross_entropy(
    h: int, b: int, c: int, scale: float, seed: int, dtype: torch.dtype
) -> None:
    """Each worker's loss and logit gradient, against cross_entropy + autograd on its own
    (b, C) logits, one worker at a time."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(h, b, c, generator=gen, dtype=dtype) * scale
    y = torch.randint(0, c, (h, b), generator=gen)
    g, losses = loss_and_gradient(logits, y)
    for i in range(h):
        z = logits[i].clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(z, y[i])
        (ref,) = torch.autograd.grad(loss, z)
        torch.testing.assert_close(losses[i], loss.detach())
        torch.testing.assert_close(g[i], ref)


def test_loss_and_gradient_keep_non_finite_logits_non_finite() -> None:
    logits = torch.randn(2, 3, 4)
    logits[0, 1, 2] = float("nan")
    g, losses = loss_and_gradient(logits, torch.zeros(2, 3, dtype=torch.long))
    assert bool(losses[0].isnan()) and bool(g[0, 1].isnan().all())
    assert bool(torch.isfinite(losses[1])) and bool(torch.isfinite(g[1]).all())


def test_a_linear_layer_on_several_feature_dimensions_goes_through_vmap() -> None:
    torch.manual_seed(6)
    model = FlatModel(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Flatten(), nn.Linear(15, 3)))
    theta = model.flatten()
    x, y = torch.randn(2, 6, 3, 4), torch.randint(0, 3, (2, 6))
    grads, losses = model.batched_grads(theta, x, y)
    ref_grads, ref_losses = _vmap_grads(model, theta, x, y)
    assert torch.equal(grads, ref_grads) and torch.equal(losses, ref_losses)
