"""GPU path: every rule on a CUDA tensor equals the CPU kernels' result, on every input kind of
test_accelerator_path.py (honest, one NaN, NaN rows, the -10 x mean attack, n = 50) in both
dtypes, and at a large d where the blocked passes and the Gram's refinement run. Skipped where
no CUDA device exists; ``benchmarks/cuda_check.sh`` runs these on a GPU machine."""

from __future__ import annotations

import pytest
import torch

import byzlearn.aggregators as agg
from byzlearn.aggregators import _fused_cuda, _gram, _gram_cuda
from tests.aggregators import (
    centred_gram,
    forbid_torch_path,
    over_path_cases,
    path_input,
    record_results,
    result_or_refusal,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@over_path_cases
def test_cuda_matches_cpu(name: str, kind: str, dtype: torch.dtype) -> None:
    X, f = path_input(kind, dtype)
    cpu = result_or_refusal(name, X, f)
    gpu = result_or_refusal(name, X.cuda(), f)
    if isinstance(cpu, str) or isinstance(gpu, str):
        assert gpu == cpu
        return
    assert gpu.device.type == "cuda" and gpu.dtype == X.dtype and gpu.shape == cpu.shape
    tol = 1e-9 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=tol, atol=tol, equal_nan=True)


def test_coordinatewise_large_d_on_cuda():
    X = torch.randn(25, 3_000_001, device="cuda")
    torch.testing.assert_close(agg.median(X, f=5), X.median(dim=0).values, rtol=0, atol=0)


@pytest.mark.parametrize(
    "name",
    ["median", "trimmed_mean", "meamed", "krum", "multi_krum", "geometric_median",
     "centered_clipping", "bucketing+median", "nnm+trimmed_mean"],
)
def test_attacked_large_d_on_cuda(name: str) -> None:
    """25 x 3e6 float32 with 5 rows at -10 x the honest mean (the Gram pass's refinement) and a
    NaN: several column blocks on the GPU, the same result as the CPU kernels."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(25, 3_000_001, generator=g) + 3.0
    X[:5] = -10 * X[5:].mean(0)
    X[7, 11] = float("nan")
    cpu = result_or_refusal(name, X, 5)
    gpu = result_or_refusal(name, X.cuda(), 5)
    assert isinstance(cpu, torch.Tensor) and isinstance(gpu, torch.Tensor)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=2e-5, atol=2e-5)


# from 26 rows the groups merged in registers (64 rows: Triton's interpreter, test_fused_cuda;
# each kernel compiles once, up to 35 s at 64 rows, which the device check's time cannot take)
@pytest.mark.parametrize("n", [25, 50])
@pytest.mark.parametrize("name", ["median", "trimmed_mean", "meamed", "phocas"])
def test_coordinatewise_same_bits_as_the_cpu_kernels(name: str, n: int) -> None:
    """The Triton selection kernel does the CPU kernels' arithmetic (_fused_cuda)."""
    X = torch.randn(n, 1_000_003, generator=torch.Generator().manual_seed(2))
    f = n // 5
    assert torch.equal(agg.get(name)(X.cuda(), f=f).cpu(), agg.get(name)(X, f=f))


# from 65 rows the sorted blocks (_sorted_cuda): float64 sums in another order, so within a unit
# of float32 rounding (equal in almost every coordinate)
@pytest.mark.parametrize("n", [100, 200])
@pytest.mark.parametrize("name", ["median", "trimmed_mean", "meamed", "phocas"])
def test_coordinatewise_many_rows_as_the_cpu_kernels(name: str, n: int) -> None:
    X = torch.randn(n, 300_007, generator=torch.Generator().manual_seed(3))
    f = n // 5
    gpu = agg.get(name)(X.cuda(), f=f).cpu()
    cpu = agg.get(name)(X, f=f)
    if name == "median":
        assert torch.equal(gpu, cpu)
    torch.testing.assert_close(gpu, cpu, rtol=1.2e-7, atol=1e-7)


def test_the_triton_kernels_run(monkeypatch) -> None:
    """On a finite float32 input no coordinate falls back to torch's sort, and the Gram pass is
    the Triton one (where Triton is installed, as with torch's CUDA builds)."""
    if not _fused_cuda.triton_available():
        pytest.skip("Triton is not installed")
    X = torch.randn(25, 1_000_003, device="cuda")
    forbid_torch_path(monkeypatch)
    for name in ["median", "trimmed_mean", "meamed", "phocas", "bulyan"]:
        agg.get(name)(X, f=5)
    for name in ["median", "meamed"]:  # the merged groups: 26 to 64 rows
        agg.get(name)(torch.randn(50, 100_003, device="cuda"), f=10)
    for name in ["median", "phocas", "bulyan"]:  # sorted blocks: 65 to 1024 (selected) rows
        agg.get(name)(torch.randn(200, 100_003, device="cuda"), f=40)
    monkeypatch.undo()
    passes = record_results(monkeypatch, _gram_cuda, "gram_pass")
    agg.krum(X, f=5)
    assert passes and passes[-1]  # the pass over X (the one over the sampled columns may not)


@pytest.mark.parametrize("n", [10, 25, 50, 100])
def test_the_triton_gram_pass_is_as_accurate_as_float32(n: int) -> None:
    """The Triton pass's Gram matrix of the centred rows against float64 on the device, each
    entry within 2e-6 of the norms' product (float32's products summed in float32 over a chunk:
    a few 1e-7: benchmarks/cuda_gram_tuning.py measured 3.2-3.4e-7 at n = 10 to 100 on an H200,
    and 1.0-1.2e-4 for a variant whose tails were lost, which the rules' tests above passed)."""
    if not _fused_cuda.triton_available():
        pytest.skip("Triton is not installed")
    g = torch.Generator(device="cuda").manual_seed(n)
    X = torch.randn(n, 200_003, device="cuda", generator=g) * 3 + 50  # centring matters
    X[: n // 5] = -10 * X[n // 5 :].mean(0)
    centre = n - 1
    out = _gram_cuda.gram_pass(X, None, centre, _gram.slow_columns(X, None, centre), 1 << 28)
    assert out is not None
    G, bad = out
    assert not bad.any()
    exact = torch.from_numpy(centred_gram(X, X[centre]))
    norms = exact.diagonal().clamp_min(exact.diagonal().max() * 1e-12).sqrt()
    error = float(((G.cpu() - exact).abs() / (norms[:, None] * norms[None, :])).max())
    assert error < 2e-6, f"n = {n}: error {error:.2e}"
