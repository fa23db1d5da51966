"""Pre-aggregators (nnm, bucketing, arc, clipping) and their compositions, against independent
float64 numpy references (explicit differences, plain loops; no library helpers)."""

from __future__ import annotations

import math
import re
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import byzlearn.aggregators as agg
from tests.aggregators.test_distance_rules import (
    gap_ok,
    make_X,
    ref_bad,
    ref_geometric_median,
    ref_gm_objective,
    ref_krum,
    ref_krum_scores,
    ref_multi_krum,
    ref_sqdist,
)

# --------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------


def ref_nnm_neighbours(X, f) -> list[list[int]]:
    """For each i, the n - f inputs closest to x_i, itself first, ties by index."""
    n = len(X)
    D = ref_sqdist(X)
    out = []
    for i in range(n):
        order = sorted(range(n), key=lambda j: (-1.0 if j == i else D[i, j], j))
        out.append(order[: n - f])
    return out


def ref_nnm(X, f) -> np.ndarray:
    return np.array([X[nb].mean(0) for nb in ref_nnm_neighbours(X, f)])


def ref_norms(X) -> np.ndarray:
    return np.array(
        [math.sqrt(float(np.dot(x, x))) if np.all(np.isfinite(x)) else np.inf for x in X]
    )


def ref_clip(X, c) -> np.ndarray:
    out = X.astype(np.float64).copy()
    for i, x in enumerate(X):
        nrm = ref_norms(X[i : i + 1])[0]
        if np.isfinite(nrm) and nrm > c:
            out[i] = x * (c / nrm)
    return out


def ref_arc_k(n: int, f: int) -> int:
    """ARC's k = floor(2 (f/n) (n - f)), in exact rational arithmetic."""
    return math.floor(Fraction(2 * f * (n - f), n))


def ref_arc(X, f) -> np.ndarray:
    n = len(X)
    k = ref_arc_k(n, f)
    norms = ref_norms(X)
    order = sorted(range(n), key=lambda i: (-norms[i], i))
    out = X.astype(np.float64).copy()
    if k == 0:
        return out
    limit = norms[order[k]]
    for i in order[:k]:
        if np.isfinite(norms[i]) and norms[i] > limit:
            out[i] = X[i] * (limit / norms[i])
    return out


def near_ties_free_nnm(X, f, rel=1e-7) -> bool:
    """Every row's (n - f)-th and (n - f + 1)-th neighbour distances are separated."""
    D = ref_sqdist(X)
    n = len(X)
    if f == 0:
        return True
    for i in range(n):
        d = np.sort(np.delete(D[i], i))
        a, b = d[n - f - 2], d[n - f - 1]
        if np.isfinite(a) and b - a <= rel * b and not b == a == 0:
            return False
    return True


# --------------------------------------------------------------------------------------------
# NNM
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0.0, 1e4, 1e6])
@pytest.mark.parametrize(
    "n,f,d", [(3, 1, 2), (5, 2, 3), (8, 1, 4), (12, 3, 6), (31, 7, 5), (40, 0, 3), (26, 5, 20)]
)
def test_nnm_reference(n, f, d, offset):
    used = 0
    for seed in range(3):
        X = make_X(seed, n, d, offset, dup=1 if n > 4 else 0)
        if not near_ties_free_nnm(X, f):
            continue
        used += 1
        out = agg.nnm(X, f=f)
        assert out.shape == X.shape and out.dtype == X.dtype
        np.testing.assert_allclose(out, ref_nnm(X, f), rtol=1e-12, atol=1e-9 * (1 + offset))
    assert used >= 1


def test_nnm_float32_offset():
    X = make_X(4, 12, 8, 1e4, dtype=np.float32)
    X64 = X.astype(np.float64)
    assert near_ties_free_nnm(X64, 3, 1e-3)
    out = agg.nnm(torch.from_numpy(X), f=3)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), ref_nnm(X64, 3), rtol=1e-6)


def test_nnm_non_finite_mixes():
    """A mix including a non-finite input is non-finite; the others are exact means."""
    for n, f, bad in [(9, 2, [4]), (11, 3, [0, 7]), (3, 1, [2]), (7, 3, [1, 2, 3])]:
        X = make_X(n, n, 4)
        X[bad[0], 1] = np.nan
        for b in bad[1:]:
            X[b] = np.inf
        out = agg.nnm(X, f=f)
        nbs = ref_nnm_neighbours(X, f)
        for i in range(n):
            if set(nbs[i]) & set(bad):
                assert not np.all(np.isfinite(out[i])), (n, f, i)
            else:
                np.testing.assert_allclose(out[i], X[nbs[i]].mean(0), rtol=1e-12)
        for b in bad:  # a bad row's own mix includes itself
            assert not np.all(np.isfinite(out[b]))


def test_nnm_translation_equivariance_and_f0():
    X = make_X(5, 10, 3)
    c = np.array([1e3, -5.0, 7.0])
    np.testing.assert_allclose(agg.nnm(X + c, f=2), agg.nnm(X, f=2) + c, atol=1e-9)
    np.testing.assert_allclose(agg.nnm(X, f=0), np.tile(X.mean(0), (10, 1)), rtol=1e-12)


@given(seed=st.integers(0, 2**31 - 1), f=st.integers(0, 3), extra=st.integers(0, 6))
def test_nnm_permutation_equivariance(seed, f, extra):
    n = 2 * f + 1 + extra
    X = make_X(seed, n, 3)
    assume(near_ties_free_nnm(X, f))
    perm = np.random.default_rng(seed).permutation(n)
    np.testing.assert_allclose(agg.nnm(X[perm], f=f), agg.nnm(X, f=f)[perm], rtol=1e-12, atol=1e-12)


def test_nnm_then_krum():
    for seed in range(5):
        X = make_X(seed, 13, 5)
        f = 3
        if not near_ties_free_nnm(X, f):
            continue
        Y = ref_nnm(X, f)
        if not gap_ok(ref_krum_scores(Y, f), 1, 1e-6):
            continue
        best = ref_krum(Y, f)
        np.testing.assert_allclose(agg.get("nnm+krum")(X, f=f), Y[best], rtol=1e-12)
        assert agg.selected_indices("nnm+krum", X, f=f).tolist() == sorted(
            ref_nnm_neighbours(X, f)[best]
        )


# --------------------------------------------------------------------------------------------
# Bucketing
# --------------------------------------------------------------------------------------------


def buckets_of(n, **kw) -> list[frozenset]:
    """Recover the buckets from bucketing the identity matrix (each row is 1/|b| on its b)."""
    out = agg.bucketing(np.eye(n), f=0, **kw)
    return [frozenset(np.nonzero(row)[0].tolist()) for row in out]


@pytest.mark.parametrize("n,s", [(10, 2), (11, 2), (7, 3), (5, 1), (4, 4), (3, 5), (40, 6)])
def test_bucketing_partition_and_means(n, s):
    X = make_X(n + s, n, 4)
    out = agg.bucketing(X, f=0, bucket_size=s, seed=123)
    assert out.shape == (math.ceil(n / s), 4)
    B = buckets_of(n, bucket_size=s, seed=123)
    assert len(B) == math.ceil(n / s)
    assert sorted(i for b in B for i in b) == list(range(n))  # a partition
    sizes = [len(b) for b in B]
    assert all(z == s for z in sizes[:-1]) and 1 <= sizes[-1] <= s
    for row, b in zip(out, B, strict=True):
        np.testing.assert_allclose(row, X[sorted(b)].mean(0), rtol=1e-12)
    # the shuffle is the documented one: randperm(n) from a generator seeded with the seed
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(123)).tolist()
    assert [frozenset(perm[i : i + s]) for i in range(0, n, s)] == B


def test_bucketing_seed_and_generator():
    n = 20
    assert buckets_of(n, seed=3) == buckets_of(n, seed=3)
    partitions = {tuple(sorted(tuple(sorted(b)) for b in buckets_of(n, seed=k))) for k in range(5)}
    assert len(partitions) > 1
    g = torch.Generator().manual_seed(3)
    assert buckets_of(n, generator=g) == buckets_of(n, seed=3)
    # generator state advances: a second call with the same generator differs
    g = torch.Generator().manual_seed(3)
    first, second = buckets_of(n, generator=g), buckets_of(n, generator=g)
    assert first != second
    # without seed nor generator: torch's global generator
    torch.manual_seed(11)
    a = buckets_of(n)
    torch.manual_seed(11)
    assert buckets_of(n) == a


def test_bucketing_requirement_on_bucket_count():
    X = make_X(0, 8, 3)
    # 8 inputs, buckets of 2 -> 4 vectors: krum with f=1 needs 5
    with pytest.raises(ValueError, match=re.escape("krum needs n >= 2f + 3, got n=4, f=1")):
        agg.get("bucketing+krum")(X, f=1, seed=0)
    with pytest.raises(ValueError, match=re.escape("krum needs n >= 2f + 3, got n=4, f=1")):
        agg.check("bucketing+krum", 8, 1)
    agg.check("bucketing+krum", 10, 1)
    agg.get("bucketing+krum")(make_X(0, 10, 3), f=1, seed=0)
    with pytest.raises(ValueError, match=re.escape("median needs n >= 2f + 1, got n=2, f=1")):
        agg.get("bucketing+median")(X, f=1, bucket_size=4, seed=0)
    agg.get("bucketing+median")(X, f=1, bucket_size=2, seed=0)
    with pytest.raises(ValueError, match="bucket_size"):
        agg.bucketing(X, f=0, bucket_size=0)


@pytest.mark.parametrize("n,s,f", [(10, 2, 1), (11, 3, 1), (31, 2, 6)])
def test_bucketing_then_median(n, s, f):
    X = make_X(7, n, 5, offset=1e3)
    B = buckets_of(n, bucket_size=s, seed=9)
    means = np.array([X[sorted(b)].mean(0) for b in B])
    out = agg.get("bucketing+median")(X, f=f, bucket_size=s, seed=9)
    np.testing.assert_allclose(out, np.median(means, axis=0), rtol=1e-12)


def test_bucketing_missing_coordinate():
    """A missing coordinate makes that coordinate of its bucket missing, nothing else."""
    X = make_X(1, 6, 3)
    X[2, 1] = np.nan
    B = buckets_of(6, bucket_size=2, seed=1)
    out = agg.bucketing(X, f=0, bucket_size=2, seed=1)
    for row, b in zip(out, B, strict=True):
        if 2 in b:
            assert np.isnan(row[1]) and np.all(np.isfinite(row[[0, 2]]))
            np.testing.assert_allclose(row[[0, 2]], X[sorted(b)][:, [0, 2]].mean(0))
        else:
            assert np.all(np.isfinite(row))


# --------------------------------------------------------------------------------------------
# ARC and static clipping
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,f", [(5, 0), (5, 1), (7, 3), (12, 3), (31, 7), (40, 19)])
def test_arc_reference(n, f):
    X = make_X(n * 7 + f, n, 6)
    out = agg.arc(X, f=f)
    np.testing.assert_allclose(out, ref_arc(X, f), rtol=1e-12)
    # norm properties: at most k norms changed, all clipped to the (k+1)-th largest norm
    k = ref_arc_k(n, f)
    norms, new = ref_norms(X), ref_norms(out)
    if k:
        limit = np.sort(norms)[::-1][k]
        assert np.all(new <= limit * (1 + 1e-12))
    assert int(np.sum(np.abs(new - norms) > 1e-12 * norms)) <= k
    if f == 0:
        np.testing.assert_array_equal(out, X)


@pytest.mark.parametrize(("n", "f", "k"), [(121, 66, 60), (150, 105, 63), (242, 33, 57)])
def test_arc_clips_exactly_k_inputs_where_the_float_formula_falls_short(n, f, k):
    # 2 * (f / n) * (n - f) evaluates just below these integers in float64 (56.99999999999999 at
    # n = 242, f = 33): k must be counted in integers (regression: one input fewer was clipped)
    assert ref_arc_k(n, f) == k
    X = make_X(n + f, n, 3)  # distinct norms
    out = agg.arc(X, f=f)
    changed = np.abs(ref_norms(out) - ref_norms(X)) > 1e-12 * ref_norms(X)
    assert int(changed.sum()) == min(k, n - 1)
    np.testing.assert_allclose(out, ref_arc(X, f), rtol=1e-12)


def test_arc_rotation_scaling_and_bad_rows():
    X = make_X(2, 11, 4)
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    np.testing.assert_allclose(agg.arc(X @ Q, f=3), agg.arc(X, f=3) @ Q, atol=1e-12)
    np.testing.assert_allclose(agg.arc(5.0 * X, f=3), 5.0 * agg.arc(X, f=3), rtol=1e-12)
    Y = X.copy()
    Y[4] = np.inf
    Y[6, 0] = np.nan
    out = agg.arc(Y, f=3)
    good = ~ref_bad(Y)
    np.testing.assert_allclose(out[good], ref_arc(Y, 3)[good], rtol=1e-12)
    assert not np.all(np.isfinite(out[4])) and np.isnan(out[6, 0])


@pytest.mark.parametrize("c", [0.1, 1.0, 3.0, 1e6])
def test_clipping_reference(c):
    X = make_X(3, 9, 5, offset=0.5)
    out = agg.clipping(X, f=0, max_norm=c)
    np.testing.assert_allclose(out, ref_clip(X, c), rtol=1e-12)
    norms = ref_norms(out)
    assert np.all(norms <= c * (1 + 1e-12))
    # directions unchanged, rows within the ball unchanged
    cos = (out * X).sum(1) / (norms * ref_norms(X))
    np.testing.assert_allclose(cos, 1.0, rtol=1e-12)
    inside = ref_norms(X) <= c
    np.testing.assert_array_equal(out[inside], X[inside])
    for bad in (0.0, -1.0, np.inf, np.nan):
        with pytest.raises(ValueError, match="max_norm"):
            agg.clipping(X, f=0, max_norm=bad)
    with pytest.raises(TypeError):
        agg.clipping(X, f=0)


def test_clipping_bad_rows_stay_bad():
    X = make_X(3, 6, 3)
    X[1, 2] = np.nan
    X[3] = -np.inf
    out = agg.clipping(X, f=0, max_norm=0.5)
    good = ~ref_bad(X)
    np.testing.assert_allclose(out[good], ref_clip(X, 0.5)[good], rtol=1e-12)
    assert np.isnan(out[1, 2]) and np.all(np.isinf(out[3]))


# --------------------------------------------------------------------------------------------
# Compositions
# --------------------------------------------------------------------------------------------


def test_clipping_then_multi_krum():
    for seed in range(4):
        X = make_X(seed, 11, 4, offset=0.3)
        X[0] *= 50
        Y = ref_clip(X, 1.0)
        scores = ref_krum_scores(Y, 2)
        if not gap_ok(scores, 9, 1e-6):
            continue
        rows = ref_multi_krum(Y, 2)
        out = agg.get("clipping+multi_krum")(X, f=2, max_norm=1.0)
        np.testing.assert_allclose(out, Y[rows].mean(0), rtol=1e-12, atol=1e-14)
        assert agg.selected_indices("clipping+multi_krum", X, f=2, max_norm=1.0).tolist() == rows
        out = agg.get("clipping+multi_krum")(X, f=2, max_norm=1.0, m=3)
        if gap_ok(scores, 3, 1e-6):
            np.testing.assert_allclose(
                out, Y[ref_multi_krum(Y, 2, 3)].mean(0), rtol=1e-12, atol=1e-14
            )


def test_arc_then_geometric_median():
    for n, f in [(9, 2), (15, 4)]:
        X = make_X(n, n, 5)
        X[:f] *= 30
        Y = ref_arc(X, f)
        out = agg.get("arc+geometric_median")(X, f=f)
        ref = ref_geometric_median(Y)
        assert ref_gm_objective(Y, out) == pytest.approx(ref_gm_objective(Y, ref), rel=1e-6)


def test_nnm_then_multi_krum_and_mda_outliers():
    """With f huge outliers (1e30), nnm+krum / nnm+mda stay in the honest range."""
    rng = np.random.default_rng(4)
    n, f = 13, 3
    X = rng.normal(size=(n, 4))
    Y = X.copy()
    Y[[1, 5, 9]] = 1e30
    honest = [i for i in range(n) if i not in (1, 5, 9)]
    lo, hi = X[honest].min(0), X[honest].max(0)
    for name in ("nnm+krum", "nnm+multi_krum", "nnm+mda", "nnm+medoid"):
        out = agg.get(name)(Y, f=f)
        assert np.all(out >= lo - 1e-9) and np.all(out <= hi + 1e-9), name
        sel = agg.selected_indices(name, Y, f=f).tolist()
        assert not set(sel) & {1, 5, 9}, name


def test_composition_errors_and_options():
    X = make_X(0, 9, 3)
    with pytest.raises(ValueError, match="pre-aggregators"):
        agg.get("krum+nnm")
    with pytest.raises(TypeError):
        agg.get("nnm+krum")(X, f=1, bucket_size=2)
    with pytest.raises(TypeError):
        agg.selected_indices("nnm+median", X, f=1)
    with pytest.raises(ValueError, match=re.escape("nnm needs n >= 2f + 1, got n=4, f=2")):
        agg.nnm(X[:4], f=2)
    assert agg.is_preaggregator("nnm") and agg.is_preaggregator("bucketing+nnm")
    assert not agg.is_preaggregator("nnm+krum")


@pytest.mark.parametrize("name", ["nnm", "bucketing", "arc", "clipping"])
def test_preaggregator_kinds_and_no_in_place(name):
    opts = {"clipping": {"max_norm": 0.5}, "bucketing": {"seed": 0}}.get(name, {})
    X = make_X(8, 9, 6).reshape(9, 2, 3)
    X[3, 0, 1] = np.nan
    before = X.copy()
    out = agg.get(name)(X, f=2, **opts)
    np.testing.assert_array_equal(X, before)
    assert isinstance(out, np.ndarray) and out.shape[1:] == (2, 3) and out.dtype == np.float64
    T = torch.from_numpy(X).float()
    Tb = T.clone()
    out = agg.get(name)(T, f=2, **opts)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert out.shape[1:] == (2, 3)
    torch.testing.assert_close(T, Tb, equal_nan=True)


@pytest.mark.parametrize("pre", ["clipping", "arc"])
@pytest.mark.parametrize("rule", ["caf", "geometric_median", "krum", "centered_clipping", "mda"])
def test_scaled_rows_far_from_the_base_centre_keep_their_precision(pre, rule):
    """Inputs around 1000 (float64) scaled to norm 1 by the pre-aggregator lie far from the
    centre of the base Gram pass; the mixed rows' Gram was centred there, and the distances of
    rows 5e-4 apart kept a few digits (clipping+caf 9.4e-5 off, clipping+geometric_median
    4.8e-7, found by a random search). Composed and chained must agree to float64 rounding."""
    n, d, f = 9, 30, 2
    X = 1000.0 + np.random.default_rng(1).normal(size=(n, d))
    X[0] *= 1.5  # arc clips the largest norms
    options = {"max_norm": 1.0} if pre == "clipping" else {}
    chained = agg.get(rule)(agg.get(pre)(X, f=f, **options), f=f)
    composed = agg.get(f"{pre}+{rule}")(X, f=f, **options)
    clipped = np.asarray(agg.get(pre)(X, f=f, **options))
    spread = np.abs(clipped - clipped.mean(0)).max()
    assert np.abs(np.asarray(composed) - np.asarray(chained)).max() < 1e-9 * spread
