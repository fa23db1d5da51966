"""Gradient aggregation rules (GARs) and pre-aggregators, registered by name.

>>> import torch, byzlearn.aggregators as agg
>>> X = torch.randn(25, 1000)
>>> out = agg.get("krum")(X, f=5)            # one (d,) vector
>>> out = agg.get("nnm+trimmed_mean")(X, f=5)  # pre-aggregators compose left to right
>>> agg.selected_indices("multi_krum", X, f=5)  # which inputs a selection rule kept

Every rule is ``rule(vectors, f=0, **options)``; ``vectors`` is an (n, d) tensor (or (n, *shape)),
a sequence of n tensors, or numpy arrays, and the result matches the input kind, dtype, device
and shape. Unknown options raise ``TypeError``; an unmet n/f requirement raises ``ValueError``.

Non-finite values (NaN, +-Inf) are *missing*, never propagated silently:
coordinate-wise rules skip them per coordinate (and raise when a coordinate has too few finite
values); distance-based rules put a row holding one infinitely far from all others, so it is never
selected nor averaged in (and raise when they would have to use it). See ``docs/aggregators.md``.
"""

from byzlearn.aggregators import rules as _rules  # noqa: F401  (registers every rule)
from byzlearn.aggregators._registry import (
    check,
    get,
    is_preaggregator,
    names,
    selected_indices,
    spec,
)

average = get("average")
median = get("median")
trimmed_mean = get("trimmed_mean")
meamed = get("meamed")
phocas = get("phocas")
krum = get("krum")
multi_krum = get("multi_krum")
medoid = get("medoid")
geometric_median = get("geometric_median")
mda = get("mda")
bulyan = get("bulyan")
centered_clipping = get("centered_clipping")
cge = get("cge")
nnm = get("nnm")
bucketing = get("bucketing")
arc = get("arc")
clipping = get("clipping")
dnc = get("dnc")
signguard = get("signguard")
caf = get("caf")

__all__ = [
    "arc",
    "average",
    "bucketing",
    "bulyan",
    "caf",
    "centered_clipping",
    "cge",
    "check",
    "clipping",
    "dnc",
    "geometric_median",
    "get",
    "is_preaggregator",
    "krum",
    "mda",
    "meamed",
    "median",
    "medoid",
    "multi_krum",
    "names",
    "nnm",
    "phocas",
    "selected_indices",
    "signguard",
    "spec",
    "trimmed_mean",
]
