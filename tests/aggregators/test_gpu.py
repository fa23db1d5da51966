"""GPU path: every rule on a CUDA tensor equals the CPU result (skipped where no GPU exists)."""

from __future__ import annotations

import pytest
import torch

import byzlearn.aggregators as agg
from tests.aggregators import seeded_options

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("name", [*agg.names(), "nnm+krum", "bucketing+median"])
def test_cuda_matches_cpu(name):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(25, 4099, generator=g, dtype=torch.float64)
    X[3, 7] = float("nan")
    options = seeded_options(name)
    cpu = agg.get(name)(X, f=5, **options)
    gpu = agg.get(name)(X.cuda(), f=5, **options)
    assert gpu.device.type == "cuda" and gpu.dtype == X.dtype
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=1e-9, equal_nan=True)


def test_coordinatewise_large_d_on_cuda():
    X = torch.randn(25, 3_000_001, device="cuda")
    torch.testing.assert_close(agg.median(X, f=5), X.median(dim=0).values, rtol=0, atol=0)
