"""Fixtures for the neuron tests: a small MLP trained on digits (cached for the session)."""

from __future__ import annotations

import pytest
import torch

from byzlearn.neurons import load_digits_data, train_mlp


@pytest.fixture(scope="session")
def digits() -> tuple[torch.Tensor, ...]:
    return load_digits_data(seed=0)


@pytest.fixture(scope="session")
def digits_mlp(digits: tuple[torch.Tensor, ...]) -> torch.nn.Sequential:
    Xtr, ytr, _, _ = digits
    return train_mlp(Xtr, ytr, hidden=(24, 16), activation="sigmoid", epochs=20, seed=0)
