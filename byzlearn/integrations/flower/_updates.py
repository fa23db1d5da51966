"""Client replies -> the (n, d) matrix of updates, one row per usable reply, flattened once.

An update is ``reply tensor - tensor the server sent``, for every floating-point tensor of the
model, concatenated in the order of the sent ArrayRecord. A reply is *malformed* (rejected with
a reason, never aggregated) when it carries no ArrayRecord, misses a tensor or adds one, sends a
tensor of another shape, a non-numeric dtype or bytes that do not decode, or is a node's second
reply of the round. Non-finite values in a
well-formed reply are kept: the rule's missing-value policy handles them.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import numpy.lib.format as npy
import torch
from flwr.app import Array, ArrayRecord, Message

__all__ = ["Layout", "Parsed", "Rejected", "read_replies"]


@dataclass(frozen=True)
class Layout:
    """Where each floating-point tensor of the model sits in a flattened update."""

    keys: tuple[str, ...]  # floating-point tensors, aggregated
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]  # of each tensor as sent: the new model keeps them
    offsets: tuple[int, ...]  # start of each key in the flat vector (len(keys) + 1 entries)
    dtype: torch.dtype
    sent: torch.Tensor  # the flattened tensors the server sent, in ``dtype``
    other: dict[str, np.ndarray]  # non-floating tensors (counters): kept as sent
    order: tuple[str, ...]  # every key, in the order the server sent them

    @classmethod
    def of(cls, arrays: ArrayRecord) -> Layout:
        """The layout of the ArrayRecord the server sends (its floating-point tensors)."""
        floats: dict[str, np.ndarray] = {}
        other: dict[str, np.ndarray] = {}
        for key, array in arrays.items():
            value = array.numpy()
            (floats if np.issubdtype(value.dtype, np.floating) else other)[key] = value
        if not floats:
            raise ValueError("the model sent to the clients has no floating-point tensor")
        wide = any(v.dtype == np.float64 for v in floats.values())
        dtype = torch.float64 if wide else torch.float32
        sizes = [v.size for v in floats.values()]
        offsets = tuple(int(x) for x in np.concatenate([[0], np.cumsum(sizes)]))
        sent = torch.empty(offsets[-1], dtype=dtype)
        for i, value in enumerate(floats.values()):
            sent[offsets[i] : offsets[i + 1]] = torch.from_numpy(value.reshape(-1).copy())
        return cls(
            tuple(floats),
            tuple(tuple(v.shape) for v in floats.values()),
            tuple(v.dtype for v in floats.values()),
            offsets,
            dtype,
            sent,
            other,
            tuple(arrays.keys()),
        )

    @property
    def d(self) -> int:
        """Number of aggregated coordinates."""
        return self.offsets[-1]

    def to_arrays(self, flat: torch.Tensor) -> ArrayRecord:
        """An ArrayRecord with the model's keys, order and dtypes: ``flat`` split back into
        tensors (a float32 tensor of a model with a float64 one stays float32)."""
        values = {
            k: flat[self.offsets[i] : self.offsets[i + 1]]
            .reshape(self.shapes[i])
            .numpy()
            .astype(self.dtypes[i], copy=False)
            for i, k in enumerate(self.keys)
        }
        values.update(self.other)
        return ArrayRecord({k: Array(np.ascontiguousarray(values[k])) for k in self.order})


@dataclass(frozen=True)
class Rejected:
    """A reply left out of the aggregation and why."""

    node: int
    reason: str


@dataclass
class Parsed:
    """The usable replies of one round."""

    updates: torch.Tensor  # (n, d) in the layout's dtype
    nodes: list[int]  # sender of each row
    weights: list[float]  # the weight key of each row (nan when absent)
    messages: list[Message]
    rejected: list[Rejected]
    failed: list[Rejected]  # error replies (the client raised or did not answer)


def _arrays_of(message: Message, key: str) -> ArrayRecord:
    records = message.content.array_records
    if key in records:
        return records[key]
    if len(records) == 1:
        return next(iter(records.values()))
    if not records:
        raise ValueError("no ArrayRecord in the reply")
    raise ValueError(f"{len(records)} ArrayRecords in the reply and none named {key!r}")


def _weight_of(message: Message, key: str) -> float:
    for record in message.content.metric_records.values():
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return math.nan


def _header(array: Array) -> tuple[tuple[int, ...], np.dtype] | None:
    """The shape and dtype an ``.npy`` payload declares, read without allocating the array
    (None: another serialisation, left to Flower)."""
    if array.stype != "numpy.ndarray":
        return None
    stream = io.BytesIO(array.data)
    version = npy.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = npy.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, _, dtype = npy.read_array_header_2_0(stream)
    else:
        raise ValueError(f"npy format version {version} not supported")
    return tuple(int(x) for x in shape), dtype


def _check(key: str, shape: tuple[int, ...], dtype: np.dtype, expected: tuple[int, ...]) -> None:
    if dtype.kind not in "fiu":
        raise ValueError(f"tensor {key!r} has dtype {dtype}, not a number")
    if shape != expected:
        raise ValueError(f"tensor {key!r} has shape {shape}, expected {expected}")


def _row(arrays: ArrayRecord, layout: Layout, out: torch.Tensor) -> None:
    """Write ``reply - sent`` into ``out``; raise ValueError naming the first defect."""
    expected = set(layout.keys) | set(layout.other)
    missing = [k for k in layout.keys if k not in arrays]
    if missing:
        raise ValueError(f"missing tensor {missing[0]!r} ({len(missing)} missing)")
    extra = sorted(set(arrays) - expected)
    if extra:
        raise ValueError(f"unexpected tensor {extra[0]!r}")
    for i, key in enumerate(layout.keys):
        try:  # the header first: numpy allocates what it declares (36 TiB: MemoryError)
            declared = _header(arrays[key])
        except (ValueError, OSError, EOFError) as err:
            raise ValueError(f"tensor {key!r} does not decode ({err})") from None
        if declared is not None:
            _check(key, *declared, layout.shapes[i])
        try:
            value = arrays[key].numpy()
        except (TypeError, ValueError, OSError, EOFError) as err:
            raise ValueError(f"tensor {key!r} does not decode ({err})") from None
        _check(key, tuple(value.shape), value.dtype, layout.shapes[i])
        lo, hi = layout.offsets[i], layout.offsets[i + 1]
        flat = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float64).reshape(-1))
        out[lo:hi] = flat.to(layout.dtype)
    out -= layout.sent


def read_replies(
    replies: list[Message], layout: Layout, *, arrays_key: str, weight_key: str
) -> Parsed:
    """Check every reply against the layout and stack the usable ones' updates (one pass), in
    node-id order (a node's first reply counts)."""
    # Rows in node-id order: Flower samples nodes in random order, and the output of
    # order-sensitive rules (bucketing's shuffle, ties) must not depend on it.
    replies = sorted(replies, key=lambda m: int(m.metadata.src_node_id))
    usable = [m for m in replies if not m.has_error() and m.has_content()]
    failed = [
        Rejected(int(m.metadata.src_node_id), str(m.error.reason if m.has_error() else "empty"))
        for m in replies
        if m.has_error() or not m.has_content()
    ]
    updates = torch.empty(len(usable), layout.d, dtype=layout.dtype)
    nodes: list[int] = []
    weights: list[float] = []
    messages: list[Message] = []
    rejected: list[Rejected] = []
    seen: set[int] = set()  # nodes with a reply, usable or rejected: their next one is rejected
    for message in usable:
        node = int(message.metadata.src_node_id)
        row = updates[len(nodes)]  # a rejected reply's partial row is overwritten by the next
        if node in seen:
            rejected.append(Rejected(node, "a second reply from this node this round"))
            continue
        seen.add(node)
        try:
            _row(_arrays_of(message, arrays_key), layout, row)
        except ValueError as err:
            rejected.append(Rejected(node, str(err)))
            continue
        nodes.append(node)
        weights.append(_weight_of(message, weight_key))
        messages.append(message)
    return Parsed(updates[: len(nodes)], nodes, weights, messages, rejected, failed)
