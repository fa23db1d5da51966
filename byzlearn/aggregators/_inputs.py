"""Input normalisation shared by every rule: many input kinds in, one (n, d) tensor inside.

A rule accepts an ``(n, d)`` tensor, an ``(n, *shape)`` tensor, a sequence of ``n`` tensors of one
shape, or the numpy equivalents. Internally it works on an ``(n, d)`` torch view (no copy when the
input already is one) and the result is given back in the caller's kind, dtype, device and shape.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

Vectors = torch.Tensor | np.ndarray | Sequence[torch.Tensor] | Sequence[np.ndarray]


@dataclass(frozen=True)
class InputKind:
    """How to give a result back in the form the caller used."""

    as_numpy: bool
    shape: tuple[int, ...]  # shape of one input vector: (d,), (c, h, w), ...
    dtype: torch.dtype  # floating dtype the caller gets back

    def vector(self, out: torch.Tensor) -> torch.Tensor | np.ndarray:
        """Restore one aggregated vector (d,) to the caller's kind, dtype and shape."""
        out = out.to(self.dtype).reshape(self.shape)
        return out.numpy() if self.as_numpy else out

    def matrix(self, out: torch.Tensor) -> torch.Tensor | np.ndarray:
        """Restore a stack of vectors (m, d) to the caller's kind, dtype and shape."""
        out = out.to(self.dtype).reshape((out.shape[0], *self.shape))
        return out.numpy() if self.as_numpy else out


def as_matrix(vectors: Vectors, name: str) -> tuple[torch.Tensor, InputKind]:
    """Return ``vectors`` as an (n, d) floating tensor (a view when possible) and its input kind.

    Raises ``TypeError`` for unsupported kinds and ``ValueError`` for empty or ragged input.
    """
    as_numpy = False
    if isinstance(vectors, torch.Tensor):
        X = vectors
    elif isinstance(vectors, np.ndarray):
        as_numpy = True
        X = torch.from_numpy(np.ascontiguousarray(vectors))
    elif isinstance(vectors, Sequence) and not isinstance(vectors, (str, bytes)):
        if len(vectors) == 0:
            raise ValueError(f"{name}: got an empty sequence of vectors")
        if all(isinstance(v, np.ndarray) for v in vectors):
            as_numpy = True
            shapes = {v.shape for v in vectors}
            if len(shapes) != 1:
                raise ValueError(f"{name}: all vectors must have one shape, got {sorted(shapes)}")
            X = torch.from_numpy(np.stack(vectors))
        elif all(isinstance(v, torch.Tensor) for v in vectors):
            shapes = {tuple(v.shape) for v in vectors}
            if len(shapes) != 1:
                raise ValueError(f"{name}: all vectors must have one shape, got {sorted(shapes)}")
            X = torch.stack([v.detach() for v in vectors if isinstance(v, torch.Tensor)])
        else:
            raise TypeError(f"{name}: a sequence of vectors must hold only tensors or only arrays")
    else:
        raise TypeError(
            f"{name}: vectors must be a tensor, a numpy array or a sequence of them, "
            f"got {type(vectors).__name__}"
        )
    if X.requires_grad:
        X = X.detach()
    if X.dim() < 2:
        raise ValueError(
            f"{name}: expected n stacked vectors of shape (n, d), got shape {tuple(X.shape)}"
        )
    if X.numel() == 0:
        raise ValueError(f"{name}: got no vectors or empty vectors, shape {tuple(X.shape)}")
    if X.is_complex():
        raise TypeError(f"{name}: complex vectors are not supported")
    if not X.is_floating_point():
        X = X.to(torch.get_default_dtype())
    out_dtype = X.dtype
    if X.dtype in (torch.float16, torch.bfloat16):
        X = X.float()  # aggregate low precision in float32, give the result back in its dtype
    kind = InputKind(as_numpy=as_numpy, shape=tuple(X.shape[1:]), dtype=out_dtype)
    return (X if X.dim() == 2 else X.reshape(X.shape[0], -1)), kind


def check_f(f: object, name: str) -> int:
    """Validate the number of Byzantine inputs ``f`` (a non-negative integer)."""
    if isinstance(f, bool) or not isinstance(f, (int, np.integer)):
        raise TypeError(f"{name}: f must be an int, got {type(f).__name__}")
    if f < 0:
        raise ValueError(f"{name}: f must be >= 0, got f={f}")
    return int(f)


def check_requirement(name: str, n: int, f: int, min_n: Callable[[int], int], text: str) -> None:
    """Raise ``ValueError`` naming the rule, its requirement and the values when n is too small."""
    if n < min_n(f):
        raise ValueError(f"{name} needs {text}, got n={n}, f={f}")


def check_options(name: str, allowed: tuple[str, ...], options: dict) -> None:
    """Raise ``TypeError`` naming the first option of ``options`` that ``name`` does not accept."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = ", ".join(allowed) if allowed else "none"
        raise TypeError(
            f"{name}() got an unexpected option {unknown[0]!r} (valid options: {valid})"
        )


def without_grad() -> contextlib.AbstractContextManager:
    """``torch.no_grad()``, or nothing where gradients are off already (a training server
    aggregates inside ``no_grad``; entering it again costs a few us per call, which counts for
    the small models of a training round)."""
    return torch.no_grad() if torch.is_grad_enabled() else contextlib.nullcontext()
