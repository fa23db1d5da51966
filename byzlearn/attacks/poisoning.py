"""Data poisoning at the dataset level: label flipping, applied to the Byzantine workers' data.

A Byzantine worker that flips labels then computes *honest* gradients on its poisoned data, so
the attack needs no knowledge of the other workers. Both functions are pure: the input labels are
never modified; a tensor gives a tensor, a numpy array gives a numpy array (same dtype, shape,
device).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from byzlearn.attacks._checks import integer


def _as_numpy_labels(labels, name: str) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        arr = labels.detach().cpu().numpy()
    elif isinstance(labels, np.ndarray):
        arr = labels
    else:
        raise TypeError(
            f"{name}: labels must be a tensor or a numpy array, got {type(labels).__name__}"
        )
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name}: labels must hold integers, got dtype {arr.dtype}")
    return arr


def _back(labels, out: np.ndarray):
    if isinstance(labels, torch.Tensor):
        return torch.from_numpy(np.ascontiguousarray(out)).to(
            device=labels.device, dtype=labels.dtype
        )
    return out.astype(labels.dtype, copy=False)


def _table(mapping, num_classes: int, name: str) -> np.ndarray:
    """The mapping as an array ``table[y] = new label`` of length C."""
    if mapping is None:
        return np.arange(num_classes - 1, -1, -1)
    table = np.arange(num_classes)
    if isinstance(mapping, Mapping):
        items = list(mapping.items())
    elif isinstance(mapping, (Sequence, np.ndarray, torch.Tensor)) and not isinstance(mapping, str):
        values = list(np.asarray(mapping).reshape(-1))
        if len(values) != num_classes:
            raise ValueError(
                f"{name}: a sequence mapping needs num_classes={num_classes} entries, "
                f"got {len(values)}"
            )
        items = list(enumerate(values))
    else:
        raise TypeError(
            f"{name}: mapping must be None, a dict {{source: target}} or a sequence of "
            f"num_classes labels, got {type(mapping).__name__}"
        )
    for src, dst in items:
        for what, v in (("source", src), ("target", dst)):
            v = integer(name, f"mapping {what}", v)
            if not 0 <= v < num_classes:
                raise ValueError(
                    f"{name}: mapping {what} {v} is outside [0, num_classes={num_classes})"
                )
        table[int(src)] = int(dst)
    return table


def flip_labels(labels, num_classes: int, mapping=None):
    r"""Flip labels through a mapping; default ``y -> C - 1 - y`` (``C = num_classes``).

    Args:
        labels: integer labels in ``[0, C)`` (tensor or numpy array, any shape).
        num_classes: ``C >= 1``.
        mapping: ``None`` (default: ``y -> C - 1 - y``, e.g. ``y -> 9 - y`` on MNIST/CIFAR-10),
            a dict ``{source: target}`` (labels not in it are kept), or a sequence of ``C`` labels
            (``y -> mapping[y]``). Every label in it must lie in ``[0, C)``.

    Returns the flipped labels, same kind, dtype, shape and device; the input is not modified.
    Raises ``TypeError`` for non-integer labels and ``ValueError`` for labels outside ``[0, C)``.

    Reference: the label-flipping attack as used in epfml/byzantine-robust-noniid-optimizer and
    LPD-EPFL/robust-collaborative-learning (``y -> 9 - y``); algorithms.md §8.
    """
    name = "flip_labels"
    num_classes = integer(name, "num_classes", num_classes, minimum=1)
    arr = _as_numpy_labels(labels, name)
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= num_classes):
        raise ValueError(
            f"{name}: labels must lie in [0, num_classes={num_classes}), got values in "
            f"[{int(arr.min())}, {int(arr.max())}]"
        )
    table = _table(mapping, num_classes, name)
    return _back(labels, table[arr.astype(np.int64)])


def targeted_flip(labels, source: int, target: int):
    r"""Targeted label flipping: every label equal to ``source`` becomes ``target``; the others
    are kept.

    Args:
        labels: non-negative integer labels (tensor or numpy array, any shape).
        source, target: non-negative class indices.

    Returns the new labels, same kind, dtype, shape and device; the input is not modified.
    Raises ``TypeError`` for non-integer labels/classes and ``ValueError`` for negative ones.

    Reference: targeted label flipping (e.g. Tolpegin, Truex, Gursoy, Liu, "Data Poisoning
    Attacks Against Federated Learning Systems", ESORICS 2020).
    """
    name = "targeted_flip"
    source = integer(name, "source", source, minimum=0)
    target = integer(name, "target", target, minimum=0)
    arr = _as_numpy_labels(labels, name)
    if arr.size and int(arr.min()) < 0:
        raise ValueError(f"{name}: labels must be non-negative, got {int(arr.min())}")
    if arr.size and target > np.iinfo(arr.dtype).max:
        raise ValueError(f"{name}: target {target} does not fit the labels' dtype {arr.dtype}")
    return _back(labels, np.where(arr == source, target, arr))
