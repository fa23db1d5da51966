"""Which code path a tensor takes: the CPU kernels, or the blocked torch path of other devices.

On the CPU the rules run compiled kernels (numba, numpy, BLAS) on the tensors' memory; on any
other device (CUDA) they run blocked torch operations on the device and bring only n x n
matrices back. :func:`cpu_kernels` is the one test every module asks (:func:`kernel_input`
with the kernels' dtypes).

:func:`accelerator_path` sends CPU tensors down the other devices' path inside a ``with``
block, so that the tests check that path on machines without a GPU (every rule's output against
the CPU kernels' one: ``tests/aggregators/test_accelerator_path.py``). What it cannot check is
what only a real device shows (tensors created on the wrong device, transfers); the CUDA tests
(``tests/aggregators/test_gpu.py``) are for that.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

_FORCED = threading.local()
# The dtypes the compiled kernels take; others go through torch on every device.
KERNEL_DTYPES = (torch.float32, torch.float64)


def cpu_kernels(device: torch.device) -> bool:
    """Whether tensors on ``device`` take the CPU kernels (else the blocked torch path)."""
    return device.type == "cpu" and not getattr(_FORCED, "on", False)


def kernel_input(X: torch.Tensor) -> bool:
    """Whether ``X`` takes the CPU kernels: on the CPU path, in float32 or float64."""
    return cpu_kernels(X.device) and X.dtype in KERNEL_DTYPES


@contextlib.contextmanager
def accelerator_path() -> Iterator[None]:
    """Inside the block (in this thread), CPU tensors take the path of other devices."""
    before = getattr(_FORCED, "on", False)
    _FORCED.on = True
    try:
        yield
    finally:
        _FORCED.on = before
