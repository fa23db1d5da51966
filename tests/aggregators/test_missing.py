"""Distance-based rules on inputs with missing coordinates (lossy links, NaN-sending attackers).

Policy under test (module docstring of ``byzlearn.aggregators._gram``): a row missing at most
``max_missing`` of its coordinates stays in; each missing value is imputed with the median of
its column over the rows carrying it, and the row's distances are charged the column's robust
spread ``s_k^2 = (1.4826 MAD_k)^2``; rows missing more are infinitely far.
"""

from __future__ import annotations

import math
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import byzlearn.aggregators as agg
from byzlearn.aggregators import _gram, _gram_kernel
from byzlearn.aggregators._gram import Inputs


def reference_distances(
    X: np.ndarray, max_missing: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(D, imputed X, bad) by the written policy: numpy, loops over columns and pairs."""
    n, d = X.shape
    miss = ~np.isfinite(X)
    bad = miss.sum(axis=1) > max_missing * d
    Xh = X.copy()
    c = np.zeros(n)
    for k in range(d):
        if not miss[:, k].any():
            continue
        carried = [X[i, k] for i in range(n) if not miss[i, k] and not bad[i]]
        med = float(np.median(carried)) if carried else 0.0
        mad = float(np.median(np.abs(np.array(carried) - med))) if carried else 0.0
        s2 = (1.4826 * mad) ** 2
        for i in range(n):
            if miss[i, k]:
                Xh[i, k] = med
                c[i] += s2
    D = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            if bad[i] or bad[j]:
                D[i, j] = np.inf
            else:
                D[i, j] = np.sum((Xh[i] - Xh[j]) ** 2) + c[i] + c[j]
    return D, Xh, bad


def _lossy(n: int, d: int, p: float, seed: int, offset: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64) + offset
    X[torch.rand(n, d, generator=g) < p] = math.nan
    return X


@pytest.mark.parametrize("small_blocks", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_distances_follow_the_written_policy(monkeypatch, small_blocks, dtype):
    if small_blocks:  # several kernel blocks (512 coordinates), each with its own missing values
        monkeypatch.setattr(_gram, "_KERNEL_BLOCK_ELEMENTS", 1)
        monkeypatch.setattr(_gram_kernel, "_WIDE_WHEN_CACHED", False)
    X = _lossy(9, 700, 0.03, seed=1, offset=2.0)
    if small_blocks:  # a row's budget is checked block by block: one with no value at all
        X[4] = math.nan
    else:  # one block: a row over the budget is known before any median is taken
        X[4, :200] = math.nan  # 28 % missing: over the default budget of 10 %
    X = X.to(dtype)
    inputs = Inputs.from_matrix(X)
    D_ref, _, bad = reference_distances(X.double().numpy(), _gram.DEFAULT_MAX_MISSING)
    assert inputs.bad.numpy().tolist() == bad.tolist() == [i == 4 for i in range(9)]
    D = inputs.sqdist().numpy()
    good = ~bad
    rtol = 1e-9 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(D[np.ix_(good, good)], D_ref[np.ix_(good, good)], rtol=rtol)
    assert np.isinf(D[4, good]).all()
    assert not torch.isnan(X).logical_not().all()  # the caller's tensor is left as it was


def test_max_missing_sets_the_exclusion_budget():
    X = _lossy(7, 400, 0.0, seed=2)
    X[1, :20] = math.nan  # 5 %
    X[2, :60] = math.nan  # 15 %
    assert Inputs.from_matrix(X).bad.tolist() == [False, False, True, False, False, False, False]
    assert Inputs.from_matrix(X, max_missing=0.2).bad.tolist() == [False] * 7
    strict = Inputs.from_matrix(X, max_missing=0.0).bad.tolist()
    assert strict == [False, True, True, False, False, False, False]
    with pytest.raises(ValueError, match="max_missing"):
        agg.krum(X, f=1, max_missing=1.5)
    with pytest.raises(TypeError, match="max_missing"):
        agg.median(X, f=1, max_missing=0.2)


def test_a_row_gains_nothing_by_hiding_coordinates():
    """Hiding coordinates S (NaN) is never closer to anyone than sending the imputed value on S,
    and the output of a rule that picks the row is the same either way."""
    X = _lossy(11, 300, 0.0, seed=3)
    byz = X.mean(dim=0) + 0.3
    hide = torch.arange(0, 300, 7)  # 43 coordinates, 14 %: within a 20 % budget
    X[10] = byz
    X[10, hide] = math.nan
    hidden = Inputs.from_matrix(X, max_missing=0.2)
    filled = X.clone()
    entries = hidden.missing
    assert entries is not None and set(entries.rows.tolist()) == {10}
    filled[10, entries.cols] = entries.values
    plain = Inputs.from_matrix(filled)
    D_hidden, D_plain = hidden.sqdist(), plain.sqdist()
    assert bool((D_hidden[10, :10] > D_plain[10, :10]).all())  # the spread is charged
    torch.testing.assert_close(D_hidden[:10, :10], D_plain[:10, :10])
    one = torch.zeros(11, dtype=torch.float64)
    one[10] = 1.0
    torch.testing.assert_close(hidden.combine(one), filled[10])


def test_honest_distances_are_unbiased_under_random_loss():
    X = torch.randn(30, 4000, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    full = Inputs.from_matrix(X).sqdist()
    lossy = X.clone()
    lossy[torch.rand(30, 4000, generator=torch.Generator().manual_seed(5)) < 0.05] = math.nan
    est = Inputs.from_matrix(lossy).sqdist()
    off = ~torch.eye(30, dtype=torch.bool)
    ratio = (est[off] / full[off]).mean()
    assert abs(float(ratio) - 1.0) < 0.01  # imputing alone (no spread) would give about 0.95


@pytest.mark.parametrize(
    "rule",
    [
        "krum",
        "multi_krum",
        "medoid",
        "geometric_median",
        "mda",
        "bulyan",
        "centered_clipping",
        "cge",
        "nnm+krum",
        "nnm+trimmed_mean",
        "arc+krum",
        "clipping+multi_krum",
    ],
)
@pytest.mark.parametrize("loss", [0.001, 0.01])
def test_rules_stay_finite_and_close_under_coordinate_loss(rule, loss):
    """Every row loses a few coordinates (a lossy link): the output is finite everywhere and
    close to the loss-free output; the Byzantine rows are still not selected."""
    n, f, d = 23, 5, 2000
    g = torch.Generator().manual_seed(6)
    honest = torch.randn(n - f, d, generator=g, dtype=torch.float64) * 0.1 + 1.0
    X = torch.cat([honest, -10 * honest.mean(0).expand(f, d)])
    lossy = X.clone()
    lossy[torch.rand(n, d, generator=g) < loss] = math.nan
    opts = {"max_norm": 50.0} if rule.startswith("clipping") else {}
    out = agg.aggregate(rule, lossy, f=f, **opts)
    assert bool(torch.isfinite(out.vector).all())
    clean = agg.get(rule)(X, f=f, **opts)
    assert float((out.vector - clean).norm()) < 0.2 * float(clean.norm())
    if out.kept is not None and not rule.startswith("nnm"):
        assert not set(out.kept.tolist()) & set(range(n - f, n))


def test_mixed_rows_use_imputed_values():
    X = _lossy(8, 50, 0.05, seed=7, offset=1.0)
    inputs = Inputs.from_matrix(X)
    _, Xh, _ = reference_distances(X.numpy(), _gram.DEFAULT_MAX_MISSING)
    M = torch.rand(5, 8, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    np.testing.assert_allclose(inputs.mix(M).materialize().numpy(), M.numpy() @ Xh, rtol=1e-10)
    blocks = [b.clone() for _, _, b in inputs.mix(M).column_blocks(16)]
    np.testing.assert_allclose(torch.cat(blocks, dim=1).numpy(), M.numpy() @ Xh, rtol=1e-10)
    np.testing.assert_allclose(inputs.materialize().numpy(), Xh, rtol=1e-12)


@given(
    seed=st.integers(0, 10_000),
    n=st.integers(3, 12),
    p=st.sampled_from([0.0, 0.02, 0.08]),
    perm_seed=st.integers(0, 100),
)
def test_imputed_distances_are_permutation_equivariant(seed, n, p, perm_seed):
    X = _lossy(n, 64, p, seed=seed)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(perm_seed))
    D = Inputs.from_matrix(X).sqdist()
    Dp = Inputs.from_matrix(X[perm]).sqdist()
    torch.testing.assert_close(Dp, D[perm][:, perm], rtol=1e-9, atol=1e-9)


def _lossy_reference(X: np.ndarray, flagged: np.ndarray, budget: float, limit: float) -> bool:
    """A flagged row missing at most ``budget`` values and holding no finite value above
    ``limit``, by a plain loop over the rows."""
    for row, flag in zip(X, flagged, strict=True):
        finite = np.isfinite(row)
        missing = int((~finite).sum())
        huge = (np.abs(row[finite].astype(np.float64)) > limit).any()
        if flag and 0 < missing <= budget and not huge:
            return True
    return False


@given(
    missing=st.lists(st.integers(0, 40), min_size=1, max_size=4),
    huge_row=st.integers(-1, 3),
    kind=st.sampled_from(["nan", "inf", "-inf"]),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 1000),
)
def test_the_compiled_lossy_row_test_matches_a_loop(missing, huge_row, kind, dtype, seed):
    """``rows_within_budget`` (steps of 4096 values, early exits) against a loop, across the
    budget's edge, with infinities and with values too large to measure; the torch path of
    ``_some_rows_within_budget`` (used off the CPU) agrees too."""
    from byzlearn.aggregators import _gram_kernel

    rng = np.random.default_rng(seed)
    d = 9000  # three steps of the compiled count, the last one partial
    X = rng.standard_normal((len(missing), d)).astype(dtype)
    for i, count in enumerate(missing):
        X[i, rng.choice(d, size=count * 25, replace=False)] = float(kind)
    limit = _gram.measurable_limit(d)
    if dtype is np.float64 and 0 <= huge_row < len(missing):  # float32 cannot exceed it
        X[huge_row, rng.integers(d)] = 2.0 * limit
    flagged = ~np.isfinite(X).all(axis=1) | (np.abs(X.astype(np.float64)) > limit).any(axis=1)
    budget = 0.1 * d  # 900 values: the row counts above straddle it (0 to 1000)
    want = _lossy_reference(X, flagged, budget, limit)
    assert _gram_kernel.rows_within_budget(X, flagged, budget, limit) == want
    Xt, flags = torch.from_numpy(X), torch.from_numpy(flagged)
    assert _gram._some_rows_within_budget(Xt, flags, 0.1) == want
    with mock.patch.object(_gram_kernel, "available", return_value=False):  # the torch loop
        assert _gram._some_rows_within_budget(Xt, flags, 0.1) == want


@pytest.mark.parametrize("n", [1, 2, 5, 26])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_column_medians_are_numpys_over_the_values_present(n, dtype):
    """The imputation's medians (the selection kernel on the CPU) against numpy's median of
    each column's non-NaN values; a column without any stays NaN (imputed as 0 by the caller)."""
    g = torch.Generator().manual_seed(n)
    V = torch.randn(n, 300, generator=g, dtype=torch.float64).to(dtype)
    V[torch.rand(n, 300, generator=g) < 0.3] = math.nan
    V[:, 7] = math.nan
    got = _gram._column_medians(V)
    for k in range(300):
        col = V[:, k].double().numpy()
        col = col[~np.isnan(col)]
        if col.size == 0:
            assert math.isnan(float(got[k]))
        else:
            assert float(got[k]) == pytest.approx(float(np.median(col)), rel=1e-6, abs=0)
    torch.testing.assert_close(
        got, torch.nanquantile(V.double(), 0.5, dim=0).to(dtype), equal_nan=True
    )
    # other layouts take torch's nanquantile, with the same answers
    torch.testing.assert_close(_gram._column_medians(V.t().contiguous().t()), got, equal_nan=True)


def test_a_row_over_the_budget_in_an_early_block_stays_out_of_later_medians(monkeypatch):
    """Blocks of 1024 coordinates: row 5 goes over its budget (31 > 30.72 missing) in the first
    block, row 3 (the most central) loses 10 coordinates in the third. Row 5 is known to be bad
    when the third block is read, so the medians that fill row 3's holes leave it out, as the
    written policy does (found by mutation testing: its count stopped at the block where it
    went over, so later blocks took it for a row within its budget and its values moved those
    medians)."""
    monkeypatch.setattr(_gram, "_BLOCK_ELEMENTS", 1)  # the imputing pass: 1024 columns a block
    X = _lossy(9, 3072, 0.0, seed=5, offset=1.0)
    X[3] = X[[0, 1, 2, 4, 6, 7, 8]].mean(dim=0)
    X[5, 100:131] = math.nan
    X[3, 2100:2110] = math.nan
    D_ref, Xh, bad = reference_distances(X.numpy(), 0.01)
    assert bad.tolist() == [i == 5 for i in range(9)]
    inputs = Inputs.from_matrix(X, max_missing=0.01)
    assert inputs.bad.tolist() == bad.tolist()
    good = ~bad
    np.testing.assert_allclose(
        inputs.sqdist().numpy()[np.ix_(good, good)], D_ref[np.ix_(good, good)], rtol=1e-9
    )
    out = agg.medoid(X, f=1, max_missing=0.01)  # row 3, its holes filled by the medians
    np.testing.assert_allclose(out.numpy(), Xh[3], rtol=1e-12)
    moved = X.clone()
    moved[5, 2048:] += 1000.0  # the bad row's values after it went over: no effect
    assert torch.equal(agg.medoid(moved, f=1, max_missing=0.01), out)
