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

Refused with one line: ``n`` not an integer >= 1 or above the number of samples, labels that
are not class ids (integers >= 0), a seed not an integer >= 0, ``alpha`` not a finite number
> 0, ``shards_per_worker`` not an integer >= 1 or more shards (``n * s``) than samples,
``gamma`` outside [0, 1], and unknown options.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from byzlearn.checks import check_int, check_real

__all__ = ["dirichlet", "gamma_similarity", "iid", "label_shards", "partition"]

#: the options :func:`partition` passes on (each kind reads its own, ignores the others)
OPTIONS = ("alpha", "shards_per_worker", "gamma")


def _labels(labels) -> np.ndarray:
    """The labels as int64 class ids: integer-valued, finite and >= 0 (no silent truncation)."""
    y = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {y.shape}")
    numeric = np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)
    if y.size and not numeric:
        raise ValueError(f"labels must be integer class ids, got dtype {y.dtype}")
    if y.size and np.issubdtype(y.dtype, np.floating):
        bad = ~np.isfinite(y) | (y != np.round(y)) | (np.abs(y) > 2**62)
        if bad.any():
            raise ValueError(f"labels must be integer class ids, got {float(y[bad][0])}")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise ValueError(f"labels must be class ids >= 0, got {int(y.min())}")
    return y


def _integer(name: str, value: object, low: int) -> int:
    """An int >= ``low``; every bad value is a ``ValueError`` here (wrong types too)."""
    return check_int(value, name, low, type_error=ValueError)


def _check(num: int, n: int, seed: object = 0) -> None:
    _integer("n", n, 1)
    if num < n:
        raise ValueError(f"cannot give each of n={n} workers a sample out of {num}")
    _integer("seed", seed, 0)


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
    _check(len(y), n, seed)
    perm = np.random.default_rng(seed).permutation(len(y))
    return [np.sort(p) for p in np.array_split(perm, n)]


def dirichlet(labels, n: int, alpha: float = 1.0, seed: int = 0) -> list[np.ndarray]:
    """Per-class Dirichlet(alpha) shares (Hsu et al. 2019)."""
    check_real(alpha, "alpha", 0.0, lo_open=True, type_error=ValueError)
    y = _labels(labels)
    _check(len(y), n, seed)
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
    shards_per_worker = _integer("shards_per_worker", shards_per_worker, 1)
    y = _labels(labels)
    _check(len(y), n, seed)
    if n * shards_per_worker > len(y):
        raise ValueError(
            f"cannot cut {len(y)} samples into n x shards_per_worker = {n} x {shards_per_worker} "
            "shards (at most one shard per sample)"
        )
    rng = np.random.default_rng(seed)
    order = np.argsort(y, kind="stable")
    shards = np.array_split(order, n * shards_per_worker)
    deal = rng.permutation(len(shards)).reshape(n, shards_per_worker)
    return _fill_empty([np.concatenate([shards[s] for s in row]) for row in deal])


def gamma_similarity(labels, n: int, gamma: float = 0.5, seed: int = 0) -> list[np.ndarray]:
    """A fraction ``gamma`` dealt iid; the rest sorted by label and cut into contiguous blocks."""
    check_real(gamma, "gamma", 0.0, 1.0, type_error=ValueError)
    y = _labels(labels)
    _check(len(y), n, seed)
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
    ``gamma`` (gamma); the options of the other kinds are ignored, unknown ones refused."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown partition option {unknown[0]!r}; known: {', '.join(OPTIONS)}")
    if kind == "iid":
        return iid(labels, n, seed=seed)
    if kind == "dirichlet":
        return dirichlet(labels, n, alpha=options.get("alpha", 1.0), seed=seed)
    if kind == "shards":
        shards = _integer("shards_per_worker", options.get("shards_per_worker", 2), 1)
        return label_shards(labels, n, shards_per_worker=shards, seed=seed)
    if kind == "gamma":
        return gamma_similarity(labels, n, gamma=options.get("gamma", 0.5), seed=seed)
    raise ValueError(f"unknown partition {kind!r}; known: iid, dirichlet, shards, gamma")


def label_histogram(labels, parts: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """``(n, num_classes)`` counts of each label per worker."""
    y = _labels(labels)
    num_classes = _integer("num_classes", num_classes, 1)
    if y.size and y.max() >= num_classes:
        raise ValueError(f"label {int(y.max())} out of range for num_classes={num_classes}")
    return np.stack([np.bincount(y[p], minlength=num_classes) for p in parts])
