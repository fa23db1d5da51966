"""A model seen as a function of one flat parameter vector.

:class:`FlatModel` gives the two ways to compute the gradients of many simulated workers:

- :meth:`FlatModel.batched_grads`: one ``torch.func.vmap`` of ``grad_and_value`` over stacked
  per-worker batches (and, for local steps, stacked per-worker parameters) — one batched
  forward/backward for all workers;
- :meth:`FlatModel.grad`: the plain autograd forward/backward of one worker on the module itself.

Both return flat ``(d,)`` gradients in the order of ``module.parameters()`` and agree to
floating-point rounding. Buffers are passed through unchanged (models must not update buffers
in ``forward``; use GroupNorm rather than BatchNorm).

A plain ``nn.Sequential`` of ``Flatten``, ``Linear`` and ``ReLU`` layers (the ``logistic`` and
``mlp`` models), without hooks, is run by calling the very functions those layers' ``forward``
calls (``F.linear``, ``F.relu``, ``Tensor.flatten``) on the parameter views, rather than through
``functional_call``, which swaps the views into the module on every call (a tenth of a small
MLP's batched forward/backward): the same operations on the same tensors, so the same numbers.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from torch.nn import functional as F  # noqa: N812

__all__ = ["FlatModel"]

_Layers = list[tuple[str, nn.Module]]


def _plain_layers(module: nn.Module) -> _Layers | None:
    """``module``'s layers when it is an ``nn.Sequential`` (its own ``forward``) of exactly
    ``Flatten``, ``Linear`` and ``ReLU`` (not in place) modules whose parameters are plain
    ``<index>.weight`` / ``<index>.bias`` (no parametrisation); else ``None``."""
    if not isinstance(module, nn.Sequential) or type(module).forward is not nn.Sequential.forward:
        return None
    layers = list(module.named_children())
    expected: list[str] = []
    for name, layer in layers:
        kind = type(layer)
        if kind is nn.Linear:
            expected += [f"{name}.weight"] + ([f"{name}.bias"] if layer.bias is not None else [])
        elif not (kind is nn.Flatten or (kind is nn.ReLU and not layer.inplace)):
            return None
    if [n for n, _ in module.named_parameters()] != expected or any(module.buffers()):
        return None
    return layers


def _hooked(modules: list[nn.Module]) -> bool:
    """Whether a forward hook (global, or on one of ``modules``) would run in a module call."""
    from torch.nn.modules import module as base

    if base._global_forward_hooks or base._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


class FlatModel:
    """Functional view of ``module`` over a flat parameter vector ``theta``."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        params = list(module.named_parameters())
        if not params:
            raise ValueError("the model has no parameters")
        self.names = [n for n, _ in params]
        self.shapes = [p.shape for _, p in params]
        self.numels = [p.numel() for _, p in params]
        self.dim = sum(self.numels)
        self.buffers = dict(module.named_buffers())
        self._layers = _plain_layers(module)
        self._modules = [module] + [layer for _, layer in self._layers or []]

    # ------------------------------------------------------------------ conversion
    def flatten(self) -> torch.Tensor:
        """The module's current parameters as one detached flat vector."""
        return torch.cat([p.detach().reshape(-1) for p in self.module.parameters()]).clone()

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``theta`` shaped as the module's parameters (works under vmap/grad)."""
        chunks = torch.split(theta, self.numels)
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes, strict=True)}

    def load(self, theta: torch.Tensor) -> None:
        """Copy ``theta`` into the module's parameters."""
        with torch.no_grad():
            for p, c in zip(self.module.parameters(), torch.split(theta, self.numels), strict=True):
                p.copy_(c.view_as(p))

    # ------------------------------------------------------------------ functional
    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits of the model with parameters ``theta`` on inputs ``x``."""
        if self._layers is not None and not _hooked(self._modules):
            return self._sequential(self.unflatten(theta), x)
        return functional_call(self.module, (self.unflatten(theta), self.buffers), (x,))

    def _sequential(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The forward of a plain Sequential (see :func:`_plain_layers`), layer by layer as
        the layers' own ``forward`` computes it."""
        assert self._layers is not None
        for name, layer in self._layers:
            if isinstance(layer, nn.Linear):
                x = F.linear(x, params[f"{name}.weight"], params.get(f"{name}.bias"))
            elif isinstance(layer, nn.ReLU):
                x = F.relu(x)
            else:
                assert isinstance(layer, nn.Flatten)
                x = x.flatten(layer.start_dim, layer.end_dim)
        return x

    def loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the model ``theta`` on ``(x, y)``.

        Written as ``log_softmax`` + ``gather``, which ``vmap`` batches natively (``cross_entropy``
        goes through a slower Python decomposition under ``vmap``); same value.
        """
        logp = torch.log_softmax(self.forward(theta, x), dim=1)
        return -logp.gather(1, y[:, None]).mean()

    def batched_grads(
        self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-worker gradients and losses in one vmapped forward/backward.

        ``theta``: ``(d,)`` shared by all workers, or ``(h, d)`` one row per worker;
        ``x``: ``(h, b, ...)``; ``y``: ``(h, b)``. Returns ``(h, d)`` gradients, ``(h,)`` losses.
        """
        in_dims = (None if theta.dim() == 1 else 0, 0, 0)
        grads, losses = vmap(grad_and_value(self.loss), in_dims=in_dims)(theta, x, y)
        return grads.detach(), losses.detach()

    def grad(
        self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One worker's gradient by a plain forward/backward of the module (the loop baseline)."""
        self.load(theta)
        self.module.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.module(x), y)
        loss.backward()
        g = torch.cat(  # a parameter the forward did not use has a zero gradient
            [
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                for p in self.module.parameters()
            ]
        )
        return g, loss.detach()

    @torch.no_grad()
    def evaluate(
        self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, chunk: int = 2048
    ) -> tuple[float, float]:
        """Top-1 accuracy and mean cross-entropy of ``theta`` on ``(x, y)``."""
        correct, total_loss = 0, 0.0
        for i in range(0, len(x), chunk):
            logits = self.forward(theta, x[i : i + chunk])
            yi = y[i : i + chunk]
            correct += int((logits.argmax(dim=1) == yi).sum())
            total_loss += float(F.cross_entropy(logits, yi, reduction="sum"))
        return correct / max(1, len(x)), total_loss / max(1, len(x))
