"""The learning task shared by the ServerApp, the ClientApp and the simulation: digits, an MLP."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from flwr.app import ArrayRecord, MetricRecord
from torch import nn

from byzlearn.data import ArrayDataset, iid, load_dataset
from byzlearn.models import build_model


@lru_cache(maxsize=1)
def digits() -> ArrayDataset:
    """scikit-learn's digits (8x8 images, 10 classes), standardised, fixed 80/20 split."""
    return load_dataset("digits")


def model_fn() -> nn.Module:
    """The model every node trains: an MLP with one hidden layer of 64 units (4810 weights)."""
    data = digits()
    return build_model("mlp", data.input_shape, data.num_classes)


@lru_cache(maxsize=8)
def partitions(num_partitions: int, seed: int = 0) -> list[np.ndarray]:
    """IID parts of the training set, one per node."""
    return iid(digits().y_train.numpy(), num_partitions, seed=seed)


def initial_arrays(seed: int = 0) -> ArrayRecord:
    """The starting model, seeded."""
    torch.manual_seed(seed)
    return ArrayRecord(model_fn().state_dict())


def central_accuracy(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    """Accuracy of the global model on the held-out test set (the server's evaluate_fn)."""
    data = digits()
    model = model_fn()
    model.load_state_dict(arrays.to_torch_state_dict())
    with torch.no_grad():
        accuracy = (model(data.x_test).argmax(1) == data.y_test).float().mean()
    return MetricRecord({"accuracy": float(accuracy)})
