"""Helpers shared by the benchmark scripts (imported as ``_common``: the scripts run as
``python benchmarks/<name>.py``, which puts this folder first on the import path)."""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence
from typing import Any

import torch

from byzlearn.argtypes import at_least, check_memory, dimension, non_negative

__all__ = [
    "MAX_THREADS",
    "at_least",
    "channels_last",
    "check_memory",
    "dimension",
    "non_negative",
    "parse_with_quick",
    "refused",
]

# The most torch threads a script takes (as the library's configs: far beyond, torch crashes).
MAX_THREADS = 1024


def refused(err: Exception) -> int:
    """Report an input the library refused (its ``ValueError`` or ``KeyError`` for an unknown
    name) as one ``error:`` line on stderr; returns the exit status 2."""
    message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    print(f"error: {message}", file=sys.stderr)
    return 2


def parse_with_quick(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, **quick: Any
) -> argparse.Namespace:
    """Parse ``argv``; with ``--quick``, the smoke test's ``quick`` values replace the defaults
    of the options not given, so that ``--quick --d 2e4`` runs the smoke test at d = 2e4."""
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**quick)
        args = parser.parse_args(argv)
    return args


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
