"""Findings of a random search over :func:`byzlearn.models.build_model`: every bad argument is
one :class:`ValueError` naming it (never a ZeroDivisionError, a torch error from deep inside or
an allocation of the whole memory), and the parameter counts are the documented ones."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from byzlearn import models
from byzlearn.experiments.config import ConfigError, parse_config
from byzlearn.models import build_model


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"width": 0}, "width must be an integer >= 1, got 0"),  # was ZeroDivisionError
        ({"groups": 0}, "groups must be an integer >= 1, got 0"),  # was ZeroDivisionError
        ({"groups": -1}, "groups must be an integer >= 1, got -1"),  # was built, failed in forward
        ({"groups": 2.0}, "groups must be an int, got float 2.0"),  # was built, failed in forward
        ({"width": 1.5}, "width must be an int, got float 1.5"),
        ({"width": True}, "width must be an int, got bool True"),
        ({"depth": 14.0}, "depth must be an int, got float 14.0"),  # was a TypeError from range
        ({"depth": "8"}, "depth must be an int, got str '8'"),
        ({"depth": 6 * 10**6 + 2}, r"ResNet depth must be 6k \+ 2 in 8\.\.2000"),
        ({"width": 6}, r"groups: must divide each stage's channels \(6, 12, 24\)"),
        ({"groups": 3}, r"groups: must divide each stage's channels \(16, 32, 64\)"),
    ],
)
def test_resnet_options_are_checked(options: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        build_model("resnet", (3, 8, 8), 10, **options)


def test_resnet_groups_beyond_the_channels_mean_one_per_channel() -> None:
    assert _count(build_model("resnet", (1, 8, 8), 10, width=4, groups=16)) > 0


@pytest.mark.parametrize(
    ("name", "options", "needle"),
    [
        ("mlp", {"hiddn": [8]}, r"mlp: unknown option 'hiddn' \(its options: hidden\)"),
        ("logistic", {"hidden": [8]}, r"logistic: unknown option 'hidden' \(its options: none\)"),
        ("resnet", {"channels": [8]}, r"its options: depth, width, groups"),
    ],
)
def test_unknown_options_name_the_known_ones(name: str, options: dict, needle: str) -> None:
    shape = (64,) if name != "resnet" else (1, 8, 8)
    with pytest.raises(ValueError, match=needle):
        build_model(name, shape, 10, **options)


@pytest.mark.parametrize(
    ("name", "options", "size"),
    [
        ("mlp", {"hidden": [10**12]}, "75,000,000,000,010"),  # was a 256 TB allocation
        ("cnn", {"channels": [10**9, 2]}, "28,000,000,092"),
        ("resnet", {"width": 10**12}, "more than 2^63"),  # was torch's "overflowed"
    ],
)
def test_models_too_big_for_memory_are_refused_before_allocating(
    name: str, options: dict, size: str
) -> None:
    shape = (64,) if name == "mlp" else (1, 8, 8)
    with pytest.raises(ValueError, match=re.escape(f"{name}: these options make {size} param")):
        build_model(name, shape, 10, **options)


def test_a_model_at_the_cap_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "MAX_PARAMETERS", 4810)  # the mlp on digits, exactly
    assert _count(build_model("mlp", (1, 8, 8), 10)) == 4810
    with pytest.raises(ValueError, match="mlp: these options make 4,885 parameters, at most 4,810"):
        build_model("mlp", (1, 8, 8), 10, hidden=[65])


@pytest.mark.parametrize(
    ("shape", "classes", "needle"),
    [
        ((0,), 10, r"input_shape: positive integers, got \[0\]"),  # was a model of 0 inputs
        ((-4,), 10, "input_shape: positive integers"),
        ((4.5,), 10, "input_shape: positive integers"),
        ((), 10, "input_shape: at least one dimension"),
        ((64,), 1.5, "num_classes must be an int, got float 1.5"),  # was truncated to 1
        ((64,), 0, "num_classes must be an integer >= 1, got 0"),
    ],
)
def test_shapes_and_class_counts_are_positive_integers(shape, classes, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        build_model("mlp", shape, classes)


@pytest.mark.parametrize("side", [1, 2, 3])
def test_a_cnn_on_images_too_small_to_pool_twice_is_one_line(side: int) -> None:
    with pytest.raises(ValueError, match="CNN needs images of at least 4 x 4 pixels"):
        build_model("cnn", (1, side, side), 10)


def _reference_count(name: str, shape: tuple[int, ...], classes: int, options: dict) -> int:
    """Parameters counted by hand, layer by layer."""
    if name == "logistic":
        return math.prod(shape) * classes + classes
    if name == "mlp":
        width, total = math.prod(shape), 0
        for h in options.get("hidden", [64]):
            total, width = total + width * h + h, h
        return total + width * classes + classes
    c0, h, w = shape
    c1, c2 = options.get("channels", [16, 32])
    return c0 * c1 * 9 + c1 + c1 * c2 * 9 + c2 + c2 * (h // 4) * (w // 4) * classes + classes


@pytest.mark.parametrize(
    ("name", "shape", "options"),
    [
        ("logistic", (1, 8, 8), {}),
        ("mlp", (1, 8, 8), {}),
        ("mlp", (20,), {"hidden": [7, 5]}),
        ("mlp", (20,), {"hidden": []}),
        ("cnn", (1, 8, 8), {}),
        ("cnn", (3, 32, 32), {"channels": [4, 6]}),
        ("cnn", (1, 7, 5), {"channels": [2, 3]}),
    ],
)
def test_parameter_counts_match_a_count_by_hand(name: str, shape: tuple, options: dict) -> None:
    model = build_model(name, shape, 10, **options)
    assert _count(model) == _reference_count(name, shape, 10, options)
    assert model(torch.zeros(2, *shape)).shape == (2, 10)


def test_the_documented_digits_sizes() -> None:
    # README table 5: the mlp has 4810 parameters and the cnn 6090 on digits
    assert _count(build_model("mlp", (1, 8, 8), 10)) == 4810
    assert _count(build_model("cnn", (1, 8, 8), 10)) == 6090


def test_building_draws_the_same_numbers_as_before_the_size_check() -> None:
    # the size is counted on the meta device: it draws nothing from the CPU generator
    torch.manual_seed(0)
    a = torch.nn.utils.parameters_to_vector(build_model("cnn", (1, 8, 8), 10).parameters())
    torch.manual_seed(0)
    from byzlearn.models import CNN

    b = torch.nn.utils.parameters_to_vector(CNN((1, 8, 8), 10).parameters())
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"width": 0}, "model.options: width must be an integer >= 1, got 0"),
        ({"groups": 0}, "model.options: groups must be an integer >= 1, got 0"),
    ],
)
def test_a_config_with_a_zero_resnet_size_is_one_line(options: dict, needle: str) -> None:
    # before: a ZeroDivisionError escaped the config check (a traceback from the command line)
    data = {"dataset": {"name": "digits"}, "model": {"name": "resnet", "options": options}}
    with pytest.raises(ConfigError, match=needle):
        parse_config({**data, "n": 5, "f": 1})


def test_any_sequence_of_dimensions_is_a_shape() -> None:
    assert _count(build_model("mlp", np.array([1, 8, 8]), np.int64(10))) == 4810
    assert _count(build_model("cnn", torch.Size([1, 8, 8]), 10)) == 6090
    with pytest.raises(ValueError, match="input_shape: a list of positive integers, got 5"):
        build_model("mlp", 5, 10)


def test_model_sizes_counts_on_the_meta_device_with_build_models_checks() -> None:
    from byzlearn.models import model_sizes

    # the MLP on digits: 64 -> 64 -> 10 (4810 parameters); one sample's leaf outputs: flatten
    # 64, linear 64, relu 64, linear 10
    assert model_sizes("mlp", (1, 8, 8), 10) == (4810, 202)
    with pytest.raises(ValueError, match="mlp: unknown option 'hiddn'"):
        model_sizes("mlp", (1, 8, 8), 10, hiddn=[3])
    with pytest.raises(ValueError, match="at most 100,000,000"):
        model_sizes("mlp", (1, 8, 8), 10, hidden=[10**12])
    with pytest.raises(RuntimeError):  # a convolution on flat features: as a real forward pass
        model_sizes("resnet", (20,), 4)
