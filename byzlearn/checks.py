"""Argument checks shared by the library: each bad value gets one clear line naming it.

``name`` is the whole label of the value (``"alpha"``, ``"leeway: coordinates"``). A value of
the wrong type is a ``TypeError`` ("must be a number, got str '0.5'"; ``type_error`` picks
another class for modules that promise a ``ValueError`` for every bad value); a number out of
range is a ``ValueError`` ("must be > 0 and finite, got -1.0"). Bools are never numbers.
"""

from __future__ import annotations

import math
import numbers
import reprlib
from collections.abc import Collection
from typing import SupportsFloat, cast

__all__ = ["check_choice", "check_int", "check_real"]


def check_real(
    value: object,
    name: str,
    lo: float = -math.inf,
    hi: float = math.inf,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    finite: bool = True,
    type_error: type[Exception] = TypeError,
) -> float:
    """``value`` (any real number but a bool) as a float in the interval from ``lo`` to ``hi``
    (closed ends unless ``*_open``); NaN is always refused, infinities unless ``finite`` is
    false (and the interval allows them)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise type_error(f"{name} must be a number, got {_typed(value)}")
    v = _float(value)
    too_low = v <= lo if lo_open else v < lo
    too_high = v >= hi if hi_open else v > hi
    if math.isnan(v) or too_low or too_high or (finite and math.isinf(v)):
        bounds = _bounds(lo, hi, lo_open, hi_open, "g")
        if finite and (lo == -math.inf or hi == math.inf):
            bounds = f"{bounds} and finite" if bounds else "finite"
        raise ValueError(f"{name} must be {bounds or 'a number'}, got {_show(_plain(value))}")
    return v


def check_int(
    value: object,
    name: str,
    lo: float = -math.inf,
    hi: float = math.inf,
    *,
    integral_floats: bool = False,
    type_error: type[Exception] = TypeError,
) -> int:
    """``value`` (a Python or numpy integer, not a bool) as an int in [lo, hi]; with
    ``integral_floats`` any real number of integral value (such as 2.0) is taken too."""
    lenient = integral_floats and isinstance(value, numbers.Real)
    if isinstance(value, bool) or not (isinstance(value, numbers.Integral) or lenient):
        raise type_error(f"{name} must be an int, got {_typed(value)}")
    plain = _plain(value)
    if isinstance(plain, int) or (math.isfinite(plain) and plain.is_integer()):
        v = int(plain)
        if lo <= v <= hi:
            return v
    where = _bounds(lo, hi, False, False, "d")
    raise ValueError(f"{name} must be an integer{' ' + where if where else ''}, got {_show(plain)}")


def check_choice(value: object, name: str, choices: Collection[str]) -> str:
    """``value`` if it is one of the strings ``choices`` (a ``ValueError`` otherwise)."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {_show(value)}")
    return value


def _bounds(lo: float, hi: float, lo_open: bool, hi_open: bool, spec: str) -> str:
    """The interval in words: ``"> 0"``, ``">= 1"``, ``"<= 5"``, ``"in [0, 1)"`` or ``""``."""

    def fmt(bound: float) -> str:
        return format(int(bound) if spec == "d" else bound, spec)

    has_lo, has_hi = lo != -math.inf, hi != math.inf
    if has_lo and has_hi:
        return f"in {'(' if lo_open else '['}{fmt(lo)}, {fmt(hi)}{')' if hi_open else ']'}"
    if has_lo:
        return f"{'>' if lo_open else '>='} {fmt(lo)}"
    if has_hi:
        return f"{'<' if hi_open else '<='} {fmt(hi)}"
    return ""


def _float(value: object) -> float:
    """A real number as a float (an infinity beyond the floats' range)."""
    number = cast(SupportsFloat, value)
    try:
        return float(number)
    except OverflowError:  # such as 10**400
        return math.inf if cast(float, number) > 0 else -math.inf


def _plain(value: object) -> int | float:
    """A real number (numpy's too) as a Python int or float."""
    return int(value) if isinstance(value, numbers.Integral) else _float(value)


def _show(value: object) -> str:
    """A short one-line ``repr`` of a bad value (long ones cut with ``...``)."""
    return " ".join(reprlib.repr(value).split())


def _typed(value: object) -> str:
    """A bad value with its type: ``str '0.5'``, ``NoneType None``."""
    return f"{type(value).__name__} {_show(value)}"
