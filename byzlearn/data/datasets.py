"""Datasets held in memory as tensors.

Every loader returns an :class:`ArrayDataset`: float32 features (``(N, C, H, W)`` for images,
``(N, d)`` for vectors), int64 labels, and a train/test split; every loader takes
``standardise``: ``channel`` (default: per channel for images, per feature for vectors),
``feature`` (per pixel) or ``none``. Unknown options are errors.

- ``digits``: scikit-learn's bundled 8x8 digits (1797 images, no download), scaled to [0, 1] then
  standardised; a stratified split under the run's seed (``test_fraction`` 0.2 by default).
- ``synthetic``: a Gaussian-mixture classification problem generated from a seed (for tests).
- ``mnist``, ``fashion_mnist``: the standard IDX files (``*-ubyte`` or ``*-ubyte.gz``), read with
  numpy; no torchvision needed unless ``download=True``.
- ``cifar10``, ``cifar100``: the standard "python version" pickle batches, read with numpy.

Files are looked up in ``root``, ``root/<Name>/raw`` (torchvision's layout) and ``root/<name>``.
"""

from __future__ import annotations

import gzip
import inspect
import math
import numbers
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "ArrayDataset",
    "describe_dataset",
    "load_dataset",
    "loader_options",
    "names",
    "read_cifar_batch",
    "read_idx",
]


@dataclass
class ArrayDataset:
    """A dataset held in memory: train and test tensors plus metadata."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input (without the batch dimension)."""
        return tuple(self.x_train.shape[1:])

    def __post_init__(self) -> None:
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise ValueError("features and labels must have the same length")


#: how loaders standardise inputs with the training set's statistics
STANDARDISE = ("channel", "feature", "none")


def _standardise(
    x_train: np.ndarray, x_test: np.ndarray, how: str = "channel"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardise with train statistics: per ``channel`` (images; per feature for vectors),
    per ``feature`` (every pixel of every channel on its own), or ``none``."""
    if how not in STANDARDISE:
        raise ValueError(f"standardise must be one of {', '.join(STANDARDISE)}, got {how!r}")
    if how == "none":
        mean, std = np.zeros(1, np.float32), np.ones(1, np.float32)
    else:
        axes = (0, 2, 3) if x_train.ndim == 4 and how == "channel" else (0,)
        mean = x_train.mean(axis=axes, keepdims=True)
        std = x_train.std(axis=axes, keepdims=True) + 1e-6
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray((a - mean) / std, dtype=np.float32))  # noqa: E731
    return as_t(x_train), as_t(x_test)


def _make(
    name: str, xtr, ytr, xte, yte, num_classes: int, standardise: str = "channel"
) -> ArrayDataset:
    x_train, x_test = _standardise(xtr.astype(np.float32), xte.astype(np.float32), standardise)
    return ArrayDataset(
        name,
        x_train,
        torch.as_tensor(np.array(ytr), dtype=torch.long),
        x_test,
        torch.as_tensor(np.array(yte), dtype=torch.long),
        num_classes,
    )


# --------------------------------------------------------------------------- digits / synthetic


def load_digits(
    seed: int = 0, test_fraction: float = 0.2, standardise: str = "channel"
) -> ArrayDataset:
    """scikit-learn's 8x8 digits as ``(N, 1, 8, 8)`` images, 10 classes; a stratified split
    with ``test_fraction`` of the images for testing, drawn under ``seed`` (a run's seed unless
    ``dataset.options`` fixes it); ``standardise``: ``channel`` (one mean and deviation for all
    pixels), ``feature`` (per pixel) or ``none`` (pixels in [0, 1])."""
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    if not 0 < float(test_fraction) < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    bunch = _load()
    x = (bunch.data / 16.0).reshape(-1, 1, 8, 8)
    xtr, xte, ytr, yte = train_test_split(
        x,
        bunch.target,
        test_size=float(test_fraction),
        random_state=int(seed),
        stratify=bunch.target,
    )
    return _make("digits", xtr, ytr, xte, yte, 10, standardise)


def load_synthetic(
    seed: int = 0,
    num_samples: int = 2000,
    num_features: int = 20,
    num_classes: int = 4,
    separation: float = 2.0,
    test_fraction: float = 0.2,
    standardise: str = "channel",
) -> ArrayDataset:
    """Gaussian mixture: class centres ~ N(0, separation^2 I), samples = centre + N(0, I)."""
    if not 0 < float(test_fraction) < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    for option, value, low in (
        ("num_samples", num_samples, 2), ("num_features", num_features, 1),
        ("num_classes", num_classes, 2),
    ):  # fmt: skip
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(f"{option} must be an integer >= {low}, got {value!r}")
    if not (isinstance(separation, (int, float)) and math.isfinite(separation) and separation >= 0):
        raise ValueError(f"separation must be a finite number >= 0, got {separation!r}")
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, separation, size=(num_classes, num_features))
    y = rng.integers(0, num_classes, size=num_samples)
    x = centres[y] + rng.normal(size=(num_samples, num_features))
    n_test = max(1, round(num_samples * test_fraction))
    return _make(
        "synthetic", x[n_test:], y[n_test:], x[:n_test], y[:n_test], num_classes, standardise
    )


# --------------------------------------------------------------------------- file formats


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (MNIST format, optionally gzipped) into a numpy array."""
    with _open(Path(path)) as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX type code {data[2]:#x}")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: IDX size mismatch (header {shape}, {arr.size} values)")
    return arr.reshape(shape)


def read_cifar_batch(path: str | Path, label_key: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR "python version" pickle batch: ``(N, 3, 32, 32)`` uint8 images and labels."""
    with open(path, "rb") as fh:
        batch = pickle.load(fh, encoding="bytes")
    data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return data, np.asarray(batch[label_key.encode()], dtype=np.int64)


def _find(root: Path, candidates: list[str], subdirs: list[str]) -> Path:
    for sub in ["", *subdirs]:
        for cand in candidates:
            for suffix in ("", ".gz"):
                p = root / sub / (cand + suffix)
                if p.exists():
                    return p
    raise FileNotFoundError(
        f"none of {candidates} found under {root} (looked in {['.', *subdirs]}); "
        "download the dataset there or set download=True (dataset.download: true in a config; "
        "needs the 'vision' extra)"
    )


def _download(tv_name: str, root: Path) -> None:
    try:
        import torchvision.datasets as tvd
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "download=True needs torchvision: pip install 'byzlearn[vision]' "
            "(or place the dataset files under root yourself)"
        ) from exc
    cls = getattr(tvd, tv_name)
    for train in (True, False):
        cls(str(root), train=train, download=True)


def _idx_loader(name: str, tv_name: str) -> Callable[..., ArrayDataset]:
    def load(
        root: str | Path = "data",
        download: bool = False,
        standardise: str = "channel",
        seed: int = 0,
    ) -> ArrayDataset:
        rootp = Path(root).expanduser()
        subdirs = [f"{tv_name}/raw", tv_name, name]
        files = {
            "xtr": ["train-images-idx3-ubyte", "train-images.idx3-ubyte"],
            "ytr": ["train-labels-idx1-ubyte", "train-labels.idx1-ubyte"],
            "xte": ["t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"],
            "yte": ["t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"],
        }
        try:
            paths = {k: _find(rootp, v, subdirs) for k, v in files.items()}
        except FileNotFoundError:
            if not download:
                raise
            _download(tv_name, rootp)
            paths = {k: _find(rootp, v, subdirs) for k, v in files.items()}
        arr = {k: read_idx(p) for k, p in paths.items()}
        xtr = arr["xtr"].reshape(-1, 1, 28, 28) / 255.0
        xte = arr["xte"].reshape(-1, 1, 28, 28) / 255.0
        return _make(name, xtr, arr["ytr"], xte, arr["yte"], 10, standardise)

    load.__doc__ = f"{tv_name} from its IDX files under ``root`` (28x28 grey, 10 classes)."
    return load


def _cifar_loader(
    name: str, tv_name: str, folder: str, classes: int
) -> Callable[..., ArrayDataset]:
    train_files = ["train"] if classes == 100 else [f"data_batch_{i}" for i in range(1, 6)]
    test_file = "test" if classes == 100 else "test_batch"
    label_key = "fine_labels" if classes == 100 else "labels"

    def load(
        root: str | Path = "data",
        download: bool = False,
        standardise: str = "channel",
        seed: int = 0,
    ) -> ArrayDataset:
        rootp = Path(root).expanduser()
        base = rootp / folder if (rootp / folder).is_dir() else rootp
        if not (base / test_file).exists():
            if not download:
                raise FileNotFoundError(
                    f"{name}: {folder}/{test_file} not found under {rootp}; download the python "
                    "version there or set download=True (dataset.download: true in a config; "
                    "needs the 'vision' extra)"
                )
            _download(tv_name, rootp)
            base = rootp / folder
        parts = [read_cifar_batch(base / f, label_key) for f in train_files]
        xtr = np.concatenate([p[0] for p in parts]) / 255.0
        ytr = np.concatenate([p[1] for p in parts])
        xte, yte = read_cifar_batch(base / test_file, label_key)
        return _make(name, xtr, ytr, xte / 255.0, yte, classes, standardise)

    load.__doc__ = f"{tv_name} from its python pickle batches under ``root`` ({classes} classes)."
    return load


_LOADERS: dict[str, Callable[..., ArrayDataset]] = {
    "digits": load_digits,
    "synthetic": load_synthetic,
    "mnist": _idx_loader("mnist", "MNIST"),
    "fashion_mnist": _idx_loader("fashion_mnist", "FashionMNIST"),
    "cifar10": _cifar_loader("cifar10", "CIFAR10", "cifar-10-batches-py", 10),
    "cifar100": _cifar_loader("cifar100", "CIFAR100", "cifar-100-python", 100),
}


def names() -> list[str]:
    """Names of the known datasets."""
    return sorted(_LOADERS)


# (input shape, classes) of the datasets read from files, known without reading them
_SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "digits": ((1, 8, 8), 10),
    "mnist": ((1, 28, 28), 10),
    "fashion_mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
}


def loader_options(name: str) -> tuple[str, ...]:
    """The options a config may give a dataset's loader (``dataset.options``)."""
    loader = _LOADERS[name]
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = inspect.signature(loader).parameters.values()
    hidden = (
        ("root", "download", "seed")
        if name not in ("digits", "synthetic")
        else ("root", "download")
    )
    return tuple(p.name for p in params if p.kind in named and p.name not in hidden)


def loader_types(name: str) -> dict[str, object]:
    """The declared types of a dataset loader's parameters (``int``, ``float``, ``str``,
    ``bool``, ...), from its signature: a config's ``dataset.options`` must have them."""
    import typing

    return typing.get_type_hints(_LOADERS[name])


def describe_dataset(name: str, **options: object) -> tuple[tuple[int, ...], int]:
    """``(input_shape, num_classes)`` of a dataset without reading its files (the synthetic
    one is generated, which also checks its options' values)."""
    how = options.get("standardise", "channel")
    if how not in STANDARDISE:
        raise ValueError(f"standardise must be one of {', '.join(STANDARDISE)}, got {how!r}")
    fraction = options.get("test_fraction", 0.2)
    if not isinstance(fraction, (int, float)) or not 0 < float(fraction) < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {fraction!r}")
    if name in _SHAPES:
        return _SHAPES[name]
    data = load_dataset(name, **options)
    return data.input_shape, data.num_classes


def load_dataset(name: str, **options: object) -> ArrayDataset:
    """Load a dataset by name; options go to the loader (``root``, ``download``, ``seed``, ...)."""
    try:
        loader = _LOADERS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(names())}") from None
    accepted = inspect.signature(loader).parameters
    for where in ("root", "download"):  # the bundled and generated data have no files
        if where not in accepted:
            options.pop(where, None)
    return loader(**options)
