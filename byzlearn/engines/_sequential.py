"""The short road for plain chains of layers: an ``nn.Sequential`` (or a module declaring
``sequential_children``, as the ``cnn`` model does) of ``Flatten``, ``Linear`` and ``ReLU``
(the ``logistic`` and ``mlp`` models), optionally after ``Conv2d``, ``MaxPool2d`` and ``ReLU``
layers that end in a ``Flatten`` (the ``cnn`` model).

:func:`forward` calls the functions the layers' own ``forward`` calls (``F.linear``, ``F.relu``,
``F.conv2d``, ``F.max_pool2d``, ``Tensor.flatten``) on the parameter views: what
``functional_call`` runs, without swapping the views into the module on every call.

:func:`per_worker_grads` gives the per-worker gradients and losses of ``h`` workers at one shared
parameter vector or at one vector per worker, the result of ``vmap(grad_and_value(loss))``,
mostly by the operations that vmapped backward runs (read from torch's profiler), written out
without functorch's per-operation dispatch; the tests check agreement to rounding over many
shapes (with one model per worker, the products are batched over the workers' own weights):

- forward on all ``h x b`` samples at once: ``matmul(a, W.t())`` on the ``(h, b, in)`` inputs
  (one matrix product), then ``bias + out``; ReLU; the logits ``(h, b, C)``;
- the loss ``-mean(log_softmax(logits)[y])`` per worker and its gradient with respect to the
  logits, ``(softmax - onehot(y)) / b``, on the transposed logits (:func:`loss_and_gradient`:
  torch's log-softmax along a short last dimension is several times slower; this step is where
  the numbers differ from vmap's in the last bits);
- backward layer by layer: per-worker weight gradients ``g^T a`` (one batched product),
  bias gradients ``sum_b g``, ``threshold_backward`` through ReLU, and ``g W`` to the layer weight.

The convolutional layers before the ``Flatten`` run in a grouped, channels-last layout
(:mod:`byzlearn.engines._convolutional`); the gradient of their output comes back from the first
linear layer as ``g W``.

Inputs the road does not cover (a linear layer fed more than one feature dimension, a
convolution after the ``Flatten``) fall back to vmap (``None``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torch.nn.modules import module as base

from byzlearn.engines import _convolutional

__all__ = [
    "Layers",
    "backward_hooked",
    "check_labels",
    "check_pools",
    "forward",
    "forward_hooked",
    "hooked",
    "per_worker_grads",
    "plain_layers",
]

Layers = list[tuple[str, nn.Module]]


def _chain(module: nn.Module, prefix: str) -> Layers | None:
    """The layers of ``module`` in the order its forward runs them, when that forward is a
    plain chain: an ``nn.Sequential``'s own forward, or a class declaring
    ``sequential_children`` (names of children its own ``forward`` runs one after the other,
    e.g. the ``cnn`` model's ``features`` then ``classifier``); nested chains are flattened.
    A leaf is any other module; ``None`` when ``module`` is not a chain. A module held twice
    runs twice (``named_children`` would list it once)."""
    kind = type(module)
    if kind.__call__ is not nn.Module.__call__:
        return None
    if isinstance(module, nn.Sequential) and kind.forward is nn.Sequential.forward:
        children = list(module._modules)
    else:
        owner = next((c for c in kind.__mro__ if "sequential_children" in vars(c)), None)
        if owner is None or kind.forward is not owner.forward:  # type: ignore[attr-defined]
            return None
        children = list(owner.sequential_children)  # type: ignore[attr-defined]
        if sorted(children) != sorted(name for name, _ in module.named_children()):
            return None
    layers: Layers = []
    for name in children:
        child = module._modules[name]
        if child is None:  # the module's own call fails on it
            return None
        inner = _chain(child, f"{prefix}{name}.")
        layers += inner if inner is not None else [(f"{prefix}{name}", child)]
    return layers


def plain_layers(module: nn.Module) -> Layers | None:
    """``module``'s layers when it is a plain chain (an ``nn.Sequential`` with its own
    ``forward``, possibly nested, or a module declaring ``sequential_children``) of exactly
    ``Flatten``, ``Linear``, ``ReLU`` (not in place), ``Conv2d`` (one group, zero padding) and
    ``MaxPool2d`` modules whose parameters are plain ``<layer>.weight`` / ``<layer>.bias`` (no
    parametrisation) and without buffers; else ``None``."""
    layers = _chain(module, "")
    if layers is None:
        return None
    expected: list[str] = []
    for name, layer in layers:
        kind = type(layer)
        if kind in (nn.Linear, nn.Conv2d):
            if kind is nn.Conv2d and not _convolutional.supported(layer):
                return None
            has_bias = getattr(layer, "bias", None) is not None
            expected += [f"{name}.weight"] + ([f"{name}.bias"] if has_bias else [])
        elif not (kind is nn.Flatten or _convolutional.supported(layer)):
            return None
    if [n for n, _ in module.named_parameters()] != expected or any(module.buffers()):
        return None
    return layers


def hooked(modules: list[nn.Module], params: list[nn.Parameter]) -> bool:
    """Whether a module call would run more than the layers' own ``forward``: a forward or
    backward hook (global, or on one of ``modules`` or their ``params``), or a ``forward`` set
    on an instance."""
    return forward_hooked(modules) or backward_hooked(modules, params)


def forward_hooked(modules: list[nn.Module]) -> bool:
    """Whether a forward hook (global, or on one of ``modules``) or a ``forward`` set on one of
    them would run in a module call."""
    if base._global_forward_hooks or base._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__ for m in modules)


def backward_hooked(modules: list[nn.Module], params: list[nn.Parameter]) -> bool:
    """Whether a backward hook (global, on one of ``modules`` or on one of their ``params``)
    would run in autograd's backward of a module call (``vmap`` cannot run them)."""
    if base._global_backward_hooks or base._global_backward_pre_hooks:
        return True
    if any(m._backward_hooks or m._backward_pre_hooks for m in modules):
        return True
    return any(p._backward_hooks for p in params)


def forward(layers: Layers, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The Sequential's forward, layer by layer as the layers' own ``forward`` computes it."""
    for name, layer in layers:
        if isinstance(layer, nn.Linear):
            x = F.linear(x, params[f"{name}.weight"], params.get(f"{name}.bias"))
        elif isinstance(layer, nn.ReLU):
            x = F.relu(x)
        elif isinstance(layer, nn.Conv2d):
            x = F.conv2d(
                x,
                params[f"{name}.weight"],
                params.get(f"{name}.bias"),
                layer.stride,
                layer.padding,
                layer.dilation,
                layer.groups,
            )
        elif isinstance(layer, nn.MaxPool2d):
            x = F.max_pool2d(
                x,
                layer.kernel_size,
                layer.stride,
                layer.padding,
                layer.dilation,
                ceil_mode=layer.ceil_mode,
            )
        else:
            assert isinstance(layer, nn.Flatten)
            x = x.flatten(layer.start_dim, layer.end_dim)
    return x


def _batched_dim(dim: int) -> int:
    """A per-sample dimension as a dimension of the ``(h, ...)`` stack of samples."""
    return dim + 1 if dim >= 0 else dim


def _split(layers: Layers) -> tuple[Layers, Layers] | None:
    """``(convolutional part, the rest)``: the layers before the ``Flatten`` that ends the
    convolutions (``Conv2d``, ``MaxPool2d``, ``ReLU`` only) and those after it; an empty first
    part for a chain without convolution or pooling; ``None`` for other arrangements."""
    spatial = (nn.Conv2d, nn.MaxPool2d)
    if not any(isinstance(layer, spatial) for _, layer in layers):
        return [], layers
    for k, (_, layer) in enumerate(layers):
        if isinstance(layer, nn.Flatten):
            rest = layers[k + 1 :]
            if (layer.start_dim, layer.end_dim) != (1, -1) or k == 0:
                return None
            if any(isinstance(other, spatial) for _, other in rest):
                return None
            return layers[:k], rest
        if not isinstance(layer, (*spatial, nn.ReLU)):
            return None
    return None


def check_labels(y: torch.Tensor, classes: int) -> None:
    """A one-line :class:`ValueError` for labels outside ``0..classes - 1`` (cross-entropy
    would skip the samples labelled -100, the gather of the other roads fail deep inside)."""
    if y.numel():
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= classes:
            bad = low if low < 0 else high
            raise ValueError(f"labels must be in 0..{classes - 1} (the model's classes), got {bad}")


def check_pools(layers: Layers, x: torch.Tensor) -> None:
    """A one-line :class:`ValueError` for a max-pool whose backward torch cannot run on the
    images ``x`` (``(..., C, H, W)``): see :func:`byzlearn.engines._convolutional.check_pools`."""
    parts = _split(layers)
    if parts is not None and parts[0] and x.dim() >= 3:
        _convolutional.check_pools(parts[0], x.shape[-2:])


def per_worker_grads(
    layers: Layers,
    names: list[str],
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(h, d)`` gradients (parameters in the order ``names``) and ``(h,)`` losses of the mean
    cross-entropy of each worker's ``(x[i], y[i])`` at the parameters ``params``: shared (each
    of its parameter's shape) or one set per worker (a leading dimension ``h``, e.g. the
    models of later local steps); ``None`` where the road does not apply (see the module
    docstring)."""
    h = y.shape[0]
    parts = _split(layers)
    if parts is None:
        return None
    head, tail = parts
    conv = None
    if head:  # convolutions on (h, b, C, H, W) images, then Flatten
        if x.dim() != 5:
            return None
        conv = _convolutional.ConvForward(head, params, x)
        x = conv.features
    a = x
    saved: list[tuple[str, torch.Tensor, torch.Tensor | None]] = []  # (layer, input or output, W)
    head_params = conv is not None and conv.trainable  # convolutions: a gradient to send down
    below = head_params  # a parameter below this layer: else a ReLU needs no backward
    with torch.no_grad():
        for name, layer in tail:
            if isinstance(layer, nn.Linear):
                if a.dim() != 3:  # (h, b, features) only
                    return None
                w, bias = params[f"{name}.weight"], params.get(f"{name}.bias")
                saved.append((name, a, w))
                below = True
                out = torch.matmul(a, w.transpose(-1, -2))  # w: (out, in), or (h, out, in)
                if bias is not None:
                    a = (bias if bias.dim() == 1 else bias.unsqueeze(-2)) + out
                else:
                    a = out
            elif isinstance(layer, nn.ReLU):
                a = torch.relu(a)
                if below:
                    saved.append((name, a, None))
            else:
                assert isinstance(layer, nn.Flatten)
                a = a.flatten(_batched_dim(layer.start_dim), _batched_dim(layer.end_dim))
        if a.dim() != 3:
            return None
    check_labels(y, a.shape[-1])
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
            if i > 0 or head_params:
                g = torch.matmul(g, weight)
    if head_params:
        assert conv is not None
        grads.update(conv.backward(g))
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
