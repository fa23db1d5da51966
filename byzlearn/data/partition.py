"""Split a labelled training set among ``n`` workers.

Every partitioner takes the label vector and returns ``n`` disjoint index arrays that cover the
data set (int64, sorted). All are deterministic under ``seed`` and every worker gets at least one
sample.

- ``iid``: a random permutation cut into ``n`` near-equal parts.
- ``dirichlet(alpha)``: for each class, worker shares ~ Dir(alpha); small alpha = skewed labels.
- ``shards(shards_per_worker)``: sort by label, cut into ``n * s`` shards, deal ``s`` to each
  worker (McMahan et al.'s pathological non-iid split).
- ``gamma(gamma)``: a fraction ``gamma`` of the data is dealt iid, the rest is sorted by label
  and cut into contiguous blocks (``gamma = 1``: iid; ``gamma = 0``: fully sorted).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["dirichlet", "gamma_similarity", "iid", "label_shards", "partition"]


def _labels(labels) -> np.ndarray:
    y = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels).astype(np.int64)
    if y.ndim != 1:
        raise ValueError("labels must be one-dimensional")
    return y


def _check(num: int, n: int) -> None:
    if n < 1:
        raise ValueError(f"need at least one worker, got n={n}")
    if num < n:
        raise ValueError(f"cannot give each of n={n} workers a sample out of {num}")


def _fill_empty(parts: list[np.ndarray]) -> list[np.ndarray]:
    """Move one sample from the largest part into each empty part."""
    parts = [np.asarray(p, dtype=np.int64) for p in parts]
    for i, p in enumerate(parts):
        if len(p) == 0:
            j = int(np.argmax([len(q) for q in parts]))
            parts[i], parts[j] = parts[j][-1:], parts[j][:-1]
    return [np.sort(p) for p in parts]


def iid(labels, n: int, seed: int = 0) -> list[np.ndarray]:
    """Uniformly random near-equal split."""
    y = _labels(labels)
    _check(len(y), n)
    perm = np.random.default_rng(seed).permutation(len(y))
    return [np.sort(p) for p in np.array_split(perm, n)]


def dirichlet(labels, n: int, alpha: float = 1.0, seed: int = 0) -> list[np.ndarray]:
    """Per-class Dirichlet(alpha) shares (Hsu et al. 2019)."""
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    y = _labels(labels)
    _check(len(y), n)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(n)]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        shares = rng.dirichlet(np.full(n, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(np.int64)
        for w, chunk in enumerate(np.split(idx, cuts)):
            parts[w].append(chunk)
    return _fill_empty([np.concatenate(p) for p in parts])


def label_shards(labels, n: int, shards_per_worker: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Sort by label, cut into ``n * shards_per_worker`` shards, deal them at random."""
    if shards_per_worker < 1:
        raise ValueError(f"shards_per_worker must be >= 1, got {shards_per_worker}")
    y = _labels(labels)
    _check(len(y), n)
    rng = np.random.default_rng(seed)
    order = np.argsort(y, kind="stable")
    shards = np.array_split(order, n * shards_per_worker)
    deal = rng.permutation(len(shards)).reshape(n, shards_per_worker)
    return _fill_empty([np.concatenate([shards[s] for s in row]) for row in deal])


def gamma_similarity(labels, n: int, gamma: float = 0.5, seed: int = 0) -> list[np.ndarray]:
    """A fraction ``gamma`` dealt iid; the rest sorted by label and cut into contiguous blocks."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    y = _labels(labels)
    _check(len(y), n)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    k = round(gamma * len(y))
    iid_part, rest = perm[:k], perm[k:]
    rest = rest[np.argsort(y[rest], kind="stable")]
    a, b = np.array_split(iid_part, n), np.array_split(rest, n)
    return _fill_empty([np.concatenate([a[i], b[i]]) for i in range(n)])


def partition(
    labels, n: int, kind: str = "iid", seed: int = 0, **options: float
) -> list[np.ndarray]:
    """Dispatch by name: ``iid``, ``dirichlet`` (alpha), ``shards`` (shards_per_worker),
    ``gamma`` (gamma)."""
    if kind == "iid":
        return iid(labels, n, seed=seed)
    if kind == "dirichlet":
        return dirichlet(labels, n, alpha=float(options.get("alpha", 1.0)), seed=seed)
    if kind == "shards":
        return label_shards(
            labels, n, shards_per_worker=int(options.get("shards_per_worker", 2)), seed=seed
        )
    if kind == "gamma":
        return gamma_similarity(labels, n, gamma=float(options.get("gamma", 0.5)), seed=seed)
    raise ValueError(f"unknown partition {kind!r}; known: iid, dirichlet, shards, gamma")


def label_histogram(labels, parts: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """``(n, num_classes)`` counts of each label per worker."""
    y = _labels(labels)
    return np.stack([np.bincount(y[p], minlength=num_classes) for p in parts])
