"""Hypothesis properties shared by every attack: shape, determinism, identical/distinct rows,
no modification of the caller's input."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

import byzlearn.attacks as atk

DISTINCT = [n for n in atk.names() if atk.spec(n).distinct]
# nonfinite draws random coordinate subsets, which may coincide in small d: see test_gradient
CONTINUOUS_DISTINCT = [n for n in DISTINCT if n != "nonfinite"]


@st.composite
def problems(draw):
    h = draw(st.integers(2, 9))
    d = draw(st.integers(1, 12))
    f = draw(st.integers(1, min(5, h - 1)))  # a Byzantine minority
    seed = draw(st.integers(0, 2**31 - 1))
    X = np.random.default_rng(seed).normal(draw(st.floats(-2, 2)), 1.0, size=(h, d))
    return X, f, seed


def call(name: str, X, f: int, seed: int, **kw):
    if atk.is_rule_aware(name):
        kw.setdefault("rule", "average")
        kw.setdefault("evaluations", 8)
    return atk.get(name)(X, f, generator=torch.Generator().manual_seed(seed), **kw)


@given(problems(), st.sampled_from(atk.names()), st.booleans())
def test_shape_determinism_and_input_untouched(problem, name, identical):
    X, f, seed = problem
    T = torch.from_numpy(X.copy())
    before = T.clone()
    a = call(name, T, f, seed, identical=identical)
    b = call(name, T, f, seed, identical=identical)
    assert a.shape == (f, X.shape[1]) and a.dtype == T.dtype
    torch.testing.assert_close(a, b, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(T, before, rtol=0, atol=0)  # caller's tensor is not modified
    # the result does not alias the input
    a.add_(1.0)
    torch.testing.assert_close(T, before, rtol=0, atol=0)


@given(problems(), st.sampled_from(atk.names()))
def test_identical_gives_equal_rows(problem, name):
    X, f, seed = problem
    out = call(name, X, f, seed, identical=True).astype(np.float64)
    for row in out[1:]:
        np.testing.assert_array_equal(row, out[0])


@given(problems(), st.sampled_from(atk.names()))
def test_default_is_the_attacks_own(problem, name):
    """identical=None (the call's default) is the spec's identical_default."""
    X, f, seed = problem
    default = call(name, X, f, seed)
    explicit = call(name, X, f, seed, identical=atk.spec(name).identical_default)
    np.testing.assert_array_equal(default, explicit)


def test_distinct_attacks():
    assert set(DISTINCT) == {"bitflip", "gaussian", "large_norm", "nonfinite"}
    # distinct by default where the paper has each Byzantine worker send its own vector
    assert {n for n in atk.names() if not atk.spec(n).identical_default} == {
        "bitflip",
        "gaussian",
    }


@given(problems(), st.sampled_from(CONTINUOUS_DISTINCT))
def test_distinct_gives_distinct_rows(problem, name):
    X, f, seed = problem
    if f < 2 or X.shape[1] < 2:  # in d = 1 a unit direction is +-1
        return
    out = call(name, X, f, seed, identical=False)
    assert len({tuple(r) for r in out}) == f


@given(problems(), st.sampled_from(["gaussian", "large_norm"]))
def test_generator_controls_randomness(problem, name):
    X, f, seed = problem
    if X.shape[1] < 2:  # in d = 1 a unit direction is +-1
        return
    assert not np.array_equal(call(name, X, f, seed), call(name, X, f, seed + 1))


@given(problems(), st.sampled_from([n for n in atk.names() if not atk.spec(n).randomized]))
def test_deterministic_attacks_ignore_the_generator(problem, name):
    X, f, seed = problem
    a = call(name, X, f, seed, identical=False)
    b = call(name, X, f, seed + 1, identical=False)
    np.testing.assert_array_equal(a, b)


def test_randomized_flags():
    assert {n for n in atk.names() if atk.spec(n).randomized} == {
        "gaussian",
        "large_norm",
        "nonfinite",
        "strategic",  # the far starting points of its search
    }
