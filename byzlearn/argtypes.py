"""argparse types that refuse a bad value with one line naming it (used by ``python -m
byzlearn.aggregators`` and the scripts in ``benchmarks/``)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from byzlearn import machine


def at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low`` (and <= ``high`` when given)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {value}")
        return value

    return parse


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def dimension(text: str) -> float:
    """An argparse type: a whole number >= 1 that may be written like ``1e7``."""
    value = _number(text)
    if not (math.isfinite(value) and value >= 1 and value == int(value)):
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def non_negative(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    value = _number(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def check_memory(
    parser: argparse.ArgumentParser, needed: float, what: str, lower: str = "--n or --d"
) -> None:
    """End with one ``error:`` line (``parser.error``, exit status 2) when ``what`` needs more
    than the ``needed`` bytes the machine has available now (MemAvailable; no check where it is
    unknown), instead of the allocator's traceback (or the kernel's OOM killer) later."""
    available = machine.available_bytes()
    if available is not None and needed > available:
        parser.error(
            f"{what} needs about {needed / 2**30:.1f} GiB, {available / 2**30:.1f} GiB "
            f"available: lower {lower}"
        )
