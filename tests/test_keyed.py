"""byzlearn.keyed: draws against a plain-Python SplitMix64, and the keys and counts it refuses
(found by a random search: each was a silent wrong answer or a numpy error from inside)."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest

from byzlearn import keyed

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def _mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def _reference(key: tuple, count: int) -> list[float]:
    """The stream of ``key`` computed one Python int at a time (module docstring)."""
    state = 0
    for part in key:
        if isinstance(part, str):
            part = int.from_bytes(hashlib.blake2b(part.encode(), digest_size=8).digest(), "little")
        state = _mix(((state ^ part) + GOLDEN) & MASK)
    return [(_mix((state + j * GOLDEN) & MASK) >> 11) / 2.0**53 for j in range(1, count + 1)]


def test_draws_equal_the_reference_whatever_the_entry_point() -> None:
    rng = random.Random(0)
    parts = [0, 1, 7, 2**32 - 1, 2**63, 2**64 - 1, "batch", "", "é"]
    for _ in range(200):
        prefix = tuple(rng.choice(parts) for _ in range(rng.randrange(0, 3)))
        rows = [(rng.choice(parts), rng.randrange(2**64)) for _ in range(rng.randrange(1, 4))]
        count = rng.randrange(0, 5)
        table = keyed.uniform_rows(prefix, rows, count)
        for r, row in enumerate(rows):
            expected = _reference(prefix + row, count)
            assert keyed.uniform(prefix + row, count).tolist() == expected
            assert table[r].tolist() == expected
            state = keyed.fold(keyed.fold(keyed.key_state(prefix), row[0]), row[1])
            assert keyed.uniform_states(state, count)[0].tolist() == expected


@pytest.mark.parametrize("part", [-1, 2**64, -(2**63), 2**65 + 3])
def test_an_int_part_outside_the_range_is_refused(part: int) -> None:
    """It aliased a part in the range: ``(2**64,)`` drew the numbers of ``(0,)``, ``(-1,)``
    those of ``(2**64 - 1,)``; and ``uniform_rows`` raised numpy's OverflowError."""
    match = r"a key part must be an int in \[0, 2\*\*64\) or a str, got -?\d+"
    with pytest.raises(ValueError, match=match):
        keyed.uniform((0, part), 2)
    with pytest.raises(ValueError, match=match):
        keyed.uniform_rows((0,), [(part,)], 2)
    with pytest.raises(ValueError, match=match):
        keyed.fold(keyed.key_state((0,)), part)
    with pytest.raises(ValueError, match=match):
        keyed.fold(keyed.key_state((0,), 2), np.array([1, part], dtype=object))
    if -(2**63) <= part < 0:
        with pytest.raises(ValueError, match=match):
            keyed.fold(keyed.key_state((0,), 2), np.array([3, part]))


def test_a_float_part_is_refused_by_fold_too() -> None:
    """``fold(states, 1.5)`` folded the part 1."""
    with pytest.raises(TypeError, match="a key part must be an int or a str, got float"):
        keyed.fold(keyed.key_state((0,)), 1.5)


def test_fold_takes_a_str_part_as_a_key_does() -> None:
    state = keyed.fold(keyed.key_state((3,)), "batch")
    assert int(state[0]) == keyed.key_of((3, "batch"))


@pytest.mark.parametrize(
    ("count", "error"), [(-1, ValueError), (2.5, TypeError), (True, TypeError), ("3", TypeError)]
)
def test_a_count_that_is_not_a_number_of_draws_is_refused(count: object, error: type) -> None:
    """``uniform(key, 2.5)`` gave three numbers, ``uniform(key, -1)`` none."""
    states = keyed.key_state((0,), 2)
    for draw in (
        lambda: keyed.uniform((0,), count),
        lambda: keyed.normal((0,), count),
        lambda: keyed.uniform_rows((0,), [(1,)], count),
        lambda: keyed.uniform_rows((0,), [], count),
        lambda: keyed.uniform_states(states, count),
    ):
        with pytest.raises(error, match="count must be a non-negative int"):
            draw()  # type: ignore[arg-type]
    assert keyed.uniform((0,), np.int64(2)).shape == (2,)


def test_a_str_is_not_a_key() -> None:
    """``uniform("batch", 2)`` drew the stream of ``("b", "a", "t", "c", "h")``."""
    with pytest.raises(TypeError, match="a key must be a tuple of ints and strs, got 'batch'"):
        keyed.uniform("batch", 2)  # type: ignore[arg-type]


def test_every_str_is_a_key_part() -> None:
    """A lone surrogate (e.g. from a file name) raised UnicodeEncodeError."""
    assert keyed.uniform(("\ud800",), 2).tolist() == keyed.uniform(("\ud800",), 2).tolist()
    assert keyed.key_of(("\ud800",)) != keyed.key_of(("\ud801",))
