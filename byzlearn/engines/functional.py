"""A model seen as a function of one flat parameter vector.

:class:`FlatModel` gives the two ways to compute the gradients of many simulated workers:

- :meth:`FlatModel.batched_grads`: one ``torch.func.vmap`` of ``grad_and_value`` over stacked
  per-worker batches (and, for local steps, stacked per-worker parameters) — one batched
  forward/backward for all workers;
- :meth:`FlatModel.grad`: the plain autograd forward/backward of one worker on the module itself.

Both return flat ``(d,)`` gradients in the order of ``module.parameters()`` and agree to
floating-point rounding. Buffers are passed through unchanged (models must not update buffers
in ``forward``; use GroupNorm rather than BatchNorm).

A plain chain of layers without hooks takes a shorter road to the same numbers
(:mod:`byzlearn.engines._sequential`): an ``nn.Sequential`` of ``Flatten``, ``Linear`` and
``ReLU`` layers (the ``logistic`` and ``mlp`` models), optionally after ``Conv2d``, ``MaxPool2d``
and ``ReLU`` layers (the ``cnn`` model, which declares its ``features`` and ``classifier`` as one
chain). Its forward calls the layers' own functions on the parameter views (no
``functional_call``), and its per-worker gradients (at a shared ``theta`` or one per worker)
are written out: the linear layers with mostly the operations the vmapped backward runs (half
the time: no functorch dispatch, and the loss's log-softmax on the transposed logits), the
convolutions as grouped convolutions over the workers in channels-last memory
(:mod:`byzlearn.engines._convolutional`: the CNN's per-worker gradients in a third of vmap's
time); the tests check that both roads agree to rounding.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from torch.nn import functional as F  # noqa: N812

from byzlearn.engines import _sequential

__all__ = ["FlatModel"]


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
        self._layers = _sequential.plain_layers(module)
        self._modules = list(module.modules()) if self._layers is not None else []

    # ------------------------------------------------------------------ conversion
    def flatten(self) -> torch.Tensor:
        """The module's current parameters as one detached flat vector."""
        return torch.cat([p.detach().reshape(-1) for p in self.module.parameters()]).clone()

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``theta`` shaped as the module's parameters (works under vmap/grad); for
        ``(h, d)`` rows, one set per row, shaped ``(h, *parameter shape)``."""
        lead = theta.shape[:-1]
        chunks = torch.split(theta, self.numels, dim=-1)
        return {
            n: c.view(*lead, *s) for n, c, s in zip(self.names, chunks, self.shapes, strict=True)
        }

    def load(self, theta: torch.Tensor) -> None:
        """Copy ``theta`` into the module's parameters."""
        with torch.no_grad():
            for p, c in zip(self.module.parameters(), torch.split(theta, self.numels), strict=True):
                p.copy_(c.view_as(p))

    # ------------------------------------------------------------------ functional
    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits of the model with parameters ``theta`` on inputs ``x``."""
        if self._plain():
            assert self._layers is not None
            return _sequential.forward(self._layers, self.unflatten(theta), x)
        return functional_call(self.module, (self.unflatten(theta), self.buffers), (x,))

    def _plain(self) -> bool:
        """Whether the plain-Sequential road applies now (no hook was added since)."""
        return self._layers is not None and not _sequential.hooked(self._modules)

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
        """Per-worker gradients and losses in one vmapped forward/backward (for a plain chain
        of layers, the same numbers by hand: see the module docstring).

        ``theta``: ``(d,)`` shared by all workers, or ``(h, d)`` one row per worker;
        ``x``: ``(h, b, ...)``; ``y``: ``(h, b)``. Returns ``(h, d)`` gradients, ``(h,)`` losses.
        """
        if theta.dim() in (1, 2) and self._plain():
            assert self._layers is not None
            params = self.unflatten(theta)
            out = _sequential.per_worker_grads(self._layers, self.names, params, x, y)
            if out is not None:
                return out
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
