"""Model files for ``byzlearn neurons``: save and load weights without unpickling code.

A model file holds **weights only**; the architecture is given separately (by name and options,
:func:`build_architecture`) and the weights are checked against it (:func:`load_weights`):

* a PyTorch state dict (``torch.save(model.state_dict(), path)``), read with
  ``torch.load(path, weights_only=True)``: PyTorch's restricted unpickler, which only rebuilds
  tensors and plain containers and refuses any other Python object, so reading the file runs no
  code from it;
* a safetensors file (``.safetensors``, or any file whose header is a safetensors header), read
  with the optional ``safetensors`` package (``pip install 'byzlearn[safetensors]'``), imported
  only when such a file is read or written.

A whole pickled ``nn.Module`` (``torch.save(model, path)``) can only be read through
:func:`load_pickled_module`, which unpickles arbitrary objects and so **runs code from the file**;
the CLI exposes it only behind ``--unsafe-pickle``.

Every problem with a file (missing, a directory, empty, truncated, corrupt, another format,
pickled objects, weights that do not fit the architecture, non-finite weights) raises a
:class:`ModelFileError` whose message is one line naming the file and the problem.
"""

from __future__ import annotations

import math
import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from byzlearn.neurons.train import ACTIVATIONS, make_mlp, strip_crash_dropout

__all__ = [
    "ModelFileError",
    "architectures",
    "build_architecture",
    "load_pickled_module",
    "load_state_dict_file",
    "load_weights",
    "save_state_dict_file",
]


def _reference_names() -> list[str]:
    from byzlearn.models import names

    return [f"models.{n}" for n in names()]


def architectures() -> list[str]:
    """Every name :func:`build_architecture` accepts: ``mlp`` and ``models.<name>`` for the
    reference models of :mod:`byzlearn.models`."""
    return ["mlp", *_reference_names()]


class ModelFileError(ValueError):
    """A model file cannot be used; the message is one line that names the file."""


def _one_line(text: object, limit: int = 200) -> str:
    """``str(text)`` (a message or an exception) on one line, cut to ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --- architectures -------------------------------------------------------------------------
def build_architecture(
    arch: str,
    *,
    in_features: int,
    classes: int,
    hidden: Sequence[int] = (32,),
    activation: str = "sigmoid",
    K: float | None = None,
    input_shape: Sequence[int] | None = None,
) -> nn.Module:
    """The untrained network named ``arch``, to receive the weights of a model file.

    * ``"mlp"``: ``make_mlp([in_features, *hidden, classes], activation, K)``, the network that
      ``byzlearn neurons train`` saves (Linear + activation per hidden layer, linear output;
      crash-dropout is not part of the saved architecture);
    * ``"models.<name>"``: :func:`byzlearn.models.build_model` with ``input_shape`` (default
      ``(in_features,)``) and ``classes``; ``hidden`` is passed to ``models.mlp`` (ReLU), the
      other constructors get their defaults. ``models.cnn`` and ``models.resnet`` build, but
      the fault-tolerance analysis rejects their pooling / normalisation layers.

    Raises ``ValueError`` (one line) for an unknown name or bad options.
    """
    if in_features < 1 or classes < 1:
        raise ValueError(f"in_features and classes must be >= 1, got {in_features}, {classes}")
    hidden = [int(h) for h in hidden]
    if any(h < 1 for h in hidden):
        raise ValueError(f"hidden widths must be >= 1, got {hidden}")
    if arch == "mlp":
        if not hidden:
            raise ValueError("--arch mlp needs at least one hidden layer")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {list(ACTIVATIONS)}")
        if K is not None and not (math.isfinite(K) and K > 0):
            raise ValueError(f"K must be a finite number > 0, got {K}")
        return make_mlp([in_features, *hidden, classes], activation, K=K)
    if arch.startswith("models.") and arch in _reference_names():
        from byzlearn.models import build_model

        name = arch.removeprefix("models.")
        shape = tuple(input_shape) if input_shape else (in_features,)
        options: dict[str, object] = {"hidden": tuple(hidden)} if name == "mlp" else {}
        try:
            return build_model(name, shape, classes, **options)
        except (ValueError, TypeError, RuntimeError) as e:
            raise ValueError(
                f"cannot build {arch} for input shape {shape}: {_one_line(e)}"
            ) from None
    raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(architectures())}")


# --- reading -------------------------------------------------------------------------------
def _check_path(path: Path) -> None:
    if path.is_dir():
        raise ModelFileError(f"{path} is a directory, not a model file")
    if not path.exists():
        raise ModelFileError(f"{path}: no such file")
    if not path.is_file():
        raise ModelFileError(f"{path} is not a regular file")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path} is empty (0 bytes)")


def _looks_like_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with path.open("rb") as fh:
        head = fh.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header
    return len(head) == 9 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise ModelFileError(
            f"{path} is a safetensors file; reading it needs the optional 'safetensors' "
            "package (pip install 'byzlearn[safetensors]')"
        ) from None
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelFileError(
            f"{path} is not a valid safetensors file (truncated or corrupt): {_one_line(e, 120)}"
        ) from None


_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")


def _read_torch(path: Path) -> object:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4" on odd files
            return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        m = _GLOBAL.search(str(e))
        if m:
            raise ModelFileError(
                f"{path} holds pickled Python objects ({m.group(1)}), not only weights; save "
                "model.state_dict() instead (or, for a file you trust, --unsafe-pickle, which "
                "runs code from the file)"
            ) from None
        raise ModelFileError(
            f"{path} is not a PyTorch weights file (corrupt, or another format)"
        ) from None
    except EOFError:
        raise ModelFileError(f"{path} is truncated (unexpected end of file)") from None
    except RuntimeError as e:
        if "zip archive" in str(e) or "PytorchStreamReader" in str(e):
            raise ModelFileError(f"{path} is truncated or corrupt (bad zip archive)") from None
        raise ModelFileError(f"{path} cannot be read: {_one_line(e, 120)}") from None
    except OSError as e:
        raise ModelFileError(f"{path} cannot be read: {e.strerror or _one_line(e)}") from None
    except Exception:  # the restricted unpickler raises KeyError, ValueError, ... on garbage
        raise ModelFileError(
            f"{path} is not a PyTorch weights file (corrupt, or another format)"
        ) from None


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``{name: tensor}`` weights of a model file, read without unpickling any code.

    Accepts a state dict saved with ``torch.save`` (read with ``weights_only=True``), such a
    dict nested under a ``"state_dict"`` key (training checkpoints), or a safetensors file.
    Raises :class:`ModelFileError` (one line naming the file) for anything else.
    """
    path = Path(path)
    _check_path(path)
    obj: object
    obj = _read_safetensors(path) if _looks_like_safetensors(path) else _read_torch(path)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ModelFileError(
            f"{path} holds a {type(obj).__name__}, not a state dict (a mapping of names to "
            "tensors); save model.state_dict()"
        )
    if not obj:
        raise ModelFileError(f"{path} holds an empty state dict")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise ModelFileError(
                f"{path} is not a state dict: key {_one_line(repr(key), 60)} is not a string "
                f"(it is of type {type(key).__name__})"
            )
        if not isinstance(value, torch.Tensor):
            raise ModelFileError(
                f"{path} is not a state dict: entry {key!r} holds a {type(value).__name__}, "
                "not a tensor"
            )
        _check_dense(path, key, value)
        out[key] = value
    return out


def _check_dense(path: Path, key: str, value: torch.Tensor) -> None:
    """Refuse tensors that are not plain dense CPU-readable tensors (sparse, meta, nested)."""
    if getattr(value, "is_nested", False):
        kind = "a nested tensor"
    elif value.layout != torch.strided:
        kind = f"a {str(value.layout).removeprefix('torch.')} tensor"
    elif value.is_meta:
        kind = "a meta tensor (no data)"
    else:
        return
    raise ModelFileError(f"{path}: {key} holds {kind}, expected a dense tensor of weights")


def _shape(t: torch.Tensor) -> str:
    return str(list(t.shape))


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Copy ``state`` into ``model`` after checking that it fits exactly.

    The keys must be those of ``model.state_dict()``, each with the same shape, and every value
    must be finite and floating point; otherwise :class:`ModelFileError` names the first
    differences (missing keys, unexpected keys, shapes) in one line.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    shapes = [
        f"{k} is {_shape(state[k])} in the file, {_shape(v)} in the architecture"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or extra or shapes:
        parts = []
        if shapes:
            parts.append("; ".join(shapes[:3]) + (" ..." if len(shapes) > 3 else ""))
        if missing:
            parts.append("missing " + ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else ""))
        if extra:
            parts.append("unexpected " + ", ".join(extra[:4]) + (" ..." if len(extra) > 4 else ""))
        raise ModelFileError(
            f"{path} does not match the architecture: {'; '.join(parts)} (check --arch, "
            "--hidden, --data/--classes and --input-shape)"
        )
    for k, v in state.items():
        if expected[k].is_floating_point() and not v.is_floating_point():
            raise ModelFileError(f"{path}: {k} holds {v.dtype} values, expected floating point")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ModelFileError(f"{path}: {k} holds non-finite values (NaN or Inf)")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def load_pickled_module(path: str | Path) -> nn.Module:
    """UNSAFE: unpickle a whole ``nn.Module`` saved with ``torch.save(model, path)``.

    Uses ``torch.load(path, weights_only=False)``, which **runs code from the file**: only for
    files you trust. Raises :class:`ModelFileError` (one line) when the file cannot be read or
    holds something else than an ``nn.Module``.
    """
    path = Path(path)
    _check_path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, weights_only=False, map_location="cpu")  # trusted files only
    except EOFError:
        raise ModelFileError(f"{path} is truncated (unexpected end of file)") from None
    except Exception as e:
        raise ModelFileError(f"{path} cannot be unpickled: {_one_line(e, 120)}") from None
    if not isinstance(obj, nn.Module):
        raise ModelFileError(
            f"{path} holds a {type(obj).__name__}, not a pickled nn.Module (a state dict is "
            "read without --unsafe-pickle, with the architecture given by --arch/--hidden)"
        )
    return obj


# --- writing -------------------------------------------------------------------------------
def save_state_dict_file(model: nn.Module, path: str | Path) -> Path:
    """Save the weights of ``model`` (crash-dropout modules stripped) to ``path``.

    A ``.safetensors`` suffix writes a safetensors file (needs the optional ``safetensors``
    package); any other name a PyTorch state dict (``torch.save(state_dict)``). Both are read
    back by :func:`load_state_dict_file` without unpickling code.
    """
    path = Path(path)
    if isinstance(model, nn.Sequential):
        model = strip_crash_dropout(model)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import save_file
        except ImportError:
            raise ModelFileError(
                f"{path}: writing .safetensors needs the optional 'safetensors' package "
                "(pip install 'byzlearn[safetensors]')"
            ) from None
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path
