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
- ``cifar10``, ``cifar100``: the standard "python version" pickle batches, read with numpy
  through an unpickler that builds plain data and numpy arrays only (no code from a file runs).

A file that is not what its format promises (truncated, corrupt gzip, wrong shapes, pixels
outside 0..255 or not integers, labels outside the classes, as many labels as images) is a
ValueError naming it.

Files are looked up in ``root``, ``root/<Name>/raw`` (torchvision's layout) and ``root/<name>``.
"""

from __future__ import annotations

import gzip
import inspect
import math
import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import torch

from byzlearn.checks import check_int, check_real

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


def _seed(seed: object) -> int:
    """A loader's seed: an integer 0 to 2^32 - 1 (numpy's and scikit-learn's range)."""
    return check_int(seed, "seed", 0, 2**32 - 1, type_error=ValueError)


def _fraction(test_fraction: object) -> float:
    return check_real(
        test_fraction, "test_fraction", 0.0, 1.0, lo_open=True, hi_open=True, type_error=ValueError
    )


def _where(root: object, download: object) -> Path:
    """``root`` as a path (``~`` expanded) after checking ``download`` is a bool."""
    if not isinstance(root, (str, PathLike)):
        raise ValueError(f"root must be a directory path, got {root!r}")
    if not isinstance(download, bool):
        raise ValueError(f"download must be true or false, got {download!r}")
    return Path(root).expanduser()


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

    seed, test_fraction = _seed(seed), _fraction(test_fraction)
    bunch = _load()
    n_test = math.ceil(test_fraction * len(bunch.target))  # as train_test_split rounds
    if min(n_test, len(bunch.target) - n_test) < 10:
        raise ValueError(
            f"test_fraction {test_fraction!r} leaves {n_test} of {len(bunch.target)} images for "
            "testing: the stratified split needs at least 10 (one per class) on each side"
        )
    x = (bunch.data / 16.0).reshape(-1, 1, 8, 8)
    xtr, xte, ytr, yte = train_test_split(
        x,
        bunch.target,
        test_size=test_fraction,
        random_state=seed,
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
    """Gaussian mixture: class centres ~ N(0, separation^2 I), samples = centre + N(0, I);
    the first ``round(num_samples * test_fraction)`` samples (at least one, and at least one
    left for training) are the test set."""
    seed, test_fraction = _seed(seed), _fraction(test_fraction)
    num_samples = check_int(num_samples, "num_samples", 2, type_error=ValueError)
    num_features = check_int(num_features, "num_features", 1, type_error=ValueError)
    num_classes = check_int(num_classes, "num_classes", 2, type_error=ValueError)
    separation = check_real(separation, "separation", 0.0, type_error=ValueError)
    n_test = max(1, round(num_samples * test_fraction))
    if n_test >= num_samples:
        raise ValueError(
            f"test_fraction {test_fraction!r} leaves no training sample out of "
            f"num_samples={num_samples}"
        )
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, separation, size=(num_classes, num_features))
    y = rng.integers(0, num_classes, size=num_samples)
    x = centres[y] + rng.normal(size=(num_samples, num_features))
    return _make(
        "synthetic", x[n_test:], y[n_test:], x[:n_test], y[:n_test], num_classes, standardise
    )


# --------------------------------------------------------------------------- file formats


#: The most bytes a dataset file may hold, gunzipped (EMNIST's largest IDX file: 0.6 GB; a
#: small ``.gz`` that inflates beyond this is refused before it fills the memory)
MAX_FILE_BYTES = 1 << 31
_CHUNK = 1 << 24  # gunzipped bytes read at a time


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped for ``.gz``; a corrupt gzip stream, or a file (gunzipped)
    larger than :data:`MAX_FILE_BYTES`, is a ValueError."""
    too_large = f"{path}: larger than {MAX_FILE_BYTES:,} bytes"
    if path.suffix != ".gz":
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ValueError(too_large)
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as fh:
            parts, size = [], 0
            while chunk := fh.read(min(_CHUNK, MAX_FILE_BYTES + 1 - size)):
                parts.append(chunk)
                size += len(chunk)
                if size > MAX_FILE_BYTES:
                    raise ValueError(f"{too_large} once gunzipped")
            return b"".join(parts)
    except (OSError, EOFError, zlib.error) as exc:
        if not path.is_file():
            raise
        raise ValueError(f"{path}: not a valid gzip file ({exc})") from None


#: IDX type codes and their big-endian numpy types
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (MNIST format, optionally gzipped) into a numpy array (native byte
    order); a bad magic number, type code, truncated header or data size is a ValueError."""
    data = _read_bytes(Path(path))
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    if data[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: unknown IDX type code {data[2]:#x}")
    dtype, ndim = np.dtype(_IDX_TYPES[data[2]]), data[3]
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: IDX header truncated ({ndim} dimensions, {len(data)} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    payload = len(data) - (4 + 4 * ndim)
    if payload != math.prod(shape) * dtype.itemsize:
        header = f"shape {shape}" if ndim <= 4 else f"{ndim} dimensions"
        raise ValueError(
            f"{path}: IDX size mismatch (header {header} of {dtype.itemsize}-byte values, "
            f"{payload} bytes of data)"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3's protocol 2 pickles use it for bytes, latin-1 only."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused encoding {encoding!r}")
    return text.encode("latin1")


# the only globals a CIFAR batch (a dict of bytes, lists and numpy arrays) may name
_ARRAY_GLOBALS: dict[str, object] = {
    "_reconstruct": np.zeros(1).__reduce__()[0],
    "_frombuffer": np.zeros(1).__reduce_ex__(5)[0],
    "scalar": np.int64(0).__reduce__()[0],
    "ndarray": np.ndarray,
    "dtype": np.dtype,
}
_PICKLE_GLOBALS: dict[tuple[str, str], object] = {
    **{
        (module, name): _ARRAY_GLOBALS[name]
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    },
    **{
        (m, "_frombuffer"): _ARRAY_GLOBALS["_frombuffer"]
        for m in ("numpy.core.numeric", "numpy._core.numeric")
    },
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
}


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only: any other global (a function to call, a
    class to build) is refused, so a file from others cannot run code."""

    def find_class(self, module: str, name: str) -> object:
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None


def read_cifar_batch(path: str | Path, label_key: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR "python version" pickle batch: ``(N, 3, 32, 32)`` uint8 images and labels.

    The pickle is read with an unpickler that builds plain data and numpy arrays only (no code
    from the file runs); a file that is not a batch of ``(N, 3072)`` pixels in 0..255 and ``N``
    integer labels is a ValueError naming it."""
    try:
        with open(path, "rb") as fh:
            batch = _BatchUnpickler(fh, encoding="bytes").load()
    except OSError:
        raise
    except Exception as exc:  # whatever the bytes make the unpickler raise: not a batch
        raise ValueError(
            f"{path}: not a CIFAR python batch ({type(exc).__name__}: {exc})"
        ) from None
    key = label_key.encode()
    if not isinstance(batch, dict) or b"data" not in batch or key not in batch:
        raise ValueError(
            f"{path}: not a CIFAR python batch (needs a dict with b'data' and {key!r})"
        )
    data = _integers(path, "pixels", batch[b"data"], 0, 255)
    labels = _integers(path, "labels", batch[key], 0, None)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: CIFAR pixels must have shape (N, 3072), got {data.shape}")
    if labels.shape != (len(data),):
        raise ValueError(
            f"{path}: {len(data)} images but labels of shape {labels.shape} (needs ({len(data)},))"
        )
    return data.astype(np.uint8).reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _integers(
    path: str | Path, what: str, values: object, low: int, high: int | None
) -> np.ndarray:
    """``values`` as a numeric array of integers in ``[low, high]``, else a ValueError."""
    try:
        arr = np.asarray(values)
    except Exception as exc:
        raise ValueError(f"{path}: {what} are not an array ({exc})") from None
    if arr.dtype == bool or arr.dtype.kind not in "uif":
        raise ValueError(f"{path}: {what} must be integers, got dtype {arr.dtype}")
    if arr.size:
        bad = arr < low
        if arr.dtype.kind == "f":
            bad |= ~np.isfinite(arr) | (arr != np.round(arr))
        if high is not None:
            bad |= arr > high
        if bad.any():
            allowed = f"{low} to {high}" if high is not None else f">= {low}"
            raise ValueError(
                f"{path}: {what} must be integers {allowed}, got {arr[bad].flat[0].item()!r}"
            )
    return arr


def _find(root: Path, candidates: list[str], subdirs: list[str]) -> Path:
    for sub in ["", *subdirs]:
        for cand in candidates:
            for suffix in ("", ".gz"):
                p = root / sub / (cand + suffix)
                if p.is_file():
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
        rootp = _where(root, download)
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
        for images, labels in (("xtr", "ytr"), ("xte", "yte")):
            x, y = arr[images], arr[labels]
            if x.ndim != 3 or x.shape[1:] != (28, 28) or len(x) == 0:
                raise ValueError(
                    f"{paths[images]}: images must have shape (N, 28, 28), got {x.shape}"
                )
            _integers(paths[images], "pixels", x, 0, 255)
            if y.shape != (len(x),):
                raise ValueError(
                    f"{paths[labels]}: labels of shape {y.shape} for {len(x)} images "
                    f"(needs ({len(x)},))"
                )
            _integers(paths[labels], "labels", y, 0, 9)
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
        rootp = _where(root, download)
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
        parts = {f: read_cifar_batch(base / f, label_key) for f in [*train_files, test_file]}
        for f, (x, y) in parts.items():
            if len(x) == 0:
                raise ValueError(f"{base / f}: no images")
            _integers(base / f, "labels", y, 0, classes - 1)
        xte, yte = parts.pop(test_file)
        xtr = np.concatenate([p[0] for p in parts.values()]) / 255.0
        ytr = np.concatenate([p[1] for p in parts.values()])
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


def _loader(name: object) -> Callable[..., ArrayDataset]:
    """The loader of a known dataset name; anything else (a path, not a string) is refused."""
    if not isinstance(name, str) or name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(names())}")
    return _LOADERS[name]


def loader_options(name: str) -> tuple[str, ...]:
    """The options a config may give a dataset's loader (``dataset.options``)."""
    loader = _loader(name)
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

    return typing.get_type_hints(_loader(name))


def describe_dataset(name: str, **options: object) -> tuple[tuple[int, ...], int]:
    """``(input_shape, num_classes)`` of a dataset without reading its files (the synthetic
    one is generated, which also checks its options' values)."""
    _loader(name)
    how = options.get("standardise", "channel")
    if how not in STANDARDISE:
        raise ValueError(f"standardise must be one of {', '.join(STANDARDISE)}, got {how!r}")
    _fraction(options.get("test_fraction", 0.2))
    if name in _SHAPES:
        return _SHAPES[name]
    data = load_dataset(name, **options)
    return data.input_shape, data.num_classes


def load_dataset(name: str, **options: object) -> ArrayDataset:
    """Load a dataset by name; options go to the loader (``root``, ``download``, ``seed``, ...)."""
    loader = _loader(name)
    accepted = inspect.signature(loader).parameters
    for where in ("root", "download"):  # the bundled and generated data have no files
        if where not in accepted:
            options.pop(where, None)
    return loader(**options)
