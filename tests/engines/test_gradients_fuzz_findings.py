"""Findings of a differential fuzz of the per-worker gradient roads (``FlatModel.batched_grads``:
the hand-written chains, the grouped convolutions, ``vmap``) against a loop of plain autograd on
the module, one worker at a time."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from byzlearn.engines import FlatModel
from byzlearn.models import build_model


def _loop(module: nn.Module, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    """Per worker: ``theta`` (or its row) loaded into a copy of the module, cross-entropy, plain
    autograd (an unused parameter has a zero gradient)."""
    m = copy.deepcopy(module)
    params = list(m.parameters())
    grads, losses = [], []
    for i in range(len(y)):
        row = theta if theta.dim() == 1 else theta[i]
        with torch.no_grad():
            for p, c in zip(params, torch.split(row, [p.numel() for p in params]), strict=True):
                p.copy_(c.view_as(p))
        loss = F.cross_entropy(m(x[i]), y[i])
        got = torch.autograd.grad(loss, params, allow_unused=True)
        grads.append(
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p)).reshape(-1)
                    for g, p in zip(got, params, strict=True)
                ]
            )
        )
        losses.append(loss.detach())
    return torch.stack(grads), torch.stack(losses)


def _agree(module: nn.Module, x: torch.Tensor, y: torch.Tensor, *, nan: bool = False) -> None:
    """The model's per-worker gradients and losses equal the loop's, at a shared ``theta`` and
    at one ``theta`` per worker."""
    model = FlatModel(module)
    theta = model.flatten()
    gen = torch.Generator().manual_seed(0)
    own = theta + 0.05 * torch.randn(len(y), model.dim, generator=gen, dtype=theta.dtype)
    for th in (theta, own):
        grads, losses = model.batched_grads(th, x, y)
        ref_grads, ref_losses = _loop(module, th, x, y)
        torch.testing.assert_close(grads, ref_grads, equal_nan=nan)
        torch.testing.assert_close(losses, ref_losses, equal_nan=nan)


def test_a_module_held_twice_in_a_chain_runs_twice() -> None:
    """``named_children`` lists a module once: the road dropped the second ReLU."""
    torch.manual_seed(0)
    relu = nn.ReLU()
    module = nn.Sequential(nn.Linear(4, 5), relu, nn.Linear(5, 5), relu, nn.Linear(5, 3))
    assert FlatModel(module)._layers is not None
    _agree(module, torch.randn(2, 6, 4), torch.randint(0, 3, (2, 6)))


def test_a_relu_before_the_first_linear_layer() -> None:
    """Its backward was run on the Flatten's output gradient: a shape error."""
    torch.manual_seed(1)
    module = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Linear(25, 4), nn.ReLU(), nn.Linear(4, 3))
    _agree(module, torch.randn(3, 5, 1, 5, 5), torch.randint(0, 3, (3, 5)))


def test_a_relu_before_a_pool_with_a_window_over_padding_alone() -> None:
    """Such a window is -inf, which the ReLU before it keeps (the road ran the ReLU after the
    pool: 0, finite losses where autograd's are NaN)."""
    torch.manual_seed(2)
    pool = nn.MaxPool2d(2, stride=2, padding=1, dilation=2)  # on 9 x 1: columns -1 and 1
    module = nn.Sequential(nn.ReLU(), pool, nn.Flatten(), nn.Linear(5, 3))
    x, y = torch.randn(2, 3, 1, 9, 1, dtype=torch.float64), torch.randint(0, 3, (2, 3))
    _agree(module.double(), x, y, nan=True)
    assert bool(FlatModel(module).batched_grads(FlatModel(module).flatten(), x, y)[1].isnan().all())


def test_a_first_pool_with_a_window_over_padding_alone_does_not_crash() -> None:
    """Its backward (not needed: nothing to train below it) wrote past the tensor's memory."""
    torch.manual_seed(3)
    pool = nn.MaxPool2d((2, 3), (2, 3), padding=1, dilation=2, ceil_mode=True)
    module = nn.Sequential(pool, nn.Flatten(), nn.Linear(6, 10))
    x, y = torch.randn(4, 5, 3, 2, 1), torch.randint(0, 10, (4, 5))
    for _ in range(20):
        _agree(module, x, y, nan=True)


def test_a_pool_over_padding_alone_after_a_convolution_is_refused_in_one_line() -> None:
    """torch's max-pool backward writes at a bogus index there (out of bounds: a crash)."""
    torch.manual_seed(4)
    pool = nn.MaxPool2d((2, 3), (2, 3), padding=1, dilation=2, ceil_mode=True)
    model = FlatModel(nn.Sequential(nn.Conv2d(3, 4, 1), pool, nn.Flatten(), nn.Linear(8, 10)))
    x, y = torch.randn(4, 5, 3, 2, 1), torch.randint(0, 10, (4, 5))
    with pytest.raises(ValueError, match=r"MaxPool2d '1' .* window over padding alone"):
        model.batched_grads(model.flatten(), x, y)
    with pytest.raises(ValueError, match="window over padding alone on its 2 x 1 input"):
        model.grad(model.flatten(), x[0], y[0])


def test_a_dilated_one_by_one_convolution_on_a_thin_image() -> None:
    """torch's channels-last convolution with a bias crashed on it (segmentation fault); a
    dilation along a kernel of size 1 changes nothing and is dropped."""
    torch.manual_seed(5)
    conv = nn.Conv2d(7, 5, 1, stride=(1, 2), padding=1, dilation=(1, 2))
    module = nn.Sequential(conv, nn.Flatten(), nn.Linear(40, 3))
    _agree(module, torch.randn(4, 2, 7, 2, 1), torch.randint(0, 3, (4, 2)))


def test_a_tiling_pool_larger_than_its_input_fails_as_torch_does() -> None:
    """The compiled pool gave an empty output (and the road an answer) where torch refuses."""
    model = FlatModel(nn.Sequential(nn.Conv2d(1, 2, 1), nn.MaxPool2d(2), nn.Flatten()))
    model = FlatModel(nn.Sequential(*model.module, nn.Linear(1, 3)))
    with pytest.raises(RuntimeError, match="Output size is too small"):
        model.batched_grads(model.flatten(), torch.randn(2, 3, 1, 1, 5), torch.zeros(2, 3).long())


def test_chains_the_module_call_would_not_run_as_layers_go_through_the_module() -> None:
    with_none = nn.Sequential(nn.Linear(4, 3))
    with_none.add_module("gone", None)
    assert FlatModel(with_none)._layers is None

    class Called(nn.Sequential):
        def __call__(self, *args: object, **kwargs: object) -> torch.Tensor:
            return 2 * super().__call__(*args, **kwargs)

    assert FlatModel(Called(nn.Linear(4, 3)))._layers is None


def test_a_forward_set_on_an_instance_runs() -> None:
    torch.manual_seed(6)
    module = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    module[1].forward = lambda z: 2 * torch.relu(z)  # type: ignore[method-assign]
    _agree(module, torch.randn(3, 4, 4), torch.randint(0, 3, (3, 4)))


@pytest.mark.parametrize("where", ["module", "parameter"])
def test_backward_hooks_run_as_in_autograd(where: str) -> None:
    """The road skipped them, and ``vmap`` cannot run a module's: one worker at a time."""
    torch.manual_seed(7)
    module = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    if where == "module":
        module[2].register_full_backward_hook(lambda m, gi, go: (gi[0] * 3,))
    else:
        module[0].weight.register_hook(lambda g: g * 4)
    x, y = torch.randn(3, 4, 4), torch.randint(0, 3, (3, 4))
    model = FlatModel(module)
    theta = model.flatten()
    own = theta + 0.1 * torch.randn(3, model.dim)
    for th in (theta, own):
        grads, losses = model.batched_grads(th, x, y)
        for i in range(3):
            g, loss = model.grad(th if th.dim() == 1 else th[i], x[i], y[i])
            torch.testing.assert_close(grads[i], g)
            torch.testing.assert_close(losses[i], loss)
        plain = FlatModel(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)))
        assert not torch.allclose(grads, plain.batched_grads(th, x, y)[0])  # the hook counted


def test_stacks_that_do_not_fit_together_are_refused_in_one_line() -> None:
    model = FlatModel(build_model("mlp", (4,), 3, hidden=[5]))
    theta, x, y = model.flatten(), torch.randn(3, 6, 4), torch.randint(0, 3, (3, 6))
    with pytest.raises(ValueError, match="one row per worker, got 1 for 3"):
        model.batched_grads(theta[None], x, y)  # was broadcast to the three workers
    with pytest.raises(ValueError, match=r"theta: \(d,\) or \(h, d\) with d = 43"):
        model.batched_grads(theta[:-1], x, y)
    with pytest.raises(ValueError, match=r"x: \(h, b, ...\) and y: \(h, b\)"):
        model.batched_grads(theta, x, y[:, :5])


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet"])
@pytest.mark.parametrize("label", [-100, -1, 4])
def test_labels_out_of_range_are_refused_by_every_road(name: str, label: int) -> None:
    """The loop's cross-entropy skipped the samples labelled -100; the other roads failed in a
    gather."""
    shape = (5,) if name == "mlp" else (3, 6, 6)
    options = {"width": 2, "groups": 2} if name == "resnet" else {}
    model = FlatModel(build_model(name, shape, 4, **options))
    theta, x = model.flatten(), torch.randn(2, 3, *shape)
    y = torch.randint(0, 4, (2, 3))
    y[1, 2] = label
    message = f"labels must be in 0..3 .*, got {label}"
    with pytest.raises(ValueError, match=message):
        model.batched_grads(theta, x, y)
    with pytest.raises(ValueError, match=message):
        model.grad(theta, x[1], y[1])


def test_a_convolution_on_one_channel_with_an_output_one_pixel_wide() -> None:
    """torch's channels-last convolution gave wrong numbers there (one worker, one channel,
    a stride along the width): the features, the losses and the gradients were off."""
    torch.manual_seed(8)
    conv = nn.Conv2d(1, 2, 3, stride=(1, 3), padding=1)
    module = nn.Sequential(nn.MaxPool2d(1, 2), nn.ReLU(), conv, nn.Flatten(), nn.Linear(10, 3))
    _agree(module, torch.randn(1, 2, 1, 10, 4), torch.randint(0, 3, (1, 2)))
