"""Partitioners: disjoint covers, determinism, and the heterogeneity they promise."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from byzlearn.data import label_histogram, partition

LABELS = np.repeat(np.arange(10), 50)  # 500 samples, 10 classes


def _check_cover(parts: list[np.ndarray], size: int, n: int) -> None:
    assert len(parts) == n
    assert all(len(p) >= 1 for p in parts)
    joined = np.concatenate(parts)
    assert len(joined) == size and len(np.unique(joined)) == size


@given(
    kind=st.sampled_from(["iid", "dirichlet", "shards", "gamma"]),
    n=st.integers(1, 40),
    seed=st.integers(0, 5),
)
def test_every_partition_is_a_disjoint_cover(kind: str, n: int, seed: int) -> None:
    parts = partition(LABELS, n, kind, seed=seed, alpha=0.1, shards_per_worker=2, gamma=0.3)
    _check_cover(parts, len(LABELS), n)
    again = partition(LABELS, n, kind, seed=seed, alpha=0.1, shards_per_worker=2, gamma=0.3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def _classes_per_worker(parts: list[np.ndarray]) -> float:
    hist = label_histogram(LABELS, parts, 10)
    return float((hist > 0).sum(axis=1).mean())


def test_heterogeneity_ordering() -> None:
    iid = _classes_per_worker(partition(LABELS, 10, "iid"))
    skewed = _classes_per_worker(partition(LABELS, 10, "dirichlet", alpha=0.05))
    shards = _classes_per_worker(partition(LABELS, 10, "shards", shards_per_worker=2))
    sorted_ = _classes_per_worker(partition(LABELS, 10, "gamma", gamma=0.0))
    assert iid == 10
    assert skewed < 5 and shards <= 2 and sorted_ <= 2
    assert _classes_per_worker(partition(LABELS, 10, "gamma", gamma=1.0)) == 10


def test_errors() -> None:
    with pytest.raises(ValueError, match="cannot give"):
        partition(LABELS[:3], 5)
    with pytest.raises(ValueError, match="alpha"):
        partition(LABELS, 5, "dirichlet", alpha=0)
    with pytest.raises(ValueError, match="unknown partition"):
        partition(LABELS, 5, "weird")
    with pytest.raises(ValueError, match="gamma"):
        partition(LABELS, 5, "gamma", gamma=1.5)
