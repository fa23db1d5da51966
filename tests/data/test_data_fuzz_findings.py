"""Regressions found by a random search over the partitioners and the dataset loaders.

Each test failed before its fix: bad partition parameters and labels were silently coerced
(NaN/inf alpha, 2.5 shards, NaN labels), CIFAR batches were unpickled with ``pickle.load`` (a
file could run code), and corrupt or odd IDX / CIFAR files gave deep numpy errors, silent
wrap-around or non-finite features instead of one line naming the file.
"""

from __future__ import annotations

import gzip
import os
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from byzlearn.data import (
    describe_dataset,
    label_histogram,
    load_dataset,
    loader_options,
    loader_types,
    partition,
    read_cifar_batch,
    read_idx,
)
from byzlearn.data.datasets import load_digits, load_synthetic

LABELS = np.repeat(np.arange(10), 20)  # 200 samples, 10 classes


# --------------------------------------------------------------------------- partitions


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), True, "0.5", None])
def test_dirichlet_alpha_must_be_a_finite_number(alpha: object) -> None:
    # NaN and inf gave NaN shares: one worker got the whole set, with a RuntimeWarning
    with pytest.raises(ValueError, match=r"alpha must be (a number|> 0 and finite), got"):
        partition(LABELS, 4, "dirichlet", alpha=alpha)


@pytest.mark.parametrize("spw", [2.5, True, "2", float("nan")])
def test_shards_per_worker_must_be_an_integer(spw: object) -> None:
    # 2.5 was truncated to 2 and True taken for 1, silently
    with pytest.raises(ValueError, match="shards_per_worker must be an int, got"):
        partition(LABELS, 4, "shards", shards_per_worker=spw)


def test_more_shards_than_samples_is_refused_without_allocating_them() -> None:
    # 10**15 shards per worker was a MemoryError from np.array_split
    for spw in (51, 10**15):
        with pytest.raises(ValueError, match=r"cannot cut 200 samples into n x shards_per_worker"):
            partition(LABELS, 4, "shards", shards_per_worker=spw)
    assert len(partition(LABELS, 4, "shards", shards_per_worker=50)) == 4  # one sample a shard


@pytest.mark.parametrize("gamma", [True, "0.5"])
def test_gamma_must_be_a_number(gamma: object) -> None:
    with pytest.raises(ValueError, match="gamma must be a number, got"):
        partition(LABELS, 4, "gamma", gamma=gamma)


@pytest.mark.parametrize("n", [True, 2.0, 2.5, "3", None])
def test_worker_count_must_be_an_integer(n: object) -> None:
    # n=True and n=2.0 were taken for 1 and 2
    with pytest.raises(ValueError, match="n must be an int"):
        partition(LABELS, n, "iid")


@pytest.mark.parametrize("seed", [-1, 1.5, "1", True])
def test_partition_seed_must_be_a_non_negative_integer(seed: object) -> None:
    with pytest.raises(ValueError, match="seed must be an int"):
        partition(LABELS, 4, "iid", seed=seed)


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.array([0.0, 1.5, 2.0]), "integer class ids, got 1.5"),
        (np.array([0.0, np.nan, 2.0]), "integer class ids, got nan"),
        (np.array([0.0, np.inf, 2.0]), "integer class ids, got inf"),
        (np.array([0, -1, 2]), "class ids >= 0, got -1"),
        (np.array(["a", "b", "c"]), "integer class ids, got dtype <U1"),
        (np.zeros((3, 2)), r"one-dimensional, got shape \(3, 2\)"),
    ],
)
def test_labels_must_be_class_ids(labels: np.ndarray, message: str) -> None:
    # NaN and 1.5 were cast to int64 (garbage, and 1) without a word
    for kind in ("iid", "dirichlet", "shards", "gamma"):
        with pytest.raises(ValueError, match=message):
            partition(labels, 1, kind, shards_per_worker=1)


def test_integral_float_labels_are_still_class_ids() -> None:
    as_float = partition(LABELS.astype(np.float32), 4, "dirichlet", alpha=0.3)
    as_int = partition(LABELS, 4, "dirichlet", alpha=0.3)
    assert all(np.array_equal(a, b) for a, b in zip(as_float, as_int, strict=True))


def test_unknown_partition_options_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown partition option 'beta'"):
        partition(LABELS, 4, "iid", beta=1.0)
    # the options of the other kinds are passed by the trainer and ignored
    assert len(partition(LABELS, 4, "iid", alpha=0.1, shards_per_worker=3, gamma=0.2)) == 4


def test_label_histogram_refuses_labels_beyond_num_classes() -> None:
    parts = partition(LABELS, 2)
    with pytest.raises(ValueError, match="label 9 out of range for num_classes=5"):
        label_histogram(LABELS, parts, 5)


# --------------------------------------------------------------------------- names, options


@pytest.mark.parametrize("name", [["digits"], None, 3, "../digits", "/etc/passwd", "digits/.."])
def test_dataset_names_are_only_looked_up(name: object) -> None:
    # an unhashable name was a TypeError, an unknown one a KeyError from loader_options
    for call in (load_dataset, loader_options, loader_types, describe_dataset):
        with pytest.raises(ValueError, match="unknown dataset"):
            call(name)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"seed": -1}, "seed must be an integer in [0, 4294967295], got -1"),
        ({"seed": 1.5}, "seed must be an int, got float 1.5"),
        ({"seed": True}, "seed must be an int, got bool True"),
        ({"seed": 2**32}, "seed must be an integer in [0, 4294967295], got 4294967296"),
        ({"test_fraction": "0.5"}, "test_fraction must be a number, got str '0.5'"),
        ({"test_fraction": 1.0}, "test_fraction must be in (0, 1), got 1.0"),
        ({"test_fraction": 0.001}, "leaves 2 of 1797 images for testing"),
        ({"test_fraction": 0.999}, "leaves 1796 of 1797 images for testing"),
    ],
)
def test_digits_options_are_checked(options: dict, message: str) -> None:
    # seed 1.5 was truncated, '0.5' parsed, and tiny splits failed inside scikit-learn
    with pytest.raises(ValueError, match=re.escape(message)):
        load_digits(**options)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"num_samples": 2, "test_fraction": 0.9}, "leaves no training sample"),
        ({"separation": True}, "separation must be a number, got bool True"),
        ({"separation": float("inf")}, "separation must be >= 0 and finite, got inf"),
        ({"num_classes": 1}, "num_classes must be an integer >= 2, got 1"),
        ({"seed": -1}, "seed must be an integer in [0, 4294967295]"),
        ({"test_fraction": "0.5"}, "test_fraction must be a number"),
    ],
)
def test_synthetic_options_are_checked(options: dict, message: str) -> None:
    # num_samples=2 with test_fraction=0.9 gave an empty training set (NaN statistics)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_synthetic(**options)


def test_root_and_download_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="root must be a directory path, got None"):
        load_dataset("cifar10", root=None)
    with pytest.raises(ValueError, match="download must be true or false, got 'yes'"):
        load_dataset("mnist", root=tmp_path, download="yes")


# --------------------------------------------------------------------------- IDX files


def _idx(arr: np.ndarray, code: int = 0x08) -> bytes:
    types = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    header = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape)
    return header + arr.astype(types[code]).tobytes()


_FILES = {
    "xtr": "train-images-idx3-ubyte",
    "ytr": "train-labels-idx1-ubyte",
    "xte": "t10k-images-idx3-ubyte",
    "yte": "t10k-labels-idx1-ubyte",
}


def _mnist(root: Path, **replace: bytes) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "xtr": rng.integers(0, 256, (6, 28, 28)),
        "ytr": rng.integers(0, 10, 6),
        "xte": rng.integers(0, 256, (3, 28, 28)),
        "yte": rng.integers(0, 10, 3),
    }
    for key, name in _FILES.items():
        (raw / name).write_bytes(replace.get(key, _idx(arrays[key])))
    return raw


def test_idx_in_any_byte_order_and_type_reads_natively(tmp_path: Path) -> None:
    # big-endian int16 labels gave torch's "byte order different from the native" error
    labels = np.array([1, 2, 3, 4, 5, 6])
    _mnist(tmp_path, ytr=_idx(labels, 0x0B))
    data = load_dataset("mnist", root=tmp_path)
    assert data.y_train.tolist() == labels.tolist()
    p = tmp_path / "f"
    p.write_bytes(_idx(np.array([[1.5, -2.0]]), 0x0E))
    arr = read_idx(p)
    assert arr.dtype.isnative and arr.tolist() == [[1.5, -2.0]]


@pytest.mark.parametrize(
    "data, message",
    [
        (bytes([0, 0, 8, 3]) + struct.pack(">I", 0), "IDX header truncated"),
        (bytes([0, 0, 8, 255]) + b"\x01" * 2000, "IDX size mismatch (header 255 dimensions"),
        (bytes([0, 0, 8, 3]) + struct.pack(">III", 2**31, 2**31, 4), "IDX size mismatch"),
        (_idx(np.zeros(5)) + b"\x00\x00", "IDX size mismatch"),
        (_idx(np.zeros(5), 0x0B)[:-1], "IDX size mismatch"),
    ],
    ids=["short-header", "255-dims", "wrapping-size", "trailing-bytes", "odd-bytes"],
)
def test_read_idx_refuses_truncated_and_oversized_files(
    tmp_path: Path, data: bytes, message: str
) -> None:
    # a short header read as zeros, a wrapped size product matched an empty payload
    p = tmp_path / "f"
    p.write_bytes(data)
    with pytest.raises(ValueError, match=re.escape(message)):
        read_idx(p)


def test_corrupt_gzip_is_one_line_naming_the_file(tmp_path: Path) -> None:
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(_idx(np.zeros((2, 28, 28))))[:-5])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: not a valid gzip file"):
        read_idx(p)
    p.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="not a valid gzip file"):
        read_idx(p)


def test_a_file_inflating_beyond_the_limit_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small .gz that inflates without bound (a gzip bomb) is refused once it passes
    MAX_FILE_BYTES, and so is a plain file larger than that (was: read whole into memory)."""
    import byzlearn.data.datasets as datasets

    monkeypatch.setattr(datasets, "MAX_FILE_BYTES", 10_000)
    monkeypatch.setattr(datasets, "_CHUNK", 4096)
    inflating = tmp_path / "t10k-images-idx3-ubyte.gz"
    inflating.write_bytes(gzip.compress(b"\0" * 10_001))
    with pytest.raises(ValueError, match=r"larger than 10,000 bytes once gunzipped"):
        read_idx(inflating)
    plain = tmp_path / "t10k-images-idx3-ubyte"
    plain.write_bytes(b"\0" * 10_001)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: larger than 10,000 bytes$"):
        read_idx(plain)
    exact = _idx(np.zeros(10_000 - 8, dtype=np.uint8))  # 10 000 bytes: read
    inflating.write_bytes(gzip.compress(exact))
    assert read_idx(inflating).shape == (10_000 - 8,)


@pytest.mark.parametrize(
    "replace, message",
    [
        ({"xtr": _idx(np.zeros((6, 784)))}, "images must have shape (N, 28, 28), got (6, 784)"),
        ({"xte": _idx(np.zeros((3, 28, 27)))}, "images must have shape (N, 28, 28)"),
        ({"xtr": _idx(np.zeros((0, 28, 28)))}, "images must have shape (N, 28, 28), got (0,"),
        ({"ytr": _idx(np.zeros(5))}, "labels of shape (5,) for 6 images"),
        ({"yte": _idx(np.zeros((3, 2)))}, "labels of shape (3, 2) for 3 images"),
        ({"ytr": _idx(np.array([0, 1, 2, 3, 4, 10]))}, "labels must be integers 0 to 9, got 10"),
        ({"yte": _idx(np.array([0, -1, 2]), 0x09)}, "labels must be integers 0 to 9, got -1"),
        ({"xtr": _idx(np.full((6, 28, 28), np.nan), 0x0D)}, "pixels must be integers 0 to 255"),
        ({"xte": _idx(np.full((3, 28, 28), 300), 0x0B)}, "pixels must be integers 0 to 255"),
        ({"yte": _idx(np.array([0.0, 0.5, 1.0]), 0x0D)}, "labels must be integers 0 to 9, got 0.5"),
    ],
)
def test_mnist_files_with_wrong_contents_are_refused(
    tmp_path: Path, replace: dict[str, bytes], message: str
) -> None:
    # 784-pixel rows were reshaped, label 10 and NaN pixels reached training
    _mnist(tmp_path, **replace)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_dataset("mnist", root=tmp_path)


def test_a_directory_named_like_a_file_is_not_found(tmp_path: Path) -> None:
    raw = _mnist(tmp_path)
    (raw / _FILES["xte"]).unlink()
    (raw / _FILES["xte"]).mkdir()
    with pytest.raises(FileNotFoundError, match="download"):
        load_dataset("mnist", root=tmp_path)


# --------------------------------------------------------------------------- CIFAR batches


class _Payload:
    """What an attacker pickles: unpickling it calls ``os.system``."""

    def __init__(self, mark: Path) -> None:
        self.mark = mark

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.mark}",))


def _batch(**overrides: object) -> dict:
    rng = np.random.default_rng(0)
    batch = {
        b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
        b"labels": [0, 1, 2, 3],
        b"batch_label": b"training batch 1 of 5",
        b"filenames": [b"a.png"] * 4,
    }
    batch.update({k.encode(): v for k, v in overrides.items()})
    return batch


def test_cifar_batches_never_run_code(tmp_path: Path) -> None:
    # read_cifar_batch was pickle.load: this file ran `touch`
    mark = tmp_path / "PWNED"
    p = tmp_path / "test_batch"
    p.write_bytes(pickle.dumps(_batch(extra=_Payload(mark))))
    with pytest.raises(ValueError, match=r"not a CIFAR python batch .*refused global"):
        read_cifar_batch(p)
    assert not mark.exists()
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(_batch(extra=_Payload(mark))))
    with pytest.raises(ValueError, match="refused global"):
        load_dataset("cifar10", root=tmp_path)
    assert not mark.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_of_any_protocol_and_numpy_version_load(
    tmp_path: Path, protocol: int
) -> None:
    batch = _batch()
    blob = pickle.dumps(batch, protocol=protocol)
    # the real files (numpy 1.x, Python 2) name numpy.core, not numpy._core
    blob = blob.replace(b"numpy._core", b"numpy.core") if protocol == 2 else blob
    p = tmp_path / "b"
    p.write_bytes(blob)
    x, y = read_cifar_batch(p)
    assert x.shape == (4, 3, 32, 32) and x.dtype == np.uint8
    assert np.array_equal(x.reshape(4, -1), batch[b"data"]) and y.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "blob, message",
    [
        (b"", "not a CIFAR python batch (EOFError"),
        (b"\x80\x04garbage", "not a CIFAR python batch"),
        (pickle.dumps([1, 2]), "needs a dict with b'data' and b'labels'"),
        (pickle.dumps({b"data": np.zeros((1, 3072))}), "needs a dict"),
        (
            pickle.dumps(_batch(data=np.zeros((4, 3000), np.uint8))),
            "shape (N, 3072), got (4, 3000)",
        ),
        (pickle.dumps(_batch(data=np.full((4, 3072), 300))), "pixels must be integers 0 to 255"),
        (pickle.dumps(_batch(data=np.full((4, 3072), 0.5))), "pixels must be integers 0 to 255"),
        (pickle.dumps(_batch(data=np.full((4, 3072), "a"))), "pixels must be integers, got dtype"),
        (pickle.dumps(_batch(labels=[0, 1, 2])), "4 images but labels of shape (3,)"),
        (pickle.dumps(_batch(labels=[0, 1, 2, -1])), "labels must be integers >= 0, got -1"),
    ],
)
def test_bad_cifar_batches_are_one_line_naming_the_file(
    tmp_path: Path, blob: bytes, message: str
) -> None:
    # these were EOFError, KeyError, TypeError and reshape errors, or uint8 wrap-around (300)
    p = tmp_path / "data_batch_1"
    p.write_bytes(blob)
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        read_cifar_batch(p)
    assert str(p) in str(info.value) and "\n" not in str(info.value)


def test_cifar_labels_beyond_the_classes_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [0, 1, 2, 10] if name == "data_batch_3" else [0, 1, 2, 3]
        (folder / name).write_bytes(pickle.dumps(_batch(labels=labels)))
    with pytest.raises(ValueError, match=r"data_batch_3: labels must be integers 0 to 9, got 10"):
        load_dataset("cifar10", root=tmp_path)
