"""The path CUDA tensors take (blocked torch operations), checked on the CPU: inside
``accelerator_path()`` every rule gives the CPU kernels' result on every input kind.

What only a real device shows (a tensor created on the wrong device, a transfer) is left to
``test_gpu.py``, which runs where CUDA is available."""

from __future__ import annotations

import pytest
import torch

import byzlearn.aggregators as agg
from byzlearn.aggregators import _gram_kernel, _gram_small, _sortnet
from byzlearn.aggregators._device import accelerator_path, cpu_kernels
from tests.aggregators import over_path_cases, path_input, result_or_refusal, seeded_options


@over_path_cases
def test_accelerator_path_equals_cpu_kernels(name: str, kind: str, dtype: torch.dtype) -> None:
    X, f = path_input(kind, dtype)
    cpu = result_or_refusal(name, X, f)
    with accelerator_path():
        other = result_or_refusal(name, X, f)
    if isinstance(cpu, str) or isinstance(other, str):
        assert cpu == other
        return
    assert other.dtype == X.dtype and other.shape == cpu.shape
    tol = 1e-9 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(other, cpu, rtol=tol, atol=tol, equal_nan=True)


def test_the_switch_bypasses_every_cpu_kernel(monkeypatch) -> None:
    def tripwire(*args, **kwargs):
        raise AssertionError("a CPU kernel ran")

    for module, attr in [
        (_gram_kernel, "gram_blocks"),
        (_gram_kernel, "centre_block"),
        (_gram_small, "_small_pass"),
        (_sortnet, "plan"),
    ]:
        monkeypatch.setattr(module, attr, tripwire)
    X = torch.randn(25, 3000)
    big = torch.randn(25, 100_000)  # over the small path's size: the general Gram pass
    with accelerator_path():
        assert not cpu_kernels(X.device)
        for name in ["median", "trimmed_mean", "krum", "geometric_median", "signguard"]:
            agg.get(name)(X, f=5, **seeded_options(name))
        agg.krum(big, f=5)
    assert cpu_kernels(X.device)
    for name, data in [("median", X), ("krum", X), ("krum", big)]:
        with pytest.raises(AssertionError, match="a CPU kernel ran"):
            agg.get(name)(data, f=5)


def test_the_switch_is_restored_after_an_error() -> None:
    with pytest.raises(RuntimeError), accelerator_path():
        raise RuntimeError("inside")
    assert cpu_kernels(torch.device("cpu"))
