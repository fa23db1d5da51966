"""Bulyan against a literal loop of the paper's algorithm (El Mhamdi, Guerraoui, Rouault, ICML
2018):

1. R = all inputs, S = {}; theta times: apply A to R, move its choice (or the input closest to A's
   output) from R to S;
2. per coordinate, the mean of the beta values of S closest to their median.

The references use float64 numpy and explicit differences only.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import byzlearn.aggregators as agg
from tests.aggregators.test_distance_rules import (
    make_X,
    ref_bad,
    ref_geometric_median,
    ref_krum_scores,
    ref_order,
    ref_sqdist,
)


def ref_closest(X, z) -> int:
    d = [np.inf if ref_bad(X)[i] else float(np.sum((X[i] - z) ** 2)) for i in range(len(X))]
    return ref_order(np.array(d))[0]


def _tied(values, rel) -> list[int]:
    """Indices whose value ties with the least (relative tolerance), least index first."""
    v = np.asarray(values, dtype=np.float64)
    best = np.min(v)
    return [i for i in ref_order(v) if v[i] <= best + rel * max(abs(best), 1e-300)]


def ref_picks(X, f, rule) -> list[int]:
    """A's possible choices among the rows of X (local indices; several when A's choice is a
    tie, e.g. Krum with one neighbour scores both points of the closest pair alike)."""
    n = len(X)
    if rule == "krum":
        return _tied(ref_krum_scores(X, f), 1e-7)  # max(1, |R| - f - 2) neighbours
    if rule == "medoid":
        D = np.sqrt(ref_sqdist(X))
        return _tied([np.inf if ref_bad(X)[i] else D[i][~ref_bad(X)].sum() for i in range(n)], 1e-7)
    if rule == "multi_krum":
        s = ref_krum_scores(X, f)
        order = ref_order(s)
        m = n - f
        if m < n and s[order[m]] - s[order[m - 1]] <= 1e-7 * abs(s[order[m]]):
            return [-1]  # the kept set itself is ambiguous
        z = X[order[:m]].mean(0)
    elif rule == "geometric_median":
        z = ref_geometric_median(X[~ref_bad(X)])
    else:
        raise AssertionError(rule)
    return _tied(
        [np.inf if ref_bad(X)[i] else float(np.sum((X[i] - z) ** 2)) for i in range(n)], 1e-5
    )


def ref_bulyan_all(X, f, rule="krum", theta=None, beta=None, limit=64):
    """Every outcome of the literal algorithm over the ties of A: {selected rows: output}, and
    whether the outcomes are unambiguous (no tie at phase 2's cut, no ambiguous kept set)."""
    n = len(X)
    theta = n - 2 * f if theta is None else theta
    beta = theta - 2 * f if beta is None else beta
    outcomes = {}
    ok = True
    stack = [(list(range(n)), [])]
    while stack:
        R, S = stack.pop()
        if len(S) == theta:
            rows = tuple(sorted(S))
            if rows in outcomes:
                continue
            sel = X[list(rows)]
            out = np.empty(X.shape[1])
            for j in range(X.shape[1]):
                col = sel[:, j]
                med = np.median(col)
                order = sorted(range(theta), key=lambda t: (abs(col[t] - med), col[t]))
                dist = sorted(abs(col - med))
                tol = 1e-12 * (1 + abs(med))
                if (
                    beta < theta
                    and dist[beta] - dist[beta - 1] <= tol
                    and abs(col[order[beta]] - col[order[beta - 1]]) > tol
                ):
                    ok = False  # a tie at the cut (e.g. the two middle values when beta = 1)
                out[j] = col[order[:beta]].mean()
            outcomes[rows] = out
            continue
        picks = ref_picks(X[R], f, rule)
        if picks == [-1]:
            ok = False
            picks = [0]
        for p in picks:
            R2 = list(R)
            S2 = [*S, R2.pop(p)]
            stack.append((R2, S2))
        assert len(stack) < limit
    return outcomes, ok


def ref_bulyan(X, f, rule="krum", theta=None, beta=None):
    """(output, rows) when the literal algorithm has one outcome; ok=False otherwise."""
    outcomes, ok = ref_bulyan_all(X, f, rule, theta, beta)
    rows, out = next(iter(outcomes.items()))
    return out, list(rows), ok and len(outcomes) == 1


def check_bulyan(X, f, rule="krum", atol=1e-10, **kw) -> bool:
    """The library's selection is one of the literal algorithm's outcomes, with its output."""
    outcomes, ok = ref_bulyan_all(X, f, rule, kw.get("theta"), kw.get("beta"))
    if not ok:
        return False
    opts = {"selection": rule, **kw}
    rows = tuple(agg.selected_indices("bulyan", X, f=f, **opts).tolist())
    assert rows in outcomes, (rows, list(outcomes))
    np.testing.assert_allclose(agg.bulyan(X, f=f, **opts), outcomes[rows], rtol=1e-12, atol=atol)
    return True


SHAPES = [
    (7, 1, 3),
    (8, 1, 5),
    (11, 2, 4),
    (12, 2, 10),
    (15, 3, 6),
    (16, 0, 3),
    (31, 7, 8),
    (40, 9, 5),
]


@pytest.mark.parametrize("offset", [0.0, 1e4, 1e6])
@pytest.mark.parametrize("n,f,d", SHAPES)
def test_bulyan_krum_reference(n, f, d, offset):
    used = 0
    for seed in range(3):
        X = make_X(seed, n, d, offset)
        used += check_bulyan(X, f, atol=1e-10 * (1 + offset))
    assert used >= 1


@pytest.mark.parametrize("rule", ["medoid", "multi_krum", "geometric_median"])
@pytest.mark.parametrize("n,f,d", [(7, 1, 3), (11, 2, 4), (16, 3, 5)])
def test_bulyan_other_selections(rule, n, f, d):
    used = 0
    for seed in range(3):
        X = make_X(seed + 10, n, d, 1e3)
        used += check_bulyan(X, f, rule, atol=1e-9)
    assert used >= 1


def test_bulyan_median_selection_and_options():
    """A coordinate-wise rule as A: the input closest to its output is moved."""
    X = make_X(3, 11, 4)
    ref_rows = []
    R = list(range(11))
    for _ in range(7):
        z = np.median(X[R], axis=0)
        ref_rows.append(R.pop(ref_closest(X[R], z)))
    assert agg.selected_indices("bulyan", X, f=2, selection="median").tolist() == sorted(ref_rows)
    # selection_options reach the rule
    a = agg.bulyan(X, f=2, selection="multi_krum", selection_options={"m": 1})
    b = agg.bulyan(X, f=2, selection="krum")
    np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("theta,beta", [(9, 5), (9, 1), (6, 2), (11, 11), (5, 3), (1, 1)])
def test_bulyan_theta_beta(theta, beta):
    X = make_X(4, 11, 6)
    assert check_bulyan(X, 2, theta=theta, beta=beta)


def test_bulyan_errors():
    X = make_X(0, 10, 3)
    with pytest.raises(ValueError, match=re.escape("bulyan needs n >= 4f + 3, got n=10, f=2")):
        agg.bulyan(X, f=2)
    with pytest.raises(ValueError, match=re.escape("bulyan needs n >= 4f + 3, got n=10, f=2")):
        agg.check("bulyan", 10, 2)
    Y = make_X(0, 11, 3)
    agg.bulyan(Y, f=2)
    for kw in ({"theta": 0}, {"theta": 12}, {"beta": 0}, {"theta": 5, "beta": 6}):
        with pytest.raises(ValueError, match="bulyan"):
            agg.bulyan(Y, f=2, **kw)
    with pytest.raises(ValueError, match="selection"):
        agg.bulyan(Y, f=2, selection="nnm")
    with pytest.raises(KeyError):
        agg.bulyan(Y, f=2, selection="nope")
    with pytest.raises(TypeError):
        agg.bulyan(Y, f=2, m=3)


@pytest.mark.parametrize("kind", ["nan", "inf", "huge_distinct", "mixed"])
@settings(max_examples=12)
@given(
    seed=st.integers(0, 2**31 - 1),
    f=st.integers(1, 3),
    extra=st.integers(0, 5),
    d=st.integers(1, 6),
)
def test_bulyan_bad_rows(kind, seed, f, extra, d):
    n = 4 * f + 3 + extra
    X = make_X(seed, n, d)
    rng = np.random.default_rng(seed)
    bad = rng.choice(n, size=f, replace=False)
    honest = np.setdiff1d(np.arange(n), bad)
    Y = X.copy()
    if kind == "nan":
        Y[bad, -1] = np.nan
    elif kind == "inf":
        Y[bad] = np.inf
    elif kind == "huge_distinct":
        Y[bad] = 1e30 * rng.normal(size=(f, d))
    else:
        Y[bad] = 1e200
        Y[bad[0], 0] = -np.inf
    out = agg.bulyan(Y, f=f)
    assert np.all(np.isfinite(out))
    tol = 1e-9 * (1 + np.abs(X).max())
    assert np.all(out >= X[honest].min(0) - tol) and np.all(out <= X[honest].max(0) + tol)
    assert not set(agg.selected_indices("bulyan", Y, f=f).tolist()) & set(bad.tolist())


@settings(max_examples=12)
@given(seed=st.integers(0, 2**31 - 1), f=st.integers(1, 3), extra=st.integers(0, 5))
def test_bulyan_identical_huge_rows(seed, f, extra):
    """f identical outliers (1e30): the output stays within the honest range. The literal algorithm
    may move one outlier into S at the last step (Krum on |R| = 2f + 1 uses f - 1 neighbours, so
    the outlier cluster scores 0); phase 2 then trims it."""
    n = 4 * f + 3 + extra
    X = make_X(seed, n, 3)
    bad = np.random.default_rng(seed).choice(n, size=f, replace=False)
    honest = np.setdiff1d(np.arange(n), bad)
    Y = X.copy()
    Y[bad] = 1e30
    out = agg.bulyan(Y, f=f)
    assert np.all(out >= X[honest].min(0) - 1e-9) and np.all(out <= X[honest].max(0) + 1e-9)
    assume(check_bulyan(Y, f, atol=1e-9))
    rows = agg.selected_indices("bulyan", Y, f=f).tolist()
    assert len(set(rows) & set(bad.tolist())) <= 1


def test_bulyan_too_many_bad_rows():
    X = make_X(5, 11, 3)
    X[[0, 3, 6, 9, 10]] = np.nan  # 6 good rows, theta = 7 selections needed
    with pytest.raises(ValueError, match=r"bulyan|krum"):
        agg.bulyan(X, f=2)


@settings(max_examples=15)
@given(
    seed=st.integers(0, 2**31 - 1),
    f=st.integers(0, 2),
    extra=st.integers(0, 4),
    offset=st.sampled_from([0.0, 1e3, 1e6]),
)
def test_bulyan_permutation_and_translation(seed, f, extra, offset):
    n = 4 * f + 3 + extra
    X = make_X(seed, n, 4, offset)
    _, _, ok = ref_bulyan(X, f)
    assume(ok)  # one outcome: then the output may not depend on order nor translation
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    scale = 1 + np.abs(X).max()
    out = agg.bulyan(X, f=f)
    np.testing.assert_allclose(agg.bulyan(X[perm], f=f), out, rtol=0, atol=1e-12 * scale)
    c = rng.normal(size=4) * 100
    np.testing.assert_allclose(agg.bulyan(X + c, f=f), out + c, rtol=0, atol=1e-9 * (scale + 100))


def test_bulyan_kinds_and_no_in_place():
    X = make_X(6, 11, 6).reshape(11, 2, 3)
    X[4, 1, 1] = np.nan
    before = X.copy()
    out = agg.bulyan(X, f=2)
    np.testing.assert_array_equal(X, before)
    assert isinstance(out, np.ndarray) and out.shape == (2, 3) and out.dtype == np.float64
    out = agg.bulyan(X.astype(np.float32), f=2)
    assert out.dtype == np.float32
    T = torch.from_numpy(X).float()
    out = agg.bulyan(T, f=2)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (2, 3)
    np.testing.assert_array_equal(T.numpy(), before.astype(np.float32))


def test_bulyan_float32_offset():
    X = make_X(2, 15, 5, 1e4, dtype=np.float32)
    X64 = X.astype(np.float64)
    ref, rows, ok = ref_bulyan(X64, 3)
    assert ok
    assert agg.selected_indices("bulyan", X, f=3).tolist() == rows
    np.testing.assert_allclose(agg.bulyan(X, f=3), ref, rtol=1e-6)
    # and the float64 path agrees with the reference on the same values
    assert check_bulyan(X64, 3, atol=1e-8)


def test_nnm_then_bulyan():
    from tests.aggregators.test_preaggregators import ref_nnm, ref_nnm_neighbours

    used = 0
    for seed in range(4):
        X = make_X(seed, 11, 4)
        Y = ref_nnm(X, 2)
        outcomes, ok = ref_bulyan_all(Y, 2)
        if not ok:
            continue
        used += 1
        out = agg.get("nnm+bulyan")(X, f=2)
        sel = agg.selected_indices("nnm+bulyan", X, f=2).tolist()
        nbs = ref_nnm_neighbours(X, 2)
        assert any(
            np.allclose(out, ref, rtol=1e-12, atol=1e-12)
            and sel == sorted({j for r in rows for j in nbs[r]})
            for rows, ref in outcomes.items()
        )
    assert used >= 1


def test_bulyan_variants():
    """The paper's theta = n - 2f by default; ByzantineMomentum's theta = n - 2f - 2 as an
    option (beta = theta - 2f in both); explicit theta / beta override either."""
    X = make_X(7, 23, 6)
    rows = agg.selected_indices("bulyan", X, f=5)
    assert rows.numel() == 13
    bm = agg.selected_indices("bulyan", X, f=5, variant="byzantine_momentum")
    assert bm.numel() == 11
    np.testing.assert_array_equal(agg.bulyan(X, f=5, variant="byzantine_momentum"),
                                  agg.bulyan(X, f=5, theta=11))
    np.testing.assert_array_equal(agg.bulyan(X, f=5, variant="paper"), agg.bulyan(X, f=5))
    kept = agg.selected_indices("bulyan", X, f=5, variant="byzantine_momentum", theta=12)
    assert kept.numel() == 12
    with pytest.raises(ValueError, match="variant"):
        agg.bulyan(X, f=5, variant="multi")


def test_bulyan_paper_variant_admits_one_identical_outlier_at_n_4f_plus_3():
    """The example in docs/aggregators.md: n = 23, f = 5, the f Byzantine inputs send one
    Gaussian vector (sigma = 200). The paper's last Krum steps run on fewer than 2f + 3 inputs,
    where the f identical copies score 0: one of them enters the 13 selected; the theta = n - 2f
    - 2 variant keeps none of its 11."""
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        honest = torch.randn(18, 1000, generator=g, dtype=torch.float64)
        byz = (200 * torch.randn(1, 1000, generator=g, dtype=torch.float64)).expand(5, -1)
        X = torch.cat([honest, byz])
        paper = agg.selected_indices("bulyan", X, f=5)
        variant = agg.selected_indices("bulyan", X, f=5, variant="byzantine_momentum")
        assert int((paper >= 18).sum()) == 1 and paper.numel() == 13
        assert int((variant >= 18).sum()) == 0 and variant.numel() == 11


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    f=st.integers(0, 6),
    extra=st.integers(0, 25),
    bad=st.integers(0, 3),
    shrink=st.sampled_from([0, 2]),
)
def test_running_krum_scores_match_krum_on_each_subset(seed, f, extra, bad, shrink):
    """Bulyan's Krum selection keeps running scores (O(n^2) for all steps): the same choices
    as calling Krum on every shrinking subset (continuous data: no ties)."""
    from byzlearn.aggregators._gram import Inputs
    from byzlearn.aggregators._registry import spec
    from byzlearn.aggregators.rules import bulyan as bulyan_module

    n = 4 * f + 3 + extra
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    X[rng.choice(n, min(bad, f), replace=False)] = np.nan
    inputs = Inputs.from_matrix(torch.from_numpy(X))
    theta = max(1, n - 2 * f - shrink)
    fast = bulyan_module._iterated_krum(inputs, f, theta)
    slow = bulyan_module._iterated_rule(inputs, spec("krum"), f, {}, theta)
    assert fast == slow


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    f=st.integers(0, 6),
    extra=st.integers(0, 25),
    copies=st.integers(0, 6),
    bad=st.integers(0, 2),
)
def test_running_krum_scores_ignore_the_order_of_tied_neighbours(seed, f, extra, copies, bad):
    """The neighbour lists may order equal distances in any way (the library takes numpy's
    unstable sort): with many exact ties (small integer vectors, repeated rows, bad rows) the
    choices equal those made from lists with ties by increasing and by decreasing index."""
    from byzlearn.aggregators._gram import Inputs
    from byzlearn.aggregators.rules import bulyan as bulyan_module

    n = 4 * f + 3 + extra
    rng = np.random.default_rng(seed)
    X = rng.integers(-2, 3, size=(n, 3)).astype(np.float64)
    X[: min(copies, n)] = X[n - 1]  # identical rows, as an attack sends them
    X[rng.choice(n, min(bad, f), replace=False)] = np.nan
    inputs = Inputs.from_matrix(torch.from_numpy(X))
    theta = max(1, n - 2 * f)
    chosen = bulyan_module._iterated_krum(inputs, f, theta)
    D = inputs.sqdist().numpy().copy()
    np.fill_diagonal(D, np.inf)
    good = ~inputs.bad.numpy()
    increasing = np.argsort(D, axis=1, kind="stable")
    decreasing = n - 1 - np.argsort(D[:, ::-1], axis=1, kind="stable")
    for order in (increasing, decreasing):
        again = bulyan_module._iterated_krum_kernel(D, order, good, f, theta,
                                                    bulyan_module._RECHECK)
        assert [int(c) for c in again] == chosen
