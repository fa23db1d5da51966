"""Validation of attack options (one clear message naming the attack and the option)."""

from __future__ import annotations

import math

import numpy as np


def real(name: str, option: str, value: object, *, positive: bool = False) -> float:
    """``value`` as a finite float (``> 0`` when ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: {option} must be a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name}: {option} must be finite, got {v}")
    if positive and v <= 0:
        raise ValueError(f"{name}: {option} must be > 0, got {v}")
    return v


def integer(name: str, option: str, value: object, *, minimum: int | None = None) -> int:
    """``value`` as an int (``>= minimum`` when given)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: {option} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: {option} must be >= {minimum}, got {value}")
    return int(value)


def choice(name: str, option: str, value: object, allowed: tuple[str, ...]) -> str:
    """``value`` as one of the ``allowed`` strings."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}: {option} must be one of {', '.join(allowed)}; got {value!r}")
    return value
