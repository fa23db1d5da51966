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
        self._modules = list(module.modules())
        self._params = list(module.parameters())
        self._pools_checked: set[tuple[int, ...]] = set()  # image sizes (see _check_pools)

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
        return self._layers is not None and not _sequential.hooked(self._modules, self._params)

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
        A model with backward hooks (which ``vmap`` cannot run) takes :meth:`grad` per worker.
        With non-finite inputs or parameters, which entries of a worker's gradient are NaN
        depends on the kernels (torch's ``vmap`` and its per-worker autograd differ there too).
        """
        self._check_batch(theta, x, y)
        self._check_pools(x)
        if _sequential.backward_hooked(self._modules, self._params):
            rows = [
                self.grad(theta if theta.dim() == 1 else theta[i], x[i], y[i])
                for i in range(len(y))
            ]
            return torch.stack([g for g, _ in rows]), torch.stack([v for _, v in rows])
        # no backward hook (just checked): the road applies unless a forward hook runs
        if self._layers is not None and not _sequential.forward_hooked(self._modules):
            params = self.unflatten(theta)
            out = _sequential.per_worker_grads(self._layers, self.names, params, x, y)
            if out is not None:
                return out
        in_dims = (None if theta.dim() == 1 else 0, 0, 0)
        try:
            grads, losses = vmap(grad_and_value(self.loss), in_dims=in_dims)(theta, x, y)
        except RuntimeError as err:  # a label out of range fails in the gather: say so
            try:
                with torch.no_grad():
                    one = self.forward(theta if theta.dim() == 1 else theta[0], x[0, :1])
            except RuntimeError:
                raise err from None
            _sequential.check_labels(y, one.shape[-1])
            raise
        return grads.detach(), losses.detach()

    def _check_batch(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> None:
        """One clear line for stacks that do not fit together (the roads would fail deep
        inside, or broadcast a single row of ``theta`` to every worker)."""
        if theta.dim() not in (1, 2) or theta.shape[-1] != self.dim:
            raise ValueError(
                f"theta: (d,) or (h, d) with d = {self.dim}, got shape {tuple(theta.shape)}"
            )
        if y.dim() != 2 or x.dim() < 2 or x.shape[:2] != y.shape:
            raise ValueError(
                f"x: (h, b, ...) and y: (h, b), got shapes {tuple(x.shape)} and {tuple(y.shape)}"
            )
        if theta.dim() == 2 and theta.shape[0] != y.shape[0]:
            raise ValueError(f"theta: one row per worker, got {theta.shape[0]} for {y.shape[0]}")

    def _check_pools(self, x: torch.Tensor) -> None:
        """A plain chain's max-pools that torch cannot take the backward of on ``x``'s image
        size are refused (:func:`_sequential.check_pools`; each size checked once)."""
        size = tuple(x.shape[-2:])
        if self._layers is not None and size not in self._pools_checked:
            _sequential.check_pools(self._layers, x)
            self._pools_checked.add(size)

    def grad(
        self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One worker's gradient by a plain forward/backward of the module (the loop baseline)."""
        self._check_pools(x)
        self.load(theta)
        self.module.zero_grad(set_to_none=True)
        logits = self.module(x)
        _sequential.check_labels(y, logits.shape[-1])
        loss = F.cross_entropy(logits, y)
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
