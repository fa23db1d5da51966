"""Extract a feed-forward network (weights, Lipschitz constants, ranges) from an ``nn.Sequential``.

The network model is the one of El Mhamdi & Guerraoui, *When Neurons Fail* (IPDPS 2017):

    h_0 = x,   z_k = W_k·h_{k−1} + b_k,   h_k = φ_k(z_k)   (k = 1..L+1),

where layers 1..L are *hidden* (their neurons may fail) and layer L+1 is the output (usually linear,
φ_{L+1} = identity). In this package hidden layers are indexed **from 0** (``layer=0`` is the first
hidden layer, the output of the first Linear + activation) and Linear modules ("synapse layers") are
indexed 0..L (index L is the output Linear).

:class:`Network` keeps references to the module's parameters (no copy), so its forward pass is
differentiable (used by the regularisers of :mod:`byzlearn.neurons.train`), and it can evaluate
many fault configurations at once (see :meth:`Network.forward`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, overload

import torch
from torch import nn

from byzlearn.neurons._checks import check_batch, check_real
from byzlearn.neurons.activations import IDENTITY, ActivationInfo, CrashDropout, activation_info

__all__ = ["HiddenLayerError", "Layer", "Network", "extract_network", "iter_modules"]

_SKIPPED = (nn.Flatten, nn.Dropout, nn.Dropout1d, nn.AlphaDropout, CrashDropout)


class HiddenLayerError(ValueError):
    """A hidden-layer index out of range (or not an int); see :meth:`Network.check_hidden`."""


@dataclass
class Layer:
    """One Linear module followed by its (elementwise) activation.

    Attributes:
        name: qualified name of the Linear module in the model (e.g. ``"0"`` or ``"body.2"``).
        weight: (out, in) weight tensor (the module's parameter, not a copy).
        bias: (out,) bias or ``None``.
        act: the activation applied after the Linear (identity for a linear output).
        lo, hi: interval containing the layer's fault-free outputs, used by the bounds
            (intrinsic range, the user's C, or observed on data; ``±inf`` if unknown).
        interval_source: ``"intrinsic"``, ``"C"``, ``"data"`` or ``"unknown"``.
        out_name: qualified name of the module whose output is h (the activation, or the Linear).
    """

    name: str
    weight: torch.Tensor
    bias: torch.Tensor | None
    act: ActivationInfo
    lo: float = -math.inf
    hi: float = math.inf
    interval_source: str = "unknown"
    out_name: str = ""

    @property
    def n_out(self) -> int:
        return int(self.weight.shape[0])

    @property
    def n_in(self) -> int:
        return int(self.weight.shape[1])

    @property
    def C(self) -> float:
        """max |h| over the layer's interval (the crash error of one neuron)."""
        return max(abs(self.lo), abs(self.hi))


def iter_modules(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(qualified_name, module)`` for the leaves of a (possibly nested) ``nn.Sequential``.

    Raises:
        TypeError: when a container other than ``nn.Sequential`` is met (its forward order is
            unknown); the message names the module.
    """
    if isinstance(model, nn.Sequential):
        for name, child in model.named_children():
            yield from iter_modules(child, f"{prefix}.{name}" if prefix else name)
        return
    if len(list(model.children())) > 0:
        raise TypeError(
            f"module {prefix or '<root>'!r} ({type(model).__name__}) is a container other than "
            "nn.Sequential; only (nested) nn.Sequential models of Linear + activation modules are "
            "supported"
        )
    yield prefix or "<root>", model


@dataclass
class Network:
    """A feed-forward network as a list of :class:`Layer` (the last one is the output layer).

    Attributes:
        layers: Linear + activation blocks; ``layers[:-1]`` are the hidden layers.
        in_lo, in_hi: interval of the inputs (needed for synapse faults in the first Linear).
    """

    layers: list[Layer]
    in_lo: float = -math.inf
    in_hi: float = math.inf

    @property
    def num_hidden(self) -> int:
        """Number L of hidden layers (layers whose neurons may fail)."""
        return len(self.layers) - 1

    @property
    def hidden_sizes(self) -> list[int]:
        """[N_1, ..., N_L], the widths of the hidden layers."""
        return [layer.n_out for layer in self.layers[:-1]]

    @property
    def in_features(self) -> int:
        return self.layers[0].n_in

    @property
    def out_features(self) -> int:
        return self.layers[-1].n_out

    @property
    def in_C(self) -> float:
        return max(abs(self.in_lo), abs(self.in_hi))

    def check_hidden(self, layer: int) -> int:
        """Validate a hidden-layer index (0-based) and return it."""
        if not isinstance(layer, int) or not 0 <= layer < self.num_hidden:
            raise HiddenLayerError(
                f"hidden layer index must be an int in [0, {self.num_hidden - 1}], got {layer!r}"
            )
        return layer

    # The return type depends on ``return_hidden``: the overloads let callers get a plain Tensor
    # (the usual case) or the (output, hidden outputs, pre-activations) tuple without narrowing.
    @overload
    def forward(
        self,
        x: torch.Tensor,
        neuron_masks: Mapping[int, torch.Tensor] | None = ...,
        neuron_values: Mapping[int, torch.Tensor | float] | None = ...,
        synapse_masks: Mapping[int, torch.Tensor] | None = ...,
        synapse_values: Mapping[int, torch.Tensor | float] | None = ...,
        return_hidden: Literal[False] = ...,
    ) -> torch.Tensor: ...

    @overload
    def forward(
        self,
        x: torch.Tensor,
        neuron_masks: Mapping[int, torch.Tensor] | None,
        neuron_values: Mapping[int, torch.Tensor | float] | None,
        synapse_masks: Mapping[int, torch.Tensor] | None,
        synapse_values: Mapping[int, torch.Tensor | float] | None,
        return_hidden: Literal[True],
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]: ...

    @overload
    def forward(
        self,
        x: torch.Tensor,
        neuron_masks: Mapping[int, torch.Tensor] | None = ...,
        neuron_values: Mapping[int, torch.Tensor | float] | None = ...,
        synapse_masks: Mapping[int, torch.Tensor] | None = ...,
        synapse_values: Mapping[int, torch.Tensor | float] | None = ...,
        *,
        return_hidden: Literal[True],
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]: ...

    @overload
    def forward(
        self,
        x: torch.Tensor,
        neuron_masks: Mapping[int, torch.Tensor] | None = ...,
        neuron_values: Mapping[int, torch.Tensor | float] | None = ...,
        synapse_masks: Mapping[int, torch.Tensor] | None = ...,
        synapse_values: Mapping[int, torch.Tensor | float] | None = ...,
        return_hidden: bool = ...,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]: ...

    def forward(
        self,
        x: torch.Tensor,
        neuron_masks: Mapping[int, torch.Tensor] | None = None,
        neuron_values: Mapping[int, torch.Tensor | float] | None = None,
        synapse_masks: Mapping[int, torch.Tensor] | None = None,
        synapse_values: Mapping[int, torch.Tensor | float] | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Run the network, optionally with failed neurons and synapses.

        Args:
            x: (B, in) inputs.
            neuron_masks: {hidden layer: bool mask} of failed neurons, shape (N_l,) for one
                configuration or (M, N_l) for M configurations evaluated at once.
            neuron_values: {hidden layer: value} sent by failed neurons: absent/0 is a crash;
                a float or a tensor broadcastable to (M, 1, N_l) or (M, B, N_l) is Byzantine.
            synapse_masks: {Linear index: bool mask} of failed synapses, shape (out, in) or
                (M, out, in). A failed synapse from j to i transmits ``v_ij`` instead of h_j.
            synapse_values: {Linear index: v} (absent: crash, v = 0), broadcastable to the mask.
            return_hidden: also return the lists of hidden outputs h_l and pre-activations z_l.

        Returns:
            Output of shape (B, out), or (M, B, out) when a mask has a configuration axis; with
            ``return_hidden``, the tuple (output, [h_1, ..., h_L], [z_1, ..., z_{L+1}]).
        """
        neuron_masks = neuron_masks or {}
        neuron_values = neuron_values or {}
        synapse_masks = synapse_masks or {}
        synapse_values = synapse_values or {}
        for key in list(neuron_masks) + list(neuron_values):
            self.check_hidden(key)
        h = x.reshape(x.shape[0], -1) if x.dim() != 2 else x
        hs: list[torch.Tensor] = []
        zs: list[torch.Tensor] = []
        for k, layer in enumerate(self.layers):
            w = layer.weight
            if k in synapse_masks:
                smask = synapse_masks[k].to(torch.bool)
                w_eff = w * (~smask)
                z = torch.matmul(h, w_eff.transpose(-1, -2))
                if k in synapse_values:
                    v = torch.as_tensor(synapse_values[k], dtype=w.dtype)
                    extra = (smask * w * v).sum(-1)
                    z = z + extra.unsqueeze(-2)
            else:
                z = torch.matmul(h, w.transpose(-1, -2))
            if layer.bias is not None:
                z = z + layer.bias
            h = layer.act.fn(z)
            if k < self.num_hidden and k in neuron_masks:
                mask = neuron_masks[k].to(torch.bool)
                if mask.dim() == 2:
                    mask = mask.unsqueeze(-2)  # (M, 1, N)
                val = neuron_values.get(k, 0.0)
                val_t = torch.as_tensor(val, dtype=h.dtype)
                if val_t.dim() == 2 and mask.dim() == 3:
                    val_t = val_t.unsqueeze(-2)
                h = torch.where(mask, val_t, h)
            zs.append(z)
            hs.append(h)
        if return_hidden:
            return h, hs[:-1], zs
        return h

    __call__ = forward

    def hidden(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Fault-free hidden outputs [h_1, ..., h_L] (each (B, N_l))."""
        _, hs, _ = self.forward(x, return_hidden=True)
        return hs

    def describe(self) -> list[dict[str, object]]:
        """One dict per layer (name, sizes, activation, K, interval) for reports."""
        rows = []
        for k, layer in enumerate(self.layers):
            rows.append(
                {
                    "index": k,
                    "name": layer.name,
                    "kind": "hidden" if k < self.num_hidden else "output",
                    "in": layer.n_in,
                    "out": layer.n_out,
                    "activation": layer.act.name,
                    "K": layer.act.K,
                    "lo": layer.lo,
                    "hi": layer.hi,
                    "interval": layer.interval_source,
                    "w_max": float(layer.weight.detach().abs().max()),
                }
            )
        return rows


def _per_layer(value: object, n: int, what: str) -> Sequence[float | None]:
    """One positive value per hidden layer from a number, a sequence or ``None``."""
    if value is None:
        return [None] * n
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{what} must be a number or a sequence of numbers, got {value!r}")
    if isinstance(value, Sequence):
        vals = [check_real(v, what, 0.0, lo_open=True) for v in value]
        if len(vals) != n:
            raise ValueError(f"{what} needs {n} values (one per hidden layer), got {len(vals)}")
        return vals
    return [check_real(value, what, 0.0, lo_open=True)] * n


def _check_finite_weights(layers: Sequence[Layer]) -> None:
    """Refuse NaN/Inf weights or biases: the bounds would silently be NaN."""
    for lay in layers:
        for part, t in (("weight", lay.weight), ("bias", lay.bias)):
            if t is not None and not bool(torch.isfinite(t.detach()).all()):
                raise ValueError(f"layer {lay.name!r} has non-finite {part} values (NaN or Inf)")


def _next_shape(mod: nn.Module, shape: tuple[int, ...], name: str) -> tuple[int, ...]:
    """Shape after ``mod`` (no batch axis); elementwise modules keep it."""
    if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Flatten)):
        try:
            param = next(mod.parameters(), None)
            dtype = param.dtype if param is not None else torch.get_default_dtype()
            with torch.no_grad():
                out = mod(torch.zeros(1, *shape, dtype=dtype))
        except RuntimeError as e:
            raise ValueError(f"module {name!r} cannot take inputs of shape {shape}: {e}") from e
        return tuple(out.shape[1:])
    return shape


def _unrolled_conv(
    name: str, mod: nn.Conv1d | nn.Conv2d | nn.Conv3d, shape: tuple[int, ...] | None
) -> Layer:
    """Dense (out, in) matrix and bias of a convolution applied to inputs of ``shape``."""
    assert shape is not None
    n_in = math.prod(shape)
    with torch.no_grad():
        basis = torch.eye(n_in, dtype=mod.weight.dtype).reshape(n_in, *shape)
        cols = mod._conv_forward(basis, mod.weight, None)  # (n_in, *out_shape): linear part
        out_shape = tuple(cols.shape[1:])
        weight = cols.reshape(n_in, -1).T.contiguous()
        bias = None
        if mod.bias is not None:
            view = (-1,) + (1,) * (len(out_shape) - 1)
            bias = mod.bias.reshape(view).expand(out_shape).reshape(-1).clone()
    return Layer(name, weight, bias, IDENTITY, out_name=name)


def extract_network(
    model: nn.Module,
    C: float | Sequence[float] | None = None,
    data: torch.Tensor | None = None,
    input_bounds: tuple[float, float] | None = None,
    input_shape: Sequence[int] | None = None,
) -> Network:
    """Read the layers of ``model`` into a :class:`Network`.

    ``model`` must be an ``nn.Sequential`` (nested allowed) of ``nn.Linear`` and activations
    (ReLU, LeakyReLU, Sigmoid, Tanh, Softplus, Identity, :class:`ScaledSigmoid`; Softmax as the
    output activation only). ``Flatten``,
    ``Dropout`` and :class:`CrashDropout` are identities at analysis time and are skipped. A Linear
    directly followed by a Linear gets the identity activation. The last Linear is the output layer.

    The interval [lo, hi] of every hidden layer (the paper's C, |φ| ≤ C) is, in this order: the
    activation's intrinsic range intersected with [−C, C] when ``C`` is given; otherwise, for
    unbounded activations (ReLU, ...), the [min, max] of the fault-free outputs observed on
    ``data`` (then the bounds hold **only** for inputs whose fault-free activations stay in that
    interval, e.g. the analysed batch); otherwise it stays unbounded and the bounds that need it
    raise. The input interval is ``input_bounds`` or the [min, max] of ``data``.

    Convolutions (Conv1d/2d/3d) are linear maps: with ``input_shape`` (the shape of one input,
    without the batch axis, e.g. ``(1, 8, 8)``) each is unrolled into its dense (out, in) matrix, so
    every output unit (channel, position) is a neuron and every (input unit, output unit) pair a
    synapse; the FEP recursion applies unchanged (the bound only uses |W| entry-wise). The unrolled
    matrix is a copy, so :mod:`byzlearn.neurons.train` regularisers do not reach conv weights.

    Reference: El Mhamdi & Guerraoui, *When Neurons Fail*, IPDPS 2017 (φ K-Lipschitz, |φ| ≤ C).

    Raises:
        NotImplementedError: for a convolution without ``input_shape`` (the layer is named).
        ValueError: for any other unsupported module (named), an activation before the first
            Linear, two activations in a row, a model without Linear layers, NaN/Inf weights
            (the layer is named), a non-positive ``C``, or ``data`` that is empty, of the wrong
            width or not finite.
        TypeError: for containers other than ``nn.Sequential``, a ``C`` that is not a number
            (or sequence of numbers) or ``data`` that is not a tensor.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    layers: list[Layer] = []
    pending_act = False
    # shape of the signal (without batch axis), tracked only when input_shape is given
    shape: tuple[int, ...] | None = tuple(int(v) for v in input_shape) if input_shape else None
    for name, mod in iter_modules(model):
        conv_in_shape = shape
        if shape is not None and not isinstance(mod, nn.Linear):
            shape = _next_shape(mod, shape, name)
        if isinstance(mod, _SKIPPED):
            continue
        if isinstance(mod, nn.Linear):
            if shape is not None:
                if len(shape) != 1:
                    raise ValueError(
                        f"Linear {name!r} receives a tensor of shape {shape}; add nn.Flatten()"
                    )
                shape = (mod.out_features,)
            layers.append(Layer(name, mod.weight, mod.bias, IDENTITY, out_name=name))
            pending_act = True
            continue
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            if input_shape is None:
                raise NotImplementedError(
                    f"layer {name!r} ({type(mod).__name__}) is not supported without "
                    "input_shape: pass input_shape=(channels, height, width) to extract_network "
                    "to unroll the convolution into its dense matrix"
                )
            layers.append(_unrolled_conv(name, mod, conv_in_shape))
            pending_act = True
            continue
        info = activation_info(mod)
        if info is None:
            raise ValueError(
                f"layer {name!r} ({type(mod).__name__}) is not supported by byzlearn.neurons: "
                "supported modules are Linear, ReLU, LeakyReLU, Sigmoid, Tanh, Softplus, "
                "Identity, ScaledSigmoid, Flatten and Dropout"
            )
        if info is IDENTITY:
            continue
        if not layers:
            raise ValueError(f"activation {name!r} ({info.name}) comes before the first Linear")
        if not pending_act:
            raise ValueError(
                f"activation {name!r} ({info.name}) follows another activation; compose them "
                "into one module or insert a Linear"
            )
        layers[-1].act = info
        layers[-1].out_name = name
        pending_act = False
    if not layers:
        raise ValueError("model has no Linear layer")
    for a, b in itertools.pairwise(layers):
        if a.n_out != b.n_in:
            raise ValueError(
                f"shape mismatch: {a.name!r} outputs {a.n_out}, {b.name!r} expects {b.n_in}"
            )
    for lay in layers[:-1]:
        if not lay.act.elementwise:
            raise ValueError(
                f"{lay.act.name} after {lay.name!r} is only supported as the output activation"
            )
    _check_finite_weights(layers)
    net = Network(layers)
    Cs = _per_layer(C, net.num_hidden, "C")
    observed: list[tuple[float, float]] | None = None
    if data is not None:
        with torch.no_grad():
            x = check_batch(data, "data", net.in_features, min_dim=2)
            x = x.to(layers[0].weight.dtype)
            hs = net.hidden(x)
        observed = [(float(h.min()), float(h.max())) for h in hs]
        net.in_lo, net.in_hi = float(x.min()), float(x.max())
    if input_bounds is not None:
        lo, hi = (float(v) for v in input_bounds)
        if not lo <= hi:
            raise ValueError(f"input_bounds must be (lo, hi) with lo <= hi, got {input_bounds}")
        net.in_lo, net.in_hi = lo, hi
    for k, layer in enumerate(net.layers):
        act = layer.act
        c = Cs[k] if k < net.num_hidden else None
        if c is not None:
            layer.lo, layer.hi = max(act.lo, -c), min(act.hi, c)
            layer.interval_source = "C"
        elif act.bounded:
            layer.lo, layer.hi = act.lo, act.hi
            layer.interval_source = "intrinsic"
        elif observed is not None and k < net.num_hidden:
            lo, hi = observed[k]
            layer.lo, layer.hi = max(act.lo, lo), min(act.hi, hi)
            layer.interval_source = "data"
        else:
            layer.lo, layer.hi = act.lo, act.hi
            layer.interval_source = "intrinsic" if act.bounded else "unknown"
    return net
