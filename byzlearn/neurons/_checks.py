"""Small shared argument checks: each bad input gets one clear ``ValueError``/``TypeError`` line.

Numbers may be Python ints/floats, numpy scalars or 0-d tensors; bools are refused (``True`` is
not a probability or a count).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection

import torch

__all__ = ["check_batch", "check_choice", "check_index", "check_int", "check_real"]


def _as_number(value: object, name: str) -> float:
    """``value`` as a float, or a one-line ``TypeError`` naming ``name``."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and value.dtype != torch.bool:
        return float(value.item())
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if type(value).__name__ == "bool_":  # numpy.bool_
            raise TypeError(f"{name} must be a real number, not a bool")
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    return float(value)


def check_real(
    value: object,
    name: str,
    lo: float = -math.inf,
    hi: float = math.inf,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """``value`` as a float in the interval (lo/hi closed unless ``*_open``); NaN is refused."""
    v = _as_number(value, name)
    too_low = v <= lo if lo_open else v < lo
    too_high = v >= hi if hi_open else v > hi
    if math.isnan(v) or too_low or too_high:
        raise ValueError(f"{name} must be {_describe(lo, hi, lo_open, hi_open)}, got {value!r}")
    return v


def _describe(lo: float, hi: float, lo_open: bool, hi_open: bool) -> str:
    """The allowed range in words: "> 0", ">= 0" or "in [0, 1)"."""
    if hi == math.inf and not hi_open:
        return f"> {lo:g}" if lo_open else f">= {lo:g}"
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    return f"in {left}{lo:g}, {hi:g}{right}"


def check_int(value: object, name: str, lo: int = 0, hi: float = math.inf) -> int:
    """``value`` as an int in [lo, hi] (integral floats such as 2.0 are accepted)."""
    v = _as_number(value, name)
    if not math.isfinite(v) or v != int(v) or not lo <= v <= hi:
        where = f">= {lo}" if hi == math.inf else f"in [{lo}, {hi:g}]"
        raise ValueError(f"{name} must be an integer {where}, got {value!r}")
    return int(v)


def check_index(value: object, name: str, size: int) -> int:
    """An index in [0, size) (negative indices are refused: they would pick from the end)."""
    is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    is_int_tensor = (
        isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point()
    )
    if not (is_int or is_int_tensor):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    v = int(value)  # type: ignore[call-overload]
    if not 0 <= v < size:
        raise ValueError(f"{name} must be in [0, {size - 1}], got {v}")
    return v


def check_choice(value: object, name: str, choices: Collection[str]) -> str:
    """``value`` if it is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


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
