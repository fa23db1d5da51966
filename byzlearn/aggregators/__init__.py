"""Gradient aggregation rules (GARs) and pre-aggregators, registered by name.

>>> import torch, byzlearn.aggregators as agg
>>> X = torch.randn(25, 1000)
>>> out = agg.get("krum")(X, f=5)            # one (d,) vector
>>> out = agg.get("nnm+trimmed_mean")(X, f=5)  # pre-aggregators compose left to right
>>> res = agg.aggregate("multi_krum", X, f=5)   # output and kept inputs in one call
>>> res.vector.shape, res.kept.shape
(torch.Size([1000]), torch.Size([20]))
>>> p = agg.prepare(X)                        # share one Gram pass between rules
>>> a, b = agg.aggregate("krum", p, f=5), agg.aggregate("geometric_median", p, f=5)

Every rule is ``rule(vectors, f=0, **options)``; ``vectors`` is an (n, d) tensor (or (n, *shape)),
a sequence of n tensors, or numpy arrays, and the result matches the input kind, dtype, device
and shape. Unknown options raise ``TypeError``; an unmet n/f requirement raises ``ValueError``.

Non-finite values (NaN, +-Inf) are *missing*, never propagated silently:
coordinate-wise rules skip them per coordinate (and raise when a coordinate has too few finite
values); distance-based rules impute a row's missing coordinates with the coordinate-wise median
and charge its distances the coordinates' spread, so a row gains nothing by hiding coordinates,
and put a row missing more than ``max_missing`` (default 0.1) of its coordinates infinitely far
from all others, so it is never selected nor averaged in (and raise when they would have to use
it). See ``docs/aggregators.md``.
"""

from byzlearn._jit_cache import serialise_saves as _serialise_jit_saves
from byzlearn.aggregators import rules as _rules  # noqa: F401  (registers every rule)
from byzlearn.aggregators._gram import DEFAULT_MAX_MISSING
from byzlearn.aggregators._registry import (
    AggregationRule,
    Prepared,
    Result,
    accepts,
    aggregate,
    call_options,
    check,
    get,
    is_preaggregator,
    largest_f,
    names,
    prepare,
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
skewed_geometric_median = get("skewed_geometric_median")
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

_serialise_jit_saves()  # before any kernel compiles and saves (see byzlearn._jit_cache)

__all__ = [
    "DEFAULT_MAX_MISSING",
    "AggregationRule",
    "Prepared",
    "Result",
    "accepts",
    "aggregate",
    "arc",
    "average",
    "bucketing",
    "bulyan",
    "caf",
    "call_options",
    "centered_clipping",
    "cge",
    "check",
    "clipping",
    "dnc",
    "geometric_median",
    "get",
    "is_preaggregator",
    "krum",
    "largest_f",
    "mda",
    "meamed",
    "median",
    "medoid",
    "multi_krum",
    "names",
    "nnm",
    "phocas",
    "prepare",
    "selected_indices",
    "signguard",
    "skewed_geometric_median",
    "spec",
    "trimmed_mean",
]
