"""The Triton Gram pass (GPU), run on the CPU by Triton's interpreter where Triton is installed
(Triton is not a dependency: CI skips those; on machines with a GPU test_gpu.py runs the compiled
kernel): the float64 Gram matrix of the centred rows, NaN rows left out, chunks with missing
values redone by the slow path, and the rules on top equal to the CPU kernels' results. (The
interpreter multiplies in float32 whatever tl.dot's precision; "tf32x3" is checked on the GPU,
against float64, by test_gpu.py.)"""

from __future__ import annotations

import ast

import numpy as np
import pytest
import torch

import byzlearn.aggregators as agg
from byzlearn.aggregators import _gram, _gram_cuda
from byzlearn.aggregators._device import accelerator_path
from tests.aggregators import centred_gram, needs_triton, record_results

pytestmark = pytest.mark.usefixtures("triton_interpreter")


@needs_triton
@pytest.mark.parametrize("n", [3, 25, 40])
def test_gram_of_the_centred_rows(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    X = torch.randn(n, 40_000, generator=g) * 2 + 100.0  # far from 0: centring matters
    X[0, :17] = 0.0
    out = _gram_cuda.gram_pass(X, None, 1, _gram.slow_columns(X, None, 1), 1 << 20)
    assert out is not None
    G, bad = out
    assert not bad.any()
    expected = centred_gram(X, X[1], np.zeros(n, dtype=bool))
    scale = np.abs(expected).max()
    np.testing.assert_allclose(G.numpy(), expected, rtol=0, atol=2e-6 * scale)


@needs_triton
@pytest.mark.filterwarnings("ignore:invalid value encountered in matmul")  # the interpreter's
@pytest.mark.filterwarnings("ignore:invalid value encountered in subtract")  # inf - inf: redone
def test_a_given_centre_nan_rows_and_scattered_missing_values() -> None:
    g = torch.Generator().manual_seed(7)
    n, d = 12, 3 * _gram_cuda.CHUNK + 5
    X = torch.randn(n, d, generator=g)
    centre = torch.randn(d, generator=g)
    X[4] = float("nan")  # no finite value: left out before the kernel
    X[7, _gram_cuda.CHUNK + 3] = float("inf")  # one chunk redone by the slow path: row 7 bad
    G, bad = _gram_cuda.gram_pass(X, centre, None, _gram.slow_columns(X, centre, None), 1 << 20)
    assert torch.nonzero(bad).flatten().tolist() == [4, 7]
    good = ~bad
    keep = torch.cat([good, torch.tensor([True])])
    expected = centred_gram(X, centre, bad.numpy())
    np.testing.assert_allclose(
        G[keep][:, keep].numpy(), expected[keep.numpy()][:, keep.numpy()], rtol=1e-5, atol=1e-3
    )


@needs_triton
def test_inputs_it_does_not_take() -> None:
    X = torch.randn(5, 1000)
    redo = _gram.slow_columns(X, None, 0)
    assert _gram_cuda.gram_pass(X.double(), None, 0, redo, 1 << 20) is None  # float64
    assert _gram_cuda.gram_pass(X, None, None, redo, 1 << 20) is None  # no centre chosen
    assert _gram_cuda.gram_pass(torch.randn(128, 100), None, 0, redo, 1 << 20) is None
    X[0] = float("nan")
    assert _gram_cuda.gram_pass(X, None, 0, redo, 1 << 20) is None  # the centre row is empty


def test_the_kernel_source_parses() -> None:
    tree = ast.parse(_gram_cuda._SOURCE)
    assert [f.name for f in tree.body if isinstance(f, ast.FunctionDef)] == ["kernel"]
    assert _gram_cuda.schedule(32) == (4, 4) and _gram_cuda.schedule(128) == (8, 1)


def test_cpu_tensors_keep_the_torch_pass_without_the_interpreter(monkeypatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET")
    X = torch.randn(5, 1000)
    assert _gram_cuda.gram_pass(X, None, 0, _gram.slow_columns(X, None, 0), 1 << 20) is None


def test_column_runs() -> None:
    c = _gram_cuda.CHUNK
    assert _gram_cuda.column_runs([], 10 * c, 4 * c) == []
    assert _gram_cuda.column_runs([0, 1, 2, 5, 9], 9 * c + 7, 2 * c) == [
        (0, 2 * c), (2 * c, 3 * c), (5 * c, 6 * c), (9 * c, 9 * c + 7)
    ]


@needs_triton
@pytest.mark.parametrize("kind", ["honest", "mean10", "one_nan", "nan_rows"])
@pytest.mark.parametrize("rule", ["krum", "multi_krum", "geometric_median", "centered_clipping"])
def test_rules_on_the_triton_pass_equal_the_cpu_kernels(monkeypatch, rule: str, kind: str):
    g = torch.Generator().manual_seed(3)
    X = torch.randn(25, 100_003, generator=g) + 3.0  # over the sampled-centre-row threshold
    if kind == "mean10":
        X[:5] = -10 * X[5:].mean(0)
    elif kind == "one_nan":
        X[3, 70_000] = float("nan")
    elif kind == "nan_rows":
        X[:3] = float("nan")
    cpu = agg.get(rule)(X, f=5)
    calls = record_results(monkeypatch, _gram_cuda, "gram_pass")
    with accelerator_path():
        other = agg.get(rule)(X, f=5)
    assert any(calls)  # the Triton pass ran
    torch.testing.assert_close(other, cpu, rtol=2e-5, atol=2e-5)
