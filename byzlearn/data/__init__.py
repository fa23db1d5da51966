"""Datasets (in memory, no torchvision needed to read them) and partitioners."""

from byzlearn.data.datasets import (
    ArrayDataset,
    describe_dataset,
    load_dataset,
    loader_options,
    loader_types,
    names,
    read_cifar_batch,
    read_idx,
)
from byzlearn.data.partition import (
    dirichlet,
    gamma_similarity,
    iid,
    label_histogram,
    label_shards,
    partition,
)

__all__ = [
    "ArrayDataset",
    "describe_dataset",
    "dirichlet",
    "gamma_similarity",
    "iid",
    "label_histogram",
    "label_shards",
    "load_dataset",
    "loader_options",
    "loader_types",
    "names",
    "partition",
    "read_cifar_batch",
    "read_idx",
]
