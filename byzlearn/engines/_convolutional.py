"""The short road's convolutional part: ``Conv2d``, ``ReLU`` and ``MaxPool2d`` layers before the
``Flatten`` of a plain Sequential (the ``cnn`` model), per-worker gradients at a shared
parameter vector without ``vmap``.

When the ``h`` workers share the parameters their forward passes are one pass over the ``h x b``
samples and what differs per worker is only the sum that makes each weight's gradient; with one
model per worker only the convolutions' weights differ, group by group. Both come
from one layout, the *grouped* one: the activations of the ``h`` workers are the channel groups
of one batch of ``b`` samples, ``(b, h C, H, W)``, stored channels-last (memory
``(b, H, W, h, C)``):

- a convolution is one grouped convolution (``groups = h``) whose weight is the layer's weight
  repeated ``h`` times (or the workers' own weights stacked, when each worker has its model):
  each group sees only its worker's channels, i.e. the layer applied to each worker's samples
  (the same products as ``h`` separate convolutions);
- its backward, one ``convolution_backward`` with ``groups = h``, gives the gradient of the
  input and, for each group, the weight gradient summed over that worker's samples only: the
  per-worker gradients, with no reshuffling of the activations;
- max-pooling and ReLU act on each channel alone, whatever the grouping. A pool whose windows
  tile its input (stride = kernel, no padding or dilation) is one compiled pass each way
  (:mod:`byzlearn.engines._pool_kernel`: forward without indices; backward with each window
  rescanned as torch's forward scans it, the gradient written at the kept index and zeros around
  it, no separate zero fill). A ``ReLU`` right before a max-pool runs after it (the maximum of
  the rectified values is the rectified maximum, and where it is 0 the gradient is 0 either
  way: the same gradients, on a quarter of the values); before a tiling pool it is folded into
  both passes. Other pools keep their indices: ``max_unpool2d`` undoes a non-overlapping one,
  ``max_pool2d_with_indices_backward`` an overlapping one;
- a convolution's bias gradient is the column sums of its channels-last output gradient (one
  torch ``sum``: oneDNN's bias pass inside the backward costs as much again as the weights').

Channels-last storage matters on the CPU: PyTorch's max-pool over small planes in the default
layout costs 10x more (4.2 against 0.42 ms for 800 x 16 x 8 x 8 values, one thread), and oneDNN's
convolutions read the grouped batch without a copy. The per-worker numbers agree with
``vmap(grad_and_value(loss))`` to rounding (the tests compare them on random stacks of layers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from byzlearn.engines import _pool_kernel

__all__ = ["ConvForward", "check_pools", "supported", "to_grouped"]

_LAST = torch.channels_last
_RELU = nn.ReLU()  # a ReLU moved after the max-pool that follows it


def supported(layer: nn.Module) -> bool:
    """Whether ``layer`` is a convolutional-part layer this road computes: a ``Conv2d`` with
    one group, zero padding given as numbers; a ``MaxPool2d`` returning values only; a
    ``ReLU`` that is not in place."""
    kind = type(layer)
    if kind is nn.Conv2d:
        assert isinstance(layer, nn.Conv2d)
        return (
            layer.groups == 1
            and layer.padding_mode == "zeros"
            and not isinstance(layer.padding, str)
        )
    if kind is nn.MaxPool2d:
        assert isinstance(layer, nn.MaxPool2d)
        return not layer.return_indices
    return kind is nn.ReLU and not layer.inplace


def to_grouped(x: torch.Tensor) -> torch.Tensor:
    """``(h, b, C, H, W)`` per-worker images as the grouped batch ``(b, h C, H, W)``, stored
    channels-last (one copy)."""
    h, b, c, height, width = x.shape
    nhwc = x.permute(1, 3, 4, 0, 2).contiguous()  # (b, H, W, h, C)
    return nhwc.view(b, height, width, h * c).permute(0, 3, 1, 2)


def _grouped_weight(weight: torch.Tensor, h: int) -> torch.Tensor:
    """The grouped convolution's weight ``(h Cout, Cin, kh, kw)``, channels-last, in one copy:
    ``weight`` ``(Cout, Cin, kh, kw)`` repeated ``h`` times, or the workers' own weights
    ``(h, Cout, Cin, kh, kw)`` stacked."""
    source = weight if weight.dim() == 5 else weight.expand(h, *weight.shape)
    _, cout, cin, kh, kw = source.shape
    out = torch.empty((h * cout, cin, kh, kw), dtype=weight.dtype, memory_format=_LAST)
    out.permute(0, 2, 3, 1).view(h, cout, kh, kw, cin).copy_(source.permute(0, 1, 3, 4, 2))
    return out


def _from_grouped(a: torch.Tensor, h: int) -> torch.Tensor:
    """The grouped batch ``(b, h C, H, W)`` back as ``(h, b, C H W)`` per-sample features in
    ``Flatten``'s order (one copy)."""
    b, hc, height, width = a.shape
    return a.reshape(b, h, hc // h, height, width).transpose(0, 1).reshape(h, b, -1)


def _pair(v: int | tuple[int, ...]) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(u) for u in v]


def _default_strides(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` with the default (row-major) strides, also along its dimensions of
    size 1 (which ``contiguous`` leaves as they are)."""
    return torch.empty(t.shape, dtype=t.dtype).copy_(t)


def _dilation(layer: nn.Conv2d) -> list[int]:
    """The convolution's dilation, 1 along a dimension of kernel size 1 (where it changes
    nothing): torch 2.13's channels-last CPU convolution with a bias crashes the process on
    some such shapes (a 1 x 1 kernel, dilation and stride 2, padding 1, an input 1 pixel
    wide)."""
    kernel, dilation = _pair(layer.kernel_size), _pair(layer.dilation)
    return [1 if k == 1 else d for k, d in zip(kernel, dilation, strict=True)]


@dataclass
class _Saved:
    layer: nn.Module
    name: str
    tensor: torch.Tensor  # conv: its input; ReLU: its output; pool: its input
    extra: torch.Tensor | None = None  # conv: the groups' weight; pool: the indices, if kept
    relu: bool = False  # a compiled pool backward: with the ReLU that followed the pool


class ConvForward:
    """The forward pass of the convolutional layers on ``(h, b, C, H, W)`` inputs, kept for
    :meth:`backward`; :attr:`features` is the ``(h, b, F)`` input of the layers after
    ``Flatten``."""

    def __init__(
        self,
        layers: list[tuple[str, nn.Module]],
        params: dict[str, torch.Tensor],
        x: torch.Tensor,
    ) -> None:
        self.h = x.shape[0]
        self.saved: list[_Saved] = []
        #: whether a convolution (a parameter) is among the layers: else no backward is needed
        self.trainable = any(isinstance(layer, nn.Conv2d) for _, layer in layers)
        a = to_grouped(x)
        held_relu = False  # a ReLU waiting to run after the max-pool that follows it
        with torch.no_grad():
            for i, (name, layer) in enumerate(layers):
                if isinstance(layer, nn.Conv2d):
                    a = self._conv(name, layer, params, a)
                elif isinstance(layer, nn.ReLU):
                    following = layers[i + 1][1] if i + 1 < len(layers) else None
                    if (  # a window over padding alone gives -inf, which a ReLU before it keeps
                        isinstance(following, nn.MaxPool2d)
                        and not _empty_windows(following, a.shape[-2:])
                    ):
                        held_relu = True
                        continue
                    a = torch.relu(a)
                    self.saved.append(_Saved(layer, name, a))
                else:
                    assert isinstance(layer, nn.MaxPool2d)
                    a = self._pool(name, layer, a, held_relu)
                    if held_relu and not self.saved[-1].relu:  # not folded into the pool
                        a = torch.relu(a)
                        self.saved.append(_Saved(_RELU, name, a))
                    held_relu = False
            self.features = _from_grouped(a, self.h)
            self.shape = a.shape

    def _conv(
        self, name: str, layer: nn.Conv2d, params: dict[str, torch.Tensor], a: torch.Tensor
    ) -> torch.Tensor:
        weight = params[f"{name}.weight"]  # (Cout, Cin, kh, kw), or one per worker
        grouped = _grouped_weight(weight, self.h)
        bias = params.get(f"{name}.bias")
        if bias is not None:
            bias = (bias if bias.dim() == 2 else bias.expand(self.h, -1)).reshape(-1)
        if a.shape[1] == 1:  # one channel in all: torch 2.13's channels-last convolution
            # gives wrong numbers on some shapes (an output 1 pixel wide, a stride along it)
            a, grouped = _default_strides(a), _default_strides(grouped)
        self.saved.append(_Saved(layer, name, a, grouped))
        return F.conv2d(
            a,
            grouped,
            bias,
            layer.stride,
            layer.padding,
            _dilation(layer),
            self.h,
        )

    def _pool(self, name: str, layer: nn.MaxPool2d, a: torch.Tensor, relu: bool) -> torch.Tensor:
        """The pool's output; through the ReLU that follows it when ``relu`` and the compiled
        passes take it (then ``saved[-1].relu``)."""
        kernel = _tiling(layer)
        if kernel is not None and (a.shape[-2] < kernel[0] or a.shape[-1] < kernel[1]):
            kernel = None  # no window fits: torch's pool refuses the empty output
        if kernel is not None and _pool_kernel.applies(a, a):  # the compiled passes
            self.saved.append(_Saved(layer, name, a, None, relu))
            return _pool_kernel.pool_forward(a, kernel, relu)
        out, indices = F.max_pool2d(
            a,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            ceil_mode=layer.ceil_mode,
            return_indices=True,
        )
        self.saved.append(_Saved(layer, name, a, indices))
        return out

    def backward(self, g: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-worker ``(h, numel)`` gradients of the convolutions' parameters, from the
        ``(h, b, F)`` gradient of :attr:`features`."""
        h = self.h
        b, hc, height, width = self.shape
        grads: dict[str, torch.Tensor] = {}
        # the layers below the first convolution have no parameter: no backward through them
        first = next((i for i, s in enumerate(self.saved) if isinstance(s.layer, nn.Conv2d)), None)
        if first is None:
            return grads
        with torch.no_grad():
            g = to_grouped(g.reshape(h, b, hc // h, height, width))
            for i in range(len(self.saved) - 1, first - 1, -1):
                s = self.saved[i]
                if isinstance(s.layer, nn.ReLU):
                    g = torch.ops.aten.threshold_backward(g, s.tensor, 0)
                elif isinstance(s.layer, nn.MaxPool2d) and s.extra is None:
                    kernel = _tiling(s.layer)
                    assert kernel is not None
                    g = g.contiguous(memory_format=_LAST)
                    g = _pool_kernel.pool_backward(g, s.tensor, kernel, s.relu)
                elif isinstance(s.layer, nn.MaxPool2d):
                    g = _pool_backward(s.layer, g, s.tensor, s.extra)
                else:
                    g = self._conv_backward(s, g, grads, need_input=i > first)
        return grads

    def _conv_backward(
        self, s: _Saved, g: torch.Tensor, grads: dict[str, torch.Tensor], need_input: bool
    ) -> torch.Tensor:
        layer = s.layer
        assert isinstance(layer, nn.Conv2d) and s.extra is not None
        grad_in, grad_w, _ = torch.ops.aten.convolution_backward(
            g,
            s.tensor,
            s.extra,
            None,
            _pair(layer.stride),
            _pair(layer.padding),  # type: ignore[arg-type]
            _dilation(layer),
            False,
            [0, 0],
            self.h,
            [need_input, True, False],
        )
        grads[f"{s.name}.weight"] = grad_w.reshape(self.h, -1)
        if layer.bias is not None:  # summed here: oneDNN's bias pass costs more than its sum
            grads[f"{s.name}.bias"] = _channel_sums(g).view(self.h, -1)
        return grad_in


def _channel_sums(g: torch.Tensor) -> torch.Tensor:
    """``g`` ``(N, C, H, W)`` summed over all but the channels: a convolution's bias gradient.
    Channels-last memory is a ``(N H W, C)`` matrix: its columns' sums in one pass."""
    if g.is_contiguous(memory_format=_LAST):
        return g.permute(0, 2, 3, 1).reshape(-1, g.shape[1]).sum(0)
    return g.sum((0, 2, 3))


def _tiling(layer: nn.MaxPool2d) -> tuple[int, int] | None:
    """The kernel of a max-pool whose windows tile its input (stride = kernel, no padding, no
    dilation, no partial window), else ``None``."""
    kernel, stride = _pair(layer.kernel_size), _pair(layer.stride or layer.kernel_size)
    simple = _pair(layer.padding) == [0, 0] and _pair(layer.dilation) == [1, 1]
    if kernel == stride and simple and not layer.ceil_mode:
        return kernel[0], kernel[1]
    return None


def _pool_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil: bool) -> int:
    """The output size of a max-pool along one dimension of ``size`` (torch's formula)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil else 0)) // stride + 1
    if ceil and (out - 1) * stride >= size + padding:  # the last window starts in the padding
        out -= 1
    return out


def _empty_windows(layer: nn.MaxPool2d, size: Sequence[int]) -> bool:
    """Whether one of the pool's windows over an input of ``size`` ``(H, W)`` covers no input
    pixel (padding alone, or dilation stepping over the input): its value is -inf, and torch's
    index for it points at another pixel or past the input."""
    kernel, stride = _pair(layer.kernel_size), _pair(layer.stride or layer.kernel_size)
    padding, dilation = _pair(layer.padding), _pair(layer.dilation)
    if padding == [0, 0] and dilation == [1, 1]:  # every window starts inside the input
        return False
    for n, k, s, p, d in zip(size, kernel, stride, padding, dilation, strict=True):
        for start in range(-p, _pool_size(n, k, s, p, d, layer.ceil_mode) * s - p, s):
            if not any(0 <= start + j * d < n for j in range(k)):
                return True
    return False


def check_pools(layers: list[tuple[str, nn.Module]], size: Sequence[int]) -> None:
    """Raise a one-line :class:`ValueError` when a max-pool after a convolution has, on
    ``(H, W)`` images of ``size``, a window over padding alone: torch's max-pool backward
    (autograd's and ``vmap``'s) writes its gradient at a bogus index there, past the tensor's
    memory for some shapes, which crashes the process."""
    h, w = int(size[0]), int(size[1])
    below = False  # a convolution before this layer: the backward runs through it
    for name, layer in layers:
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
            if isinstance(layer, nn.MaxPool2d) and below and _empty_windows(layer, (h, w)):
                raise ValueError(
                    f"MaxPool2d {name!r} (kernel {layer.kernel_size}, stride {layer.stride}, "
                    f"padding {layer.padding}, dilation {layer.dilation}, ceil_mode "
                    f"{layer.ceil_mode}) has a window over padding alone on its {h} x {w} "
                    f"input, where torch's max-pool backward writes out of bounds; use less "
                    f"padding or dilation, or larger images"
                )
            kernel, stride = _pair(layer.kernel_size), _pair(layer.stride or layer.kernel_size)
            padding, dilation = _pair(layer.padding), _pair(layer.dilation)  # type: ignore[arg-type]
            ceil = isinstance(layer, nn.MaxPool2d) and layer.ceil_mode
            h, w = (
                _pool_size(n, k, s, p, d, ceil)
                for n, k, s, p, d in zip((h, w), kernel, stride, padding, dilation, strict=True)
            )
            below = below or isinstance(layer, nn.Conv2d)


def _pool_backward(
    layer: nn.MaxPool2d, g: torch.Tensor, pooled_input: torch.Tensor, indices: torch.Tensor | None
) -> torch.Tensor:
    """The gradient of a max-pool's input: each output's gradient at its kept index."""
    assert indices is not None
    kernel, stride = _pair(layer.kernel_size), _pair(layer.stride or layer.kernel_size)
    padding, dilation = _pair(layer.padding), _pair(layer.dilation)
    if kernel == stride and padding == [0, 0] and dilation == [1, 1]:  # windows do not overlap
        return F.max_unpool2d(g, indices, kernel, stride, [0, 0], pooled_input.shape[-2:])
    return torch.ops.aten.max_pool2d_with_indices_backward(
        g, pooled_input, kernel, stride, padding, dilation, layer.ceil_mode, indices
    )
