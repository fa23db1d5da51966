"""Mutation-testing findings for the partitioners: each test fails on a plausible bug that the
other data tests let through (a seed ignored, shards not sorted or not dealt at random, shares
shifted between workers, an off-by-one in a range check)."""

from __future__ import annotations

import numpy as np
import pytest

from byzlearn.data import label_histogram, partition

LABELS = np.repeat(np.arange(10), 50)  # 500 samples, 10 classes, sorted


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("iid", {}),
        ("dirichlet", {"alpha": 0.5}),
        ("shards", {"shards_per_worker": 2}),
        ("gamma", {"gamma": 0.5}),
    ],
)
def test_the_seed_changes_the_partition(kind: str, options: dict) -> None:
    """Same seed, same split (tested elsewhere); another seed, another split."""
    first = partition(LABELS, 5, kind, seed=0, **options)
    assert _same(first, partition(LABELS, 5, kind, seed=0, **options))
    assert not _same(first, partition(LABELS, 5, kind, seed=1, **options))


def test_shards_sort_unsorted_labels_first() -> None:
    """With shuffled labels, every shard is still one label run: 2 shards, <= 2 classes."""
    y = np.random.default_rng(3).permutation(LABELS)
    parts = partition(y, 10, "shards", shards_per_worker=2)
    hist = label_histogram(y, parts, 10)
    assert ((hist > 0).sum(axis=1) <= 2).all()
    assert (hist.sum(axis=1) == 50).all()


def test_shards_are_dealt_at_random() -> None:
    """Not worker i = shards 2i and 2i + 1 (that would give each worker one class here)."""
    parts = partition(LABELS, 10, "shards", shards_per_worker=2, seed=0)
    hist = label_histogram(LABELS, parts, 10)
    assert ((hist > 0).sum(axis=1) == 2).any()


@pytest.mark.parametrize("n", [2, 5, 7])
def test_dirichlet_with_a_large_alpha_gives_every_worker_its_share_of_each_class(n: int) -> None:
    """alpha -> inf: the shares tend to 1/n, so each worker gets about 50/n of each class (no
    worker gets two shares, none gets nothing)."""
    parts = partition(LABELS, n, "dirichlet", alpha=1e5, seed=2)
    hist = label_histogram(LABELS, parts, 10)
    assert np.abs(hist - 50 / n).max() <= 2


def test_label_histogram_refuses_a_label_equal_to_num_classes() -> None:
    parts = partition(LABELS, 2)
    with pytest.raises(ValueError, match="label 9 out of range for num_classes=9"):
        label_histogram(LABELS, parts, 9)
    assert label_histogram(LABELS, parts, 10).shape == (2, 10)


@pytest.mark.parametrize(
    ("kind", "options"),
    [("iid", {}), ("dirichlet", {}), ("shards", {"shards_per_worker": 1}), ("gamma", {})],
)
def test_as_many_workers_as_samples_gives_one_sample_each(kind: str, options: dict) -> None:
    parts = partition(LABELS[:6], 6, kind, **options)
    assert sorted(int(p[0]) for p in parts) == list(range(6))
    assert all(len(p) == 1 for p in parts)


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "shards", "gamma"])
def test_parts_are_sorted_int64_index_arrays(kind: str) -> None:
    """The module's promise: n disjoint index arrays, int64 and sorted (also after a worker
    left empty got a sample from the largest part)."""
    y = np.random.default_rng(0).permutation(LABELS)
    for n in (3, 40):
        for part in partition(y, n, kind, seed=1, alpha=0.05, gamma=0.3):
            assert part.dtype == np.int64
            assert np.array_equal(part, np.sort(part))


def test_dirichlet_draws_each_workers_samples_at_random_within_a_class() -> None:
    """Equal shares (huge alpha), 2 workers: worker 0 gets about half of each class, not the
    first half of it in data order."""
    parts = partition(LABELS, 2, "dirichlet", alpha=1e5, seed=0)
    first_halves = 0
    for c in range(10):
        mine = parts[0][LABELS[parts[0]] == c]
        first_halves += int(np.array_equal(mine, np.arange(50 * c, 50 * c + len(mine))))
    assert first_halves == 0


def test_synthetic_separation_and_standardise_are_used() -> None:
    """Class centres ~ N(0, separation² I), samples = centre + N(0, I); ``none`` keeps them."""
    from byzlearn.data.datasets import load_synthetic

    def class_means(separation: float) -> np.ndarray:
        ds = load_synthetic(seed=0, separation=separation, standardise="none")
        x, y = ds.x_train.numpy(), ds.y_train.numpy()
        return np.stack([x[y == c].mean(axis=0) for c in range(ds.num_classes)])

    assert np.abs(class_means(0.0)).max() < 0.3  # every centre at 0: means of N(0, 1) noise
    spread = class_means(10.0).std()
    assert 5.0 < spread < 20.0
    ds = load_synthetic(seed=0, standardise="none")
    assert abs(float(ds.x_train.std()) - 1.0) > 0.2  # not standardised (centres spread by 2)
