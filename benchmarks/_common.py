"""Helpers shared by the benchmark scripts (imported as ``_common``: the scripts run as
``python benchmarks/<name>.py``, which puts this folder first on the import path)."""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import torch


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low`` (else one line naming the argument)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def channels_last(
    module: torch.nn.Module, x: torch.Tensor
) -> tuple[torch.nn.Module, torch.Tensor] | None:
    """A copy of ``module`` and ``x`` in channels-last memory, for a model with 4-d weights
    (convolutions) on ``(N, C, H, W)`` inputs; ``None`` otherwise."""
    if x.dim() != 4 or not any(p.dim() == 4 for p in module.parameters()):
        return None
    clone = copy.deepcopy(module).to(memory_format=torch.channels_last)
    n, c, h, w = x.shape  # explicit strides: with one channel torch would keep NCHW's
    nhwc = torch.empty_strided((n, c, h, w), (c * h * w, 1, w * c, c), dtype=x.dtype)
    return clone, nhwc.copy_(x)
