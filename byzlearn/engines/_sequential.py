"""The short road for plain MLPs: an ``nn.Sequential`` of ``Flatten``, ``Linear`` and ``ReLU``.

:func:`forward` calls the functions the layers' own ``forward`` calls (``F.linear``, ``F.relu``,
``Tensor.flatten``) on the parameter views: what ``functional_call`` runs, without swapping the
views into the module on every call.

:func:`per_worker_grads` gives the per-worker gradients and losses of ``h`` workers at one shared
parameter vector, the result of ``vmap(grad_and_value(loss), in_dims=(None, 0, 0))``, mostly by
the operations that vmapped backward runs (read from torch's profiler), written out without
functorch's per-operation dispatch; the tests check agreement to rounding over many shapes:

- forward on all ``h x b`` samples at once: ``matmul(a, W.t())`` on the ``(h, b, in)`` inputs
  (one matrix product), then ``bias + out``; ReLU; the logits ``(h, b, C)``;
- the loss ``-mean(log_softmax(logits)[y])`` per worker and its gradient with respect to the
  logits, ``(softmax - onehot(y)) / b``, on the transposed logits (:func:`loss_and_gradient`:
  torch's log-softmax along a short last dimension is several times slower; this step is where
  the numbers differ from vmap's in the last bits);
- backward layer by layer: per-worker weight gradients ``g^T a`` (one batched product),
  bias gradients ``sum_b g``, ``threshold_backward`` through ReLU, and ``g W`` to the layer weight.

Inputs the road does not cover (a linear layer fed more than one feature dimension) fall back
to vmap (``None``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

__all__ = ["Layers", "forward", "hooked", "per_worker_grads", "plain_layers"]

Layers = list[tuple[str, nn.Module]]


def plain_layers(module: nn.Module) -> Layers | None:
    """``module``'s layers when it is an ``nn.Sequential`` (its own ``forward``) of exactly
    ``Flatten``, ``Linear`` and ``ReLU`` (not in place) modules whose parameters are plain
    ``<index>.weight`` / ``<index>.bias`` (no parametrisation) and without buffers; else
    ``None``."""
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


def hooked(modules: list[nn.Module]) -> bool:
    """Whether a forward hook (global, or on one of ``modules``) would run in a module call."""
    from torch.nn.modules import module as base

    if base._global_forward_hooks or base._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def forward(layers: Layers, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The Sequential's forward, layer by layer as the layers' own ``forward`` computes it."""
    for name, layer in layers:
        if isinstance(layer, nn.Linear):
            x = F.linear(x, params[f"{name}.weight"], params.get(f"{name}.bias"))
        elif isinstance(layer, nn.ReLU):
            x = F.relu(x)
        else:
            assert isinstance(layer, nn.Flatten)
            x = x.flatten(layer.start_dim, layer.end_dim)
    return x


def _batched_dim(dim: int) -> int:
    """A per-sample dimension as a dimension of the ``(h, ...)`` stack of samples."""
    return dim + 1 if dim >= 0 else dim


def per_worker_grads(
    layers: Layers,
    names: list[str],
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(h, d)`` gradients (parameters in the order ``names``) and ``(h,)`` losses of the mean
    cross-entropy of each worker's ``(x[i], y[i])`` at the shared parameters ``params``; ``None``
    where the road does not apply (see the module docstring)."""
    h = y.shape[0]
    a = x
    saved: list[tuple[str, torch.Tensor, torch.Tensor | None]] = []  # (layer, input or output, W)
    with torch.no_grad():
        for name, layer in layers:
            if isinstance(layer, nn.Linear):
                if a.dim() != 3:  # (h, b, features) only
                    return None
                w, bias = params[f"{name}.weight"], params.get(f"{name}.bias")
                saved.append((name, a, w))
                out = torch.matmul(a, w.t())
                a = out if bias is None else bias + out
            elif isinstance(layer, nn.ReLU):
                a = torch.relu(a)
                saved.append((name, a, None))
            else:
                assert isinstance(layer, nn.Flatten)
                a = a.flatten(_batched_dim(layer.start_dim), _batched_dim(layer.end_dim))
        if a.dim() != 3:
            return None
    g, losses = loss_and_gradient(a, y)
    grads: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for i in range(len(saved) - 1, -1, -1):
            name, tensor, weight = saved[i]
            if weight is None:  # ReLU: tensor is its output
                g = torch.ops.aten.threshold_backward(g, tensor, 0)
                continue
            grads[f"{name}.weight"] = torch.matmul(g.transpose(1, 2), tensor)
            if f"{name}.bias" in params:
                grads[f"{name}.bias"] = g.sum(1)
            if i > 0:
                g = torch.matmul(g, weight)
    flat = torch.cat([grads[n].reshape(h, -1) for n in names], dim=1)
    return flat, losses.detach()


def loss_and_gradient(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per worker, the mean cross-entropy of its ``(b, C)`` logits and the gradient of the sum
    of those losses with respect to the ``(h, b, C)`` logits: ``(softmax(z) - onehot(y)) / b``.

    The log-softmax runs on the ``(C, h b)`` transposed view: torch's CPU kernel along a short
    contiguous last dimension (10 classes) is 7-8x slower than along the first one (100 against
    13 us for 25 x 32 samples of 10 classes, one thread), and its autograd backward costs 50 us
    more; the gradient is written out instead. Same numbers as autograd through
    ``log_softmax`` to rounding (not bit for bit: the two kernels sum in different orders).
    """
    h, b, c = logits.shape
    flat_y = y.reshape(1, -1)
    logp = torch.log_softmax(logits.detach().reshape(h * b, c).t(), dim=0)  # (C, h b)
    losses = -logp.gather(0, flat_y).view(h, b).mean(dim=1)
    g = logp.exp().scatter_add_(0, flat_y, torch.full_like(flat_y, -1, dtype=logp.dtype))
    return g.t().reshape(h, b, c).div_(b), losses
