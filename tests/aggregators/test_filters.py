"""Filtering rules (dnc, signguard, caf) against independent float64 numpy references.

The references work on the d coordinates with plain loops (no Gram matrix, no library helper).
They share with the library only what the rules document as their protocol: the way random
coordinates are drawn (``numpy.random.default_rng(seed)``, then per draw Floyd's algorithm on
``rng.integers(0, [d - k, ..., d - 1], endpoint=True)``, sorted; all coordinates when k >= d) and,
for SignGuard, the clustering call
(sklearn's MeanShift with the documented settings). Random inputs whose selections are ambiguous
(near-ties of the reference scores) are skipped by looking at the reference, never at the library.
"""

from __future__ import annotations

import functools
import math
import time

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sklearn.cluster import MeanShift, estimate_bandwidth

import byzlearn.aggregators as agg

RULES = ["dnc", "signguard", "caf"]

# --------------------------------------------------------------------------------------------
# Independent references
# --------------------------------------------------------------------------------------------



# DnC and SignGuard draw fresh coordinates at every call by default; comparisons between calls
# fix them.
SEEDED = {"dnc": {"seed": 0}, "signguard": {"seed": 0}}

def complete_rows(X: np.ndarray) -> list[int]:
    return [i for i in range(len(X)) if all(math.isfinite(float(v)) for v in X[i])]


def ref_coordinates(rng: np.random.Generator, d: int, k: int) -> np.ndarray:
    """The documented draw: k sorted distinct coordinates (Floyd's algorithm with a Python set),
    all of them when k >= d."""
    if k >= d:
        return np.arange(d)
    draws = rng.integers(0, np.arange(d - k, d), endpoint=True)
    chosen: set[int] = set()
    for q, t in enumerate(draws.tolist()):
        chosen.add(d - k + q if t in chosen else t)
    return np.array(sorted(chosen), dtype=np.int64)


def ref_dnc(X, f, iterations=1, subsample=10_000, fraction=1.0, seed=0):
    """DnC (NDSS 2021, Algorithm 2) by loops. Returns (kept rows, output, score lists)."""
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    good = complete_rows(X)
    f_left = f - (n - len(good))
    assert f_left >= 0
    m = len(good) - math.floor(round(fraction * f_left, 9))
    rng = np.random.default_rng(seed)
    rounds = 1 if subsample >= d else iterations
    kept = set(good)
    all_scores = []
    for _ in range(rounds):
        r = ref_coordinates(rng, d, subsample)
        S = np.array([[X[i, j] for j in r] for i in good])
        mu = S.sum(axis=0) / len(good)
        C = S - mu
        _, _, Vt = np.linalg.svd(C, full_matrices=False)
        v = Vt[0]
        scores = [float(np.dot(C[a], v)) ** 2 for a in range(len(good))]
        all_scores.append(scores)
        order = sorted(range(len(good)), key=lambda a: (scores[a], a))[:m]
        kept &= {good[a] for a in order}
    rows = sorted(kept)
    out = np.mean(X[rows], axis=0) if rows else None
    return rows, out, all_scores, m


def ref_largest_cluster(F: np.ndarray) -> set[int]:
    """The documented SignGuard clustering, written out."""
    n = len(F)
    bw = estimate_bandwidth(F, quantile=0.5)
    if bw <= 0:
        groups: dict[tuple, list[int]] = {}
        for i in range(n):
            groups.setdefault(tuple(F[i]), []).append(i)
        best = min(groups, key=lambda key: (-len(groups[key]), key))
        return set(groups[best])
    ms = MeanShift(bandwidth=bw, bin_seeding=True, cluster_all=False).fit(F)
    sizes: dict[int, int] = {}
    for lab in ms.labels_:
        if lab >= 0:
            sizes[int(lab)] = sizes.get(int(lab), 0) + 1
    best = min(sizes, key=lambda lab: (-sizes[lab], lab))
    return {i for i in range(n) if ms.labels_[i] == best}


def ref_signguard(X, f, lower=0.1, upper=3.0, coordinate_fraction=0.1, seed=0):
    """SignGuard (ICDCS 2022) by loops. Returns (kept rows, output)."""
    X = np.asarray(X, dtype=np.float64)
    d = X.shape[1]
    good = complete_rows(X)
    norms = {i: math.sqrt(sum(float(v) ** 2 for v in X[i])) for i in good}
    M = float(np.median([norms[i] for i in good]))
    s1 = {i for i in good if lower * M <= norms[i] <= upper * M}
    k = max(1, math.floor(round(coordinate_fraction * d, 9)))
    r = ref_coordinates(np.random.default_rng(seed), d, k)
    F = np.zeros((len(good), 3))
    for a, i in enumerate(good):
        vals = [X[i, j] for j in r]
        F[a] = [
            sum(v > 0 for v in vals) / len(r),
            sum(v == 0 for v in vals) / len(r),
            sum(v < 0 for v in vals) / len(r),
        ]
    s2 = {good[a] for a in ref_largest_cluster(F)}
    S = sorted(s1 & s2) or sorted(s1)
    out = np.zeros(d)
    for i in S:
        out += X[i] * min(1.0, M / norms[i]) if norms[i] > 0 else X[i]
    return S, out / len(S)


def ref_caf(X, f):
    """CAF (byzfl; Allouah, Guerraoui, Stephan, ICML 2025) on the coordinates, with the exact
    top eigenpair of the weighted covariance and max tau over the weighted rows."""
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    good = complete_rows(X)
    Z = X[good]
    f_left = f - (n - len(good))
    c = np.ones(len(good))
    best, best_lam = Z.mean(axis=0), math.inf
    while c.sum() > len(good) - 2 * f_left:
        mu = sum(c[i] * Z[i] for i in range(len(Z))) / c.sum()
        sigma = np.zeros((d, d))
        for i in range(len(Z)):
            sigma += c[i] * np.outer(Z[i] - mu, Z[i] - mu)
        sigma /= c.sum()
        evals, evecs = np.linalg.eigh(sigma)
        lam, v = evals[-1], evecs[:, -1]
        if lam < best_lam:
            best_lam, best = lam, mu
        if not lam > 0:
            break
        tau = np.array([float(np.dot(Z[i] - mu, v)) ** 2 for i in range(len(Z))])
        tau_max = max(tau[i] for i in range(len(Z)) if c[i] > 0)
        c = np.where(c > 0, c * (1 - tau / tau_max), 0.0)
    return best


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------

# (n, f, d): incl. n > 25, even n, f = 0, d below and above the subsample sizes used
SHAPES = [(5, 1, 3), (8, 3, 12), (12, 0, 40), (16, 4, 7), (26, 5, 60), (31, 7, 200), (40, 10, 25)]


def make_problem(seed: int, n: int, f: int, d: int, offset: float = 0.0) -> np.ndarray:
    """Honest rows around a common direction with per-row scales; f rows of a few attack kinds
    (sign-biased, scaled, opposite) so that the filters have something to remove."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=d) * 0.5
    X = mean + rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=(n, 1))
    for i in range(f):
        kind = (seed + i) % 3
        if kind == 0:
            X[i] = np.abs(rng.normal(size=d)) * 3.0
        elif kind == 1:
            X[i] = mean * rng.uniform(5.0, 20.0) + rng.normal(size=d)
        else:
            X[i] = -4.0 * mean + 0.1 * rng.normal(size=d)
    sparse = rng.random(size=(n, d)) < 0.1  # some exact zeros: the zero-sign feature
    X[sparse] = 0.0
    return X + offset


def gap_ok(scores, m, rel=1e-7) -> bool:
    """The m lowest scores are separated from the next by a relative gap (no near-tie)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if m >= len(s) or m < 1:
        return True
    return s[m] - s[m - 1] > rel * max(abs(s[m]), 1e-300)


def dnc_unambiguous(X, f, **kw) -> bool:
    _, _, all_scores, m = ref_dnc(X, f, **kw)
    return all(gap_ok(s, m) for s in all_scores)


def scale_of(X) -> float:
    X = np.asarray(X, dtype=np.float64)
    return 1.0 + float(np.abs(X[np.isfinite(X)]).max())


# --------------------------------------------------------------------------------------------
# Against the references
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "f", "d"), SHAPES)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"subsample": 5, "seed": 3},
        {"subsample": 9, "iterations": 3, "fraction": 0.5, "seed": 11},
        {"subsample": 1, "iterations": 2, "fraction": 1.5, "seed": 2},
    ],
)
def test_dnc_matches_reference(n, f, d, options):
    X = make_problem(n * 1000 + d, n, f, d)
    if math.floor(round(options.get("fraction", 1.0) * f, 9)) >= n:
        return
    rows, out, all_scores, m = ref_dnc(X, f, **options)
    if not all(gap_ok(s, m) for s in all_scores):
        pytest.skip("near-tie in the reference scores")
    if not rows:
        with pytest.raises(ValueError, match="no input survives"):
            agg.dnc(X, f=f, **options)
        return
    assert agg.selected_indices("dnc", X, f=f, **options).tolist() == rows
    np.testing.assert_allclose(agg.dnc(X, f=f, **options), out, rtol=1e-12, atol=1e-12)
    out32 = agg.dnc(torch.tensor(X, dtype=torch.float32), f=f, **options)
    assert out32.dtype == torch.float32


@pytest.mark.parametrize(("n", "f", "d"), SHAPES)
@pytest.mark.parametrize(
    "options",
    [{"seed": 0}, {"coordinate_fraction": 0.5, "seed": 5}, {"lower": 0.5, "upper": 1.5, "seed": 1}],
)
def test_signguard_matches_reference(n, f, d, options):
    X = make_problem(n * 1000 + d + 7, n, f, d)
    rows, out = ref_signguard(X, f, **options)
    assert agg.selected_indices("signguard", X, f=f, **options).tolist() == rows
    np.testing.assert_allclose(agg.signguard(X, f=f, **options), out, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("n", "f", "d"), SHAPES)
@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_caf_matches_reference(n, f, d, offset):
    X = make_problem(n * 1000 + d + 13, n, f, d, offset=offset)
    expected = ref_caf(X, f)
    np.testing.assert_allclose(agg.caf(X, f=f), expected, rtol=1e-7, atol=1e-7 * scale_of(X))


def test_caf_with_f_zero_is_the_mean_and_identical_rows_stop_the_loop():
    X = make_problem(1, 9, 0, 6)
    np.testing.assert_allclose(agg.caf(X, f=0), X.mean(0), rtol=1e-12, atol=1e-12)
    Y = np.tile(np.arange(5.0), (7, 1))
    np.testing.assert_allclose(agg.caf(Y, f=3), np.arange(5.0), atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["mean10", "gauss200"])
def test_caf_does_not_depend_on_the_row_order_with_identical_attack_rows(kind, dtype):
    """f identical attack rows have the same tau up to rounding: they drop together, as in
    exact arithmetic. Dropping the one whose rounding was largest and keeping the others at a
    weight of about 1e-15 made the output depend on the row order (up to 1.5 % of the input
    scale under -10 x the mean, float64 inputs too)."""
    rng = np.random.default_rng(3)
    for _ in range(10):
        n = int(rng.integers(10, 60))
        d = int(rng.integers(5, 300))
        f = int(rng.integers(1, (n - 1) // 2))
        X = rng.normal(size=(n, d))
        X[: n - f] = X[: n - f] * np.linspace(0.8, 1.2, n - f)[:, None] + rng.normal(size=d)
        X[n - f :] = -10.0 * X[: n - f].mean(0) if kind == "mean10" else 200.0 * X[n - f]
        X = X.astype(dtype)
        perm = rng.permutation(n)
        a = agg.caf(torch.from_numpy(X), f=f).numpy().astype(np.float64)
        b = agg.caf(torch.from_numpy(X[perm].copy()), f=f).numpy().astype(np.float64)
        tol = (1e-6 if dtype == np.float32 else 1e-12) * np.abs(X).max()
        assert np.abs(a - b).max() <= tol, (n, d, f)


def test_caf_finishes_fast_with_far_outliers():
    """Max tau over the still-weighted rows: at most n iterations, whatever the outliers' scale
    (with the max over all rows, as in byzfl's code, it takes more than 200000 iterations)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 20))
    X[:5] = 1e4
    start = time.perf_counter()
    out = agg.caf(X, f=5)
    assert time.perf_counter() - start < 2.0
    np.testing.assert_allclose(out, ref_caf(X, 5), rtol=1e-7, atol=1e-7)
    assert np.abs(out).max() < 2.0


# --------------------------------------------------------------------------------------------
# Compositions (a pre-aggregator hands its Gram matrix and mixing matrix on)
# --------------------------------------------------------------------------------------------


def test_nnm_then_dnc_equals_dnc_of_the_nnm_output():
    X = make_problem(7, 26, 5, 80)
    mixed = agg.nnm(X, f=5)
    opts = {"subsample": 30, "iterations": 2, "seed": 4}
    rows, out, all_scores, m = ref_dnc(mixed, 5, **opts)
    assert all(gap_ok(s, m, 1e-6) for s in all_scores)
    np.testing.assert_allclose(agg.get("nnm+dnc")(X, f=5, **opts), out, rtol=1e-10, atol=1e-10)
    # selected_indices reports the inputs mixed into the kept vectors: their NNM neighbourhoods
    n, f = X.shape[0], 5
    mixed_in = set()
    for i in rows:
        dist = [float(np.sum((X[i] - X[j]) ** 2)) for j in range(n)]
        mixed_in |= set(sorted(range(n), key=lambda j: (-1.0 if j == i else dist[j], j))[: n - f])
    assert agg.selected_indices("nnm+dnc", X, f=5, **opts).tolist() == sorted(mixed_in)


def test_nnm_then_signguard_equals_signguard_of_the_nnm_output():
    X = make_problem(8, 26, 5, 80)
    mixed = agg.nnm(X, f=5)
    _, out = ref_signguard(mixed, 5, coordinate_fraction=0.5, seed=2)
    got = agg.get("nnm+signguard")(X, f=5, coordinate_fraction=0.5, seed=2)
    np.testing.assert_allclose(got, out, rtol=1e-10, atol=1e-10)


def test_nnm_then_caf_equals_caf_of_the_nnm_output():
    X = make_problem(9, 26, 5, 30)
    np.testing.assert_allclose(
        agg.get("nnm+caf")(X, f=5), ref_caf(agg.nnm(X, f=5), 5), rtol=1e-7, atol=1e-7
    )


@pytest.mark.parametrize("rule", ["dnc", "signguard"])
def test_bucketing_then_filter_equals_manual_chaining(rule):
    """No Gram matrix: the rule reads the bucket means' coordinates itself."""
    X = make_problem(10, 30, 4, 50)
    X[3, 7] = np.nan  # its bucket is incomplete and removed
    buckets = agg.bucketing(X, f=4, seed=1)
    f_rule = 4
    manual = agg.get(rule)(buckets, f=f_rule, seed=6)
    composed = agg.get(f"bucketing+{rule}")(
        X, f=f_rule, bucketing_options={"seed": 1}, **{f"{rule}_options": {"seed": 6}}
    )
    np.testing.assert_allclose(composed, manual, rtol=1e-12, atol=1e-12)
    kept_buckets = agg.selected_indices(rule, buckets, f=f_rule, seed=6).tolist()
    assert not any(np.isnan(buckets[i]).any() for i in kept_buckets)


# --------------------------------------------------------------------------------------------
# Non-finite inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 1e300])
def test_incomplete_rows_are_removed_first(rule, value):
    X = make_problem(21, 20, 5, 30)
    Y = X.copy()
    bad = [2, 11]
    Y[2, 4] = value
    Y[11] = value
    good = [i for i in range(20) if i not in bad]
    opts = SEEDED.get(rule, {})
    fn = functools.partial(agg.get(rule), **opts)
    # SignGuard does not use f; DnC and CAF count the incomplete rows among the f
    f_good = 5 if rule == "signguard" else 3
    expected = fn(X[good], f=f_good)
    np.testing.assert_allclose(fn(Y, f=5), expected, rtol=1e-12, atol=1e-12)
    if rule != "caf":
        kept = agg.selected_indices(rule, Y, f=5, **opts).tolist()
        good_kept = agg.selected_indices(rule, X[good], f=f_good, **opts).tolist()
        assert kept == [good[i] for i in good_kept]
        assert not set(kept) & set(bad)


@pytest.mark.parametrize("rule", ["dnc", "caf"])
def test_more_than_f_incomplete_rows_raise(rule):
    X = make_problem(22, 12, 2, 10)
    X[[0, 5, 9], 1] = np.nan
    with pytest.raises(ValueError, match="3 inputs hold non-finite values but f=2"):
        agg.get(rule)(X, f=2)


def test_signguard_needs_one_complete_row_only():
    X = make_problem(23, 9, 1, 10)
    X[:7, 0] = np.nan
    _, out = ref_signguard(X, 1)
    np.testing.assert_allclose(agg.signguard(X, f=1, seed=0), out, rtol=1e-12)
    X[:, 3] = np.inf
    with pytest.raises(ValueError, match="every input holds non-finite values"):
        agg.signguard(X, f=1)


# --------------------------------------------------------------------------------------------
# Known facts: obvious outliers are removed
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize(("n", "f", "d"), [(30, 5, 200), (25, 12, 40), (40, 0, 30)])
def test_obvious_outliers_are_removed(rule, n, f, d):
    rng = np.random.default_rng(n + f + d)
    honest = rng.normal(size=(n - f, d))
    X = np.concatenate([np.full((f, d), 100.0), honest])
    opts = SEEDED.get(rule, {})
    out = agg.get(rule)(X, f=f, **opts)
    hm = honest.mean(0)
    spread = np.linalg.norm(honest - hm, axis=1).mean()
    if rule == "dnc":  # c = 1 removes exactly the f outliers
        np.testing.assert_allclose(out, hm, rtol=1e-12, atol=1e-12)
    elif rule == "caf":
        assert np.linalg.norm(out - hm) < 0.05 * spread
    else:  # SignGuard: the mean of a cluster of honest rows, clipped to the median norm
        kept = agg.selected_indices(rule, X, f=f, **opts).tolist()
        norms = np.linalg.norm(X, axis=1)
        M = np.median(norms)
        expected = np.mean([X[i] * min(1.0, M / norms[i]) for i in kept], axis=0)
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
        if d >= 200:  # enough sampled coordinates for the honest features to form one cluster
            assert np.linalg.norm(out - hm) < 0.5 * spread
    if rule != "caf":
        kept = agg.selected_indices(rule, X, f=f).tolist()
        assert kept and min(kept) >= f
        if rule == "dnc":
            assert kept == list(range(f, n))


def test_signguard_norm_filter_and_clipping():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(21, 50))
    X[0] *= 10.0  # too long: removed by the norm filter
    X[1] *= 0.01  # too short: removed
    X[2] *= 2.0  # longer than the median: kept, clipped to it
    kept = agg.selected_indices("signguard", X, f=2, coordinate_fraction=1.0).tolist()
    assert 0 not in kept and 1 not in kept
    rows, _ = ref_signguard(X, 2, coordinate_fraction=1.0)
    assert kept == rows
    norms = np.linalg.norm(X, axis=1)
    M = np.median(norms)
    expected = np.mean([X[i] * min(1.0, M / norms[i]) for i in kept], axis=0)
    np.testing.assert_allclose(agg.signguard(X, f=2, coordinate_fraction=1.0), expected)


# --------------------------------------------------------------------------------------------
# Randomness
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["dnc", "signguard"])
def test_random_coordinates_are_reproducible(rule):
    X = make_problem(31, 26, 5, 400)
    opts = {"subsample": 20} if rule == "dnc" else {"coordinate_fraction": 0.05}
    fn = agg.get(rule)
    # a fixed seed gives the same coordinates at every call
    np.testing.assert_array_equal(fn(X, f=5, seed=0, **opts), fn(X, f=5, seed=0, **opts))
    # the default (seed=None) draws fresh coordinates at every call, as the papers do, from
    # torch's global generator: reproducible under torch.manual_seed
    torch.manual_seed(5)
    a = fn(X, f=5, **opts)
    b = fn(X, f=5, **opts)
    torch.manual_seed(5)
    np.testing.assert_array_equal(a, fn(X, f=5, **opts))
    np.testing.assert_array_equal(b, fn(X, f=5, seed=None, **opts))
    torch.manual_seed(11)
    kept = {
        tuple(agg.selected_indices(rule, X, f=5, **opts).tolist()) for _ in range(8)
    }
    if rule == "dnc":  # 20 of 400 coordinates per call: the kept sets differ between calls
        assert len(kept) > 1
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    np.testing.assert_array_equal(
        fn(X, f=5, generator=g1, **opts), fn(X, f=5, generator=g2, **opts)
    )
    # a generator seeds numpy with one torch.randint draw (the documented protocol)
    s = int(torch.randint(0, 2**63 - 1, (1,), generator=torch.Generator().manual_seed(9)))
    np.testing.assert_array_equal(
        fn(X, f=5, generator=torch.Generator().manual_seed(9), **opts), fn(X, f=5, seed=s, **opts)
    )
    if rule == "dnc":
        for seed in (1, 2, 3):
            _, out, _, _ = ref_dnc(X, 5, subsample=20, seed=seed)
            np.testing.assert_allclose(fn(X, f=5, seed=seed, **opts), out, rtol=1e-12)


def test_dnc_intersection_can_be_empty():
    for seed in range(50):
        X = make_problem(seed, 6, 2, 30)
        opts = {"subsample": 1, "iterations": 8, "fraction": 2.0, "seed": seed}
        rows, _, _, _ = ref_dnc(X, 2, **opts)
        if not rows:
            with pytest.raises(ValueError, match="no input survives"):
                agg.dnc(X, f=2, **opts)
            return
    pytest.fail("no seed produced an empty intersection")


# --------------------------------------------------------------------------------------------
# Options, requirements, input handling
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "n", "f", "text"),
    [
        ("dnc", 4, 2, "dnc needs n >= 2f + 1, got n=4, f=2"),
        ("signguard", 6, 3, "signguard needs n >= 2f + 1, got n=6, f=3"),
        ("caf", 2, 1, "caf needs n >= 2f + 1, got n=2, f=1"),
    ],
)
def test_requirement_errors(rule, n, f, text):
    X = np.random.default_rng(0).normal(size=(n, 5))
    with pytest.raises(ValueError, match=text.replace("+", r"\+")):
        agg.get(rule)(X, f=f)
    with pytest.raises(ValueError, match=text.replace("+", r"\+")):
        agg.check(rule, n, f)
    agg.get(rule)(np.random.default_rng(0).normal(size=(n + 1, 5)), f=f)  # just enough


@pytest.mark.parametrize(
    ("rule", "options", "error"),
    [
        ("dnc", {"bogus_option": 1}, TypeError),
        ("signguard", {"bogus_option": 1}, TypeError),
        ("caf", {"bogus_option": 1}, TypeError),
        ("caf", {"seed": 1}, TypeError),
        ("dnc", {"iterations": 0}, ValueError),
        ("dnc", {"iterations": 1.5}, TypeError),
        ("dnc", {"subsample": 0}, ValueError),
        ("dnc", {"fraction": -0.5}, ValueError),
        ("dnc", {"fraction": float("nan")}, ValueError),
        ("dnc", {"fraction": 3.0}, ValueError),  # removes 9 of 9
        ("dnc", {"seed": -1}, ValueError),
        ("dnc", {"seed": "a"}, TypeError),
        ("dnc", {"generator": 3}, TypeError),
        ("signguard", {"lower": 1.5}, ValueError),
        ("signguard", {"upper": 0.5}, ValueError),
        ("signguard", {"coordinate_fraction": 0.0}, ValueError),
        ("signguard", {"coordinate_fraction": 1.5}, ValueError),
    ],
)
def test_bad_options(rule, options, error):
    X = np.random.default_rng(0).normal(size=(9, 6))
    with pytest.raises(error, match=next(iter(options)) if error is TypeError else None):
        agg.get(rule)(X, f=3, **options)


@pytest.mark.parametrize("rule", RULES)
def test_registered_with_docstring_attribute_and_selection_flag(rule):
    assert getattr(agg, rule) is agg.get(rule)
    doc = agg.get(rule).__doc__
    assert "Reference" in doc and "Requirement" in doc and "Non-finite" in doc and "Cost" in doc
    assert agg.spec(rule).selects == (rule != "caf")
    if rule == "caf":
        with pytest.raises(TypeError, match="does not select"):
            agg.selected_indices("caf", np.zeros((5, 2)), f=1)


@pytest.mark.parametrize("rule", RULES)
def test_output_kind_dtype_shape_and_no_input_change(rule):
    n, f = 9, 2
    base = torch.randn(n, 2, 3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    base[4, 0, 0, 0] = float("nan")
    before = base.clone()
    fn = functools.partial(agg.get(rule), **SEEDED.get(rule, {}))
    for dtype in (torch.float32, torch.float64, torch.float16):
        out = fn(base.to(dtype), f=f)
        assert isinstance(out, torch.Tensor) and out.dtype == dtype and out.shape == (2, 3, 4)
    as_np = base.numpy().copy()
    out_np = fn(as_np, f=f)
    assert isinstance(out_np, np.ndarray) and out_np.shape == (2, 3, 4)
    np.testing.assert_allclose(out_np, fn(base, f=f).numpy())
    out_list = fn([row for row in base], f=f)
    assert out_list.shape == (2, 3, 4)
    out_int = fn(torch.arange(n * 4).reshape(n, 4), f=f)
    assert out_int.dtype == torch.get_default_dtype()
    assert torch.equal(torch.nan_to_num(base, nan=7.0), torch.nan_to_num(before, nan=7.0))
    np.testing.assert_array_equal(
        np.nan_to_num(as_np, nan=7.0), np.nan_to_num(before.numpy(), nan=7.0)
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("rule", [*RULES, "nnm+dnc", "nnm+signguard", "nnm+caf"])
def test_cuda_matches_cpu(rule):
    X = torch.randn(25, 4099, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    X[3, 7] = float("nan")
    X[:4, :] += 5.0
    opts = {"subsample": 500} if rule.endswith("dnc") else {}
    if rule.endswith(("dnc", "signguard")):
        opts["seed"] = 0  # fresh coordinates per call by default: CPU and GPU must agree
    cpu = agg.get(rule)(X, f=5, **opts)
    gpu = agg.get(rule)(X.cuda(), f=5, **opts)
    assert gpu.device.type == "cuda" and gpu.dtype == X.dtype
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


@st.composite
def problems(draw, max_n=16, max_d=12):
    f = draw(st.integers(0, 4))
    n = draw(st.integers(2 * f + 1, max(2 * f + 1, max_n)))
    d = draw(st.integers(1, max_d))
    seed = draw(st.integers(0, 2**31 - 1))
    return make_problem(seed, n, f, d), f, seed


@settings(max_examples=25)
@pytest.mark.parametrize("rule", RULES)
@given(data=st.data())
def test_permutation_invariance(rule, data):
    X, f, seed = data.draw(problems())
    opts = {"subsample": max(1, X.shape[1] // 2), "iterations": 2} if rule == "dnc" else {}
    if rule == "dnc":
        assume(dnc_unambiguous(X, f, **opts))
    opts = {**opts, **SEEDED.get(rule, {})}
    perm = np.random.default_rng(seed).permutation(len(X))
    fn = agg.get(rule)
    a, b = fn(X, f=f, **opts), fn(X[perm], f=f, **opts)
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9 * scale_of(X))
    if rule != "caf":
        kept = agg.selected_indices(rule, X, f=f, **opts).tolist()
        kept_p = agg.selected_indices(rule, X[perm], f=f, **opts).tolist()
        assert sorted(int(perm[i]) for i in kept_p) == kept


@settings(max_examples=25)
@pytest.mark.parametrize("rule", ["dnc", "caf"])
@given(data=st.data())
def test_translation_equivariance(rule, data):
    X, f, seed = data.draw(problems())
    t = np.random.default_rng(seed + 1).normal(size=X.shape[1]) * 10.0
    opts = {"subsample": max(1, X.shape[1] // 2)} if rule == "dnc" else {}
    if rule == "dnc":
        assume(dnc_unambiguous(X, f, **opts))
    opts = {**opts, **SEEDED.get(rule, {})}
    fn = agg.get(rule)
    scale = scale_of(X) + np.abs(t).max()
    np.testing.assert_allclose(fn(X + t, f=f, **opts), fn(X, f=f, **opts) + t, atol=1e-7 * scale)


@settings(max_examples=25)
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("kind", ["huge", "nan", "inf"])
@given(data=st.data())
def test_output_within_honest_range_under_outliers(rule, kind, data):
    """f identical huge rows (the attack DnC's single direction is built for), or f rows with
    non-finite values: the output stays in the coordinate-wise range of the honest rows (for
    SignGuard, whose clipping shrinks rows towards 0, the range extended to 0)."""
    f = data.draw(st.integers(1, 4))
    n = data.draw(st.integers(2 * f + 1, 2 * f + 8))
    d = data.draw(st.integers(1, 10))
    seed = data.draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    honest = rng.normal(size=(n - f, d)) * rng.uniform(0.5, 2.0, size=(n - f, 1))
    if kind == "huge":
        bad = np.tile(rng.normal(size=d) * 1e8 * math.sqrt(d), (f, 1))
    else:
        bad = rng.normal(size=(f, d))
        bad[np.arange(f), rng.integers(0, d, size=f)] = np.nan if kind == "nan" else np.inf
    X = np.concatenate([bad, honest])
    perm = rng.permutation(n)
    X = X[perm]
    out = agg.get(rule)(X, f=f)
    lo, hi = honest.min(0), honest.max(0)
    if rule == "signguard":
        lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    tol = 1e-9 * (1 + np.abs(honest).max())
    assert np.all(np.isfinite(out))
    assert np.all(out >= lo - tol) and np.all(out <= hi + tol)
    if rule != "caf":
        bad_rows = {int(np.nonzero(perm == i)[0][0]) for i in range(f)}
        assert not set(agg.selected_indices(rule, X, f=f).tolist()) & bad_rows


@pytest.mark.parametrize("seed", range(4))
def test_mean_shift_is_scikit_learns(seed):
    """SignGuard's MeanShift: scikit-learn's estimator and the fit that sends the shifts'
    radius queries straight to its KD-tree give the same labels and number of clusters, on
    continuous features, on fractions with many ties (sign counts over b coordinates) and on
    duplicated points, from 12 to 200 points (up to dozens of seeds shifting together in one
    query of the tree); few points (scikit-learn then uses brute force) take the estimator."""
    import warnings

    from byzlearn.aggregators.rules.filters import _mean_shift

    rng = np.random.default_rng(seed)
    compared = 0
    for trial in range(30):
        n = int(rng.choice([12, 13, 20, 25, 40, 100, 200]))
        if trial % 3 == 0:
            F = rng.random((n, 3))
        elif trial % 3 == 1:
            b = int(rng.choice([10, 20, 50]))
            F = rng.multinomial(b, [0.45, 0.1, 0.45], size=n) / b
        else:
            F = rng.random((n, 3)) * 0.05
            F[: n // 3] += 0.5
            F[n // 3 : n // 2] = F[0]
        bandwidth = float(estimate_bandwidth(F, quantile=0.5))
        if not bandwidth > 0:
            continue
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Binning data failed")
            ms = MeanShift(bandwidth=bandwidth, bin_seeding=True, cluster_all=False).fit(F)
            got = _mean_shift(np.ascontiguousarray(F, dtype=np.float64), bandwidth)
        assert got is not None
        np.testing.assert_array_equal(got[0], ms.labels_)
        assert got[1] == len(ms.cluster_centers_)
        compared += 1
    assert compared >= 20
    assert _mean_shift(rng.random((11, 3)), 0.3) is None  # brute force: the estimator's fit


@pytest.mark.parametrize("seed", range(3))
def test_bandwidth_and_nearest_centres_are_scikit_learns(seed):
    """SignGuard's bandwidth (scikit-learn's brute-force neighbour search called directly) is
    estimate_bandwidth's to the bit, from 1 to 1200 points (batches of 500 queries), on
    continuous features and on fractions with ties; the nearest centres and the centres within
    the radius of each are the estimator's (its brute force and its KD-tree)."""
    from sklearn.neighbors import NearestNeighbors

    from byzlearn.aggregators.rules.filters import _bandwidth, _nearest_centre, _within_radius

    rng = np.random.default_rng(seed)
    for n in (1, 2, 3, 12, 25, 40, 499, 500, 501, 1200):
        for F in (rng.random((n, 3)), rng.multinomial(20, [0.45, 0.1, 0.45], size=n) / 20):
            assert _bandwidth(F) == float(estimate_bandwidth(F, quantile=0.5))
        for m in (1, 2, 3, 4, 6):
            centres = rng.random((m, 3))
            got = _nearest_centre(F, centres)
            ref = NearestNeighbors(n_neighbors=1).fit(centres).kneighbors(F)
            np.testing.assert_array_equal(got[0], ref[0])
            np.testing.assert_array_equal(got[1], ref[1])
    for m in (1, 2, 5, 11, 12, 13, 40):  # brute force up to 11 centres, a KD-tree from 12
        for centres in (rng.random((m, 3)), rng.multinomial(10, [0.4, 0.2, 0.4], size=m) / 10):
            centres = np.unique(centres, axis=0)
            radius = float(np.median(np.abs(centres - centres[0]).sum(axis=1))) + 0.1
            near = _within_radius(centres, radius)
            fitted = NearestNeighbors(radius=radius).fit(centres)
            for i in range(len(centres)):
                ref = fitted.radius_neighbors([centres[i]], return_distance=False)[0]
                np.testing.assert_array_equal(near(i), ref)


@pytest.mark.parametrize("shape", [(25, 400), (7, 3), (30, 40), (2, 5)])
def test_dnc_scores_from_the_gram_matrix_equal_the_svd_scores(shape):
    """The scores <c_i, v>^2 (v the top right singular vector of the centred rows) computed
    from the top eigenpair of C C^T equal those of numpy's SVD of C, also with more rows than
    columns."""
    from byzlearn.aggregators.rules.filters import dnc_scores

    rng = np.random.default_rng(shape[0])
    S = rng.standard_normal(shape)
    S[0] += 4.0  # one outlier: a clear top singular value
    C = S - S.mean(axis=0)
    v = np.linalg.svd(C, full_matrices=False)[2][0]
    np.testing.assert_allclose(dnc_scores(torch.from_numpy(S)).numpy(), (C @ v) ** 2,
                               rtol=1e-9, atol=1e-12 * float((C**2).sum()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_column_of_every_row_is_a_fresh_float64_copy(dtype):
    """DnC's gather of all the coordinates of all the rows (d <= subsample) takes one copy:
    the values of the two gathers, in float64, never the input's own memory."""
    from byzlearn.aggregators._gram import Inputs
    from byzlearn.aggregators.rules.filters import _Rows

    X = torch.randn(9, 70, dtype=dtype)
    rows = _Rows.of(Inputs(X=X, gram=None), norms=False)
    every, cols = torch.arange(9), np.arange(70)
    got = rows.columns(every, cols)
    assert rows.Y is not None
    ref = rows.Y.index_select(1, torch.as_tensor(cols)).index_select(0, every).double()
    assert torch.equal(got, ref) and got.dtype == torch.float64
    assert got.data_ptr() != rows.Y.data_ptr()
    some = rows.columns(torch.tensor([0, 3, 8]), cols)  # fewer rows: the gathers
    assert torch.equal(some, ref[[0, 3, 8]])
