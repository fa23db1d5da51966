"""Sharded aggregation equals the unsharded rule: every sharded rule and some compositions, with
NaN rows and lost coordinates, on k = 1, 2, 3 shards (in-process shards; one test on Ray
actors).

The sharded Gram matrix is the sum of the shards' partial Gram matrices: it differs from the
unsharded one in the last bits (float64 partial sums added in another order). So:

- exact (``torch.equal``, NaN positions included): the coordinate-wise rules (run per shard on
  the same values), and every rule whose output is the mean of selected rows (Krum, Multi-Krum,
  the medoid, MDA, CGE, Bulyan, DnC, after NNM or bucketing too): the same selection, then the
  same per-coordinate sums. No input here sits near a tie, where a selection could flip;
- within float32 rounding (``rtol = 1e-5``, ``atol = 1e-6 max |out|``; measured at d = 1e6,
  n = 10: at most one unit in the last place, relative norm of the difference < 5e-9): the rules
  whose weights are real functions of the Gram matrix or of the norms (geometric median,
  centred clipping, CAF, SignGuard, and rules after ARC or clipping).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import byzlearn.aggregators as agg
from byzlearn.aggregators import sharded

COMPOSED = [
    "nnm+krum",
    "nnm+trimmed_mean",
    "bucketing+median",
    "arc+geometric_median",
    "clipping+multi_krum",
    "nnm+bulyan",
    "bucketing+dnc",
    "nnm+signguard",
    "arc+dnc",
]


#: rules whose output weights are real functions of the Gram matrix (compared within rounding)
WEIGHTED = ("geometric_median", "centered_clipping", "caf", "signguard")


#: rules that must run (not raise) on the inputs of :func:`_inputs` with :func:`_f`
RUN = ("dnc", "signguard", "krum", "geometric_median", "bulyan", "median", "mda")


def _exact(name: str) -> bool:
    parts = name.split("+")
    return parts[-1] not in WEIGHTED and not {"arc", "clipping"} & set(parts[:-1])


def _f(name: str) -> int:
    """f for the inputs of :func:`_inputs` (n = 11, 3 incomplete rows): Bulyan needs
    n >= 4f + 3; DnC and CAF count incomplete rows among the f (f = 3 runs them, f = 2 checks
    their error)."""
    return 1 if "bulyan" in name else 3 if "dnc" in name else 2


def _options(name: str) -> dict:
    return {"max_norm": 3.0} if name.split("+")[0] == "clipping" else {}


def _inputs(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g) + 3.0
    X[n - 1] = -10.0 * X[: n - 3].mean(dim=0)  # an attacker dragging the mean
    X[1] = float("nan")  # a NaN row (bad: over the missing budget)
    X[4, 5] = float("nan")  # lossy rows: a few coordinates missing, imputed
    X[4, d - 3] = float("inf")
    X[6, d // 2 - 4 : d // 2 + 4] = float("nan")  # missing values across a shard boundary
    return X


def _same(
    name: str, X: torch.Tensor, V: sharded.ShardedVectors, f: int, must_fail: bool = False
) -> None:
    """The sharded run gives the unsharded output, kept rows and errors, exactly."""
    opts = _options(name)
    torch.manual_seed(7)  # randomised rules (bucketing) draw the same permutation
    try:
        ref = agg.aggregate(name, X, f=f, **opts)
    except ValueError as err:
        assert must_fail or name not in RUN, f"{name} must run on these inputs: {err}"
        torch.manual_seed(7)
        with pytest.raises(ValueError) as got:
            sharded.aggregate(name, V, f=f, **opts)
        assert str(got.value) == str(err)
        return
    torch.manual_seed(7)
    res = sharded.aggregate(name, V, f=f, **opts)
    out = res.vector()
    assert out.shape == ref.vector.shape and out.dtype == ref.vector.dtype
    assert torch.equal(out.isnan(), ref.vector.isnan()), name
    if _exact(name):
        assert torch.equal(torch.nan_to_num(out), torch.nan_to_num(ref.vector)), name
    else:
        scale = float(torch.nan_to_num(ref.vector).abs().max())
        torch.testing.assert_close(
            torch.nan_to_num(out), torch.nan_to_num(ref.vector), rtol=1e-5, atol=1e-6 * scale
        )
    if ref.kept is None:
        assert res.kept is None
    else:
        assert res.kept is not None and torch.equal(res.kept, ref.kept), name


@pytest.mark.parametrize("k", [1, 2, 3])
def test_every_sharded_rule_equals_the_unsharded_rule(k: int) -> None:
    X = _inputs(11, 3001)
    V = sharded.scatter(X, k, backend="local")
    for name in [*sharded.sharded_names(), *COMPOSED]:
        _same(name, X, V, _f(name))


def test_large_inputs_take_the_sampled_centre_and_the_imputation_pass() -> None:
    # n d >= 2^21: the Gram pass centres on a row chosen on a sample of coordinates gathered
    # from the shards; rows 4 and 6 miss a few coordinates, so the float64 imputation pass
    # runs shard after shard, carrying the rows' missing counts
    X = _inputs(11, 200_003, seed=1)
    V = sharded.scatter(X, 3, backend="local")
    for name in ["krum", "geometric_median", "centered_clipping", "bulyan", "nnm+trimmed_mean",
                 "arc+multi_krum", "caf", "dnc", "signguard"]:
        _same(name, X, V, _f(name))


def test_bulyan_selections_and_input_kinds() -> None:
    X = _inputs(15, 2000, seed=4)
    V = sharded.scatter(X, 3, backend="local")
    for options in ({"selection": "geometric_median"}, {"selection": "mda"},
                    {"variant": "byzantine_momentum"},
                    {"selection": "multi_krum", "selection_options": {"m": 3}}):
        ref = agg.aggregate("bulyan", X, f=2, **options)
        got = sharded.aggregate("bulyan", V, f=2, **options)
        assert torch.equal(got.vector(), ref.vector) and torch.equal(got.kept, ref.kept)
    half = X.half()  # aggregated in float32, given back in float16, as unsharded
    out = sharded.aggregate("median", sharded.scatter(half, 2, "local"), f=2).vector()
    assert out.dtype == torch.float16 and torch.equal(out, agg.median(half, f=2))
    cube = X.numpy().reshape(15, 20, 100)  # numpy in, numpy out, in the vectors' shape
    out = sharded.aggregate("krum", sharded.scatter(cube, 2, "local"), f=2).vector()
    assert isinstance(out, np.ndarray) and np.array_equal(out, agg.krum(cube, f=2))


def test_float64_and_a_given_centre() -> None:
    X = _inputs(9, 2000, seed=2).double()
    V = sharded.scatter(X, 2, backend="local")
    centre = torch.full((2000,), 3.0, dtype=torch.float64)
    ref = agg.aggregate("centered_clipping", X, f=2, center=centre, iterations=3)
    got = sharded.aggregate("centered_clipping", V, f=2, center=centre, iterations=3)
    assert got.vector().dtype == torch.float64
    torch.testing.assert_close(got.vector(), ref.vector, rtol=1e-12, atol=1e-12)
    _same("median", X, V, 2)


def test_too_few_finite_values_is_the_unsharded_error() -> None:
    X = torch.randn(7, 400)
    X[:4, 50] = float("nan")  # coordinate 50 (shard 0) and 350 (shard 1): 3 finite values
    X[:4, 350] = float("nan")
    V = sharded.scatter(X, 2, backend="local")
    for name in ("median", "trimmed_mean", "phocas"):
        with pytest.raises(ValueError, match="coordinate\\(s\\) have fewer than"):
            agg.aggregate(name, X, f=2)
        _same(name, X, V, 2, must_fail=True)


def test_selection_against_a_numpy_krum() -> None:
    # an independent reference: Krum written with loops over the rows
    X = _inputs(11, 1500, seed=3)
    X[4], X[6] = X[0] + 0.5, X[2] - 0.5  # complete rows: the NaN row is the only bad one
    V = sharded.scatter(X, 3, backend="local")
    f = 2
    Xn = X.double().numpy()
    good = [i for i in range(11) if np.isfinite(Xn[i]).sum() == Xn.shape[1]]
    scores = {}
    for i in good:
        dists = sorted(float(((Xn[i] - Xn[j]) ** 2).sum()) for j in good if j != i)
        scores[i] = sum(dists[: 11 - f - 2])
    best = min(scores, key=lambda i: scores[i])
    res = sharded.aggregate("krum", V, f=f)
    assert res.kept is not None and res.kept.tolist() == [best]
    assert torch.equal(res.vector(), X[best])


def test_bad_calls_are_one_clear_error() -> None:
    X = torch.randn(9, 100)
    V = sharded.scatter(X, 2, backend="local")
    with pytest.raises(ValueError, match="distance-based selection"):
        sharded.aggregate("bulyan", sharded.scatter(torch.randn(11, 50), 2, "local"), f=2,
                          selection="median")
    with pytest.raises(TypeError, match="ShardedVectors"):
        sharded.aggregate("krum", X, f=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="krum needs n >= 2f \\+ 3"):
        sharded.aggregate("krum", V, f=4)
    with pytest.raises(TypeError, match="unexpected option"):
        sharded.aggregate("krum", V, f=2, m=3)
    with pytest.raises(ValueError, match="at most one per coordinate"):
        sharded.scatter(torch.randn(5, 3), 4, backend="local")
    with pytest.raises(ValueError, match="backend"):
        sharded.scatter(X, 2, backend="dask")


def _make(j0: int, j1: int) -> torch.Tensor:
    """Shard maker for :meth:`ShardedVectors.generate`: column j of row i is i + j / 1000."""
    cols = torch.arange(j0, j1, dtype=torch.float32) / 1000.0
    return torch.arange(9, dtype=torch.float32)[:, None] + cols[None, :]


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_on_ray_actors(ray_instance) -> None:
    X = _inputs(11, 3001)
    with sharded.scatter(X, 2, backend="ray") as V:
        for name in ("krum", "geometric_median", "median", "bulyan", "nnm+trimmed_mean", "dnc",
                     "signguard"):
            _same(name, X, V, _f(name))
    with sharded.ShardedVectors.generate(9, 5000, 2, _make, backend="ray") as G:
        full = _make(0, 5000)
        assert torch.equal(sharded.aggregate("medoid", G, f=2).vector(), agg.medoid(full, f=2))
