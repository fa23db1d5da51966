"""Pre-aggregators that mix inputs: nearest-neighbour mixing (NNM) and bucketing."""

from __future__ import annotations

import math

import torch

from byzlearn.aggregators._gram import Inputs
from byzlearn.aggregators._registry import register


@register(
    "nnm",
    kind="pre",
    min_n=lambda f: 2 * f + 1,
    requirement="n >= 2f + 1",
    out_n=lambda n, o: n,
    guessable=True,
)
def nnm(inputs: Inputs, f: int) -> Inputs:
    r"""Nearest-neighbour mixing: ``y_i = (1/(n - f)) sum_{j in N_i} x_j`` where ``N_i`` holds the
    ``n - f`` inputs closest to ``x_i``, itself included (ties by index).

    Reference: Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by Mixing: A Recipe
    for Optimal Byzantine ML under Heterogeneity", AISTATS 2023 (arXiv 2302.01772). Use as
    ``"nnm+krum"``, ``"nnm+trimmed_mean"``, ... The mixing matrix is applied to the Gram matrix, so
    a following distance-based rule costs no extra pass. A mix that includes an input with
    non-finite values is itself non-finite. Requirement: n >= 2f + 1. Returns n vectors.
    """
    n = inputs.n
    D = inputs.sqdist().clone()
    D.fill_diagonal_(-1.0)  # each input is its own first neighbour
    order = torch.sort(D, dim=1, stable=True).indices[:, : n - f]
    M = torch.zeros(n, n, dtype=torch.float64)
    M.scatter_(1, order, 1.0 / (n - f))
    return inputs.mix(M)


def _bucket_size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"bucketing: bucket_size must be an int, got {type(value).__name__}")
    s = int(value)
    if s < 1:
        raise ValueError(f"bucketing: bucket_size must be >= 1, got {value}")
    return s


def _bucket_count(n: int, options: dict) -> int:
    return math.ceil(n / _bucket_size(options.get("bucket_size", 2)))


@register(
    "bucketing",
    kind="pre",
    min_n=lambda f: 1,
    requirement="n >= 1",
    out_n=_bucket_count,
    needs_gram=False,
)
def bucketing(
    inputs: Inputs,
    f: int,
    *,
    bucket_size: int = 2,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Inputs:
    r"""Bucketing: shuffle the inputs, then average consecutive buckets of ``s = bucket_size``
    (the last bucket may be smaller), giving ``ceil(n / s)`` vectors for the next rule.

    Reference: Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via
    Bucketing", ICLR 2022 (arXiv 2006.09365). The shuffle uses ``generator``, else a generator
    seeded with ``seed``, else torch's global generator (so it is reproducible under
    ``torch.manual_seed``). Each Byzantine input spoils at most one bucket, so the next rule keeps
    the same f; its requirement is checked on ``ceil(n / s)`` vectors. A missing coordinate
    makes that coordinate of its bucket missing.
    """
    s = _bucket_size(bucket_size)
    n = inputs.n
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=generator)
    buckets = math.ceil(n / s)
    M = torch.zeros(buckets, n, dtype=torch.float64)
    for b in range(buckets):
        members = perm[b * s : (b + 1) * s]
        M[b, members] = 1.0 / len(members)
    return inputs.mix(M)
