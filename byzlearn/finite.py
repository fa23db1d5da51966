"""A fast test that a tensor holds only finite values.

``torch.isfinite(x).all()`` builds a boolean tensor and reduces it: on CPU about 20x the cost of
one read of ``x`` (0.19 ms for 20 x 4810 float32 values on one thread, against 8 us for
``x.sum()``). A sum is finite only when every term is: a NaN term makes it NaN, an infinite term
makes it infinite or NaN, and a non-finite partial sum never turns finite again, however the
reduction is split. So a finite ``x.sum()`` answers at the cost of one read; only a non-finite
sum (a non-finite entry, or finite entries whose sum overflows) needs the elementwise test.
"""

from __future__ import annotations

import torch

__all__ = ["all_finite"]


def all_finite(x: torch.Tensor) -> bool:
    """``bool(torch.isfinite(x).all())``, the same answer for every tensor, faster when it is
    true (see the module docstring)."""
    if not (x.is_floating_point() or x.is_complex()):
        return True  # integers and booleans are always finite
    try:
        total = x.sum()
    except NotImplementedError:  # no sum for this dtype on this device (float8_e5m2, complex32)
        return bool(torch.isfinite(x).all())
    return bool(torch.isfinite(total)) or bool(torch.isfinite(x).all())
