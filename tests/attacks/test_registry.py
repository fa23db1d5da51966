"""The registry and the common arguments of every attack (shapes, kinds, errors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import byzlearn.attacks as atk

FIXED = atk.names("fixed")
RULE_AWARE = atk.names("rule_aware")


def honest(h: int = 12, d: int = 7, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 1.0 + torch.randn(h, d, generator=g, dtype=torch.float64)


def call(name: str, X, f: int = 3, **kw):
    kw.setdefault("generator", torch.Generator().manual_seed(0))
    if atk.is_rule_aware(name):
        kw.setdefault("rule", "median")
    return atk.get(name)(X, f, **kw)


def test_names_and_kinds():
    expected = {
        "alie",
        "alie_opt",
        "bitflip",
        "gaussian",
        "ipm",
        "ipm_opt",
        "large_norm",
        "leeway",
        "mimic",
        "min_max",
        "min_max_opt",
        "min_sum",
        "nonfinite",
        "sign_flip",
        "strategic",
        "zero",
    }
    assert set(atk.names()) == expected
    assert set(RULE_AWARE) == {"alie_opt", "ipm_opt", "leeway", "min_max_opt", "strategic"}
    assert sorted(FIXED + RULE_AWARE) == atk.names()
    with pytest.raises(ValueError, match="kind"):
        atk.names("other")


def test_aliases_and_spellings():
    assert atk.get("fall_of_empires") is atk.get("ipm")
    assert atk.get("Fall-Of-Empires") is atk.get("ipm")
    assert atk.get("a-little-is-enough") is atk.get("alie")
    for alias, canonical in atk.aliases().items():
        assert atk.get(alias) is atk.get(canonical)
        assert alias not in atk.names()
    with pytest.raises(KeyError, match="unknown attack 'nope'"):
        atk.get("nope")
    with pytest.raises(TypeError):
        atk.get("")


@pytest.mark.parametrize("name", atk.names())
def test_every_attack_documents_itself(name):
    s = atk.spec(name)
    doc = atk.get(name).__doc__
    assert s.reference and doc and "Reference" in doc
    for option in s.options:
        assert option in doc, f"{name}: option {option!r} is not documented"
    assert atk.get(name).__name__ == name


@pytest.mark.parametrize("name", atk.names())
def test_unknown_option_is_a_type_error_naming_it(name):
    with pytest.raises(TypeError, match="bogus"):
        call(name, honest(), bogus=1)


@pytest.mark.parametrize("name", atk.names())
def test_shape_and_f_zero(name):
    X = honest()
    out = call(name, X, 4)
    assert out.shape == (4, 7) and out.dtype == X.dtype
    empty = call(name, X, 0)
    assert empty.shape == (0, 7)


@pytest.mark.parametrize("name", ["alie", "gaussian", "leeway"])
def test_bad_f(name):
    with pytest.raises(ValueError, match="f must be >= 0"):
        call(name, honest(), -1)
    with pytest.raises(TypeError, match="f must be an int"):
        call(name, honest(), 2.0)
    with pytest.raises(TypeError, match="f must be an int"):
        call(name, honest(), True)


@pytest.mark.parametrize("name", RULE_AWARE)
def test_rule_aware_without_rule(name):
    with pytest.raises(ValueError, match="rule-aware: pass rule="):
        atk.get(name)(honest(), 3)
    assert atk.needs_rule(name)


def test_leeway_with_epsilon_needs_no_rule():
    assert not atk.needs_rule("leeway", epsilon=2.0)
    out = atk.get("leeway")(honest(), 3, epsilon=2.0)
    assert out.shape == (3, 7)
    with pytest.raises(TypeError, match="bogus"):
        atk.needs_rule("leeway", bogus=1)
    assert not atk.needs_rule("alie")


def test_rule_checks():
    X = honest(h=10)
    with pytest.raises(ValueError, match="bulyan needs n >= 4f \\+ 3"):
        atk.get("leeway")(X, 3, rule="bulyan")
    with pytest.raises(KeyError, match="unknown aggregator"):
        atk.get("leeway")(X, 3, rule="nope")
    with pytest.raises(TypeError, match="rule must be"):
        atk.get("leeway")(X, 3, rule=3)
    with pytest.raises(ValueError, match="pre-aggregator"):
        atk.get("leeway")(X, 3, rule="nnm")
    with pytest.raises(TypeError, match="rule_options"):
        atk.get("leeway")(X, 3, rule="krum", rule_options=[1])
    # a callable rule; and a bad callable rule
    out = atk.get("ipm_opt")(X, 3, rule=lambda V, f: V.mean(0))
    assert out.shape == (3, 7)
    with pytest.raises(ValueError, match="one \\(d,\\) aggregate"):
        atk.get("ipm_opt")(X, 3, rule=lambda V, f: V[:2])
    # rule options reach the rule
    out = atk.get("ipm_opt")(X, 3, rule="multi_krum", rule_options={"m": 2})
    assert out.shape == (3, 7)


def test_bad_inputs():
    with pytest.raises(ValueError, match="honest"):
        atk.get("alie")(torch.ones(5), 2)
    with pytest.raises(ValueError, match="honest"):
        atk.get("alie")([], 2)
    with pytest.raises(ValueError, match="honest"):
        atk.get("alie")([torch.ones(3), torch.ones(4)], 2)
    with pytest.raises(TypeError, match="honest"):
        atk.get("alie")("abc", 2)
    with pytest.raises(TypeError, match="complex"):
        atk.get("alie")(torch.ones(3, 2, dtype=torch.complex64), 2)
    with pytest.raises(TypeError, match="identical"):
        atk.get("alie")(honest(), 2, identical="yes")
    with pytest.raises(TypeError, match="generator"):
        atk.get("gaussian")(honest(), 2, generator=0)


def test_input_kinds_round_trip():
    X = honest(h=6, d=12)
    # numpy in -> numpy out, same dtype
    out = atk.get("sign_flip")(X.numpy().astype(np.float32), 2)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (2, 12)
    # sequence of tensors
    out = atk.get("sign_flip")(list(X), 2)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 12)
    # (h, *shape) -> (f, *shape)
    out = atk.get("alie")(X.reshape(6, 3, 4), 2)
    assert out.shape == (2, 3, 4)
    torch.testing.assert_close(out.reshape(2, 12), atk.get("alie")(X, 2))
    # half precision is computed in float32 and given back in half
    out = atk.get("alie")(X.half(), 2)
    assert out.dtype == torch.float16
    out = atk.get("alie")(X.numpy().astype(np.float16), 2)
    assert out.dtype == np.float16
    # integers give the default floating dtype
    out = atk.get("sign_flip")(torch.ones(4, 3, dtype=torch.int64), 1)
    assert out.dtype == torch.get_default_dtype()


def test_identical_argument():
    import inspect

    from byzlearn.attacks._registry import register

    assert inspect.signature(atk.get("gaussian")).parameters["identical"].default is None
    X = honest()
    g = torch.Generator
    distinct = atk.get("gaussian")(X, 3, generator=g().manual_seed(1))
    assert len({tuple(r.tolist()) for r in distinct}) == 3  # the default: f draws
    same = atk.get("gaussian")(X, 3, generator=g().manual_seed(1), identical=True)
    assert len({tuple(r.tolist()) for r in same}) == 1
    torch.testing.assert_close(
        atk.get("gaussian")(X, 3, generator=g().manual_seed(1), identical=False), distinct
    )
    with pytest.raises(ValueError, match="needs distinct=True"):
        register("never_registered", identical_default=False)
    assert "never_registered" not in atk.names()


def test_one_honest_vector():
    X = torch.ones(1, 4)
    with pytest.raises(ValueError, match="at least 2 honest vectors"):
        atk.get("alie")(X, 1, z=1.0)
    torch.testing.assert_close(atk.get("ipm")(X, 2), -0.1 * torch.ones(2, 4))
    torch.testing.assert_close(atk.get("mimic")(X, 2), torch.ones(2, 4))
