"""Validation of attack options (one clear message naming the attack and the option):
:mod:`byzlearn.checks` with the label ``"<attack>: <option>"``."""

from __future__ import annotations

import math

from byzlearn.checks import check_choice, check_int, check_real


def real(name: str, option: str, value: object, *, positive: bool = False) -> float:
    """``value`` as a finite float (``> 0`` when ``positive``)."""
    low = 0.0 if positive else -math.inf
    return check_real(value, f"{name}: {option}", low, lo_open=positive)


def integer(
    name: str,
    option: str,
    value: object,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    """``value`` as an int (``>= minimum`` and ``<= maximum`` when given)."""
    return check_int(
        value,
        f"{name}: {option}",
        -math.inf if minimum is None else minimum,
        math.inf if maximum is None else maximum,
    )


def choice(name: str, option: str, value: object, allowed: tuple[str, ...]) -> str:
    """``value`` as one of the ``allowed`` strings."""
    return check_choice(value, f"{name}: {option}", allowed)
