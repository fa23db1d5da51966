"""Shared by the aggregator tests."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest
import torch

import byzlearn.aggregators as agg
from byzlearn.aggregators import _select
from byzlearn.aggregators._device import accelerator_path

# The Triton kernels' tests on the CPU: Triton's interpreter runs them where Triton is installed
# (it is not a dependency: CI skips them) and no GPU is (there test_gpu.py runs them compiled).
# Their modules take the ``triton_interpreter`` fixture of this folder's conftest.py.
needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None or torch.cuda.is_available(),
    reason="needs Triton, and no GPU (where one exists test_gpu.py runs the compiled kernels)",
)

# Options that make the randomised rules (fresh draws per call by default) and clipping
# reproducible, so that two code paths or devices must agree on them.
SEEDED = {
    "clipping": {"max_norm": 1.0},
    "bucketing": {"seed": 0},
    "dnc": {"seed": 0},
    "signguard": {"seed": 0},
}


def seeded_options(name: str) -> dict:
    """:data:`SEEDED`'s options for a rule or a composition such as ``bucketing+median``."""
    parts = name.split("+")
    return {**SEEDED.get(parts[0], {}), **SEEDED.get(parts[-1], {})}


# Every rule and the usual compositions, and the input kinds on which two code paths or devices
# must agree (test_accelerator_path.py: the CPU kernels against the other devices' torch path
# on the CPU; test_gpu.py: the CPU against a real CUDA device).
PATH_NAMES = [*agg.names(), "nnm+krum", "nnm+trimmed_mean", "bucketing+median", "clipping+krum"]
PATH_KINDS = ["gaussian", "one_nan", "nan_rows", "mean10", "n50"]


def path_input(kind: str, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """The (n, 4099) CPU input of one of :data:`PATH_KINDS`, and its f."""
    g = torch.Generator().manual_seed(0)
    n, f = (50, 10) if kind == "n50" else (25, 5)
    X = torch.randn(n, 4099, generator=g, dtype=torch.float64) + 3.0
    if kind == "one_nan":
        X[3, 7] = float("nan")
    elif kind == "nan_rows":
        X[:3] = float("nan")
    elif kind == "mean10":  # the demo's attack: f rows at -10 x the honest mean
        X[:f] = -10 * X[f:].mean(0)
    return X.to(dtype), f


def result_or_refusal(name: str, X: torch.Tensor, f: int) -> torch.Tensor | str:
    """The rule's output with :func:`seeded_options`, or the text of the ValueError it raised
    (e.g. bucketing+median on NaN rows: both paths must then refuse alike)."""
    try:
        return agg.get(name)(X, f=f, **seeded_options(name))
    except ValueError as err:
        return f"ValueError: {err}"


def over_path_cases(test: Any) -> Any:
    """Parametrize ``test(name, kind, dtype)`` over :data:`PATH_NAMES`, :data:`PATH_KINDS` and
    float64 / float32."""
    test = pytest.mark.parametrize("name", PATH_NAMES)(test)
    test = pytest.mark.parametrize("kind", PATH_KINDS)(test)
    dtypes = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
    return dtypes(test)


def record_results(monkeypatch: Any, module: Any, attr: str) -> list[bool]:
    """Wrap ``module.attr`` (for the test) so that each call appends whether it returned
    something other than None (e.g. whether a fast path took the input); returns that list."""
    taken: list[bool] = []
    original = getattr(module, attr)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(module, attr, wrapper)
    return taken


def centred_gram(X: torch.Tensor, m: torch.Tensor, bad: np.ndarray | None = None) -> np.ndarray:
    """The float64 Gram matrix of ``[X - m; m]`` (numpy, on the host), the ``bad`` rows zeroed:
    the reference for the Gram passes."""
    A = X.detach().cpu().double().numpy()
    centre = m.detach().cpu().double().numpy()
    aug = np.vstack([A - centre, centre])
    if bad is not None:
        aug[:-1][bad] = 0.0
    return aug @ aug.T


# The selection kernel's statistics, for the Triton kernels' tests (test_fused_cuda.py,
# test_sorted_cuda.py).
SELECTION_STATS = [_select.MEAN, _select.MEDIAN, _select.TRIMMED, _select.CLOSEST_TO_MEDIAN,
                   _select.CLOSEST_TO_TRIMMED]


def cpu_and_triton(X: torch.Tensor, stat: int, drop: int, min_k: int = 1) -> tuple:
    """The statistic of X's columns by the CPU kernels, and by the other devices' path (under
    the ``triton_interpreter`` fixture: the Triton kernels, interpreted)."""
    cpu = _select.coordinatewise(X, stat, drop, min_k, "cpu")
    with accelerator_path():
        other = _select.coordinatewise(X, stat, drop, min_k, "triton")
    return cpu, other


def forbid_torch_path(monkeypatch: Any) -> None:
    """Make the blocked torch path of the selection (the Triton kernels' fallback) fail."""

    def tripwire(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the torch path ran")

    monkeypatch.setattr(_select, "_torch_path", tripwire)


def with_missing_values(n: int, d: int, seed: int) -> torch.Tensor:
    """An (n, d) float32 input with missing values for the Triton kernels' tests (d >= 40): a
    NaN, a run of infinities, a column of five NaN, and a last row that holds no finite value
    (left out before the kernels)."""
    X = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    X[2, 7] = float("nan")
    X[3, d // 9 : d // 3] = float("inf")
    X[:5, d // 2 : d // 2 + 3] = float("nan")
    X[n - 1] = float("nan")
    return X


# Phocas' centre on exact ties (test_coordinatewise, test_fused and the Triton kernels' tests)
_TIE_STEPS = (-1.5, -0.5, 0.0, 0.5, 1.5)  # the columns' values around their centre c


def tie_case(n: int) -> tuple[int, float]:
    """(f, c): a trim f <= n // 4 and a centre c (c and c + every step exact in float32) for
    which c m * (1 / m), m = n - 2f, lies far enough above c in float64 to break the tie
    between c - 1.5 and c + 1.5 (the division gives c, and a tie)."""
    gen = np.random.default_rng(0)
    candidates = [j / 8 for j in range(1, 400)] + gen.standard_normal(20000).tolist()
    for f in range(1, n // 4 + 1):
        m = n - 2 * f
        for c in candidates:
            c = float(np.float32(c))
            if not all(float(np.float32(c + t)) == c + t for t in _TIE_STEPS):
                continue
            low, high, by_reciprocal = c - 1.5, c + 1.5, (c * m) * (1.0 / m)
            if (by_reciprocal - low) > (high - by_reciprocal):
                return f, c
    raise AssertionError(f"no tie case for n = {n}")


def tied_centre_input(n: int, d: int, c: float, seed: int) -> torch.Tensor:
    """(n, d) float64 columns of n // 4 each of c - 1.5, c - 0.5, c + 0.5 and c + 1.5 (the
    rest c), shuffled per column: symmetric, so every f-trimmed mean (f <= n // 4) is exactly c,
    halfway between the two ends, and Phocas' window must break that tie towards the smaller."""
    q = n // 4
    column = torch.tensor(
        [c + t for t in _TIE_STEPS for _ in range(q if t else n - 4 * q)], dtype=torch.float64
    )
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([column[torch.randperm(n, generator=gen)] for _ in range(d)], dim=1)
