"""Keyed randomness: every random draw is a pure function of its key.

A key is a tuple such as ``(seed, "batch", node, step)``, of ints in ``[0, 2**64)`` and strs
(other parts are refused: a bool, a float, or an int that would alias one in the range, as -1
would 2**64 - 1, is a ``TypeError`` or ``ValueError``). The same key always gives the same
numbers, whatever was drawn before, in which order, in which process, or how nodes are grouped
or vectorised; two different keys give independent-looking streams. This is what makes a
simulated run reproducible and independent of the engine (one process, a vectorised group, or
Ray actors on several machines).

The generator is SplitMix64 (Steele, Lea, Flood, "Fast splittable pseudorandom number
generators", OOPSLA 2014): a key is folded into a 64-bit state by repeated mixing, and the j-th
number of a stream is ``mix(state + (j + 1) * golden)``. Strings in a key are hashed with
BLAKE2b, so ``"batch"`` is a stable stream name across Python processes.

>>> a = uniform((0, "batch", 3, 7), 4)
>>> bool((a == uniform((0, "batch", 3, 7), 4)).all())
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "Key",
    "fold",
    "generator",
    "key_of",
    "key_state",
    "normal",
    "seed_of",
    "uniform",
    "uniform_rows",
    "uniform_states",
]

Key = tuple[int | str, ...]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK = (1 << 64) - 1


def _mix(z: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser on a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _part(part: int | str) -> int:
    if isinstance(part, str):
        text = part.encode("utf-8", "surrogatepass")  # every str (a lone surrogate too)
        return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")
    if isinstance(part, (bool, np.bool_)) or not isinstance(part, (int, np.integer)):
        raise TypeError(f"a key part must be an int or a str, got {type(part).__name__}")
    if not 0 <= part <= _MASK:  # outside, it would alias a part in the range (-1: 2**64 - 1)
        raise ValueError(f"a key part must be an int in [0, 2**64) or a str, got {part}")
    return int(part)


def _count(count: int) -> int:
    """``count`` if it is a number of draws (a non-negative int)."""
    if isinstance(count, (bool, np.bool_)) or not isinstance(count, (int, np.integer)):
        raise TypeError(f"count must be a non-negative int, got {type(count).__name__}")
    if count < 0:
        raise ValueError(f"count must be a non-negative int, got {count}")
    return int(count)


def _mix_int(z: int) -> int:
    """The SplitMix64 finaliser on one Python int."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def _fold(state: int, key: Key) -> int:
    if isinstance(key, (str, bytes)):  # not a key of one part per character
        raise TypeError(f"a key must be a tuple of ints and strs, got {key!r}")
    for part in key:
        state = _mix_int(((state ^ _part(part)) + 0x9E3779B97F4A7C15) & _MASK)
    return state


def key_of(key: Key) -> int:
    """The 64-bit state of ``key`` (an int in ``[0, 2**64)``)."""
    return _fold(0, key)


def seed_of(key: Key) -> int:
    """A non-negative 63-bit seed derived from ``key`` (for ``torch``/``numpy`` generators)."""
    return key_of(key) >> 1


def generator(key: Key) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``key``."""
    return torch.Generator().manual_seed(seed_of(key))


def _stream(states: np.ndarray, count: int) -> np.ndarray:
    """``count`` uint64 numbers for each state: shape ``states.shape + (count,)``."""
    j = np.arange(1, _count(count) + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return _mix(states[..., None] + j * _GOLDEN)


def _to_unit(bits: np.ndarray) -> np.ndarray:
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def uniform(key: Key, count: int) -> np.ndarray:
    """``count`` uniform numbers in ``[0, 1)`` (float64) of the stream ``key``."""
    return _to_unit(_stream(np.array([key_of(key)], dtype=np.uint64), count))[0]


def fold(states: np.ndarray, part: int | np.ndarray) -> np.ndarray:
    """Fold one more key part (a key part, or an array of one per state) into uint64 states:
    ``fold(key_state(k), p)`` is the state of the key ``k + (p,)``."""
    parts = np.asarray(part)
    if parts.dtype.kind == "i" and (parts >= 0).all():
        parts = parts.astype(np.uint64)
    elif parts.dtype.kind != "u":  # ints out of range, strs, or not key parts: one at a time
        parts = np.array([_part(p) for p in parts.ravel().tolist()], dtype=np.uint64)
        parts = parts.reshape(np.shape(part))
    with np.errstate(over="ignore"):
        return _mix((np.asarray(states, dtype=np.uint64) ^ parts) + _GOLDEN)


def key_state(key: Key, copies: int = 1) -> np.ndarray:
    """The state of ``key`` as a uint64 array of ``copies`` equal entries (see :func:`fold`)."""
    return np.full(copies, key_of(key), dtype=np.uint64)


def uniform_states(states: np.ndarray, count: int) -> np.ndarray:
    """``(len(states), count)`` uniforms: row r is the stream of the key whose state is
    ``states[r]``."""
    return _to_unit(_stream(np.asarray(states, dtype=np.uint64), count))


def uniform_rows(prefix: Key, rows: Sequence[tuple[int | str, ...]], count: int) -> np.ndarray:
    """A ``(len(rows), count)`` array: row r is ``uniform(prefix + rows[r], count)``.

    The prefix is folded once and the row parts in one vectorised pass, so drawing for a whole
    group of nodes costs about as much as for one.
    """
    if not rows:
        return np.zeros((0, _count(count)))
    width = len(rows[0])
    if any(len(r) != width for r in rows):
        raise ValueError("uniform_rows: every row key must have the same length")
    states = np.full(len(rows), key_of(prefix), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for c in range(width):
            column = [r[c] for r in rows]
            if all(type(v) is int and 0 <= v <= _MASK for v in column):
                parts = np.array(column, dtype=np.uint64)
            else:
                parts = np.array([_part(v) for v in column], dtype=np.uint64)
            states = _mix((states ^ parts) + _GOLDEN)
    return _to_unit(_stream(states, count))


def normal(key: Key, count: int) -> np.ndarray:
    """``count`` standard normal numbers of the stream ``key`` (inverse-CDF transform)."""
    from scipy.special import ndtri

    u = uniform(key, count)
    return ndtri(np.clip(u, 1e-300, 1.0 - 2.0**-53))
