"""The compiled n x n statistics after a Gram pass (``_gram_finish``) against plain numpy, and
the tiles' last group of one or two rows (no products with the padding rows)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from byzlearn.aggregators import _gram_finish, _gram_kernel


def gram_with_bad_rows(n: int, seed: int, bad_count: int) -> tuple[np.ndarray, np.ndarray]:
    """An (n + 1) x (n + 1) centred Gram layout of random rows (some far) and a bad mask."""
    rng = np.random.default_rng(seed)
    Y = rng.standard_normal((n + 1, 12))
    Y[: n // 3] *= 30.0
    aug = Y @ Y.T
    bad = np.zeros(n, dtype=bool)
    bad[rng.permutation(n)[:bad_count]] = True
    return aug, bad


def reference_distances(aug, bad):
    n = bad.size
    D = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            if i == j:
                D[i, j] = 0.0
            elif bad[i] or bad[j]:
                D[i, j] = math.inf
            else:
                D[i, j] = max((aug[i, i] + aug[j, j]) - 2.0 * aug[i, j], 0.0)
    good = [i for i in range(n) if not bad[i]]
    if len(good) < 2:
        return D, 0.0, 0.0
    norms = sorted(aug[i, i] for i in good)
    # the distance scale: each good row's lower median distance to the other good rows, then
    # the lower median of those
    rows = sorted(sorted(D[i, j] for j in good if j != i)[(len(good) - 2) // 2] for i in good)
    return D, norms[(len(norms) - 1) // 2], rows[(len(rows) - 1) // 2]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), seed=st.integers(0, 1000), bad_count=st.integers(0, 6))
def test_distances_and_medians_match_loops(n, seed, bad_count):
    aug, bad = gram_with_bad_rows(n, seed, min(bad_count, n))
    D, norm_median, distance_scale = _gram_finish.distances(aug, bad)
    ref_D, ref_norm, ref_scale = reference_distances(aug, bad)
    np.testing.assert_array_equal(D, ref_D)  # the same operations: the same bits
    assert (norm_median, distance_scale) == (ref_norm, ref_scale)


def test_distances_clamp_negative_values_at_zero():
    aug = np.array([[1.0, 1.0 + 1e-9, 0.0], [1.0 + 1e-9, 1.0, 0.0], [0.0, 0.0, 0.0]])
    D, _, distance_scale = _gram_finish.distances(aug, np.zeros(2, dtype=bool))
    assert D[0, 1] == D[1, 0] == 0.0 and distance_scale == 0.0


def test_distances_keep_a_nan_entry_as_torch_clamp_does():
    aug, bad = gram_with_bad_rows(4, 1, 0)
    aug[0, 2] = aug[2, 0] = np.nan
    D, _, _ = _gram_finish.distances(aug, bad)
    assert np.isnan(D[0, 2]) and np.isnan(D[2, 0])
    assert np.isfinite(np.delete(D.reshape(-1), [2, 8])).all()


@pytest.mark.parametrize("seed", range(8))
def test_central_row_is_the_least_sum_over_the_closest_half(seed):
    n = 3 + 5 * seed
    aug, bad = gram_with_bad_rows(n, seed, seed % 3)
    D, _, _ = _gram_finish.distances(aug, bad)
    good = [i for i in range(n) if not bad[i]]
    half = max(1, (len(good) + 1) // 2)
    scores = {i: sum(sorted(D[i, j] for j in good)[:half]) for i in good}  # increasing order
    best = min(scores.values())
    assert _gram_finish.central_row(D, bad) == min(i for i in good if scores[i] == best)


def test_mask_bad_flags_overflowed_norms_and_zeroes_bad_rows():
    aug, bad = gram_with_bad_rows(6, 0, 1)
    aug[4, 4] = np.inf  # a squared norm that overflowed across blocks
    first_bad = int(np.flatnonzero(bad)[0])
    _gram_finish.mask_bad(aug, bad)
    assert bad[4] and bad[first_bad] and bad.sum() == 1 + (first_bad != 4)
    for i in np.flatnonzero(bad):
        assert not aug[i].any() and not aug[:, i].any()
    assert np.isfinite(aug).all() and aug[6, 6] > 0  # the centre's entry is kept


@pytest.mark.parametrize("active", range(1, 10))
def test_tiles_leave_the_padding_rows_out(active):
    """The 3 x 3 tiles on a buffer whose rows after the active ones hold junk (as in a span
    that leaves flagged rows out): the active entries are the products of the active rows,
    whether the last group holds one, two or three of them (its own shorter tiles)."""
    rng = np.random.default_rng(active)
    R = _gram_kernel.padded_rows(active)
    C = _gram_kernel.aligned_zeros((R, _gram_kernel.tile_lanes(R)), np.float64)
    C[:] = rng.standard_normal(C.shape)
    C[active:] = np.nan  # junk that would spoil any entry it entered
    acc = np.zeros((R, R))
    rows = np.arange(active, dtype=np.int64)
    _gram_kernel._add_tiles(C, acc, C.reshape(-1), rows, 0, C.shape[1], 0)
    A = C[:active]
    upper = np.triu(np.ones((active, active), dtype=bool))
    np.testing.assert_allclose(acc[:active, :active][upper], (A @ A.T)[upper], rtol=1e-12)


@pytest.mark.parametrize("max_missing", [0.0, 0.1])
@pytest.mark.parametrize(
    "kind", ["honest", "nan_row", "lossy_row", "overflow", "mean10", "inf_value"]
)
def test_general_pass_caches_the_distances_torch_computes(kind, max_missing):
    """Past 2^21 values the general pass caches the compiled distances for the rule: they
    equal the torch formula on its centred Gram matrix (+inf to and from bad rows), whatever
    the input did to the pass (NaN rows, imputed rows, products redone in float64, a dragged
    mean, an infinite value)."""
    import torch

    from byzlearn.aggregators._gram import Inputs, sqdist_from_gram

    rng = np.random.default_rng(len(kind))
    n = 7 + len(kind)
    X = torch.from_numpy(rng.standard_normal((n, (1 << 21) // n + 999)).astype(np.float32) + 5)
    if kind == "nan_row":
        X[0] = float("nan")
    elif kind == "lossy_row":
        X[1, :50] = float("nan")
    elif kind == "overflow":
        X[2, 7] = 3e30
    elif kind == "mean10":
        X[: n // 5] = -10 * X[n // 5 :].mean(0)
    elif kind == "inf_value":
        X[-1, 3] = float("inf")
    inputs = Inputs.from_matrix(X, max_missing=max_missing)
    cached = inputs.sqdist()
    expected = sqdist_from_gram(inputs.centred_gram().clone())
    expected[inputs.bad, :] = float("inf")
    expected[:, inputs.bad] = float("inf")
    expected.fill_diagonal_(0.0)
    assert torch.equal(cached, expected)
    # a NaN row is bad; a row missing a few values is bad only with max_missing = 0 (else its
    # values are imputed)
    lossy = kind in {"lossy_row", "inf_value"}
    assert bool(inputs.bad.any()) == (kind == "nan_row" or (lossy and max_missing == 0.0))


def loop_central_row(D, bad):
    """The central row as a loop: each good row's closest half sorted and summed from the left,
    the first good row kept unless a later one scores strictly less (a NaN score never does)."""
    good = [i for i in range(len(bad)) if not bad[i]]
    if not good:
        return 0
    half = max(1, (len(good) + 1) // 2)
    best, best_score = None, None
    for i in good:
        score = 0.0
        for v in np.sort(D[i])[:half]:
            score += v
        if best is None or score < best_score:
            best, best_score = i, score
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("nan_row", [None, 0, 2])
def test_central_row_with_nan_distances_and_ties_matches_a_loop(seed, nan_row):
    rng = np.random.default_rng(seed)
    n = 4 + 3 * seed
    X = np.round(rng.standard_normal((n, 3)) * 2) / 2  # ties between scores
    aug = np.zeros((n + 1, n + 1))
    aug[:n, :n] = X @ X.T
    bad = np.zeros(n, dtype=bool)
    bad[rng.permutation(n)[: seed % 3]] = True
    _gram_finish.mask_bad(aug, bad)
    D, _, _ = _gram_finish.distances(aug, bad)
    if nan_row is not None:  # NaN distances in a whole row: its closest half holds one
        D[nan_row, np.arange(n) != nan_row] = np.nan
        assert np.isnan(np.sort(D[nan_row])[: max(1, (n - bad.sum() + 1) // 2)]).any()
    assert _gram_finish.central_row(D, bad) == loop_central_row(D, bad)


def test_central_row_of_all_bad_rows_is_row_zero():
    D = np.full((3, 3), np.inf)
    np.fill_diagonal(D, 0.0)
    assert _gram_finish.central_row(D, np.ones(3, dtype=bool)) == 0


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.sampled_from([-math.inf, -2.0, -1.0, 0.0, 0.5, 1.0, 3.0, math.inf])
        | st.floats(-1e6, 1e6),
        min_size=1,
        max_size=40,
    ),
    data=st.data(),
)
def test_kth_smallest_matches_numpy_partition(values, data):
    """The compiled selection (no numpy sort or partition inside: those cost seconds of numba
    compilation on every first call) picks np.partition's k-th value, ties and infinities
    included."""
    a = np.array(values)
    k = data.draw(st.integers(0, a.size - 1))
    m = a.size
    padded = np.concatenate([a, [7.0, -7.0]])  # entries past m are left alone
    assert _gram_finish._kth_smallest(padded, m, k) == np.partition(a, k)[k]
    assert sorted(padded[:m]) == sorted(a) and list(padded[m:]) == [7.0, -7.0]


@pytest.mark.parametrize("rounds", [0, 1, 2])
def test_kth_smallest_sorts_what_is_left_after_its_rounds(monkeypatch, rounds):
    """The fallback after the selection's rounds (an insertion sort of the range left), run
    through the Python function with the round limit lowered so that it is reached."""
    monkeypatch.setattr(_gram_finish, "_SELECTION_ROUNDS", rounds)
    rng = np.random.default_rng(rounds)
    for _ in range(50):
        a = rng.integers(-5, 5, size=int(rng.integers(1, 30))).astype(float)
        k = int(rng.integers(0, a.size))
        b = a.copy()
        assert _gram_finish._kth_smallest.py_func(b, a.size, k) == np.partition(a, k)[k]
        assert sorted(b) == sorted(a)
