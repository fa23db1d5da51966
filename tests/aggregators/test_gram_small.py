"""The small-input Gram path (_gram_small): against numpy references, and against the general
pass it replaces (the same statistics, bit for bit)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import byzlearn.aggregators as agg
from byzlearn.aggregators import _gram_kernel, _gram_small
from byzlearn.aggregators._gram import Inputs


# ------------------------------------------------------------------ independent references
def reference_sqdist(X: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Squared distances by explicit float64 differences, loops over pairs; +inf to and from
    the ``bad`` rows, 0 on the diagonal."""
    Y = X.astype(np.float64)
    n = Y.shape[0]
    D = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            D[i, j] = np.inf if bad[i] or bad[j] else np.sum((Y[i] - Y[j]) ** 2)
    return D


def reference_bad(X: np.ndarray) -> np.ndarray:
    """Rows holding a NaN/Inf (what the rules exclude with max_missing = 0, or when the row
    misses more than max_missing of its coordinates)."""
    return ~np.isfinite(X).all(axis=1)


def reference_krum_scores(D: np.ndarray, f: int) -> np.ndarray:
    """Krum scores by loops: the sum of the n - f - 2 smallest distances to the other rows."""
    n = D.shape[0]
    k = max(1, n - f - 2)
    scores = np.empty(n)
    for i in range(n):
        others = sorted(D[i, j] for j in range(n) if j != i)
        scores[i] = sum(others[:k])
    return scores


def assert_close_distances(D: np.ndarray, ref: np.ndarray, tol: float) -> None:
    assert D.shape == ref.shape
    inf = np.isinf(ref)
    assert np.array_equal(np.isinf(D), inf)
    finite = ~inf & ~np.eye(D.shape[0], dtype=bool)
    err = np.abs(D[finite] - ref[finite]) / np.maximum(ref[finite], 1e-300)
    assert err.size == 0 or float(err.max()) < tol
    assert np.all(np.diag(D) == 0)


def general_inputs(X: torch.Tensor, max_missing: float) -> Inputs:
    """The same inputs through the general pass (the small path switched off)."""
    real = _gram_small.applies
    _gram_small.applies = lambda X: False  # type: ignore[assignment]
    try:
        return Inputs.from_matrix(X, max_missing=max_missing)
    finally:
        _gram_small.applies = real  # type: ignore[assignment]


def attacked(n: int, d: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """Honest gradient-like rows (mean + noise) and f = n // 5 rows at -10 x their mean."""
    g = torch.Generator().manual_seed(seed)
    f = n // 5
    mean = torch.randn(d, generator=g, dtype=torch.float64)
    X = mean + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    X[n - f :] = -10.0 * X[: n - f].mean(dim=0)
    return X.to(dtype)


# ------------------------------------------------------------------ the path is taken
def test_small_inputs_take_the_small_path_and_large_ones_do_not():
    assert _gram_small.applies(torch.zeros(25, 4810))
    assert _gram_small.applies(torch.zeros(3, 7, dtype=torch.float64))
    assert not _gram_small.applies(torch.zeros(25, 4810).T)  # not contiguous
    assert not _gram_small.applies(torch.zeros(25, 4810, dtype=torch.float16))
    assert not _gram_small.applies(torch.zeros(2, 1 << 20))  # 2^21 values: the general pass
    assert not _gram_small.applies(torch.zeros(_gram_kernel.BLAS_MIN_ROWS, 10))  # BLAS rows
    assert _gram_small.small_gram(attacked(25, 4810, 0), 0.1) is not None


# ------------------------------------------------------------------ against numpy references
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, d", [(1, 5), (2, 3), (7, 300), (25, 4810), (60, 1000)])
def test_distances_match_explicit_differences(n, d, dtype):
    g = torch.Generator().manual_seed(n * d)
    X = (torch.randn(n, d, generator=g, dtype=torch.float64) * 3 + 1e3).to(dtype)
    assert _gram_small.applies(X)
    D = Inputs.from_matrix(X).sqdist().numpy()
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert_close_distances(D, reference_sqdist(X.numpy(), np.zeros(n, bool)), tol)


@pytest.mark.parametrize("seed", range(6))
def test_attacked_inputs_distances_and_krum_choice(seed):
    """-10 x the honest mean: the chunk means are dragged away from the honest rows (the case
    the precision check exists for); distances stay exact and Krum picks the reference's row."""
    X = attacked(25, 4810, seed)
    D = Inputs.from_matrix(X).sqdist().numpy()
    ref = reference_sqdist(X.numpy(), np.zeros(25, bool))
    assert_close_distances(D, ref, 1e-5)
    scores = reference_krum_scores(ref, 5)
    chosen = int(agg.selected_indices("krum", X, f=5)[0])
    assert scores[chosen] <= scores.min() * (1 + 1e-6)
    assert chosen < 20  # an honest row


@pytest.mark.parametrize("max_missing", [0.0, 0.1])
def test_nan_rows_and_inf_values_are_infinitely_far_and_never_chosen(max_missing):
    g = torch.Generator().manual_seed(7)
    X = torch.randn(25, 600, generator=g)
    X[3] = float("nan")  # a NaN row: bad under any budget
    X[11, :200] = float("inf")  # a third of the row missing: over a 10 % budget
    X[17, 5] = float("nan")  # one missing value: bad only with max_missing = 0
    inputs = Inputs.from_matrix(X, max_missing=max_missing)
    expected_bad = reference_bad(X.numpy())
    if max_missing > 0:  # row 17 is within the budget: imputed (by the general pass)
        expected_bad[17] = False
        assert _gram_small.small_gram(X, max_missing) is None
        assert inputs.missing is not None
        return
    assert _gram_small.small_gram(X, max_missing) is not None
    assert np.array_equal(inputs.bad.numpy(), expected_bad)
    D = inputs.sqdist().numpy()
    assert_close_distances(D, reference_sqdist(X.numpy(), expected_bad), 1e-5)
    ref_scores = reference_krum_scores(reference_sqdist(X.numpy(), expected_bad), 5)
    chosen = int(agg.selected_indices("krum", X, f=5, max_missing=max_missing)[0])
    assert not expected_bad[chosen]
    assert ref_scores[chosen] <= ref_scores[np.isfinite(ref_scores)].min() * (1 + 1e-6)


def test_rows_over_the_budget_stay_on_the_small_path():
    g = torch.Generator().manual_seed(8)
    X = torch.randn(10, 300, generator=g)
    X[2] = float("nan")
    X[5, :100] = -float("inf")
    small = _gram_small.small_gram(X, 0.1)
    assert small is not None
    gram, cache = small
    assert gram.bad.tolist() == [i in (2, 5) for i in range(10)]
    assert_close_distances(
        cache["sqdist"].numpy(), reference_sqdist(X.numpy(), gram.bad.numpy()), 1e-5
    )


def test_every_row_bad_and_a_single_row():
    X = torch.full((4, 10), float("nan"))
    inputs = Inputs.from_matrix(X, max_missing=0.0)
    assert inputs.bad.all()
    D = inputs.sqdist().numpy()
    assert np.all(np.isinf(D[~np.eye(4, dtype=bool)])) and np.all(np.diag(D) == 0)
    one = Inputs.from_matrix(torch.ones(1, 5))
    assert one.sqdist().tolist() == [[0.0]] and not one.bad.any()


def test_overflowing_products_take_the_general_path():
    X = torch.ones(5, 50)
    X[1, 0] = 3e30  # finite in float32, its square is not
    assert _gram_small.small_gram(X, 0.1) is None
    inputs = Inputs.from_matrix(X)  # the block redone in float64: measurable there
    assert not inputs.bad.any()
    assert_close_distances(
        inputs.sqdist().numpy(), reference_sqdist(X.numpy(), np.zeros(5, bool)), 1e-6
    )


def test_a_row_missing_exactly_the_budget_is_imputed():
    X = torch.randn(8, 100, generator=torch.Generator().manual_seed(9))
    X[4, :10] = float("nan")  # 10 of 100 coordinates: exactly max_missing = 0.1
    assert _gram_small.small_gram(X, 0.1) is None
    assert not Inputs.from_matrix(X, max_missing=0.1).bad.any()
    X[4, 10] = float("nan")  # one more: over the budget, a bad row on the small path
    assert _gram_small.small_gram(X, 0.1) is not None
    assert Inputs.from_matrix(X, max_missing=0.1).bad.tolist() == [i == 4 for i in range(8)]


@pytest.mark.parametrize("seed", range(5))
def test_finish_against_numpy(seed):
    """The compiled layout, distances and the precision check's medians, against numpy on the
    statistics of random upper-triangular products (negative distances from rounding clamped
    at 0, bad rows +inf, the lower median of the norms and the distance scale: each good row's
    lower median distance to the others, their lower median)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 20))
    A = rng.normal(size=(n, 5))
    G = A @ A.T
    G[0, 1] = G[1, 0] = 0.5 * (G[0, 0] + G[1, 1]) + 1e-3  # a negative distance before clamping
    acc = np.triu(G) + np.triu(rng.normal(size=(n, n)), 1).T  # junk below the diagonal
    dots = rng.normal(size=n)
    bad = rng.random(n) < 0.3
    bad[:2] = False
    aug, D, medians = np.zeros((n + 1, n + 1)), np.empty((n, n)), np.zeros(2)
    rows = np.arange(n, dtype=np.int64)
    assert _gram_small._finish(acc, dots, 2.5, rows, bad.copy(), aug, D, medians)
    keep = ~bad
    ref_aug = np.zeros((n + 1, n + 1))
    ref_aug[:n, :n] = np.where(keep[:, None] & keep[None, :], G, 0.0)
    ref_aug[:n, n] = ref_aug[n, :n] = np.where(keep, dots, 0.0)
    ref_aug[n, n] = 2.5
    assert np.array_equal(aug, ref_aug)
    ref_D = np.maximum(np.diag(G)[:, None] + np.diag(G)[None, :] - 2 * G, 0.0)
    ref_D[bad, :] = np.inf
    ref_D[:, bad] = np.inf
    np.fill_diagonal(ref_D, 0.0)
    assert np.array_equal(D, ref_D) and D[0, 1] == 0.0
    good = np.flatnonzero(keep)
    norms = np.sort(np.diag(G)[good])
    rows = np.sort(
        [sorted(ref_D[i, j] for j in good if j != i)[(len(good) - 2) // 2] for i in good]
    )
    assert medians[0] == norms[(len(norms) - 1) // 2]
    assert medians[1] == rows[(len(rows) - 1) // 2]


# ------------------------------------------------------------------ the general pass, to the bit
def small_gram_recording(X: torch.Tensor, max_missing: float) -> tuple:
    """``small_gram(X, max_missing)`` and the central rows its refinement was centred on."""
    centred_on_row = _gram_small._centred_on_row
    calls: list[int] = []

    def recorded(Xn, row):
        calls.append(row)
        return centred_on_row(Xn, row)

    _gram_small._centred_on_row = recorded  # type: ignore[assignment]
    try:
        return _gram_small.small_gram(X, max_missing), calls
    finally:
        _gram_small._centred_on_row = centred_on_row  # type: ignore[assignment]


def assert_same_as_general(X: torch.Tensor, max_missing: float) -> None:
    fast = Inputs.from_matrix(X, max_missing=max_missing)
    slow = general_inputs(X, max_missing)
    assert torch.equal(fast.base.aug, slow.base.aug)
    assert torch.equal(fast.bad, slow.bad)
    assert torch.equal(fast.sqdist(), slow.sqdist())


@pytest.mark.parametrize("seed", range(4))
def test_refinement_runs_as_in_the_general_pass(seed):
    """Two far clusters of 8 and 4 rows: rows far from the chunk means compared with their
    spread (most distances are within a cluster), so the precision check asks for a second
    pass centred on the central row."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(12, 900, generator=g)
    X[:8] += 1e3
    X[8:] -= 1e3
    assert _gram_small.small_gram(X, 0.1, refine=False) is not None
    small, calls = small_gram_recording(X, 0.1)
    assert small is not None and "sqdist" in small[1]  # refined on the small path, D cached
    assert len(calls) == 1 and calls[0] < 8  # centred on a row of the large cluster
    assert_same_as_general(X, 0.1)
    # exact near the central row (the large cluster), as the general pass promises
    D = Inputs.from_matrix(X).sqdist().numpy()[:8, :8]
    assert_close_distances(D, reference_sqdist(X[:8].numpy(), np.zeros(8, bool)), 1e-5)


@pytest.mark.parametrize("n", [5, 10, 25, 30])
@pytest.mark.parametrize("nan_row", [False, True])
def test_attacked_rounds_refine_on_the_small_path_to_the_general_bits(n, nan_row):
    """Gradient-like float32 rows under the -10 x mean attack fail the precision check (float64
    rows pass it): the pass centred on the central row runs on the small path (its distances
    cached), with the general pass's statistics to the bit; NaN rows (before and after the
    centre row, whose own entries the centred pass leaves out) stay bad and are never the
    centre."""
    X = attacked(n, 777, seed=n)
    if nan_row:
        X[1] = float("nan")
        X[n - 2] = float("nan")
    small, calls = small_gram_recording(X, 0.1)
    assert small is not None and "sqdist" in small[1]
    assert len(calls) == 1 and not (nan_row and calls[0] == 1)
    assert_same_as_general(X, 0.1)
    assert_same_as_general(X, 0.0)


def test_a_centred_pass_the_small_path_cannot_finish_goes_to_the_general_path(monkeypatch):
    """Products that overflow only once centred on a row (a far row of 1e19s in float32: its
    square overflows the input precision) leave the centred pass to the general path's float64
    redo, with the same statistics as the general pass."""
    X = attacked(10, 300, seed=1)
    Xn = X.numpy()
    assert _gram_small._centred_on_row(Xn, 0) is not None
    far = X.clone()
    far[9] = 3e19
    assert _gram_small._centred_on_row(far.numpy(), 0) is None
    monkeypatch.setattr(_gram_small, "kernel_block_size", lambda n, rows, nbytes: 10)
    assert _gram_small._centred_on_row(Xn, 0) is None  # (a block shorter than d)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 30),
    d=st.integers(1, 700),
    seed=st.integers(0, 10_000),
    scale=st.sampled_from([1e-3, 1.0, 1e4]),
    offset=st.sampled_from([0.0, 1.0, 1e5]),
    double=st.booleans(),
    damage=st.lists(
        st.tuples(st.integers(0, 29), st.sampled_from(["nan", "inf", "ipm", "far", "copy"])),
        max_size=4,
    ),
    max_missing=st.sampled_from([0.0, 0.1, 0.5]),
)
def test_same_statistics_as_the_general_pass(
    n, d, seed, scale, offset, double, damage, max_missing
):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * scale + offset
    for row, kind in damage:
        i = row % n
        if kind == "nan":
            X[i] = np.nan
        elif kind == "inf":
            X[i, rng.integers(0, d)] = np.inf
        elif kind == "ipm":  # (a column holding +inf and -inf, or only NaN, has a NaN mean)
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice"
                X[i] = -10 * np.nanmean(X, axis=0)
        elif kind == "copy":  # a near-duplicate of another row
            X[i] = X[(i + 1) % n] * (1 + 1e-7)
        else:
            X[i] *= 1e4
    T = torch.from_numpy(X).to(torch.float64 if double else torch.float32)
    assert_same_as_general(T, max_missing)


@pytest.mark.parametrize("in_cache", [False, True])
def test_same_statistics_as_the_general_pass_at_either_tile_width(in_cache, monkeypatch):
    """The small path's buffer is as wide as the general pass's for the same input (two chunks,
    or four for an input in the last-level cache): the same bits either way, over several
    passes of the tiles, a NaN row and an attack."""
    monkeypatch.setattr(_gram_kernel, "_wide_in_cache", lambda nbytes: in_cache)
    width = (4 if in_cache else 2) * _gram_kernel.LANES
    X = attacked(25, 4810, seed=3)
    X[7] = float("nan")
    for T in (X, X.double(), attacked(10, 2 * width + 5, seed=4)):
        assert_same_as_general(T, 0.1)
        n = T.shape[0]
        buffer = _gram_small._buffer(n, T.numpy().dtype, T.numel() * T.element_size())
        assert buffer.shape[1] == width


def test_the_reused_buffer_gives_each_input_its_own_statistics():
    # the kernel's buffer is kept per (n, dtype) and thread: a call right after another on
    # different values (NaN rows, wider rows, other dtype) must not see what the first left
    first = attacked(25, 600, seed=1)
    first[3] = float("nan")
    later = attacked(25, 480, seed=2)
    for X in (first, later, first.double(), later, first):
        assert_same_as_general(X, 0.1)


def test_threads_each_use_their_own_buffer():
    import threading

    inputs = [attacked(25, 4000 + 64 * k, seed=k) for k in range(4)]
    expected = [general_inputs(X, 0.1).gram.aug for X in inputs]
    failures: list[int] = []

    def work(k: int) -> None:
        for _ in range(20):
            got = Inputs.from_matrix(inputs[k], max_missing=0.1).gram.aug
            if not torch.equal(got, expected[k]):
                failures.append(k)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_the_buffers_kept_per_thread_stay_few():
    for n in range(3, 3 + 3 * _gram_small._MAX_BUFFERS):
        assert_same_as_general(attacked(n, 300, seed=n), 0.1)
    assert len(_gram_small._BUFFERS.by_rows) <= _gram_small._MAX_BUFFERS
