"""The shared Gram pass: distances, norms and mixing against explicit float64 differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from byzlearn.aggregators import _gram, _gram_finish, _gram_kernel
from byzlearn.aggregators._device import accelerator_path
from byzlearn.aggregators._gram import Inputs, block_size, column_blocks, weighted_rows


def explicit_sqdist(X: torch.Tensor) -> np.ndarray:
    """Pairwise squared distances by explicit differences, float64, loops over pairs."""
    Y = X.double().numpy()
    n = Y.shape[0]
    D = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            D[i, j] = np.sum((Y[i] - Y[j]) ** 2)
    return D


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    off = ~np.eye(a.shape[0], dtype=bool)
    return float(np.max(np.abs(a[off] - b[off]) / np.maximum(np.abs(b[off]), 1e-300)))


@pytest.mark.parametrize("n", [2, 3, 25, 26, 60])
@pytest.mark.parametrize("offset", [0.0, 1e3, 1e6])
def test_distances_match_explicit_differences(n, offset):
    g = torch.Generator().manual_seed(n)
    X = (torch.randn(n, 777, generator=g, dtype=torch.float64) + offset).float()
    D = Inputs.from_matrix(X).sqdist().numpy()
    # float32 inputs: each squared distance is a sum of d squared differences of float32
    # values, so a few float32 ulps of relative error is the floor.
    assert rel_err(D, explicit_sqdist(X)) < 1e-5


def test_distances_with_a_huge_common_component_are_exact_in_float64():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(30, 2000, generator=g, dtype=torch.float64) * 1e-3 + 1e8
    D = Inputs.from_matrix(X).sqdist().numpy()
    assert rel_err(D, explicit_sqdist(X)) < 1e-6


def test_one_far_outlier_does_not_spoil_the_other_distances():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(25, 500, generator=g)
    X[7] = 1e15
    D = Inputs.from_matrix(X).sqdist().numpy()
    ref = explicit_sqdist(X)
    keep = np.arange(25) != 7
    assert rel_err(D[np.ix_(keep, keep)], ref[np.ix_(keep, keep)]) < 1e-5
    assert np.all(D[7, keep] > 1e30)


def test_distances_across_many_blocks():
    n = 4
    d = block_size(n, 10**9, torch.device("cpu")) * 2 + 123
    assert len(column_blocks(d, block_size(n, d, torch.device("cpu")))) == 3
    g = torch.Generator().manual_seed(2)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    X[:, : d // 2] += 50.0  # blocks with different common components
    D = Inputs.from_matrix(X).sqdist().numpy()
    assert rel_err(D, explicit_sqdist(X)) < 1e-10


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), -float("inf"), 1e200])
def test_non_finite_or_overflowing_rows_are_infinitely_far(bad_value):
    """With max_missing = 0 one missing value makes a row bad; a value too large to measure
    always does (the imputation policy for missing values is tested in test_missing.py)."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(6, 300, generator=g, dtype=torch.float64)
    X[2, 17] = bad_value
    inputs = Inputs.from_matrix(X, max_missing=0.0)
    assert inputs.bad.tolist() == [False, False, True, False, False, False]
    D = inputs.sqdist().numpy()
    assert np.all(np.isinf(np.delete(D[2], 2))) and D[2, 2] == 0.0
    keep = np.arange(6) != 2
    assert rel_err(D[np.ix_(keep, keep)], explicit_sqdist(X[keep])) < 1e-10
    assert torch.isinf(inputs.sqnorms()[2])


def test_mixing_algebra_matches_materialised_rows():
    g = torch.Generator().manual_seed(4)
    X = torch.randn(7, 90, generator=g, dtype=torch.float64) + 3.0
    inputs = Inputs.from_matrix(X)
    M = torch.rand(5, 7, generator=g, dtype=torch.float64)
    mixed = inputs.mix(M)
    Y = M @ X
    torch.testing.assert_close(mixed.materialize(), Y)
    np.testing.assert_allclose(mixed.sqdist().numpy(), explicit_sqdist(Y), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(mixed.sqnorms().numpy(), (Y**2).sum(1).numpy(), rtol=1e-9)
    sub = mixed.subset([4, 0])
    torch.testing.assert_close(sub.materialize(), Y[[4, 0]])
    alpha = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    torch.testing.assert_close(mixed.subset([0, 1, 2]).combine(alpha), alpha @ Y[:3])


def test_gram_centred_on_a_given_centre():
    g = torch.Generator().manual_seed(5)
    X = torch.randn(5, 40, generator=g, dtype=torch.float64)
    c = torch.randn(40, generator=g, dtype=torch.float64)
    inputs = Inputs.from_matrix(X, centre=c)
    np.testing.assert_allclose(inputs.sqdist().numpy(), explicit_sqdist(X), rtol=1e-10)
    torch.testing.assert_close(inputs.centred_gram(), (X - c) @ (X - c).T)


@given(
    rows=st.lists(st.integers(0, 5), min_size=1, max_size=6, unique=True),
    seed=st.integers(0, 2**16),
)
def test_weighted_rows_matches_dense_product(rows, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(6, 33, generator=g)
    w = torch.zeros(6, dtype=torch.float64)
    w[rows] = torch.rand(len(rows), generator=g, dtype=torch.float64) + 0.1
    expected = (w.float()[:, None] * X).sum(0)
    torch.testing.assert_close(weighted_rows(X, w), expected, rtol=1e-5, atol=1e-5)


def test_weighted_rows_of_nothing_is_zero():
    X = torch.randn(3, 4)
    assert torch.equal(weighted_rows(X, torch.zeros(3, dtype=torch.float64)), torch.zeros(4))


def torch_pass_gram(X, centre=None, centre_row=None):
    """The Gram statistics through the torch path (the one other devices use)."""
    acc, bad = _gram._torch_pass(X, centre, centre_row)
    return acc, bad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["mean", "centre", "row"])
@pytest.mark.parametrize("n", [1, 2, 4, 25, 31, 40, 70, 127, 130])
@pytest.mark.parametrize("in_cache", [False, True])
def test_kernel_pass_matches_float64_products(dtype, mode, n, in_cache, monkeypatch):
    """The numba pass (3 x 3 tiles, 4 x 4 from ``BIG_TILE_ROWS`` buffer rows, chunks, threads)
    against centred float64 products; a pass of the tiles spans two chunks, from 28 buffer rows
    on (and on an input in the last-level cache, ``in_cache``) four, each centred on its own
    centre."""
    monkeypatch.setattr(_gram, "_KERNEL_BLOCK_ELEMENTS", 1)  # blocks of one pass of the tiles
    monkeypatch.setattr(_gram_kernel, "_wide_in_cache", lambda nbytes: in_cache)
    g = torch.Generator().manual_seed(n)
    d = 3 * 4 * _gram_kernel.LANES + 77  # several blocks and a partial chunk
    X = (torch.randn(n, d, generator=g, dtype=torch.float64) + 50.0).to(dtype)
    centre = torch.randn(d, generator=g, dtype=torch.float64).to(dtype) + 50.0
    kwargs = {"centre": centre} if mode == "centre" else {"centre_row": 0} if mode == "row" else {}
    try:
        torch.set_num_threads(2)
        acc, bad, _ = _gram._kernel_pass(X, kwargs.get("centre"), kwargs.get("centre_row"))
    finally:
        torch.set_num_threads(1)
    assert not bad.any()
    Xd = X.double()
    expected = np.zeros((n + 1, n + 1))
    lanes = _gram_kernel.LANES
    for j0 in range(0, d, lanes):  # the kernel's chunks, centred on (nearly) the same centres
        B = Xd[:, j0 : j0 + lanes]
        if mode == "centre":
            m = centre.double()[j0 : j0 + lanes]
        elif mode == "row":
            m = B[0]
        else:
            m = B.mean(dim=0).to(dtype).double()
        aug = torch.cat([B - m, m[None, :]]).numpy()
        expected += aug @ aug.T
    assert torch.equal(acc, acc.T)  # mirrored from the upper triangle
    unit = float(torch.finfo(dtype).eps)
    scale = float(np.abs(np.diag(expected)).max())
    np.testing.assert_allclose(acc.numpy(), expected, atol=64 * unit * scale)


@pytest.mark.parametrize(
    "zen, cache, nbytes, rows, expected",
    [
        (False, 300 << 20, 100 << 20, 9, 4),  # in the cache: the widest passes
        (False, 300 << 20, 300 << 20, 27, 4),  # exactly the cache's size
        (False, 300 << 20, (300 << 20) + 1, 27, 2),  # from memory: two chunks
        (False, None, 1 << 10, 9, 2),  # the cache's size unknown
        (True, 300 << 20, 1 << 10, 9, 2),  # AMD's Zen cores: not measured, as before
        (False, 300 << 20, 1 << 40, 28, 4),  # many rows: the widest
        (True, 300 << 20, 1 << 40, 28, 2),  # AMD's Zen cores: two chunks there too
        (True, None, None, 400, 2),
        (False, None, None, 30, 4),
        (False, 300 << 20, None, 27, 2),  # no size given
    ],
)
def test_tile_width_from_rows_and_cache(zen, cache, nbytes, rows, expected, monkeypatch):
    """Coordinates per pass of the tiles: off AMD's Zen cores four chunks from ``_MANY_ROWS``
    buffer rows on, and for fewer rows where the input fits in the last-level cache; two
    otherwise."""
    from byzlearn.aggregators import _simd

    monkeypatch.setattr(_gram_kernel, "_WIDE_WHEN_CACHED", not zen)
    monkeypatch.setattr(_gram_kernel, "_WIDE_WHEN_MANY", not zen)
    monkeypatch.setattr(_simd, "last_level_cache_bytes", lambda: cache)
    assert _gram_kernel.tile_lanes(rows, nbytes) == expected * _gram_kernel.LANES
    block = _gram.kernel_block_size(rows, rows, nbytes)
    assert block % (expected * _gram_kernel.LANES) == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (3, 256), (40, 512), (7, 13)])
def test_tile_buffer_is_aligned_and_zero(dtype, shape):
    C = _gram_kernel.aligned_zeros(shape, dtype)
    assert C.shape == shape and C.dtype == dtype and C.flags.c_contiguous
    assert C.ctypes.data % 64 == 0
    assert not C.any()


@pytest.mark.parametrize(
    "active, chunks", [(28, 2), (31, 2), (50, 2), (100, 2), (129, 2), (401, 4)]
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_both_tile_shapes_match_float64_products(active, chunks, dtype):
    """The 3 x 3 and the 4 x 4 tiles each give the upper triangle of C C^T over the active rows
    (every host compiles both: AVX-512 takes 4 x 4 from ``BIG_TILE_ROWS`` buffer rows, hosts
    with 16 vector registers never); what the padding rows' products hold is not read.
    At 401 rows of 1024 coordinates the 4 x 4 tiles take the rows in bands (``BAND_BYTES``:
    two in float32, three in float64)."""
    rng = np.random.default_rng(active)
    width = chunks * _gram_kernel.LANES
    rows = np.arange(active, dtype=np.int64)
    values = rng.standard_normal((active, width))
    reference = values @ values.T
    upper = np.triu(np.ones((active, active), dtype=bool))
    Xf = np.zeros(_gram_kernel.LANES, dtype)  # nothing to prefetch (lines = 0)
    for tile, kernel in ((3, _gram_kernel._add_tiles), (4, _gram_kernel._add_tiles4)):
        R = -(-active // tile) * tile
        C = _gram_kernel.aligned_zeros((R, width), dtype)
        C[:active] = values
        acc = np.zeros((R, R))
        kernel(C, acc, Xf, rows, 0, Xf.size, 0)
        tol = 1e-4 if dtype == np.float32 else 1e-10
        got = acc[:active, :active][upper]
        assert np.allclose(got, reference[upper], rtol=tol, atol=tol * width), tile


def test_kernel_and_torch_passes_give_the_same_distances():
    g = torch.Generator().manual_seed(9)
    X = torch.randn(11, 20_000, generator=g, dtype=torch.float64) * 3 + 1e4
    X[4] += 5.0
    kernel = Inputs.from_matrix(X).sqdist()
    assert _gram_kernel.available(X.numpy())
    acc, bad = torch_pass_gram(X)
    torch_inputs = Inputs(X=X, gram=_gram.BaseGram(aug=acc, bad=bad))
    np.testing.assert_allclose(kernel.numpy(), torch_inputs.sqdist().numpy(), rtol=1e-9)
    np.testing.assert_allclose(kernel.numpy(), explicit_sqdist(X), rtol=1e-9)


def test_non_finite_values_in_one_block_only(monkeypatch):
    """A block holding NaN goes through the slow path; the row is bad (max_missing = 0), the
    others exact."""
    monkeypatch.setattr(_gram, "_KERNEL_BLOCK_ELEMENTS", 1)
    g = torch.Generator().manual_seed(10)
    X = torch.randn(6, 5 * 4 * _gram_kernel.LANES, generator=g, dtype=torch.float64)
    X[3, 4 * _gram_kernel.LANES + 7] = math.nan  # in the second block
    inputs = Inputs.from_matrix(X, max_missing=0.0)
    assert inputs.bad.tolist() == [False, False, False, True, False, False]
    good = [0, 1, 2, 4, 5]
    D = inputs.sqdist().numpy()
    np.testing.assert_allclose(D[np.ix_(good, good)], explicit_sqdist(X[good]), rtol=1e-10)
    assert np.isinf(D[3, good]).all()


def test_inputs_the_kernel_does_not_take_use_the_torch_path():
    X = torch.randn(8, 50, dtype=torch.float64)
    assert not _gram_kernel.available(X.T.contiguous().T.numpy())  # not C-contiguous
    assert not _gram_kernel.available(X.to(torch.float16).numpy())
    Xt = X.T.contiguous().T
    np.testing.assert_allclose(
        Inputs.from_matrix(Xt).sqdist().numpy(), explicit_sqdist(X), rtol=1e-10, atol=1e-10
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_sparse_mixing_in_every_dtype(dtype):
    """Sparse mixing (bucketing) sums only the rows involved: numpy loops for float32/64, torch
    for other dtypes; a missing value stays in its coordinate."""
    g = torch.Generator().manual_seed(12)
    X = torch.randn(6, 700, generator=g).to(dtype)
    X[1, 5] = math.nan
    M = torch.zeros(3, 6, dtype=torch.float64)
    M[0, [0, 1]] = 0.5
    M[1, [2, 3]] = 0.5
    M[2, [4, 5]] = 0.5
    Y = Inputs(X=X, gram=None).mix(M).materialize()
    assert Y.dtype == dtype
    expected = M.float() @ torch.nan_to_num(X.float(), nan=0.0)
    expected[0, 5] = math.nan
    tol = {torch.float16: 2e-3, torch.float32: 1e-6, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(Y.float(), expected, rtol=tol, atol=tol, equal_nan=True)


def test_bfloat16_inputs_take_the_torch_path():
    """numpy has no bfloat16: the Gram pass must not hand such a tensor to the kernel."""
    g = torch.Generator().manual_seed(13)
    X = torch.randn(5, 300, generator=g).to(torch.bfloat16)
    D = Inputs.from_matrix(X).sqdist().numpy()
    np.testing.assert_allclose(D, explicit_sqdist(X), rtol=2e-2, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["mean", "centre", "row"])
@pytest.mark.parametrize("n", [2, 7, 40])
def test_blas_path_matches_float64_products(dtype, mode, n, monkeypatch):
    """Many rows: the kernel writes the centred block, BLAS (syrk) multiplies it."""
    monkeypatch.setattr(_gram_kernel, "BLAS_MIN_ROWS", 1)
    monkeypatch.setattr(_gram, "_BLAS_BLOCK_ELEMENTS", 1)  # blocks of 4 * LANES columns
    g = torch.Generator().manual_seed(100 + n)
    d = 3 * 4 * _gram_kernel.LANES + 77
    X = (torch.randn(n, d, generator=g, dtype=torch.float64) + 50.0).to(dtype)
    centre = torch.randn(d, generator=g, dtype=torch.float64).to(dtype) + 50.0
    kwargs = {"centre": centre} if mode == "centre" else {"centre_row": 1} if mode == "row" else {}
    acc, bad, _ = _gram._kernel_pass(X, kwargs.get("centre"), kwargs.get("centre_row"))
    assert not bad.any()
    Xd = X.double()
    expected = np.zeros((n + 1, n + 1))
    lanes = _gram_kernel.LANES
    for j0 in range(0, d, lanes):
        B = Xd[:, j0 : j0 + lanes]
        m = (
            centre.double()[j0 : j0 + lanes]
            if mode == "centre"
            else B[1]
            if mode == "row"
            else B.mean(dim=0).to(dtype).double()
        )
        aug = torch.cat([B - m, m[None, :]]).numpy()
        expected += aug @ aug.T
    assert torch.equal(acc, acc.T)
    unit = float(torch.finfo(dtype).eps)
    scale = float(np.abs(np.diag(expected)).max())
    np.testing.assert_allclose(acc.numpy(), expected, atol=256 * unit * scale)


def test_blas_path_distances_with_non_finite_rows(monkeypatch):
    monkeypatch.setattr(_gram_kernel, "BLAS_MIN_ROWS", 1)
    g = torch.Generator().manual_seed(21)
    X = torch.randn(9, 3000, generator=g, dtype=torch.float64) + 7.0
    X[2] = math.nan
    X[5, 1234] = math.inf
    inputs = Inputs.from_matrix(X, max_missing=0.0)  # strict: one missing value makes a row bad
    assert inputs.bad.tolist() == [i in (2, 5) for i in range(9)]
    good = [i for i in range(9) if i not in (2, 5)]
    D = inputs.sqdist().numpy()
    np.testing.assert_allclose(D[np.ix_(good, good)], explicit_sqdist(X[good]), rtol=1e-10)


def test_kernel_flags_non_finite_rows_without_the_slow_path(monkeypatch):
    """Whole NaN rows (an attack) are flagged by the kernel itself: the other rows' products stay
    on the fast path, with the default missing budget as with the strict one; a row missing a
    few values (2 %, within the budget) is imputed on the float64 path instead."""
    calls = []
    slow = _gram._masked_block
    monkeypatch.setattr(_gram, "_masked_block", lambda *a, **k: calls.append(1) or slow(*a, **k))
    g = torch.Generator().manual_seed(22)
    X = torch.randn(12, 5000, generator=g)
    X[[3, 8]] = math.nan
    inputs = Inputs.from_matrix(X)
    assert not calls and inputs.bad.tolist() == [i in (3, 8) for i in range(12)]
    X[10, :100] = -math.inf
    inputs = Inputs.from_matrix(X, max_missing=0.0)
    assert not calls
    assert inputs.bad.tolist() == [i in (3, 8, 10) for i in range(12)]
    good = [i for i in range(12) if i not in (3, 8, 10)]
    D = inputs.sqdist().numpy()
    assert rel_err(D[np.ix_(good, good)], explicit_sqdist(X[good])) < 1e-5
    imputed = Inputs.from_matrix(X)
    assert calls and imputed.bad.tolist() == [i in (3, 8) for i in range(12)]


@pytest.mark.parametrize("blas", [False, True])
def test_centre_row_missing_in_a_block_falls_back_to_the_mean(blas, monkeypatch):
    """The centre row holds NaN in one block: that block centres on the mean, the row is bad,
    the others' distances stay exact."""
    if blas:
        monkeypatch.setattr(_gram_kernel, "BLAS_MIN_ROWS", 1)
    monkeypatch.setattr(_gram, "_KERNEL_BLOCK_ELEMENTS", 1)
    g = torch.Generator().manual_seed(23)
    d = 5 * 4 * _gram_kernel.LANES
    X = torch.randn(7, d, generator=g, dtype=torch.float64) + 1e3
    X[0, 4 * _gram_kernel.LANES + 3] = math.nan
    _, bad, _ = _gram._kernel_pass(X, None, 0)
    assert bad.tolist() == [True] + [False] * 6
    gram = _gram.base_gram(X, centre_row=0)
    inputs = Inputs(X=X, gram=gram)
    D = inputs.sqdist().numpy()
    np.testing.assert_allclose(D[1:, 1:], explicit_sqdist(X[1:]), rtol=1e-9)


@pytest.mark.parametrize("attack", ["mean10", "gauss200", "huge_row"])
def test_one_pass_under_attack(attack, monkeypatch):
    """Inputs large enough to be sampled: the Gram pass centres on a central row chosen on a
    sample of the coordinates, so attacks that drag the mean far from the honest inputs still
    need a single pass, and the distances are exact to float32 rounding."""
    calls = []
    real = _gram.base_gram
    monkeypatch.setattr(_gram, "base_gram", lambda X, **k: calls.append(X.shape) or real(X, **k))
    n, f, d = 25, 5, 100_000
    assert n * d >= _gram._SAMPLE_MIN_ELEMENTS
    g = torch.Generator().manual_seed(24)
    X = torch.randn(n, d, generator=g)
    mu = torch.randn(d, generator=g) * 3
    X[: n - f] += mu
    if attack == "mean10":
        X[n - f :] = -10 * X[: n - f].mean(0)
    elif attack == "gauss200":
        X[n - f :] *= 200
    else:
        X[n - f :] = 1e12
    inputs = Inputs.from_matrix(X)
    full = [s for s in calls if s[1] == d]
    assert len(full) == 1  # one pass over all the coordinates (plus the small sample)
    D = inputs.sqdist().numpy()
    ref = explicit_sqdist(X)
    h = n - f
    assert rel_err(D[:h, :h], ref[:h, :h]) < 1e-5
    assert rel_err(D, ref) < 1e-4


def test_sample_columns_spread_over_every_coordinate_range():
    cols = _gram.sample_columns(10_000_000)
    assert cols.size == _gram._SAMPLE_MAX_CHUNKS * _gram._SAMPLE_CHUNK
    assert cols[0] == 0 and cols[-1] == 10_000_000 - 1
    assert np.all(np.diff(cols) > 0)
    assert np.array_equal(_gram.sample_columns(500), np.arange(500))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weighted_rows_kernel_on_threads(dtype):
    """The compiled weighted sum (float64 sums, chunks on two threads, a partial last chunk)
    reads only the rows with a non-zero weight: NaN rows of weight 0 do not leak in."""
    g = torch.Generator().manual_seed(25)
    d = 256 * 600 + 17
    X = torch.randn(9, d, generator=g, dtype=torch.float64).to(dtype)
    X[4] = math.nan
    w = torch.rand(9, generator=g, dtype=torch.float64)
    w[4] = 0.0
    try:
        torch.set_num_threads(2)
        got = weighted_rows(X, w)
    finally:
        torch.set_num_threads(1)
    keep = torch.arange(9) != 4
    expected = (w[keep][:, None] * X[keep].double()).sum(0)
    assert got.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol)


@pytest.fixture(params=[False, True], ids=["four_chunks", "by_chunk"])
def row_stats_kernel(request, monkeypatch):
    """Either row-statistics kernel (the CPU decides which one runs)."""
    monkeypatch.setattr(_gram_kernel, "ROW_STATS_BY_CHUNK", request.param)
    return request.param


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_row_stats_kernel(dtype, threads, row_stats_kernel):
    """One sequential read per row: float64 sums of squares and the largest magnitude, NaN when
    the row holds NaN or an infinity (the filters' validity check)."""
    rng = np.random.default_rng(26)
    X = rng.normal(size=(7, 256 * 64 * 3 + 5)).astype(dtype) * 3
    X[:, ::5] = 0.0
    X[2, 11] = np.nan
    X[4, -1] = -np.inf
    X[5, 7] = 1e30 if dtype == np.float64 else 1e19
    cols = np.sort(rng.choice(X.shape[1], 3000, replace=False))
    edges = [0, 255, 256, 257, 256 * 64 - 1, 256 * 64, X.shape[1] - 1]  # chunk boundaries
    cols = np.union1d(cols, edges)
    sq, top, signs = _gram_kernel.row_stats(X, threads, cols)
    V = X[:, cols]
    expected = np.stack([(V > 0).sum(1), (V == 0).sum(1), (V < 0).sum(1)], axis=1)
    finite = [i for i in range(7) if i not in (2, 4)]  # NaN compares False: not counted
    np.testing.assert_array_equal(signs[finite], expected[finite])
    good = [0, 1, 3, 5, 6]
    np.testing.assert_allclose(sq[good], (X[good].astype(np.float64) ** 2).sum(1), rtol=1e-6)
    np.testing.assert_array_equal(top[good], np.abs(X[good]).max(1))
    assert np.isnan(top[2]) and np.isnan(top[4])


@pytest.mark.parametrize("value", [np.nan, -np.nan, np.inf, -np.inf])
def test_row_stats_flags_a_non_finite_value_wherever_it_lies(value, row_stats_kernel):
    """The kernel reads four chunks per pass, then the chunks left one by one: one NaN or
    infinity anywhere (either loop, either end of a stretch of 64 chunks) makes the row's
    largest magnitude NaN; a finite value whose square overflows float32 does not."""
    lanes = 256
    d = lanes * 64 * 2 + 3 * lanes + 7  # two stretches, then 3 chunks and a partial one
    positions = [0, 3 * lanes + 5, lanes * 64 - 1, lanes * 64, lanes * 128 + 2 * lanes, d - 1]
    X = np.ones((len(positions) + 1, d), dtype=np.float32)
    for i, j in enumerate(positions):
        X[i, j] = value
    X[-1, lanes * 64 + 9] = 1e20  # its square overflows float32: inf, not missing
    sq, top, _ = _gram_kernel.row_stats(X, 1)
    assert np.isnan(top[:-1]).all()
    assert top[-1] == np.float32(1e20) and sq[-1] == np.inf


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_stats_kernels_give_the_same_bits(dtype, monkeypatch):
    """The kernel of one chunk per pass (integer maximum of the bit patterns) and that of four
    (float maximum) add the same values in the same order."""
    rng = np.random.default_rng(28)
    X = (rng.normal(size=(9, 256 * 64 * 2 + 777)) * rng.uniform(1e-3, 1e3, (9, 1))).astype(dtype)
    X[1, ::3] = 0.0
    X[2, 100] = -0.0
    X[3, 5000] = np.nan
    X[4, 9] = np.inf
    X[5, -1] = -np.inf
    X[6, 30000] = np.finfo(dtype).max
    X[7, 17] = np.finfo(dtype).tiny / 4  # subnormal
    cols = np.sort(rng.choice(X.shape[1], 4000, replace=False))
    got = {}
    for flag in (False, True):
        monkeypatch.setattr(_gram_kernel, "ROW_STATS_BY_CHUNK", flag)
        got[flag] = _gram_kernel.row_stats(X, 2, cols)
    for a, b in zip(got[False], got[True], strict=True):
        np.testing.assert_array_equal(a, b)


def test_sign_counts_kernel():
    rng = np.random.default_rng(27)
    X = rng.normal(size=(6, 5000)).astype(np.float32)
    X[:, ::7] = 0.0
    X[3, 11] = np.inf
    rows = np.array([0, 2, 3, 5])
    cols = np.sort(rng.choice(5000, 800, replace=False))
    counts = _gram_kernel.sign_counts(X, rows, cols, 2)
    V = X[rows][:, cols]
    np.testing.assert_array_equal(counts[:, 0], (V > 0).sum(1))
    np.testing.assert_array_equal(counts[:, 1], (V == 0).sum(1))
    np.testing.assert_array_equal(counts[:, 2], (V < 0).sum(1))
    assert counts[:, 3].tolist() == [0, 0, int(11 in cols), 0]


# --- the n x n steps: layout, central row, precision check -----------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 40])
def test_layout_mirrors_the_upper_triangle_onto_the_active_rows(n):
    rng = np.random.default_rng(n)
    rows = np.sort(rng.choice(n, size=max(1, n - 1), replace=False)).astype(np.int64)
    na = rows.size
    G = rng.standard_normal((na, na))
    G[np.tril_indices(na, -1)] = 99.0  # the lower triangle is never read
    dots = rng.standard_normal(na)
    full = _gram_kernel.layout(n, rows, G, dots, 3.5)
    expected = np.zeros((n + 1, n + 1))
    for a in range(na):
        for b in range(a, na):
            expected[rows[a], rows[b]] = expected[rows[b], rows[a]] = G[a, b]
        expected[rows[a], n] = expected[n, rows[a]] = dots[a]
    expected[n, n] = 3.5
    np.testing.assert_array_equal(full, expected)


def reference_central_row(G, bad):
    """Least sum of squared distances to the closest half, by loops (bad rows excluded)."""
    n = G.shape[0]
    good = [i for i in range(n) if not bad[i]]
    half = max(1, (len(good) + 1) // 2)
    best, best_score = None, math.inf
    for i in good:
        dist = sorted(max(G[i, i] + G[j, j] - 2 * G[i, j], 0.0) if j != i else 0.0 for j in good)
        score = sum(dist[:half])
        if score < best_score:
            best, best_score = i, score
    return best


@pytest.mark.parametrize("seed", range(6))
def test_central_row_matches_a_loop_reference(seed):
    g = torch.Generator().manual_seed(seed)
    n = 5 + seed * 7
    X = torch.randn(n, 30, generator=g, dtype=torch.float64)
    X[: n // 4] += 40.0 * torch.randn(n // 4, 30, generator=g, dtype=torch.float64)  # far rows
    G = X @ X.T
    bad = torch.zeros(n, dtype=torch.bool)
    bad[torch.randperm(n, generator=g)[: seed % 3]] = True
    D = _gram_finish.distances(G.numpy(), bad.numpy())[0]
    central = _gram_finish.central_row(D, bad.numpy())
    assert central == reference_central_row(G.numpy(), bad.numpy())
    assert not bad[central]


def distance_scale(D: torch.Tensor) -> float:
    """Each row's lower median distance to the others, then the lower median of those."""
    n = D.shape[0]
    others = D[~torch.eye(n, dtype=torch.bool)].reshape(n, n - 1)
    rows = others.sort(dim=1).values[:, (n - 2) // 2]
    return float(rows.sort().values[(n - 1) // 2])


@pytest.mark.parametrize("n", [3, 4, 9, 10])
def test_precision_check_uses_the_lower_medians(n):
    """Rows far from the origin compared with their spread need the second pass, close ones do
    not; the scales are the lower median of the norms and the distance scale (each row's lower
    median distance to the others, their lower median)."""
    g = torch.Generator().manual_seed(n)
    for offset, expected in ((0.0, False), (1e4, True)):
        X = torch.randn(n, 50, generator=g, dtype=torch.float64) + offset
        G = X @ X.T
        bad = torch.zeros(n, dtype=torch.bool)
        D = torch.cdist(X, X) ** 2
        rel = torch.finfo(torch.float32).eps * 64 * float(G.diagonal().median()) / distance_scale(D)
        assert (rel > _gram._REFINE_REL_ERROR) == expected
        assert (_gram._refinement(G, bad, torch.float32)[1] is not None) == expected


@pytest.mark.parametrize("n,f,d", [(25, 12, 300), (51, 25, 300), (101, 50, 1000), (576, 282, 511)])
def test_half_identical_far_rows_leave_the_honest_distances_exact(n, f, d):
    """Nearly half the rows one far vector (200 times a Gaussian one): the chunk means they
    drag make the first pass cancellation-prone for the honest rows, whose distances the
    precision check must see (the median of all pairwise distances was one to the far vector,
    and the honest distances came out 0.2-1.4 % off); after the second pass they are exact to
    float32 rounding."""
    rng = np.random.default_rng(n)
    X = rng.normal(size=(n, d)).astype(np.float32)
    X[n - f :] = 200.0 * X[n - f]
    D = _gram.Inputs.from_matrix(torch.from_numpy(X)).sqdist().numpy()
    Y = X[: n - f].astype(np.float64)
    sq = (Y**2).sum(1)
    want = sq[:, None] + sq[None, :] - 2 * Y @ Y.T
    h = n - f
    off = ~np.eye(h, dtype=bool)
    assert np.abs(D[:h, :h] - want)[off].max() <= 1e-5 * want[off].min()


@pytest.mark.parametrize("case", ["finite", "square_overflows", "nan_chunk"])
def test_centre_span_centres_on_a_given_centre_or_falls_back_per_chunk(case):
    """A given centre finite on the whole span centres every row on it (the span's fast path);
    a chunk whose squares overflow still centres on the centre (the chunk loop, as before); a
    chunk where the centre is not finite centres on the rows' mean and says so (flags[-1])."""
    lanes = _gram_kernel.LANES
    rng = np.random.default_rng(3)
    X = rng.standard_normal((5, 2 * lanes + 40)).astype(np.float32) + 10
    rows = np.arange(1, 5, dtype=np.int64)
    centre = X[0].copy()
    special = lanes + 7  # in the span's second chunk
    if case == "square_overflows":
        centre[special] = 3e19  # finite, its square is not (float32)
    elif case == "nan_chunk":
        centre[special] = np.nan
    j0, j1 = 0, X.shape[1]
    C = np.full((4, j1 - j0), -1.0, dtype=np.float32)
    m = np.zeros(3 * lanes, dtype=np.float32)
    dots, msq, flags = np.zeros(4), np.zeros(1), np.zeros(5, dtype=np.bool_)
    _gram_kernel._centre_span(X, rows, centre, True, j0, j1, m, C, dots, msq, flags)
    expected = X[1:] - centre[None, :]
    if case == "nan_chunk":  # that chunk centred on the mean of the active rows
        chunk = slice(lanes, 2 * lanes)
        mean = (X[1:, chunk].astype(np.float64).sum(0) / 4).astype(np.float32)
        expected[:, chunk] = X[1:, chunk] - mean
        np.testing.assert_allclose(C, expected, rtol=0, atol=1e-5)
    else:
        np.testing.assert_array_equal(C, expected)  # the same float32 subtraction, exactly
    assert flags.tolist() == [False] * 4 + [case == "nan_chunk"]
    if case == "finite":
        np.testing.assert_allclose(msq[0], float((centre.astype(np.float64) ** 2).sum()), rtol=1e-5)
        np.testing.assert_allclose(
            dots, (expected.astype(np.float64) * centre.astype(np.float64)).sum(1), rtol=1e-4
        )
    if case == "square_overflows":
        assert msq[0] == np.inf  # as the chunk loop always summed it


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", [40_000, 100_003, 2_000_000])
def test_sample_is_the_sampled_columns(dtype, d):
    """The compiled gather of the sample's chunks equals ``index_select`` of sample_columns."""
    g = torch.Generator().manual_seed(d)
    X = torch.randn(4, d, generator=g, dtype=dtype)
    expected = X.index_select(1, torch.as_tensor(_gram.sample_columns(d)))
    S = _gram._sample(X)
    assert S.dtype == dtype and torch.equal(S, expected)
    with accelerator_path():
        assert torch.equal(_gram._sample(X), expected)  # the index_select path


@pytest.mark.parametrize("case", ["plain", "mean10", "nan_rows", "lossy", "nan_everywhere"])
@pytest.mark.parametrize("n", [3, 10, 25, 130])
def test_central_row_of_sample_matches_the_general_pass(case, n):
    """The sample's central row from the small path equals the one from base_gram's general
    pass (no refinement), on plain, attacked, NaN-row and lossy samples."""
    g = torch.Generator().manual_seed(n)
    S = torch.randn(n, 4096, generator=g) + 3.0
    if case == "mean10":
        S[-max(1, n // 5) :] = -10 * S[: n - max(1, n // 5)].mean(0)
    elif case == "nan_rows":
        S[0] = math.nan
        S[n // 2, ::7] = math.inf
    elif case == "lossy":
        S[1, :20] = math.nan  # within the default budget: the general path imputes
    elif case == "nan_everywhere":
        S[:, 5] = math.nan
    gram = _gram.base_gram(S)
    expected = None
    if bool((~gram.bad).any()):
        D = _gram_finish.distances(gram.aug.numpy(), gram.bad.numpy())[0]
        expected = _gram_finish.central_row(D, gram.bad.numpy())
    assert _gram.central_row_of_sample(S) == expected


def _block_stats(X, rows, centre, mode):
    """``_gram_block`` over all of X's columns in ``mode`` (BUFFER, FUSED, FUSED_LONG): (acc,
    dots, msq, flags)."""
    R = _gram_kernel.padded_rows(rows.size)
    acc, dots, msq = np.zeros((R, R)), np.zeros(rows.size), np.zeros(1)
    flags = np.zeros(rows.size + 1, dtype=np.bool_)
    C = _gram_kernel.aligned_zeros((R, _gram_kernel.tile_lanes(R)), X.dtype)
    _gram_kernel._gram_block(X, rows, centre, True, 0, X.shape[1], acc, dots, msq, flags, C, mode)
    return acc, dots, msq[0], flags


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("active", [1, 2, 3, 4, 5, 9, 10, 11, 12, 15, 24, 27, 28])
@pytest.mark.parametrize(
    "case", ["finite", "nan_row", "late_nan_row", "padding_row_nan", "overflow", "inf_centre"]
)
@pytest.mark.parametrize("mode", ["FUSED", "FUSED_LONG"])
def test_rows_centred_in_the_tiles_match_the_buffer(dtype, active, case, mode):
    """Up to ``FUSED_MAX_ROWS`` buffer rows the Gram pass on a given centre subtracts it in the
    tiles' registers (28 active rows: 30 buffer rows, the buffer path on both sides). Its
    products are those of the rows centred into the buffer and read back, in float64 within a
    few units of the input precision (the sums' order may differ); a span where a row holds a
    non-finite value, a product overflows or the centre is not finite goes through the buffer
    (flags, zeroed rows, the mean as centre), so flags and non-finite entries are the same. The
    padding rows read the first active row: a NaN there must not reach the active entries. A
    long fused span (``FUSED_SPAN``: 3, 9, 12, 15 active rows) that fails is taken again by the
    buffer's spans of 512; the fused spans go on after it without the rows it flagged (a NaN in
    its first or a later buffer span), or the buffer takes the rest where it flagged none (an
    overflow). Both fused modes, whichever the host takes (``FUSED_CENTRING``)."""
    rng = np.random.default_rng(active)
    lanes = _gram_kernel.LANES
    span = _gram_kernel.FUSED_SPAN
    d = 2 * span + 5 * lanes + 77  # two fused spans and a partial one
    X = (rng.standard_normal((active + 1, d)) + 20).astype(dtype)
    rows = np.arange(1, active + 1, dtype=np.int64)
    centre = X[0].copy()
    if case == "nan_row":  # a middle row, in the first span: two fused spans without it
        X[(active + 1) // 2, 100] = np.nan
    elif case == "late_nan_row":  # in the second fused span's third span of the buffer
        X[(active + 1) // 2, span + 1100] = np.nan
    elif case == "padding_row_nan":  # the first active row, which the padding rows read
        X[1, 300:310] = np.nan
    elif case == "overflow":
        X[1, span + 700] = 3e19 if dtype == np.float32 else 1e160  # finite, its square is not
    elif case == "inf_centre":
        centre[900] = np.inf
    fused = _block_stats(X, rows, centre, getattr(_gram_kernel, mode))
    plain = _block_stats(X, rows, centre, _gram_kernel.BUFFER)
    np.testing.assert_array_equal(fused[3], plain[3])  # the same rows flagged
    # a flagged row is bad for the whole matrix: after the span that flags it the fused spans
    # go on without it, so only the other rows' entries are read (and compared)
    good = ~plain[3][:active]
    upper = np.triu(np.ones((active, active), dtype=bool)) & good[:, None] & good[None, :]
    a, b = fused[0][:active, :active][upper], plain[0][:active, :active][upper]
    np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
    finite_blocks = [bool(np.isfinite(r[0][:active, :active]).all()) for r in (fused, plain)]
    assert finite_blocks[0] == finite_blocks[1]  # BlockStats.finite: redo the block or not
    finite = np.isfinite(b)
    diagonal = np.diag(plain[0])[:active]
    scale = float(np.abs(diagonal[np.isfinite(diagonal)]).max(initial=1.0))
    tol = 8 * float(np.finfo(dtype).eps) * scale
    np.testing.assert_allclose(a[finite], b[finite], rtol=0, atol=tol)
    if case != "overflow":
        assert finite.all()
        np.testing.assert_allclose(fused[1][good], plain[1][good], rtol=0, atol=tol)
        assert fused[2] == plain[2]
    assert fused[3][-1] == (case == "inf_centre")
    middle = (active + 1) // 2 - 1
    nan_rows = {"nan_row": middle, "late_nan_row": middle, "padding_row_nan": 0}.get(case, -1)
    assert fused[3][:-1].tolist() == [t == nan_rows for t in range(active)]


@pytest.mark.parametrize("long", [False, True])
@pytest.mark.parametrize("active", [1, 5, 25])
@pytest.mark.parametrize("case", ["finite", "nan_row", "inf_centre"])
def test_fused_span_adds_centred_products_or_changes_nothing(active, case, long):
    """One span centred in the tiles' registers (either kernel: the span in one run of each
    tile, or ``long``, in sums of ``FUSED_TERMS`` coordinates): on finite data it adds
    (x_i - m).(x_j - m) to the upper triangle, (x_i - m).m to dots and |m|^2 to msq (against
    float64 loops); where a row or the centre is not finite it returns False and leaves them
    as they were."""
    rng = np.random.default_rng(active)
    w = _gram_kernel.FUSED_SPAN + 300  # sums of FUSED_TERMS coordinates and a partial one
    X = (rng.standard_normal((active + 1, w + 100)) + 5).astype(np.float32)
    rows = np.arange(1, active + 1, dtype=np.int64)
    centre = X[0].copy()
    if case == "nan_row":
        X[active, 17] = np.nan
    elif case == "inf_centre":
        centre[300] = -np.inf
    R = _gram_kernel.padded_rows(active)
    acc, dots, msq = np.full((R, R), 0.5), np.full(active, 0.25), np.full(1, 2.0)
    part, dpart = np.full((R, R), 7.0), np.full(R, 7.0)  # zeroed by the span
    before = acc.copy(), dots.copy(), msq.copy()
    place = np.arange(active)
    taken = _gram_kernel._fused_span(
        X, rows, place, centre, 0, w, acc, dots, msq, part, dpart, X.reshape(-1), X.shape[1], 0,
        long,
    )
    assert taken == (case == "finite")
    if not taken:
        for now, then in zip((acc, dots, msq), before, strict=True):
            np.testing.assert_array_equal(now, then)
        return
    U = X[1:, :w].astype(np.float64) - centre[:w].astype(np.float64)
    m = centre[:w].astype(np.float64)
    upper = np.triu(np.ones((active, active), dtype=bool))
    scale = float((U**2).sum(1).max())
    np.testing.assert_allclose((acc[:active, :active] - 0.5)[upper], (U @ U.T)[upper],
                               rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(dots - 0.25, U @ m, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(msq[0] - 2.0, m @ m, rtol=1e-6)


def test_no_active_row_takes_the_buffer():
    """No active row (the centre row alone): nothing to centre in the tiles (the padding rows
    would read a row that is not there); only |m|^2 is summed."""
    X = np.arange(3 * 600, dtype=np.float32).reshape(3, 600)
    empty = np.empty(0, dtype=np.int64)
    for mode in (_gram_kernel.FUSED_LONG, _gram_kernel.FUSED, _gram_kernel.BUFFER):
        acc, dots, msq, flags = _block_stats(X, empty, X[1].copy(), mode)
        assert not acc.any() and dots.size == 0 and not flags.any()
        np.testing.assert_allclose(msq, float((X[1].astype(np.float64) ** 2).sum()), rtol=1e-6)


@pytest.mark.parametrize(
    ("cpu", "expected"),
    [("znver3", True), ("znver4", True), ("skylake-avx512", False), ("generic", False)],
)
def test_separate_add_pipes_names_the_zen_cores(cpu, expected, monkeypatch):
    """The long fused spans pay where subtractions issue beside the multiply-adds: AMD's Zen
    cores, by LLVM's name of the CPU numba compiles for (``NUMBA_CPU_NAME``)."""
    from numba import config

    from byzlearn.aggregators import _simd

    monkeypatch.setattr(config, "CPU_NAME", cpu, raising=False)
    assert _simd.separate_add_pipes() is expected


@pytest.mark.parametrize("fuse", ["BUFFER", "FUSED", "FUSED_LONG"])
@pytest.mark.parametrize("active", [5, 24, 40, 130])
def test_flagged_rows_leave_the_later_spans(active, fuse):
    """Rows found holding a non-finite value (here in the first span) are bad for the whole
    matrix; the block's later spans leave them out (fewer products, through the buffer or
    centred in the tiles, 3 x 3 or 4 x 4 tiles). The other rows' products and dots are the
    float64 ones of the rows centred on the given centre; the bad rows are flagged."""
    rng = np.random.default_rng(active)
    R = _gram_kernel.padded_rows(active)
    d = 6 * _gram_kernel.tile_lanes(R) + 33
    X = (rng.standard_normal((active + 1, d)) + 20).astype(np.float32)
    rows = np.arange(1, active + 1, dtype=np.int64)
    centre = X[0].copy()
    bad = [0, active // 2, active - 1]  # positions among the active rows
    X[rows[bad[0]], 5] = np.nan
    X[rows[bad[1]], 7:9] = np.inf
    X[rows[bad[2]], :] = np.nan  # a whole NaN row
    acc, dots, _, flags = _block_stats(X, rows, centre, getattr(_gram_kernel, fuse))
    assert flags[:-1].tolist() == [t in bad for t in range(active)] and not flags[-1]
    good = np.array([t for t in range(active) if t not in bad])
    U = X[rows[good]].astype(np.float64) - centre.astype(np.float64)
    expected = U @ U.T
    got = acc[np.ix_(good, good)]
    upper = np.triu(np.ones_like(expected, dtype=bool))
    scale = float(np.diag(expected).max())
    np.testing.assert_allclose(got[upper], expected[upper], rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(dots[good], U @ centre.astype(np.float64), rtol=1e-4,
                               atol=1e-5 * scale)
