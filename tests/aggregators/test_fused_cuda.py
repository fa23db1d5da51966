"""The Triton selection kernel (GPU). Its generated source is checked everywhere (every line
translated, valid Python); its results on the CPU by Triton's interpreter where Triton is
installed (Triton is not a dependency: CI skips those; test_gpu.py runs the compiled kernels on a
real device): the CPU kernels' bits for every statistic, drop, row count and dtype, on finite
inputs (no column redone by torch) and on inputs with missing values (the flagged columns
redone)."""

from __future__ import annotations

import ast
import re

import pytest
import torch

from byzlearn.aggregators import _fused_cuda, _select
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


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("n", [3, 7, 10, 16, 25, 26, 33, 50, 64])  # from 26: merged groups
@pytest.mark.parametrize("stat", SELECTION_STATS)
def test_same_bits_as_the_cpu_kernels(monkeypatch, stat: int, n: int, dtype) -> None:
    g = torch.Generator().manual_seed(n * 10 + stat)
    X = (torch.randn(n, 701, generator=g, dtype=torch.float64) * 3 + 1).to(dtype)
    X[:, :40] = X[:, :40].round()  # ties
    X[:, 40:50] = -0.0
    X[n // 2 :, 45:50] = 0.0  # zeros of both signs in one column
    X[0, 50:60] = 1e30 if dtype == torch.float32 else 1e300  # huge values, finite
    forbid_torch_path(monkeypatch)  # finite values: no coordinate is redone (the CPU never uses it)
    for drop in sorted({0, 1, (n - 1) // 3, (n - 1) // 2}):
        if _select.checked_min_k(stat, drop, 1, "t") > n:
            continue
        cpu, other = cpu_and_triton(X, stat, drop)
        assert torch.equal(other, cpu), (stat, n, drop, (other - cpu).abs().max())


@needs_triton
def test_phocas_centre_on_exact_ties(monkeypatch) -> None:
    # Phocas' centre divided, never by the reciprocal (see _select._mean): on a centre halfway
    # between two values the window keeps the smaller, as on the CPU (51 rows: merged groups)
    n = 51
    f, c = tie_case(n)
    X = tied_centre_input(n, 300, c, seed=2).float()
    forbid_torch_path(monkeypatch)
    cpu, other = cpu_and_triton(X, _select.CLOSEST_TO_TRIMMED, f)
    assert torch.equal(other, cpu)
    assert other.double().sub((n * c - (c + 1.5) * f) / (n - f)).abs().max() < 1e-6


@needs_triton
@pytest.mark.parametrize(("n", "drop"), [(15, 10), (8, 5), (7, 4), (30, 20), (60, 40)])
def test_windows_shorter_than_the_trimmed_part_as_bulyan_takes_them(monkeypatch, n, drop):
    # MeaMed with drop > n - drop: Bulyan's second phase (15 rows, drop 10 at n = 25, f = 5)
    g = torch.Generator().manual_seed(n)
    X = torch.randn(n, 701, generator=g) * 3 + 1
    X[:, :300] = X[:, :300].round()  # ties
    X[:, 300:310] = -0.0
    forbid_torch_path(monkeypatch)
    cpu, other = cpu_and_triton(X, _select.CLOSEST_TO_MEDIAN, drop)
    assert torch.equal(other, cpu), (n, drop, (other - cpu).abs().max())


@needs_triton
@pytest.mark.parametrize("n", [25, 50])
@pytest.mark.parametrize("stat", SELECTION_STATS)
def test_missing_values_and_nan_rows(stat: int, n: int) -> None:
    X = with_missing_values(n, 900, stat)
    cpu, other = cpu_and_triton(X, stat, n // 5, min_k=n // 2 - 1)
    torch.testing.assert_close(other, cpu, rtol=0, atol=0, equal_nan=True)


@needs_triton
@pytest.mark.parametrize("n", [10, 40, 80])  # 80: the sorted blocks of _sorted_cuda
def test_too_few_values_raise_the_same_error(n: int) -> None:
    X = torch.randn(n, 40)
    X[: n - 2, 17] = float("nan")
    with pytest.raises(ValueError) as cpu:
        _select.coordinatewise(X, _select.MEDIAN, 2, 5, "median")
    with accelerator_path(), pytest.raises(ValueError) as other:
        _select.coordinatewise(X, _select.MEDIAN, 2, 5, "median")
    assert str(other.value) == str(cpu.value)


@needs_triton
def test_more_than_64_rows_take_the_sorted_blocks() -> None:
    # from 65 rows the generated kernels give way to _sorted_cuda's (test_sorted_cuda.py)
    X = torch.randn(65, 100)
    assert _fused_cuda.MAX_ROWS == 64
    assert _fused_cuda.applies(X, 65, _select.MEDIAN, 0, 1)


def test_cpu_tensors_keep_the_torch_path_without_the_interpreter(monkeypatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not _fused_cuda.applies(torch.randn(5, 100), 5, _select.MEDIAN, 0, 1)


@pytest.mark.parametrize("stat", SELECTION_STATS)
@pytest.mark.parametrize("n", [1, 2, 3, 8, 13, 15, 24, 25, 26, 51, 64])
def test_every_generated_line_is_translated(stat: int, n: int) -> None:
    # every drop up to 25 rows; beyond (the merged groups), the drops of each kind of window
    drops = range(n) if n <= 25 else sorted({0, 1, n // 5, n // 3, (n - 1) // 2, n - 2})
    for drop in drops:
        if _select.checked_min_k(stat, drop, 1, "t") > n:
            continue
        source, constants = _fused_cuda._source(n, stat, drop, n % 2 == 0)
        tree = ast.parse(source)  # valid Python
        assert [f.name for f in tree.body if isinstance(f, ast.FunctionDef)] == ["kernel"]
        # no call of the numba kernels' helpers is left (tl.where, tl.minimum, ... instead), and
        # no numba indexing of X or out (tl.load, tl.store)
        leftover = re.findall(
            r"(?<![\w.])(?:pick|lo|hi|abs|np\.\w+)\(|= True|\b(?:X|out)\[|\bi\d+\b", source
        )
        assert not leftover, (leftover, n, stat, drop)
        for k, value in enumerate(constants):
            assert f"c{k} = tl.load(consts + {k})" in source
            assert float(torch.tensor(value, dtype=torch.float32)) != value


def test_the_kernel_names_its_inexact_constants() -> None:
    source, constants = _fused_cuda._source(15, _select.TRIMMED, 5, True)
    assert constants == [0.2]  # 1/5, which float32 cannot hold; 0.5 and 2.0 stay literals
    assert "acc * c0" in source and "tl.load(consts + 0)" in source
