"""Reference models, built by name.

All models are plain ``nn.Module`` without BatchNorm or dropout so that they run under
``torch.func.functional_call`` + ``vmap`` (one batched forward/backward for all simulated
workers). The ResNet uses GroupNorm instead of BatchNorm for that reason. Any user ``nn.Module``
without buffers that change in ``forward`` works the same way.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Sequence
from math import prod
from typing import ClassVar

import torch
from torch import nn

from byzlearn.checks import check_int

__all__ = [
    "CNN",
    "MAX_PARAMETERS",
    "MLP",
    "ResNet",
    "build_model",
    "logistic",
    "model_sizes",
    "names",
]

#: the most parameters :func:`build_model` builds (400 MB a copy in float32; a round holds one
#: copy per worker and more): a size beyond it is refused before anything is allocated
MAX_PARAMETERS = 100_000_000
#: the deepest ResNet built (each block is a module of its own, whatever its width)
MAX_RESNET_DEPTH = 2_000


def logistic(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Multinomial logistic regression (flatten + linear)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(prod(input_shape), num_classes))


def _integer(option: str, value: object, low: int = 1) -> int:
    """An integer option (``bool``, ``8.0`` or ``"8"`` are refused, never converted)."""
    return check_int(value, option, low, type_error=ValueError)


def _widths(option: str, values: Sequence[int], count: int | None = None) -> list[int]:
    """Layer widths: positive integers (``1.5`` or ``0`` are refused, never truncated)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{option}: a list of positive integers, got {values!r}")
    widths = list(values)
    if count is not None and len(widths) != count:
        raise ValueError(f"{option}: {count} positive integers, got {widths!r}")
    if any(isinstance(w, bool) or not isinstance(w, numbers.Integral) or w < 1 for w in widths):
        raise ValueError(f"{option}: positive integers, got {widths!r}")
    return [int(w) for w in widths]


class MLP(nn.Sequential):
    """Fully connected ReLU network: flatten, hidden layers, linear output."""

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (64,)
    ) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        width = prod(input_shape)
        for h in _widths("hidden", hidden):
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class CNN(nn.Module):
    """Small CNN: two conv-ReLU-maxpool blocks, then a linear classifier.

    Its forward runs ``features`` then ``classifier``, as ``sequential_children`` declares: the
    engines' short road (:mod:`byzlearn.engines._sequential`) computes its per-worker gradients
    as those of one Sequential.
    """

    sequential_children: ClassVar[tuple[str, ...]] = ("features", "classifier")

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (16, 32)
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"CNN needs (C, H, W) inputs, got shape {tuple(input_shape)}")
        if min(input_shape[1:]) < 4:
            raise ValueError(
                f"CNN needs images of at least 4 x 4 pixels (it pools 2 x 2 twice), got shape "
                f"{tuple(input_shape)}"
            )
        c1, c2 = _widths("channels", channels, count=2)
        self.features = nn.Sequential(
            nn.Conv2d(input_shape[0], c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        with torch.no_grad():
            width = self.features(torch.zeros(1, *input_shape)).shape[1]
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(min(groups, cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(min(groups, cout), cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(min(groups, cout), cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (depth = 6k + 2: 8, 14, 20, ...) with GroupNorm instead of BatchNorm."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        depth: int = 8,
        width: int = 16,
        groups: int = 8,
    ) -> None:
        super().__init__()
        depth = _integer("depth", depth)
        width = _integer("width", width)
        groups = _integer("groups", groups)
        if (depth - 2) % 6 != 0 or not 8 <= depth <= MAX_RESNET_DEPTH:
            raise ValueError(f"ResNet depth must be 6k + 2 in 8..{MAX_RESNET_DEPTH}, got {depth}")
        channels = (width, 2 * width, 4 * width)
        if any(c % min(groups, c) for c in channels):
            raise ValueError(
                f"ResNet groups: must divide each stage's channels {channels} (or exceed them: "
                f"one group per channel), got {groups}"
            )
        k = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(input_shape[0], width, 3, 1, 1, bias=False),
            nn.GroupNorm(min(groups, width), width),
            nn.ReLU(),
        )
        blocks: list[nn.Module] = []
        cin = width
        for stage, mult in enumerate((1, 2, 4)):
            for i in range(k):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(_Block(cin, width * mult, stride, groups))
                cin = width * mult
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))


_MODELS: dict[str, Callable[..., nn.Module]] = {
    "logistic": logistic,
    "mlp": MLP,
    "cnn": CNN,
    "resnet": ResNet,
}


def names() -> list[str]:
    """Names of the reference models."""
    return sorted(_MODELS)


def _meta_model(
    name: str, input_shape: Sequence[int], num_classes: int, options: dict[str, object]
) -> tuple[nn.Module, Callable[..., nn.Module], tuple[int, ...], int]:
    """The model checked (see :func:`build_model`) and built on the ``meta`` device (nothing
    allocated), with its constructor and the checked shape and class count."""
    ctor = _MODELS.get(name) if isinstance(name, str) else None
    if ctor is None:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(names())}")
    try:  # any sequence of dimensions: a tuple, a torch.Size, a numpy array
        shape = tuple(_widths("input_shape", list(input_shape)))
    except TypeError:  # not iterable
        raise ValueError(f"input_shape: a list of positive integers, got {input_shape!r}") from None
    if not shape:
        raise ValueError("input_shape: at least one dimension, got ()")
    classes = _integer("num_classes", num_classes)
    accepted = list(inspect.signature(ctor).parameters)[2:]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"{name}: unknown option {unknown[0]!r} (its options: {', '.join(accepted) or 'none'})"
        )
    try:
        with torch.device("meta"):
            meta = ctor(shape, classes, **options)
        count: int | None = sum(p.numel() for p in meta.parameters())
    except RuntimeError as err:  # "Storage size calculation overflowed": beyond 2^63 elements
        if "overflow" not in str(err):
            raise
        count = None
    if count is None or count > MAX_PARAMETERS:
        size = "more than 2^63" if count is None else f"{count:,}"
        raise ValueError(
            f"{name}: these options make {size} parameters, at most {MAX_PARAMETERS:,}"
        )
    return meta, ctor, shape, classes


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int, **options: object
) -> nn.Module:
    """Build a reference model by name (``logistic``, ``mlp``, ``cnn``, ``resnet``).

    Bad arguments raise a one-line :class:`ValueError`: an unknown model or option, an input
    shape or class count that is not of positive integers, an option value the model refuses,
    or a model of more than :data:`MAX_PARAMETERS` parameters (counted on the ``meta`` device,
    before anything is allocated)."""
    _, ctor, shape, classes = _meta_model(name, input_shape, num_classes, options)
    return ctor(shape, classes, **options)


def model_sizes(
    name: str, input_shape: Sequence[int], num_classes: int, **options: object
) -> tuple[int, int]:
    """(parameters, activations of one sample) of :func:`build_model`'s model, checked as there:
    the values its leaf modules output for one input of ``input_shape``, by a forward pass on
    the ``meta`` device (shapes only, nothing allocated). A model that does not take the inputs
    raises as a real forward pass would."""
    meta, _, shape, _ = _meta_model(name, input_shape, num_classes, options)
    total = 0

    def count(module: nn.Module, inputs: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output[0].numel()

    for module in meta.modules():
        if not any(True for _ in module.children()):
            module.register_forward_hook(count)
    with torch.no_grad():
        meta.eval()(torch.zeros(1, *shape, device="meta"))
    return sum(p.numel() for p in meta.parameters()), total
