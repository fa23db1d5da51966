"""The Triton kernel of sorted blocks (GPU coordinate-wise statistics from 65 to 1024 rows).

Its results on the CPU by Triton's interpreter where Triton is installed (not a dependency: CI
skips those; ``test_gpu.py`` runs the compiled kernel on a device): against the CPU kernels on
finite inputs (no column redone by torch; float32 to the bit, float64 within a few units of
float64 rounding: the sums add the same values in another order), inputs with missing values
and NaN rows (the flagged columns redone), and Bulyan's windows shorter than the trimmed part.
The interpreter runs ``tl.sort`` slowly (about 5 s per program of 128 padded rows), so the
inputs are one or two programs wide."""

from __future__ import annotations

import pytest
import torch

from byzlearn.aggregators import _fused_cuda, _select, _sorted_cuda
from byzlearn.aggregators._device import accelerator_path
from tests.aggregators import (
    SELECTION_STATS,
    cpu_and_triton,
    forbid_torch_path,
    needs_triton,
    tie_case,
    tied_centre_input,
    with_missing_values,
)

pytestmark = pytest.mark.usefixtures("triton_interpreter")


def _inputs(n: int, d: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    X = (torch.randn(n, d, generator=g, dtype=torch.float64) * 3 + 1).to(dtype)
    X[:, : d // 3] = X[:, : d // 3].round()  # ties, and windows with equal distances at both ends
    X[: n // 2, d // 3 : d // 3 + 4] = -0.0  # zeros of both signs in one column
    X[n // 2 :, d // 3 : d // 3 + 4] = 0.0
    return X


def _assert_agree(other: torch.Tensor, cpu: torch.Tensor, stat: int) -> None:
    if other.dtype == torch.float32 or stat == _select.MEDIAN:
        assert torch.equal(other, cpu), (other - cpu).abs().max()
    else:  # the same float64 values summed in another order
        torch.testing.assert_close(other, cpu, rtol=1e-14, atol=1e-14)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("stat", SELECTION_STATS)
def test_the_cpu_kernels_values_at_65_rows(monkeypatch, stat: int, dtype) -> None:
    n = 65
    X = _inputs(n, _sorted_cuda.block_columns(n) + 5, stat, dtype)  # two programs, the last short
    forbid_torch_path(monkeypatch)  # finite values: no coordinate is redone
    drop = 0 if stat == _select.MEAN else 13
    cpu, other = cpu_and_triton(X, stat, drop)
    _assert_agree(other, cpu, stat)


@needs_triton
@pytest.mark.parametrize(
    ("n", "stat", "drop"),
    [
        (100, _select.MEDIAN, 20),
        (100, _select.CLOSEST_TO_TRIMMED, 49),  # the widest trimmed part for 100 rows
        (200, _select.TRIMMED, 40),
        (200, _select.CLOSEST_TO_MEDIAN, 40),
        (120, _select.CLOSEST_TO_MEDIAN, 80),  # Bulyan's second phase at n = 200, f = 40
        (128, _select.CLOSEST_TO_TRIMMED, 1),  # no padding row
    ],
)
def test_the_cpu_kernels_values_beyond(monkeypatch, n: int, stat: int, drop: int) -> None:
    X = _inputs(n, _sorted_cuda.block_columns(n), n + stat, torch.float32)
    forbid_torch_path(monkeypatch)
    cpu, other = cpu_and_triton(X, stat, drop)
    _assert_agree(other, cpu, stat)


@needs_triton
def test_phocas_centre_on_exact_ties(monkeypatch) -> None:
    # Phocas' centre divided, never by the reciprocal (see _select._mean): on a centre halfway
    # between two values the window keeps the smaller, as on the CPU
    n = 100
    f, c = tie_case(n)
    X = tied_centre_input(n, _sorted_cuda.block_columns(n), c, seed=1).float()
    forbid_torch_path(monkeypatch)
    cpu, other = cpu_and_triton(X, _select.CLOSEST_TO_TRIMMED, f)
    assert torch.equal(other, cpu)
    assert other.double().sub((n * c - (c + 1.5) * f) / (n - f)).abs().max() < 1e-6


@needs_triton
@pytest.mark.parametrize("stat", [_select.TRIMMED, _select.CLOSEST_TO_MEDIAN])
def test_missing_values_and_nan_rows(stat: int) -> None:
    n = 100
    X = with_missing_values(n, _sorted_cuda.block_columns(n), stat)
    cpu, other = cpu_and_triton(X, stat, n // 5, min_k=n // 2 - 1)
    torch.testing.assert_close(other, cpu, rtol=0, atol=0, equal_nan=True)


@needs_triton
def test_which_kernel_takes_which_rows() -> None:
    X = torch.randn(3, 100)
    assert _fused_cuda.applies(X, _fused_cuda.MAX_ROWS + 1, _select.MEDIAN, 0, 1)
    assert _fused_cuda.applies(X, _sorted_cuda.MAX_ROWS, _select.MEDIAN, 0, 1)
    assert not _fused_cuda.applies(X, _sorted_cuda.MAX_ROWS + 1, _select.MEDIAN, 0, 1)


def test_the_launch_geometry() -> None:
    assert [_sorted_cuda.padded(n) for n in (2, 3, 64, 65, 128, 129, 1000, 1024)] == [
        2, 4, 64, 128, 128, 256, 1024, 1024
    ]
    for n in (65, 200, 1024):  # the values of one program, a power of two of columns
        bd = _sorted_cuda.block_columns(n)
        assert bd * _sorted_cuda.padded(n) == _sorted_cuda.VALUES_PER_PROGRAM
        assert bd & (bd - 1) == 0
    # the binary search narrows drop + 1 possible starts down to one
    for drop in range(0, 600):
        assert 2 ** _sorted_cuda.search_steps(drop) >= drop + 1


@needs_triton
def test_a_failing_launch_leaves_the_other_kernels_running(monkeypatch) -> None:
    class Broken:
        def __getitem__(self, grid):
            def run(*args, **kwargs):
                raise RuntimeError("no such instruction")

            return run

    monkeypatch.setattr(_sorted_cuda, "FAILED", [])
    monkeypatch.setattr(_sorted_cuda, "kernel", lambda interpret: Broken())
    X = torch.randn(70, 40)
    with pytest.warns(RuntimeWarning, match="no such instruction"):
        cpu, other = cpu_and_triton(X, _select.MEDIAN, 0)
    assert torch.equal(other, cpu)  # the torch path took it
    assert _sorted_cuda.FAILED and not _fused_cuda._FAILED
    forbid_torch_path(monkeypatch)  # up to 64 rows the generated kernels still run
    cpu, other = cpu_and_triton(X[:10], _select.MEDIAN, 0)
    assert torch.equal(other, cpu)


@needs_triton
@pytest.mark.parametrize(("name", "n", "f"), [("phocas", 70, 14), ("bulyan", 200, 40)])
def test_the_rules_through_the_registry(monkeypatch, name: str, n: int, f: int) -> None:
    # the public rules on the GPU's path: Bulyan's second phase takes its 120 selected rows
    import byzlearn.aggregators as agg

    X = _inputs(n, 48, n, torch.float32)
    cpu = agg.get(name)(X, f=f)
    forbid_torch_path(monkeypatch)
    with accelerator_path():
        other = agg.get(name)(X, f=f)
    assert torch.equal(other, cpu)


@needs_triton
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # numpy, interpreting
@pytest.mark.parametrize("stat", [_select.MEAN, _select.TRIMMED])
def test_overflowing_sums_are_redone(monkeypatch, stat: int) -> None:
    # float64 sums beyond the largest double: flagged, then the torch path's scaled mean
    n = 65
    X = _inputs(n, 16, stat, torch.float64)
    X[:20, 5] = 1e308
    X[0, 9] = 1e300  # huge but summable
    drop = 0 if stat == _select.MEAN else 13
    redone = []
    torch_path = _select._torch_path
    monkeypatch.setattr(_select, "_torch_path", lambda X, *a: redone.append(X.shape[1])
                        or torch_path(X, *a))
    cpu, other = cpu_and_triton(X, stat, drop)
    assert redone == [1]  # the one overflowing coordinate
    assert torch.isfinite(other).all()
    torch.testing.assert_close(other, cpu, rtol=1e-14, atol=1e-14)
