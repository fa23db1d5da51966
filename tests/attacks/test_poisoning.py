"""Label flipping against loop references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import byzlearn.attacks as atk


@given(st.integers(1, 12), st.lists(st.integers(0, 11), max_size=30), st.booleans())
def test_flip_labels_default(C, raw, as_tensor):
    y = np.array([v % C for v in raw], dtype=np.int64)
    labels = torch.from_numpy(y.copy()) if as_tensor else y.copy()
    out = atk.flip_labels(labels, C)
    ref = np.array([C - 1 - v for v in y], dtype=np.int64)
    assert type(out) is type(labels) and out.dtype == labels.dtype and out.shape == labels.shape
    np.testing.assert_array_equal(np.asarray(out), ref)
    np.testing.assert_array_equal(np.asarray(labels), y)  # input untouched


def test_flip_labels_mnist_convention_and_mappings():
    y = torch.arange(10, dtype=torch.int32).reshape(2, 5)
    np.testing.assert_array_equal(atk.flip_labels(y, 10).numpy(), 9 - y.numpy())
    assert atk.flip_labels(y, 10).dtype == torch.int32
    # dict: others kept
    out = atk.flip_labels(np.array([0, 1, 2, 3], dtype=np.uint8), 4, mapping={1: 3, 3: 0})
    np.testing.assert_array_equal(out, [0, 3, 2, 0])
    assert out.dtype == np.uint8
    # sequence
    out = atk.flip_labels(np.array([0, 1, 2]), 3, mapping=[2, 2, 0])
    np.testing.assert_array_equal(out, [2, 2, 0])


def test_flip_labels_errors():
    with pytest.raises(ValueError, match="labels must lie in \\[0, num_classes=3\\)"):
        atk.flip_labels(np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="labels must lie"):
        atk.flip_labels(torch.tensor([-1, 0]), 3)
    with pytest.raises(TypeError, match="integers"):
        atk.flip_labels(np.array([0.0, 1.0]), 3)
    with pytest.raises(TypeError, match="tensor or a numpy array"):
        atk.flip_labels([0, 1], 3)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1"):
        atk.flip_labels(np.array([0]), 0)
    with pytest.raises(ValueError, match="outside"):
        atk.flip_labels(np.array([0]), 3, mapping={0: 5})
    with pytest.raises(ValueError, match="3 entries"):
        atk.flip_labels(np.array([0]), 3, mapping=[1, 0])
    with pytest.raises(TypeError, match="mapping must be"):
        atk.flip_labels(np.array([0]), 3, mapping="abc")


@given(st.lists(st.integers(0, 9), max_size=30), st.integers(0, 9), st.integers(0, 9))
def test_targeted_flip(raw, source, target):
    y = np.array(raw, dtype=np.int64)
    out = atk.targeted_flip(torch.from_numpy(y), source, target)
    ref = [target if v == source else v for v in raw]
    np.testing.assert_array_equal(out.numpy(), np.array(ref, dtype=np.int64))
    np.testing.assert_array_equal(atk.targeted_flip(y, source, target), ref)


def test_targeted_flip_errors():
    with pytest.raises(ValueError, match="source must be an integer >= 0"):
        atk.targeted_flip(np.array([0]), -1, 2)
    with pytest.raises(ValueError, match="non-negative"):
        atk.targeted_flip(np.array([-2, 1]), 1, 2)
    with pytest.raises(TypeError, match="integers"):
        atk.targeted_flip(torch.tensor([0.5]), 0, 1)
    with pytest.raises(ValueError, match="does not fit"):
        atk.targeted_flip(np.array([1], dtype=np.uint8), 1, 300)
