"""checks, finite, keyed, argtypes: behaviours no other test could see change (mutation-testing
findings)."""

from __future__ import annotations

import math

import pytest

from byzlearn.checks import check_choice, check_real


def test_a_huge_negative_int_is_minus_infinity() -> None:
    assert check_real(-(10**400), "x", finite=False) == -math.inf
    with pytest.raises(ValueError, match=r"^x must be >= 0, got -1000"):
        check_real(-(10**400), "x", lo=0.0, finite=False)


@pytest.mark.parametrize("value", [["a"], {"a": 1}, None, 1])
def test_a_choice_that_is_not_a_str_is_one_value_error(value: object) -> None:
    """An unhashable value must not reach ``in`` on a set or dict of choices (a TypeError)."""
    with pytest.raises(ValueError, match=r"^x must be one of a, b; got "):
        check_choice(value, "x", {"a": 0, "b": 1})


def test_seeds_use_all_63_bits_of_the_key_state() -> None:
    """``seed_of`` is the key's 64-bit state less its lowest bit: 63 bits, the high one used."""
    from byzlearn import keyed

    seeds = [keyed.seed_of((0, "seed", i)) for i in range(64)]
    states = [keyed.key_of((0, "seed", i)) for i in range(64)]
    assert seeds == [s >> 1 for s in states]
    assert all(0 <= s < 2**63 for s in seeds) and any(s >= 2**62 for s in seeds)
    assert keyed.generator((0, "seed", 3)).initial_seed() == seeds[3]


def test_a_uniform_draw_of_zero_gives_a_finite_normal(monkeypatch: pytest.MonkeyPatch) -> None:
    """u = 0 is a possible draw (probability 2**-53): the inverse CDF must not return -inf."""
    import numpy as np

    from byzlearn import keyed

    monkeypatch.setattr(keyed, "uniform", lambda key, count: np.zeros(count))
    z = keyed.normal((0, "z"), 3)
    assert np.isfinite(z).all() and (z < -30).all()


@pytest.mark.parametrize("rows", [[(1,), (2, 3)], [(1, 2), (3,)]])
def test_uniform_rows_refuses_row_keys_of_different_lengths(rows: list[tuple[int, ...]]) -> None:
    from byzlearn import keyed

    with pytest.raises(ValueError, match="every row key must have the same length"):
        keyed.uniform_rows((0,), rows, 2)


@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "1e400"])
def test_non_negative_refuses_what_is_not_a_finite_number(text: str) -> None:
    import argparse

    from byzlearn.argtypes import non_negative

    with pytest.raises(argparse.ArgumentTypeError, match="must be a finite number >= 0"):
        non_negative(text)
    assert non_negative("0") == 0.0 and non_negative("1e300") == 1e300


def test_check_memory_refuses_anything_above_what_is_available(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from byzlearn import argtypes, machine

    monkeypatch.setattr(machine, "available_bytes", lambda: 2**30)
    parser = argparse.ArgumentParser(prog="bench")
    argtypes.check_memory(parser, 2**30, "this")  # exactly what is available
    with pytest.raises(SystemExit) as exit_:
        argtypes.check_memory(parser, 1.5 * 2**30, "n=9 x d=9", "--n")
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "bench: error: n=9 x d=9 needs about 1.5 GiB, 1.0 GiB available: lower --n"
