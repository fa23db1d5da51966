"""The shared argument checks (byzlearn.checks) and the four families built on them."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
import torch

from byzlearn.attacks import _checks as attack_checks
from byzlearn.checks import check_choice, check_int, check_real
from byzlearn.data import partition
from byzlearn.data.datasets import load_synthetic
from byzlearn.neurons import _checks as neuron_checks

INF, NAN = math.inf, math.nan


# --------------------------------------------------------------------------- check_real


@pytest.mark.parametrize(
    ("value", "bounds", "expected"),
    [
        (0.5, {}, 0.5),
        (-3, {}, -3.0),
        (np.float32(0.25), {"lo": 0.0, "hi": 1.0}, 0.25),
        (np.int64(2), {"lo": 0.0, "lo_open": True}, 2.0),
        (Fraction(1, 4), {"lo": 0.0, "hi": 1.0}, 0.25),
        (0.0, {"lo": 0.0}, 0.0),  # closed ends hold their bound
        (1.0, {"lo": 0.0, "hi": 1.0}, 1.0),
        (INF, {"lo": 0.0, "finite": False}, INF),
        (10**400, {"finite": False}, INF),
    ],
)
def test_real_accepts_and_returns_a_float(value: object, bounds: dict, expected: float) -> None:
    got = check_real(value, "x", **bounds)
    assert type(got) is float and got == expected


@pytest.mark.parametrize(
    ("value", "bounds", "message"),
    [
        (0.0, {"lo": 0.0, "lo_open": True}, "x must be > 0 and finite, got 0.0"),
        (-1, {"lo": 0.0}, "x must be >= 0 and finite, got -1"),
        (1.0, {"lo": 0.0, "hi": 1.0, "hi_open": True}, "x must be in [0, 1), got 1.0"),
        (0.0, {"lo": 0.0, "hi": 1.0, "lo_open": True}, "x must be in (0, 1], got 0.0"),
        (2.5, {"hi": 2.0}, "x must be <= 2 and finite, got 2.5"),
        (2.0, {"hi": 2.0, "hi_open": True}, "x must be < 2 and finite, got 2.0"),
        (INF, {}, "x must be finite, got inf"),
        (-INF, {"lo": 0.0}, "x must be >= 0 and finite, got -inf"),
        (NAN, {"lo": 0.0, "hi": 1.0}, "x must be in [0, 1], got nan"),
        (NAN, {"finite": False}, "x must be a number, got nan"),
        (NAN, {"lo": 0.0, "finite": False}, "x must be >= 0, got nan"),
        (INF, {"hi": 1.0, "finite": False}, "x must be <= 1, got inf"),
        (np.float64(-0.5), {"lo": 0.0}, "x must be >= 0 and finite, got -0.5"),
        (10**400, {}, "x must be finite, got 100000000000000000...0000000000000000000"),
    ],
)
def test_real_refuses_out_of_range_with_the_whole_requirement(
    value: object, bounds: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_real(value, "x", **bounds)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("0.5", "str '0.5'"),
        (None, "NoneType None"),
        (True, "bool True"),
        (1j, "complex 1j"),
        (torch.tensor(1.0), "Tensor tensor(1.)"),
    ],
)
def test_real_refuses_other_types_with_a_type_error(value: object, shown: str) -> None:
    with pytest.raises(TypeError, match=f"^{re.escape(f'x must be a number, got {shown}')}$"):
        check_real(value, "x")
    with pytest.raises(ValueError, match="x must be a number"):  # for the data modules
        check_real(value, "x", type_error=ValueError)


def test_numpy_bools_are_not_numbers() -> None:
    with pytest.raises(TypeError, match=r"^x must be a number, got bool"):  # bool_ in numpy 1
        check_real(np.True_, "x")


def test_a_long_bad_value_is_shown_on_one_short_line() -> None:
    for value in (torch.zeros(50, 50), "y" * 1000, list(range(1000))):
        with pytest.raises(TypeError) as info:
            check_real(value, "x")
        text = str(info.value)
        assert "\n" not in text and len(text) < 120 and "..." in text


# --------------------------------------------------------------------------- check_int


@pytest.mark.parametrize(
    ("value", "bounds", "expected"),
    [
        (3, {}, 3),
        (np.int64(7), {"lo": 0}, 7),
        (np.uint8(255), {"lo": 0, "hi": 255}, 255),
        (0, {"lo": 0}, 0),
        (-5, {}, -5),
        (2**64, {"lo": 0}, 2**64),
        (10**400, {}, 10**400),
        (2**32 - 1, {"lo": 0, "hi": 2**32 - 1}, 2**32 - 1),
    ],
)
def test_int_accepts_integers(value: object, bounds: dict, expected: int) -> None:
    got = check_int(value, "n", **bounds)
    assert type(got) is int and got == expected


@pytest.mark.parametrize("value", [2.0, np.float64(2.0), Fraction(2), "2", None, True, np.True_])
def test_int_refuses_other_types(value: object) -> None:
    with pytest.raises(TypeError, match=r"^n must be an int, got \w+ "):
        check_int(value, "n", 0)
    with pytest.raises(ValueError, match=r"^n must be an int, got \w+ "):
        check_int(value, "n", 0, type_error=ValueError)


@pytest.mark.parametrize(
    ("value", "bounds", "message"),
    [
        (-1, {"lo": 0}, "n must be an integer >= 0, got -1"),
        (5, {"lo": 0, "hi": 4}, "n must be an integer in [0, 4], got 5"),
        (
            2**32,
            {"lo": 0, "hi": 2**32 - 1},
            "n must be an integer in [0, 4294967295], got 4294967296",
        ),
        (6, {"hi": 5}, "n must be an integer <= 5, got 6"),
        (np.int32(-2), {"lo": 1}, "n must be an integer >= 1, got -2"),
    ],
)
def test_int_refuses_out_of_range(value: object, bounds: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_int(value, "n", **bounds)


def test_integral_floats_are_counts_only_when_asked() -> None:
    assert check_int(2.0, "n", 1, integral_floats=True) == 2
    assert check_int(np.float32(3.0), "n", 1, integral_floats=True) == 3
    assert check_int(Fraction(4), "n", 1, integral_floats=True) == 4
    for bad, shown in ((2.5, "2.5"), (INF, "inf"), (NAN, "nan"), (0.0, "0.0")):
        with pytest.raises(ValueError, match=f"^n must be an integer >= 1, got {shown}$"):
            check_int(bad, "n", 1, integral_floats=True)
    wrong: tuple[object, ...] = (True, "2", None)
    for other in wrong:
        with pytest.raises(TypeError, match="n must be an int"):
            check_int(other, "n", 1, integral_floats=True)


# --------------------------------------------------------------------------- check_choice


def test_choice() -> None:
    assert check_choice("mean", "reduce", ("max", "mean")) == "mean"
    assert check_choice("b", "k", {"a", "b"}) == "b"
    for bad, shown in (("avg", "'avg'"), (3, "3"), (None, "None"), (["max"], "['max']")):
        with pytest.raises(
            ValueError, match=f"^reduce must be one of max, mean; got {re.escape(shown)}$"
        ):
            check_choice(bad, "reduce", ("max", "mean"))


# --------------------------------------------------------------------------- the four users


def test_attack_checks_return_the_checked_value() -> None:
    assert attack_checks.real("alie", "z", 1) == 1.0
    assert attack_checks.integer("leeway", "evaluations", np.int64(8), minimum=1) == 8
    assert attack_checks.integer("poison", "mapping key", -3) == -3  # no minimum
    assert attack_checks.choice("gaussian", "center", "zero", ("zero", "honest")) == "zero"


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: attack_checks.real("gaussian", "std", -1.0, positive=True), ValueError,
         "gaussian: std must be > 0 and finite, got -1.0"),
        (lambda: attack_checks.real("alie", "z", INF), ValueError,
         "alie: z must be finite, got inf"),
        (lambda: attack_checks.real("alie", "z", "x"), TypeError,
         "alie: z must be a number, got str 'x'"),
        (lambda: attack_checks.integer("Crash", "step", 1.5, minimum=0), TypeError,
         "Crash: step must be an int, got float 1.5"),
        (lambda: attack_checks.integer("Crash", "step", -1, minimum=0), ValueError,
         "Crash: step must be an integer >= 0, got -1"),
        (lambda: attack_checks.choice("gaussian", "center", "mean", ("zero", "honest")),
         ValueError, "gaussian: center must be one of zero, honest; got 'mean'"),
    ],
)  # fmt: skip
def test_attack_checks_name_the_attack_and_the_option(
    call: Callable[[], object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        call()


def test_neuron_checks_take_0d_tensors_and_integral_floats() -> None:
    assert neuron_checks.check_real(torch.tensor(0.5), "p", 0.0, 1.0) == 0.5
    assert neuron_checks.check_real(INF, "K", 0.0) == INF  # as before: unbounded above
    assert neuron_checks.check_int(torch.tensor(3), "reps", 1) == 3
    assert neuron_checks.check_int(2.0, "reps", 1) == 2
    assert neuron_checks.check_int(torch.tensor(2.0), "reps", 1) == 2
    assert neuron_checks.check_index(torch.tensor(2), "layer", 3) == 2
    with pytest.raises(ValueError, match=r"^p must be in \[0, 1\], got 1.5$"):
        neuron_checks.check_real(torch.tensor(1.5), "p", 0.0, 1.0)
    with pytest.raises(ValueError, match=r"^reps must be an integer >= 1, got 2.5$"):
        neuron_checks.check_int(torch.tensor(2.5), "reps", 1)
    with pytest.raises(TypeError, match=r"^p must be a number, got Tensor tensor\(True\)$"):
        neuron_checks.check_real(torch.tensor(True), "p", 0.0, 1.0)
    with pytest.raises(TypeError, match=r"^layer must be an int, got Tensor tensor\(1\.\)$"):
        neuron_checks.check_index(torch.tensor(1.0), "layer", 3)
    with pytest.raises(TypeError, match=r"^layer must be an int, got Tensor tensor\(True\)$"):
        neuron_checks.check_index(torch.tensor(True), "layer", 3)
    with pytest.raises(ValueError, match=r"^layer must be an integer in \[0, 2\], got -1$"):
        neuron_checks.check_index(-1, "layer", 3)


def test_data_checks_are_value_errors_for_every_bad_value() -> None:
    labels = np.repeat(np.arange(4), 5)
    bad: list[dict[str, Any]] = [{"alpha": "1"}, {"alpha": 0.0}, {"gamma": None}, {"gamma": 2.0}]
    for kwargs in bad:
        with pytest.raises(ValueError, match=f"{next(iter(kwargs))} must be"):
            partition(labels, 2, "dirichlet" if "alpha" in kwargs else "gamma", **kwargs)
    seeds: tuple[Any, ...] = (1.0, -1, 2**32)
    for seed in seeds:
        with pytest.raises(ValueError, match="seed must be an int"):
            load_synthetic(seed=seed)
    fractions: tuple[Any, ...] = (0, 1, "0.2", NAN)
    for fraction in fractions:
        with pytest.raises(ValueError, match="test_fraction must be"):
            load_synthetic(test_fraction=fraction)
