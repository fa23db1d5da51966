"""Dataset loaders: digits, synthetic, and the MNIST / CIFAR file formats on generated files."""

from __future__ import annotations

import gzip
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from byzlearn.data import load_dataset, names, read_cifar_batch, read_idx


def test_names() -> None:
    assert {"digits", "synthetic", "mnist", "fashion_mnist", "cifar10", "cifar100"} <= set(names())
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")


def test_digits_is_bundled_and_standardised() -> None:
    data = load_dataset("digits")
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10
    assert len(data.x_train) + len(data.x_test) == 1797
    assert abs(float(data.x_train.mean())) < 1e-3
    assert set(data.y_test.tolist()) == set(range(10))
    again = load_dataset("digits")
    assert torch.equal(again.x_test, data.x_test)


def test_synthetic_is_seeded() -> None:
    a = load_dataset("synthetic", seed=1, num_samples=200, num_features=5, num_classes=3)
    b = load_dataset("synthetic", seed=1, num_samples=200, num_features=5, num_classes=3)
    c = load_dataset("synthetic", seed=2, num_samples=200, num_features=5, num_classes=3)
    assert a.x_train.shape == (160, 5) and a.num_classes == 3
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)


def _write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_generated_idx_files(tmp_path: Path, gz: bool) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    xtr = rng.integers(0, 256, (30, 28, 28))
    ytr = rng.integers(0, 10, 30)
    xte = rng.integers(0, 256, (10, 28, 28))
    yte = rng.integers(0, 10, 10)
    _write_idx(raw / "train-images-idx3-ubyte", xtr, gz)
    _write_idx(raw / "train-labels-idx1-ubyte", ytr, gz)
    _write_idx(raw / "t10k-images-idx3-ubyte", xte, gz)
    _write_idx(raw / "t10k-labels-idx1-ubyte", yte, gz)
    data = load_dataset("mnist", root=tmp_path)
    assert data.x_train.shape == (30, 1, 28, 28) and data.x_test.shape == (10, 1, 28, 28)
    assert data.y_train.tolist() == ytr.tolist()
    # standardised with train statistics: the pixel order is kept
    flat = data.x_train[0, 0].flatten().numpy()
    assert np.array_equal(
        np.argsort(flat, kind="stable"), np.argsort(xtr[0].flatten(), kind="stable")
    )


def test_missing_files_give_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="download"):
        load_dataset("fashion_mnist", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="download"):
        load_dataset("cifar10", root=tmp_path)


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    p = tmp_path / "x"
    p.write_bytes(b"\x01\x02\x08\x01")
    with pytest.raises(ValueError, match="magic"):
        read_idx(p)
    p.write_bytes(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 5) + b"\x00\x01")
    with pytest.raises(ValueError, match="size mismatch"):
        read_idx(p)


def _cifar_batch(path: Path, n: int, key: bytes, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), key: labels.tolist()}
    path.write_bytes(pickle.dumps(batch))
    return labels


def test_cifar10_from_generated_batches(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    train = [_cifar_batch(folder / f"data_batch_{i}", 4, b"labels", i) for i in range(1, 6)]
    test = _cifar_batch(folder / "test_batch", 3, b"labels", 9)
    data = load_dataset("cifar10", root=tmp_path)
    assert data.x_train.shape == (20, 3, 32, 32) and data.x_test.shape == (3, 3, 32, 32)
    assert data.y_train.tolist() == np.concatenate(train).tolist()
    assert data.y_test.tolist() == test.tolist()
    x, y = read_cifar_batch(folder / "test_batch")
    assert x.dtype == np.uint8 and x.shape == (3, 3, 32, 32) and len(y) == 3


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    ytr = _cifar_batch(folder / "train", 6, b"fine_labels", 1)
    _cifar_batch(folder / "test", 2, b"fine_labels", 2)
    data = load_dataset("cifar100", root=tmp_path)
    assert data.num_classes == 100 and data.y_train.tolist() == ytr.tolist()


def test_digits_split_follows_the_seed_and_the_test_fraction() -> None:
    from byzlearn.data import load_dataset

    a, b, a2 = (load_dataset("digits", seed=s) for s in (0, 1, 0))
    assert torch.equal(a.x_test, a2.x_test) and torch.equal(a.y_test, a2.y_test)
    assert not torch.equal(a.x_test, b.x_test)
    half = load_dataset("digits", seed=0, test_fraction=0.5)
    assert len(half.x_test) in (898, 899) and len(half.x_train) + len(half.x_test) == 1797
    for cls in range(10):  # stratified
        share = float((half.y_test == cls).float().mean())
        assert abs(share - 0.1) < 0.01


def test_standardise_per_channel_per_feature_or_none() -> None:
    from byzlearn.data import load_dataset

    per_channel = load_dataset("digits", standardise="channel").x_train
    assert abs(float(per_channel.mean())) < 1e-5 and abs(float(per_channel.std()) - 1) < 1e-3
    per_pixel = load_dataset("digits", standardise="feature").x_train.reshape(-1, 64)
    varying = per_pixel.std(dim=0) > 1e-3  # two corner pixels are always 0
    assert torch.allclose(per_pixel.mean(dim=0), torch.zeros(64), atol=1e-5)
    assert torch.allclose(per_pixel.std(dim=0)[varying], torch.ones(int(varying.sum())), atol=1e-2)
    raw = load_dataset("digits", standardise="none").x_train
    assert float(raw.min()) == 0.0 and float(raw.max()) == 1.0
    with pytest.raises(ValueError, match="standardise must be one of"):
        load_dataset("digits", standardise="pixel")
    with pytest.raises(TypeError, match="unexpected keyword argument 'foo'"):
        load_dataset("digits", foo=1)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"num_features": 0}, "num_features must be an integer >= 1, got 0"),
        ({"num_classes": 1}, "num_classes must be an integer >= 2, got 1"),
        ({"num_classes": 2.5}, "num_classes must be an int, got float 2.5"),
        ({"num_samples": 1}, "num_samples must be an integer >= 2, got 1"),
        ({"separation": float("nan")}, "separation must be >= 0 and finite, got nan"),
        ({"separation": -1.0}, "separation must be >= 0 and finite, got -1.0"),
    ],
)
def test_synthetic_options_out_of_range_are_refused(options: dict, message: str) -> None:
    from byzlearn.data.datasets import load_synthetic

    with pytest.raises(ValueError, match=re.escape(message)):
        load_synthetic(**options)
