"""``byzlearn.argtypes``: argparse types that refuse bad values with one line."""

from __future__ import annotations

import argparse

import pytest

from byzlearn.argtypes import at_least, dimension, non_negative


def test_at_least_takes_integers_from_its_bound() -> None:
    assert at_least(1)("3") == 3 and at_least(0)("0") == 0
    for text in ("0", "-2", "1.5", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            at_least(1)(text)
    assert at_least(0, 5)("5") == 5
    with pytest.raises(argparse.ArgumentTypeError, match="must be <= 5, got 6"):
        at_least(0, 5)("6")


def test_dimension_and_non_negative() -> None:
    assert dimension("1e7") == 1e7 and non_negative("0") == 0.0
    for text in ("0", "1.5", "nan"):
        with pytest.raises(argparse.ArgumentTypeError, match="whole number"):
            dimension(text)
    with pytest.raises(argparse.ArgumentTypeError, match="not a number"):
        non_negative("x")
