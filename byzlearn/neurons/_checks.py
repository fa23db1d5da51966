"""The neurons' argument checks: :mod:`byzlearn.checks` taking 0-d tensors as numbers too
(integral floats such as 2.0 are counts), plus the neuron-specific index and batch checks.

Numbers may be Python ints/floats, numpy scalars or 0-d tensors; bools are refused (``True`` is
not a probability or a count).
"""

from __future__ import annotations

import math

import torch

from byzlearn import checks
from byzlearn.checks import check_choice

__all__ = ["check_batch", "check_choice", "check_index", "check_int", "check_real"]


def _scalar(value: object) -> object:
    """A 0-d tensor (not a bool one) as its Python number; anything else as it is."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and value.dtype != torch.bool:
        return value.item()
    return value


def check_real(
    value: object,
    name: str,
    lo: float = -math.inf,
    hi: float = math.inf,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """``value`` as a float in the interval (lo/hi closed unless ``*_open``); NaN is refused,
    an infinity only where the interval allows it."""
    return checks.check_real(
        _scalar(value), name, lo, hi, lo_open=lo_open, hi_open=hi_open, finite=False
    )


def check_int(value: object, name: str, lo: int = 0, hi: float = math.inf) -> int:
    """``value`` as an int in [lo, hi] (integral floats such as 2.0 are accepted)."""
    return checks.check_int(_scalar(value), name, lo, hi, integral_floats=True)


def check_index(value: object, name: str, size: int) -> int:
    """An index in [0, size): an int or an integer 0-d tensor (negative indices are refused:
    they would pick from the end)."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point():
        value = _scalar(value)
    return checks.check_int(value, name, 0, size - 1)


def check_batch(x: object, name: str, in_features: int, *, min_dim: int = 1) -> torch.Tensor:
    """``x`` as a ``(B, in_features)`` tensor (rows flattened) with B >= 1 rows, all finite:
    the inputs of the fault injections (``x``) and of :func:`extract_network` (``data``, which
    needs an explicit batch axis: ``min_dim=2``)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[0] == 0:  # the statistics over it are undefined
        raise ValueError(f"{name} is empty (0 rows); pass a non-empty batch of inputs")
    if x.dim() < min_dim:
        raise ValueError(
            f"{name} must be a non-empty batch of shape (B, ...) with B >= 1, got shape "
            f"{tuple(x.shape)}"
        )
    x = x.reshape(x.shape[0], -1)
    if x.shape[1] != in_features:
        raise ValueError(f"{name} has {x.shape[1]} features, the network expects {in_features}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} holds NaN or infinite values; give finite inputs")
    return x
