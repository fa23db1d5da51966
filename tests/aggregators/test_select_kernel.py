"""The selection kernel ``_select.coordinatewise``: numba path, torch path and a reference agree.

The reference (``ref_statistic`` of test_coordinatewise) is plain Python on each coordinate's
sorted finite values. The numba path sums sequentially, the torch path pairwise, so the two agree
to float64 rounding (relative to the values averaged), and exactly wherever no sum is involved.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzlearn.aggregators import _gram
from byzlearn.aggregators import _select as sel
from tests.aggregators.test_coordinatewise import EPS64, ref_statistic

NAMES = {
    sel.MEDIAN: "median",
    sel.TRIMMED: "trimmed",
    sel.CLOSEST_TO_MEDIAN: "meamed",
    sel.CLOSEST_TO_TRIMMED: "phocas",
    sel.MEAN: "mean",
}
STATS = tuple(NAMES)


def needed(stat: int, drop: int) -> int:
    """Fewest finite values each statistic is defined on (written from the definitions)."""
    if stat in (sel.TRIMMED, sel.CLOSEST_TO_TRIMMED):
        return 2 * drop + 1  # something must be left after trimming drop from each end
    if stat == sel.CLOSEST_TO_MEDIAN:
        return drop + 1  # keep k - drop >= 1 values
    return 1


def kernel_reference(X: torch.Tensor, stat: int, drop: int, min_k: int, rows=None):
    """(out, scale, ok) per coordinate of the rows ``rows`` of X, in float64 numpy."""
    Xn = X.double().numpy()
    if rows is not None:
        Xn = Xn[np.asarray(rows)]
    d = Xn.shape[1]
    out, scale, ok = np.zeros(d), np.zeros(d), np.ones(d, dtype=bool)
    for j in range(d):
        vals = sorted(v for v in Xn[:, j].tolist() if math.isfinite(v))
        if len(vals) < max(min_k, needed(stat, drop)):
            ok[j] = False
            continue
        out[j], scale[j] = ref_statistic(vals, NAMES[stat], drop)
    return out, scale, ok


def run(X, stat, drop, min_k, rows=None, force_torch=False, name="rule"):
    return sel.coordinatewise(X, stat, drop, min_k, name, rows=rows, force_torch=force_torch)


def tol(scale: np.ndarray, dtype: torch.dtype, n: int) -> np.ndarray:
    eps = torch.finfo(dtype).eps
    return scale * (4 * eps + 8 * n * EPS64) + 1e-300


def check_both_paths(X, stat, drop, min_k, rows=None):
    """Both paths equal the reference (and each other); returns the numba result."""
    ref, scale, ok = kernel_reference(X, stat, drop, min_k, rows)
    assert ok.all()
    rows_t = None if rows is None else torch.as_tensor(rows)
    fast = run(X, stat, drop, min_k, rows_t)
    slow = run(X, stat, drop, min_k, rows_t, force_torch=True)
    assert fast.dtype == X.dtype and slow.dtype == X.dtype and fast.shape == (X.shape[1],)
    n = X.shape[0] if rows is None else len(rows)
    t = tol(scale, X.dtype, n)
    for label, out in (("numba", fast), ("torch", slow)):
        err = np.abs(out.double().numpy() - ref)
        j = int(np.argmax(err - t))
        assert np.all(err <= t), (
            f"{label} {NAMES[stat]} drop={drop}: coordinate {j} got {float(out[j])!r}, "
            f"reference {ref[j]!r}"
        )
    assert np.all(np.abs(fast.double().numpy() - slow.double().numpy()) <= 2 * t)
    if stat == sel.MEDIAN:  # no sum involved: bitwise equal
        assert torch.equal(fast, slow)
    return fast


# --- the sorting network --------------------------------------------------------------------
def apply_network(values: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Apply compare-exchange pairs to each row of ``values`` (written here, not the kernel)."""
    v = values.copy()
    for a, b in pairs:
        lo = np.minimum(v[:, a], v[:, b])
        hi = np.maximum(v[:, a], v[:, b])
        v[:, a], v[:, b] = lo, hi
    return v


@pytest.mark.parametrize("n", range(0, 13))
def test_sorting_network_sorts_every_zero_one_input(n):
    # the 0-1 principle: a comparator network sorts everything iff it sorts all 0/1 inputs
    pairs = sel.sorting_network(n)
    assert pairs.shape[1] == 2 and pairs.dtype == np.int64
    assert np.all(pairs[:, 0] < pairs[:, 1]) and np.all(pairs[:, 1] < max(n, 1))
    if n == 0:
        return
    inputs = np.array(list(itertools.product([0.0, 1.0], repeat=n)))
    out = apply_network(inputs, pairs)
    np.testing.assert_array_equal(out, np.sort(inputs, axis=1))


@pytest.mark.parametrize("n", [13, 16, 17, 31, 32, 33, 63, 64, 65, 100, 129])
def test_sorting_network_sorts_random_inputs(n):
    rng = np.random.default_rng(n)
    inputs = rng.standard_normal((200, n))
    inputs[:50] = rng.integers(0, 3, (50, n))  # ties
    inputs[50:100, : n // 3] = np.inf  # padding-like values
    out = apply_network(inputs, sel.sorting_network(n))
    np.testing.assert_array_equal(out, np.sort(inputs, axis=1))
    assert len(sel.sorting_network(n)) <= n * math.ceil(math.log2(n)) ** 2  # O(n log^2 n)


@pytest.mark.parametrize("n", [2, 5, 16, 17, 25, 33, 64, 100])
def test_depth_first_network_is_the_same_network_reordered(n):
    """The depth-first order (the unrolled kernels' from 17 rows on) holds the same pairs and,
    on every wire, the pairs touching it in the same order: each compare-exchange gets the same
    two values, so the outputs are the same bits (checked on signed zeros too)."""
    stage_order = [tuple(p) for p in sel.sorting_network(n).tolist()]
    depth_first = [tuple(p) for p in sel.sorting_network_depth_first(n).tolist()]
    assert sorted(depth_first) == sorted(stage_order)
    for wire in range(n):
        assert [p for p in depth_first if wire in p] == [p for p in stage_order if wire in p]
    rng = np.random.default_rng(n)
    inputs = rng.choice(np.array([-1.0, -0.0, 0.0, 2.0]), (300, n))

    def run(pairs):  # a compare-exchange as the kernels write it (_branchfree.lo / hi)
        v = inputs.copy()
        for a, b in pairs:
            x, y = v[:, a].copy(), v[:, b].copy()
            v[:, a], v[:, b] = np.where(x < y, x, y), np.where(x < y, y, x)
        return v

    assert run(depth_first).tobytes() == run(stage_order).tobytes()
    if n == 25:  # the first 16 rows are sorted completely before row 16 is touched
        first_late = next(i for i, p in enumerate(depth_first) if p[1] >= 16)
        assert first_late == len(sel.sorting_network(16))


def test_network_body_loads_late_and_stores_early_from_17_rows():
    from byzlearn.aggregators import _sortnet

    def body(size):
        pairs = _sortnet.unrolled_pairs(size)
        return _sortnet.network_body(pairs, size, lambda r: [f"L{r}"], lambda r: [f"S{r}"])

    small = body(16)  # all loads, the network, all stores
    assert small[:16] == [f"L{r}" for r in range(16)]
    assert small[-16:] == [f"S{r}" for r in range(16)]
    large = body(25)
    assert sorted(x for x in large if x[0] in "LS") == sorted(
        [f"L{r}" for r in range(25)] + [f"S{r}" for r in range(25)]
    )
    comparators = [i for i, x in enumerate(large) if x.startswith("t = lo(")]
    # row 16 is loaded only after the 63 compare-exchanges sorting rows 0-15; some rows are
    # stored before the network ends
    assert sum(1 for i in comparators if i < large.index("L16")) == len(sel.sorting_network(16))
    assert min(i for i, x in enumerate(large) if x[0] == "S") < comparators[-1]
    for r in range(25):  # a row's store comes after its last compare-exchange
        touching = [i for i, x in enumerate(large) if f"a{r})" in x or f"a{r} =" in x]
        assert large.index(f"L{r}") < touching[0] and large.index(f"S{r}") > touching[-1]


def apply_plan(inputs: np.ndarray, plan) -> np.ndarray:
    """What the kernel does with a plan, in numpy: sort each group into its slot (+inf after),
    set the pad rows to +inf, run the bitonic passes (each on its distinct wires, every one
    written before); the first n wires are the result."""
    n = inputs.shape[1]
    wires = np.full((inputs.shape[0], plan.wires), np.nan)  # NaN: a wire nothing wrote
    for g in range(len(plan.starts) - 1):
        a, b = plan.starts[g], plan.starts[g + 1]
        assert 0 < b - a <= plan.size
        block = np.full((inputs.shape[0], plan.size), np.inf)
        block[:, : b - a] = np.sort(inputs[:, a:b], axis=1)
        wires[:, g * plan.slot : g * plan.slot + plan.size] = block
    wires[:, plan.pad] = np.inf
    for kind, table in zip(plan.kinds, plan.passes, strict=True):
        stages, flip = int(kind) // 2 + 1, bool(kind % 2)
        used = table[: 1 << stages]
        assert len(set(used.tolist())) == len(used)  # a pass holds distinct wires
        assert not np.isnan(wires[:, used]).any()  # every wire a pass reads was written
        local = apply_network(wires[:, used], np.array(pass_pairs(stages, flip)))
        wires[:, used] = local
    return wires[:, :n]


def pass_pairs(stages: int, flip: bool) -> list[tuple[int, int]]:
    """The compare-exchanges of one bitonic pass on its 2**stages local wires, written from the
    definition: the flip (k, 2**stages - 1 - k) first when ``flip``, then half-cleaners of
    strides halving to 1 (each pairs k with k + s inside blocks of 2s)."""
    size = 1 << stages
    pairs = [(k, size - 1 - k) for k in range(size // 2)] if flip else []
    s = size // 4 if flip else size // 2
    while s >= 1:
        pairs += [(b + k, b + k + s) for b in range(0, size, 2 * s) for k in range(s)]
        s //= 2
    return pairs


@pytest.mark.parametrize(
    "n", [1, 8, 9, 25, 26, 31, 40, 50, 51, 64, 77, 100, 129, 200, 333, 500, 513, 1000]
)
def test_grouped_plan_sorts(n):
    from byzlearn.aggregators import _sortnet

    plan = _sortnet.plan(n)
    assert plan.starts[0] == 0 and plan.starts[-1] == n
    if n <= 25:  # one unrolled network, nothing to merge
        assert len(plan.starts) == 2 and len(plan.kinds) == 0
    rng = np.random.default_rng(n)
    inputs = rng.standard_normal((300, n))
    inputs[:60] = rng.integers(0, 3, (60, n))  # ties
    inputs[60:120, rng.random(n) < 0.3] = np.inf  # missing values sort last
    np.testing.assert_array_equal(apply_plan(inputs, plan), np.sort(inputs, axis=1))


@pytest.mark.parametrize("n", [26, 31, 50, 64, 77, 100, 200, 333, 500, 513, 1000])
@pytest.mark.parametrize(
    "stat",
    [sel.MEDIAN, sel.TRIMMED, sel.CLOSEST_TO_MEDIAN, sel.CLOSEST_TO_TRIMMED],
    ids=NAMES.get,
)
def test_exact_passes_place_the_read_positions_and_the_sets_between(n, stat):
    """On finite values, the merge that sorts its last level only around the statistic's read
    positions leaves those positions exact and every run of positions between them (and
    before the first, after the last) holding the right values as a set."""
    import dataclasses

    from byzlearn.aggregators import _sortnet

    plan = _sortnet.plan(n)
    positions = _sortnet.read_positions(n, stat, n // 5)
    kinds, passes = _sortnet.exact_passes(n, positions)
    assert len(kinds) < len(plan.kinds)  # it saves passes
    exact = dataclasses.replace(plan, kinds=kinds, passes=passes)
    rng = np.random.default_rng(n + stat)
    inputs = rng.standard_normal((200, n))
    inputs[:50] = rng.integers(0, 3, (50, n))  # ties
    out, want = apply_plan(inputs, exact), np.sort(inputs, axis=1)
    cuts = sorted(set(positions))
    np.testing.assert_array_equal(out[:, cuts], want[:, cuts])
    for a, b in zip([0, *(c + 1 for c in cuts)], [*cuts, n], strict=True):
        np.testing.assert_array_equal(np.sort(out[:, a:b], axis=1), want[:, a:b])
    if n >= 100:  # the runs between are left unsorted: the check above is not vacuous
        assert not np.array_equal(out, want)


@pytest.mark.parametrize("n", [26, 31, 60, 77, 120, 300])
def test_bulyans_short_window_on_merged_groups_gives_the_sequential_search_bits(n):
    """Bulyan's second phase on more rows than one sorting network takes (groups merged):
    the window's start counted only around the median (window_span) gives the sequential
    search's bits, with ties."""
    drop = 2 * n // 3
    first, stop = sel.window_span(n, drop)
    assert 0 <= first <= (n - 1) // 2 <= stop + n - drop - 1 and stop <= drop
    rng = np.random.default_rng(n)
    inputs = rng.standard_normal((n, 300))
    inputs[:, :120] = rng.integers(0, 3, (n, 120))  # ties
    X = torch.tensor(inputs)
    got = run(X, sel.CLOSEST_TO_MEDIAN, drop, drop + 1)
    expected = [_closest_to_median_bits(X[:, j].tolist(), drop) for j in range(X.shape[1])]
    assert got.tolist() == expected


@pytest.mark.parametrize("n", [26, 50, 100, 200, 500, 1000])
def test_grouped_kernel_on_finite_blocks_matches_reference(n):
    """Blocks of finite values take the exact passes: the median must equal the torch path
    bitwise, the trimmed mean, MeaMed and Phocas the reference within float64 rounding (their
    middle values are summed in another order); the mean keeps the full merge."""
    gen = torch.Generator().manual_seed(2000 + n)
    d = 2 * sel.LANES + 37
    X = torch.randn(n, d, generator=gen, dtype=torch.float64)
    X[:, ::4] = torch.randint(-3, 4, (n, len(range(0, d, 4))), generator=gen).double()  # ties
    X[n // 2, 3] = 1e30  # a far outlier
    for stat in STATS:  # the median bitwise equal to the torch path (check_both_paths)
        drop = 0 if stat in (sel.MEDIAN, sel.MEAN) else n // 5
        check_both_paths(X, stat, drop, needed(stat, drop))


@pytest.mark.parametrize("n", [26, 33, 50])
def test_grouped_plan_sorts_every_zero_one_input_of_its_merge(n):
    # the 0-1 principle on the merge: any sorted groups, i.e. each group's count of zeros
    from byzlearn.aggregators import _sortnet

    plan = _sortnet.plan(n)
    sizes = np.diff(plan.starts)
    zeros = np.array(list(itertools.product(*[range(s + 1) for s in sizes])))
    inputs = np.concatenate(
        [np.arange(s)[None, :] >= z[:, None] for s, z in zip(sizes, zeros.T, strict=True)], axis=1
    ).astype(float)
    np.testing.assert_array_equal(apply_plan(inputs, plan), np.sort(inputs, axis=1))


@pytest.mark.parametrize(("wires", "run"), [(2, 1), (8, 2), (16, 4), (32, 8), (64, 16)])
def test_bitonic_passes_merge_every_zero_one_input(wires, run):
    # the 0-1 principle on the merge: any sorted runs, i.e. each run's count of zeros; the
    # passes must hold distinct wires and, unpruned, touch every wire
    from byzlearn.aggregators import _bitonic

    passes = _bitonic.merge_passes(wires, run)
    touched = set()
    for stages, flip, used in passes:
        assert len(used) == 1 << stages and len(set(used)) == len(used)
        assert all(0 <= u < wires for u in used)
        touched.update(used)
        assert _bitonic.pass_pairs(stages, flip) == pass_pairs(stages, flip)
    assert touched == set(range(wires))
    counts = np.array(list(itertools.product(range(run + 1), repeat=wires // run)))
    inputs = np.concatenate(
        [np.arange(run)[None, :] >= z[:, None] for z in counts.T], axis=1
    ).astype(float)
    merged = inputs.copy()
    for stages, flip, used in passes:
        merged[:, used] = apply_network(merged[:, used], np.array(pass_pairs(stages, flip)))
    np.testing.assert_array_equal(merged, np.sort(inputs, axis=1))


def _bitonic_with_vector_bytes(vector_bytes: int):
    """The module ``_bitonic`` compiled anew with explicit vectors of ``vector_bytes`` bytes (the
    width a host of the other kind takes: 64 with AVX-512, 32 without)."""
    import sys
    import types
    from pathlib import Path

    from byzlearn.aggregators import _bitonic

    source = Path(_bitonic.__file__).read_text().replace("cache=True", "cache=False")
    source = source.replace("VECTOR_BYTES = vector_bytes()", f"VECTOR_BYTES = {vector_bytes}")
    module = types.ModuleType(f"bitonic_{vector_bytes}")
    module.__file__ = f"<_bitonic with {vector_bytes}-byte vectors>"
    sys.modules[module.__name__] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    assert vector_bytes == module.VECTOR_BYTES
    return module


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=str)
def test_bitonic_passes_at_both_vector_widths_sort_ties_and_signed_zeros(dtype):
    """The merge passes with 256-bit and with 512-bit explicit vectors (whichever this host does
    not take is compiled here) leave every column sorted, bit for bit the same, including the
    order of zeros of opposite sign."""
    from byzlearn.aggregators import _simd, _sortnet

    assert _simd.vector_bytes() in (32, 64)
    n = 100
    full = _sortnet.plan(n)
    slot, wires, _, surely_inf, _ = _sortnet._layout(n, full.size)
    rng = np.random.default_rng(7)
    values = rng.integers(-3, 4, (wires, 64)).astype(dtype)
    values[values == 0] = rng.choice(np.array([0.0, -0.0], dtype=dtype), (values == 0).sum())
    values[:, ::5] = rng.standard_normal((wires, 13))
    runs = np.sort(values.reshape(wires // slot, slot, 64), axis=1, kind="stable")
    base = np.ascontiguousarray(runs.reshape(wires, 64))
    base[surely_inf] = np.inf
    merged = []
    for width in (32, 64):
        module = _bitonic_with_vector_bytes(width)
        kinds, table, _ = module.pruned_passes(wires, slot, surely_inf)
        buf = base.copy()
        module.run_passes(buf, kinds, table, 64, 64)
        merged.append(buf)
    np.testing.assert_array_equal(merged[0], np.sort(base, axis=0))
    assert merged[0].tobytes() == merged[1].tobytes()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n", [26, 33, 64, 65, 127, 200, 333, 500, 1000])
def test_grouped_kernel_with_specials_matches_reference(n, dtype):
    """The grouped kernel (sorted groups merged by the bitonic passes) against the per-coordinate
    reference, with NaN, +-inf, ties and far outliers; on integer columns every sum is exact, so
    there every statistic must equal the reference exactly."""
    gen = torch.Generator().manual_seed(1000 + n)
    d = 2 * sel.LANES + 37  # two full blocks and a partial one
    X = torch.randn(n, d, generator=gen, dtype=torch.float64)
    X[:, ::3] = torch.randint(-3, 4, (n, len(range(0, d, 3))), generator=gen).double()  # ties
    special = torch.rand(n, d, generator=gen)
    X[special < 0.04] = math.nan
    X[(special >= 0.04) & (special < 0.06)] = math.inf
    X[(special >= 0.06) & (special < 0.08)] = -math.inf
    X[(special >= 0.08) & (special < 0.10)] = 1e30
    X[: n // 3, 5] = math.nan  # a coordinate a third missing
    X[:, 7] = 0.5  # a constant coordinate
    X = X.to(dtype)
    drop = n // 5
    exact = torch.zeros(d, dtype=torch.bool)
    exact[::3] = True
    exact[7] = True
    for stat in STATS:
        d_stat = drop if stat != sel.MEDIAN and stat != sel.MEAN else 0
        min_k = needed(stat, d_stat)
        fast = check_both_paths(X, stat, d_stat, min_k)
        ref, _, _ = kernel_reference(X, stat, d_stat, min_k)
        ints = exact.numpy() & np.isfinite(ref) & (np.abs(ref) < 1e20)
        if stat != sel.MEAN:  # integers averaged in float32 may round; the others are exact
            np.testing.assert_array_equal(fast.double().numpy()[ints], ref[ints].astype(
                torch_to_numpy(dtype)).astype(np.float64))


def torch_to_numpy(dtype: torch.dtype):
    return np.float32 if dtype == torch.float32 else np.float64


@pytest.mark.parametrize("stat", STATS, ids=NAMES.get)
@pytest.mark.parametrize("n", [26, 41, 50, 100, 160])
def test_grouped_kernel_matches_reference(stat, n):
    gen = torch.Generator().manual_seed(n * 10 + stat)
    X = torch.randn(n, 300, dtype=torch.float64, generator=gen)
    X[: n // 5, ::7] = float("nan")  # missing values in some coordinates
    X[n // 5 : n // 4] = 1e30  # far outliers
    for drop in _drops(stat, n // 2):
        check_both_paths(X, stat, drop, needed(stat, drop))


# --- numba == torch == reference ------------------------------------------------------------
def _drops(stat: int, n: int) -> list[int]:
    if stat in (sel.MEDIAN, sel.MEAN):
        return [0]
    top = (n - 1) // 2 if stat != sel.CLOSEST_TO_MEDIAN else n - 1
    return sorted({0, top // 2, top})


@pytest.mark.parametrize("stat", STATS, ids=NAMES.get)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 9, 10, 12, 13, 16, 17, 33, 64])
def test_paths_match_reference(stat, n):
    gen = torch.Generator().manual_seed(n * 10 + stat)
    for d, dtype in [(1, torch.float64), (255, torch.float32), (257, torch.float64)]:
        X = torch.randn(n, d, generator=gen, dtype=dtype)
        for drop in _drops(stat, n):
            check_both_paths(X, stat, drop, needed(stat, drop))
    # integer values: ties everywhere, exact sums, so both paths pick the same windows
    X = torch.randint(-2, 3, (n, 300), generator=gen).double()
    for drop in _drops(stat, n):
        check_both_paths(X, stat, drop, needed(stat, drop))


@pytest.mark.parametrize("stat", STATS, ids=NAMES.get)
@pytest.mark.parametrize(("n", "drop"), [(17, 3), (11, 2), (9, 2)])  # 25-, 12-, 10-row kernels
def test_paths_match_reference_with_missing_values(stat, n, drop):
    gen = torch.Generator().manual_seed(stat)
    X = torch.randn(n, 600, generator=gen, dtype=torch.float64)
    mask = torch.rand(n, 600, generator=gen) < 0.2
    specials = torch.tensor([math.nan, math.inf, -math.inf], dtype=torch.float64)
    X = torch.where(mask, specials[torch.randint(0, 3, (n, 600), generator=gen)], X)
    min_k = 2 * drop + 1
    X[: n - min_k, 5] = math.nan  # exactly min_k finite values left in coordinate 5
    X[n - min_k :, 6] = math.inf  # exactly n - min_k in coordinate 6
    kept = torch.isfinite(X).sum(dim=0) >= min_k
    X = X[:, kept]
    assert X.shape[1] > 500
    check_both_paths(X, stat, drop, min_k)


@pytest.mark.parametrize("stat", STATS, ids=NAMES.get)
def test_paths_with_huge_outliers(stat):
    # 1e30 outliers beside O(1) values: a sum that ever holds an outlier it then subtracts
    # (prefix sums) cancels catastrophically; each path must only sum the values it averages
    gen = torch.Generator().manual_seed(20 + stat)
    n, drop = 11, 3
    for dtype in (torch.float64, torch.float32):
        X = torch.randn(n, 300, generator=gen).to(dtype)
        X[:2] = 1e30
        X[2:3] = -1e30
        X[3:4, ::2] = math.nan
        out = check_both_paths(X, stat, drop, needed(stat, drop))
        if stat in (sel.MEDIAN, sel.TRIMMED):  # outliers trimmed away: an O(1) result
            assert torch.all(out.abs() < 10)


def test_constant_columns_give_the_constant_exactly():
    # the mean of k copies of v is v; a plain sum then division gives 0.1 * 3 / 3 != 0.1
    col = torch.tensor([0.1, 0.7, -1 / 3, 1e-7, 123.456], dtype=torch.float64)
    for n in (3, 5, 7, 25):
        X = col.repeat(n, 1)
        for stat in STATS:
            for drop in _drops(stat, n):
                for force_torch in (False, True):
                    out = run(X, stat, drop, 1, force_torch=force_torch)
                    assert torch.equal(out, col), (n, NAMES[stat], drop, force_torch)


def test_results_stay_within_the_values_averaged_near_overflow():
    X = torch.tensor([[1.0e308], [1.7e308], [1.7e308], [1.7e308], [1.6e308]], dtype=torch.float64)
    vals = sorted(float(v) for v in X[:, 0])
    for stat in STATS:
        for force_torch in (False, True):
            out = float(run(X, stat, 1, 1, force_torch=force_torch)[0])
            assert math.isfinite(out) and vals[0] <= out <= vals[-1], (NAMES[stat], out)
            if stat == sel.MEAN:
                assert out == pytest.approx(sum(v / 5 for v in vals), rel=1e-14)
    X = torch.tensor([[1.5e308], [1.7e308]], dtype=torch.float64)  # a + b overflows
    for force_torch in (False, True):
        assert float(run(X, sel.MEDIAN, 0, 1, force_torch=force_torch)[0]) == 1.6e308


# --- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("force_torch", [False, True])
def test_too_few_finite_values_raises_naming_the_rule(force_torch):
    X = torch.randn(9, 2000, dtype=torch.float64)
    X[:4, 1500] = math.nan  # 5 finite values: enough for min_k = 5
    run(X, sel.TRIMMED, 2, 5, force_torch=force_torch)
    X[4, 1500] = math.inf  # 4 finite values
    X[:8, 1700] = -math.inf  # 1 finite value
    message = r"^myrule: 2 coordinate\(s\) have fewer than 5 finite values \(first: coordinate 1500"
    with pytest.raises(ValueError, match=message):
        run(X, sel.TRIMMED, 2, 5, force_torch=force_torch, name="myrule")
    # min_k below what the statistic needs is raised to it (no division by zero or less)
    with pytest.raises(ValueError, match=r"fewer than 5 finite values \(first: coordinate 1500"):
        run(X, sel.TRIMMED, 2, 1, force_torch=force_torch)
    with pytest.raises(ValueError, match=r"fewer than 3 finite values \(first: coordinate 1700"):
        run(X, sel.CLOSEST_TO_MEDIAN, 2, 1, force_torch=force_torch)
    out = run(X, sel.MEDIAN, 0, 1, force_torch=force_torch)  # one value is enough for a median
    assert out[1700] == X[8, 1700]
    X[:, 3] = math.nan
    with pytest.raises(ValueError, match=r"fewer than 1 finite values \(first: coordinate 3\)"):
        run(X, sel.MEAN, 0, 0, force_torch=force_torch)
    with pytest.raises(ValueError, match="unknown statistic"):
        run(X, 7, 0, 1, force_torch=force_torch)
    with pytest.raises(ValueError, match="drop must be >= 0"):
        run(X, sel.TRIMMED, -1, 1, force_torch=force_torch)


# --- rows= (Bulyan's use) -------------------------------------------------------------------
@pytest.mark.parametrize("stat", STATS, ids=NAMES.get)
def test_rows_subset(stat):
    gen = torch.Generator().manual_seed(30 + stat)
    n = 20
    X = torch.randn(n, 513, generator=gen, dtype=torch.float64)
    X[3] = math.nan  # rows outside the subset may hold anything
    X[11, ::3] = 1e30
    for rows in (
        [0, 1, 2, 4, 5, 6, 7, 8, 9],  # sorted (as Bulyan passes them)
        [19, 2, 7, 0, 13, 5, 8],  # unsorted
        [6],  # one row
        [*range(4, n), 0, 1, 2],
    ):
        rows = [r for r in rows if r != 11] if stat not in (sel.MEDIAN, sel.TRIMMED) else rows
        for drop in _drops(stat, len(rows)):
            min_k = needed(stat, drop)
            fast = check_both_paths(X, stat, drop, min_k, rows)
            assert torch.equal(fast, run(X[rows], stat, drop, min_k))  # same as on the copy


def test_rows_subset_as_bulyan_calls_it():
    gen = torch.Generator().manual_seed(8)
    X = torch.randn(15, 1000, generator=gen)
    X[[1, 9]] = math.nan
    kept = torch.tensor([0, 2, 3, 4, 5, 7, 8, 10, 11, 14])
    drop = 4
    fast = check_both_paths(X, sel.CLOSEST_TO_MEDIAN, drop, drop + 1, kept.tolist())
    assert fast.dtype == torch.float32


# --- layouts, blocks, threads ---------------------------------------------------------------
def test_non_contiguous_input():
    gen = torch.Generator().manual_seed(1)
    Xt = torch.randn(700, 9, generator=gen, dtype=torch.float64).T
    assert not Xt.is_contiguous()
    for stat in STATS:
        for force_torch in (False, True):
            a = run(Xt, stat, 2, 5, force_torch=force_torch)
            assert torch.equal(a, run(Xt.contiguous(), stat, 2, 5, force_torch=force_torch))


@pytest.mark.parametrize("stat", STATS, ids=NAMES.get)
def test_many_coordinates_in_several_blocks(stat):
    n, d, drop = 3, 300_000, 1
    size = _gram.block_size(n, d, torch.device("cpu"))
    assert size < d  # the torch path runs several blocks, the numba one many lanes blocks
    gen = torch.Generator().manual_seed(40 + stat)
    X = torch.randn(n, d, generator=gen, dtype=torch.float64)
    fast = run(X, stat, drop, 3)
    slow = run(X, stat, drop, 3, force_torch=True)
    np.testing.assert_allclose(fast.numpy(), slow.numpy(), rtol=1e-14, atol=1e-14)
    for j0 in (0, 255, size - 100, size + 1000, d - 200):  # slices across block edges
        sl = slice(j0, j0 + 200)
        ref, scale, _ = kernel_reference(X[:, sl], stat, drop, 3)
        assert np.all(np.abs(fast[sl].numpy() - ref) <= tol(scale, X.dtype, n))
        assert torch.equal(run(X[:, sl].contiguous(), stat, drop, 3), fast[sl])


@pytest.mark.parametrize("stat", STATS, ids=NAMES.get)
def test_threads_do_not_change_the_result(stat, monkeypatch):
    monkeypatch.setattr(sel, "_MIN_BLOCKS_PER_THREAD", 2)  # 20 blocks: two threads run
    gen = torch.Generator().manual_seed(50 + stat)
    X = torch.randn(13, 5000, generator=gen)
    X[2, ::5] = math.nan
    try:
        torch.set_num_threads(2)
        two = run(X, stat, 3, 7)
        two_torch = run(X, stat, 3, 7, force_torch=True)
    finally:
        torch.set_num_threads(1)
    assert torch.equal(run(X, stat, 3, 7), two)
    assert torch.equal(run(X, stat, 3, 7, force_torch=True), two_torch)


def test_input_not_modified():
    X = torch.randn(9, 300, dtype=torch.float64)
    X[1, ::4] = math.nan
    X[2, ::7] = -math.inf
    before = X.clone()
    for stat in STATS:
        for force_torch in (False, True):
            run(X, stat, 2, 5, force_torch=force_torch)
            run(X, stat, 2, 5, rows=torch.tensor([0, 1, 4, 5, 6, 7, 8]), force_torch=force_torch)
    assert torch.equal(X.isnan(), before.isnan())
    assert torch.equal(X.nan_to_num(), before.nan_to_num())


# --- property: random small problems --------------------------------------------------------
@given(
    stat=st.sampled_from(STATS),
    n=st.integers(1, 20),
    d=st.integers(1, 6),
    drop_seed=st.integers(0, 100),
    values=st.data(),
)
def test_property_paths_agree_with_reference(stat, n, d, drop_seed, values):
    elements = st.one_of(
        st.integers(-4, 4).map(float),
        st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False),
        st.sampled_from([math.nan, math.inf, -math.inf, 1e30, -1e30]),
    )
    X = torch.tensor(
        values.draw(st.lists(st.lists(elements, min_size=d, max_size=d), min_size=n, max_size=n)),
        dtype=torch.float64,
    ).reshape(n, d)
    drop = _drops(stat, n)[drop_seed % len(_drops(stat, n))]
    min_k = needed(stat, drop)
    ok = kernel_reference(X, stat, drop, min_k)[2]
    if not ok.all():
        for force_torch in (False, True):
            with pytest.raises(ValueError, match=rf"{int((~ok).sum())} coordinate\(s\)"):
                run(X, stat, drop, min_k, force_torch=force_torch)
        return
    check_both_paths(X, stat, drop, min_k)


def test_kernel_leaves_torch_thread_count_alone():
    # Run in a fresh process: the first kernel call starts numba's threading layer, which used
    # to reset torch's OpenMP thread count to the core count.
    import subprocess
    import sys

    code = (
        "import torch; torch.set_num_threads(1)\n"
        "import byzlearn.aggregators as agg\n"
        "agg.median(torch.randn(5, 600), f=1)\n"
        "print(torch.get_num_threads())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


@pytest.mark.parametrize("stat", STATS, ids=NAMES.get)
@pytest.mark.parametrize("mixing", ["sparse", "dense"])
def test_mixed_inputs_block_by_block_match_the_materialised_rows(stat, mixing, monkeypatch):
    """coordinatewise_inputs builds A X one block at a time: same values, same missing-value
    error (with the coordinate counted from 0 across blocks) as on the materialised matrix."""
    monkeypatch.setattr(sel, "_MIN_BLOCKS_PER_THREAD", 1)
    monkeypatch.setattr(sel, "_MIXED_BLOCK_ELEMENTS", 1)  # blocks of 2 * 256 columns
    monkeypatch.setattr(_gram, "_MIX_COLUMNS", 100)  # dense products of 100 columns
    gen = torch.Generator().manual_seed(60 + stat)
    X = torch.randn(9, 3000, generator=gen, dtype=torch.float64)
    inputs = _gram.Inputs.from_matrix(X)
    if mixing == "sparse":
        M = torch.zeros(5, 9, dtype=torch.float64)
        for i in range(5):
            M[i, [i, i + 4]] = 0.5
    else:
        M = torch.rand(7, 9, generator=gen, dtype=torch.float64)
    mixed = inputs.mix(M)
    Y = M @ X
    torch.testing.assert_close(mixed.materialize(), Y)
    drop = 1
    min_k = needed(stat, drop)
    expected = sel.coordinatewise(Y, stat, drop, min_k, "rule")
    got = sel.coordinatewise_inputs(mixed, stat, drop, min_k, "rule")
    torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-13)
    if mixing == "sparse":  # missing values stay in their coordinates
        X[:, 1700] = math.nan
        mixed = _gram.Inputs(X=X, gram=None).mix(M)
        with pytest.raises(ValueError, match="first: coordinate 1700"):
            sel.coordinatewise_inputs(mixed, stat, drop, min_k, "rule")


@pytest.mark.parametrize("n", [9, 25, 31])
@pytest.mark.parametrize("stat", [sel.MEDIAN, sel.TRIMMED, sel.CLOSEST_TO_MEDIAN,
                                  sel.CLOSEST_TO_TRIMMED])
@pytest.mark.parametrize("kind", ["nnm", "weights", "nan_rows"])
def test_fast_mixing_matches_materialised_rows(n, stat, kind):
    """Mixed rows built per block from shared terms (NNM's overlapping neighbourhoods) give the
    statistic of the materialised A X (dense mixing with unequal weights too; mixes of a row
    holding NaN are missing rows)."""
    from byzlearn.aggregators._gram import Inputs
    from byzlearn.aggregators.rules.mixing import nnm

    f = (n - 1) // 4
    g = torch.Generator().manual_seed(n + stat)
    X = torch.randn(n, 3 * sel._MIX_BLOCK + 77, generator=g) + torch.randn(1, 1, generator=g)
    X[: n - f] += torch.randn(X.shape[1], generator=g)  # a common component: overlapping sets
    if kind == "nan_rows":
        X[[1, 4]] = float("nan")
    inputs = Inputs.from_matrix(X)
    mixed = nnm(inputs, f)
    if kind == "weights":
        M = torch.rand(n, n, generator=g, dtype=torch.float64)
        mixed = mixed.mix(M / M.sum(dim=1, keepdim=True))
    drop = f if stat != sel.MEDIAN else 0
    out = torch.empty(X.shape[1])
    first = sel._mixed_fast(mixed, stat, drop, 2 * drop + 1, out)
    assert first == -1
    # the fast path sums in float64 and rounds once: so does this reference (torch's float32
    # product can round a mixed value differently and flip a near-tie of the window rules)
    A = mixed.coefficients()
    Y = (torch.nan_to_num(A) @ torch.nan_to_num(X.double(), nan=0.0)).float()
    Y[mixed.bad] = float("nan")
    expected = torch.empty_like(out)
    sel.statistic_into(Y, stat, drop, 2 * drop + 1, expected, force_torch=True)
    torch.testing.assert_close(out, expected, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(mixed.materialize(), Y, rtol=1e-5, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("stat", [sel.MEDIAN, sel.TRIMMED])
@pytest.mark.parametrize("seed", range(8))
def test_weighted_statistic_equals_the_expanded_multiset(stat, seed):
    """Few distinct mixed rows (NNM's coinciding neighbourhoods): the median / trimmed mean of
    the distinct values with their multiplicities equals the plain statistic of the rows."""
    from byzlearn.aggregators import _weighted_sort

    rng = np.random.default_rng(seed)
    nu = int(rng.integers(1, _weighted_sort.MAX_DISTINCT + 1))
    weights = rng.integers(1, 6, size=nu).astype(np.float64)
    k = int(weights.sum())
    drop = int(rng.integers(0, (k - 1) // 2 + 1)) if stat == sel.TRIMMED else 0
    w = 3 * sel.LANES + 17
    U = rng.normal(size=(nu + 1, w)).astype(np.float32)
    U[:, ::5] = np.round(U[:, ::5])  # ties between distinct rows
    U[nu] = np.nan  # the missing row, never read
    out = np.empty(w, dtype=np.float32)
    pairs = sel.sorting_network(nu)
    cover = _weighted_sort.covering_row(weights, stat == sel.TRIMMED, drop)
    assert _weighted_sort.weighted_statistic(U, nu, weights, pairs, stat, drop, cover, out)
    expanded = torch.from_numpy(np.repeat(U[:nu], weights.astype(int), axis=0))
    expected = torch.empty(w)
    sel.statistic_into(expanded, stat, drop, 1, expected, force_torch=True)
    torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-6, atol=1e-6)
    U[nu // 2, 3] = np.inf  # a non-finite mixed value: the caller falls back
    assert not _weighted_sort.weighted_statistic(U, nu, weights, pairs, stat, drop, cover, out)


@pytest.mark.parametrize("n_common", [0, 1, 3, 4, 5, 8, 11])
def test_mix_block_matches_numpy(n_common):
    """The mixed rows of one block (common rows added four at a time, then one by one, plus
    each row's extra terms) equal the float64 sums of a numpy reference."""
    if not sel._HAVE_NUMBA:
        pytest.skip("numba not available")
    rng = np.random.default_rng(n_common)
    X = rng.normal(size=(14, 3000)).astype(np.float32)
    common = rng.permutation(14)[:n_common].astype(np.int64)
    common_w = rng.random(n_common)
    starts = np.array([0, 2, 2, 5], dtype=np.int64)
    extra = rng.integers(0, 14, size=5).astype(np.int64)
    extra_w = rng.random(5)
    j0, w = 300, 1000  # an offset and a width that is not a multiple of the lanes
    U = np.full((3, w), np.nan, dtype=np.float32)
    sel._mix_block(X, j0, w, common, common_w, starts, extra, extra_w, U)
    Xd = X[:, j0 : j0 + w].astype(np.float64)
    base = common_w @ Xd[common] if n_common else np.zeros(w)
    for u in range(3):
        e = slice(starts[u], starts[u + 1])
        expected = base + extra_w[e] @ Xd[extra[e]]
        np.testing.assert_allclose(U[u], expected.astype(np.float32), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("stat", [sel.MEDIAN, sel.TRIMMED])
@pytest.mark.parametrize("convex", [True, False])
def test_covering_mixed_row_is_the_statistic(stat, convex, monkeypatch):
    """NNM at n = 25, f = 5 on honest rows: 20 outputs share one neighbourhood, whose copies hold
    the kept positions; the fast path then reads only that row's inputs (one weighted sum), and
    agrees with the statistic of the materialised rows. A non-convex mix (a row could overflow
    into a missing value) keeps the general path."""
    from byzlearn.aggregators import _gram_kernel
    from byzlearn.aggregators._gram import Inputs
    from byzlearn.aggregators.rules.mixing import nnm

    n, f = 25, 5
    g = torch.Generator().manual_seed(10)  # distinct mixed rows of weights 1, 1, 1, 1, 1, 20
    d = 2 * sel._MIX_BLOCK + 77
    X = torch.randn(n, d, generator=g) * torch.linspace(0.8, 1.2, n)[:, None]
    X += torch.randn(d, generator=g)
    mixed = nnm(Inputs.from_matrix(X), f)
    if not convex:
        mixed = mixed.mix(2.0 * torch.eye(n, dtype=torch.float64))
    calls = []
    real = _gram_kernel.weighted_sum

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(_gram_kernel, "weighted_sum", spy)
    drop = f if stat == sel.TRIMMED else 0
    out = torch.empty(d)
    assert sel._mixed_fast(mixed, stat, drop, 2 * drop + 1, out) == -1
    assert bool(calls) == convex
    Y = (mixed.coefficients() @ X.double()).float()
    expected = torch.empty(d)
    sel.statistic_into(Y, stat, drop, 2 * drop + 1, expected, force_torch=True)
    torch.testing.assert_close(out, expected, rtol=2e-6, atol=2e-6)


def _buckets(n: int, s: int, seed: int) -> torch.Tensor:
    """A bucketing matrix written here: a permutation cut into buckets of s (the last smaller),
    each output row 1/|b| on its bucket's inputs."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    M = torch.zeros(-(-n // s), n, dtype=torch.float64)
    for b in range(M.shape[0]):
        members = perm[b * s : (b + 1) * s]
        M[b, members] = 1.0 / len(members)
    return M


@pytest.mark.parametrize("stat", STATS, ids=NAMES.get)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("n", "s"), [(25, 2), (26, 3), (40, 5), (13, 1)])
def test_sparse_mixing_pass_gives_the_bits_of_the_materialised_rows(stat, dtype, n, s, monkeypatch):
    """Bucketing (and a zero row, a scaled row) through the compiled sparse pass: the same bits
    as the statistic of ``Inputs.materialize()`` (numpy's loops), blocks of several widths,
    missing values in their own coordinates only."""
    if not sel._HAVE_NUMBA:
        pytest.skip("numba not available")
    monkeypatch.setattr(sel, "_MIX_BLOCK", 3 * sel.LANES)
    g = torch.Generator().manual_seed(n + s + stat)
    d = 4 * sel._MIX_BLOCK + 77
    X = (torch.randn(n, d, generator=g, dtype=torch.float64) * 3 + 0.5).to(dtype)
    X[2, 100:140] = math.nan
    X[5, 3000] = math.inf
    M = _buckets(n, s, seed=n * s)
    M = torch.cat([M, torch.zeros(1, n, dtype=torch.float64)])  # a row without terms
    M[-1, 0] = 0.3  # ... then one scaled input
    mixed = _gram.Inputs(X=X, gram=None).mix(M)
    assert mixed.sparse_mixing()
    drop = 1 if stat != sel.MEDIAN else 0
    min_k = needed(stat, drop)
    out = torch.full((d,), 7.0, dtype=dtype)
    first = sel._mixed_sparse(mixed, stat, drop, min_k, out)
    expected = torch.empty_like(out)
    first_expected = sel.statistic_into(mixed.materialize(), stat, drop, min_k, expected)
    assert first == first_expected
    assert torch.equal(out.isnan(), expected.isnan())
    assert torch.equal(torch.nan_to_num(out), torch.nan_to_num(expected))


def test_sparse_mixing_pass_reports_the_first_short_coordinate(monkeypatch):
    """A coordinate left with too few finite values in a later block: the rule's error names
    it, counted from 0 across blocks, on one and two threads alike."""
    monkeypatch.setattr(sel, "_MIX_BLOCK", sel.LANES)
    X = torch.randn(12, 10 * sel.LANES + 5, generator=torch.Generator().manual_seed(3))
    X[:8, 7 * sel.LANES + 3] = math.nan  # 6 buckets of 2: at most 2 finite means there
    mixed = _gram.Inputs(X=X, gram=None).mix(_buckets(12, 2, seed=1))
    for threads in (1, 2):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with pytest.raises(ValueError, match=f"first: coordinate {7 * sel.LANES + 3}"):
                sel.coordinatewise_inputs(mixed, sel.MEDIAN, 0, 3, "median")
        finally:
            torch.set_num_threads(before)


def test_sparse_mixing_pass_is_not_taken_where_it_does_not_apply():
    """Dense mixing (NNM's), imputed values and dtypes numpy lacks keep their own paths."""
    X = torch.randn(10, 600, generator=torch.Generator().manual_seed(4))
    out = torch.empty(600)
    dense = _gram.Inputs.from_matrix(X).mix(torch.full((10, 10), 0.1, dtype=torch.float64))
    assert not dense.sparse_mixing()
    assert sel._mixed_sparse(dense, sel.MEDIAN, 0, 1, out) is None
    half = _gram.Inputs(X=X.half(), gram=None).mix(_buckets(10, 2, seed=0))
    assert sel._mixed_sparse(half, sel.MEDIAN, 0, 1, out.half()) is None
    assert sel._mixed_sparse(_gram.Inputs(X=X, gram=None), sel.MEDIAN, 0, 1, out) is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sparse_mix_block_is_numpys_loop_bit_for_bit(dtype):
    """Each mixed row: the first term's product, then each further product added, rounded in
    the input precision at every step (no fused multiply-add), as numpy's loops do."""
    if not sel._HAVE_NUMBA:
        pytest.skip("numba not available")
    rng = np.random.default_rng(5)
    X = (rng.normal(size=(9, 2000)) * 10.0 ** rng.integers(-3, 4, size=(9, 1))).astype(dtype)
    starts = np.array([0, 3, 3, 4, 8, 10, 15], dtype=np.int64)  # 3, 0, 1, 4, 2 and 5 terms
    terms = np.array([4, 0, 7, 2, 1, 3, 5, 8, 6, 0, 8, 7, 6, 5, 4], dtype=np.int64)
    coefs = (1.0 / np.array([3, 3, 3, 1, 7, 7, 7, 7, 2, 2, 5, 5, 5, 5, 5])).astype(dtype)
    j0, w = 133, 1500
    U = np.full((6, w), np.nan, dtype=dtype)
    sel._sparse_mix_block(X, j0, w, starts, terms, coefs, U)
    for u in range(6):
        expected = np.zeros(w, dtype=dtype)
        for e in range(starts[u], starts[u + 1]):
            product = X[terms[e], j0 : j0 + w] * coefs[e]
            expected = product if e == starts[u] else expected + product
        np.testing.assert_array_equal(U[u], expected)


def _closest_to_median_bits(values: list[float], drop: int) -> float:
    """The kernel's arithmetic for one column of finite float64 values, written here: the
    sorted values, the median, the window found by a sequential search from position 0, its
    sum in order, divided by m and clamped to the window's ends."""
    v = sorted(values)
    k = len(v)
    m = k - drop
    h = k // 2
    c = v[h] if k % 2 else 0.5 * (v[h - 1] + v[h])
    s = 0
    while s < k - m and (c - v[s]) > (v[s + m] - c):
        s += 1
    acc = 0.0
    for t in range(s, s + m):
        acc += v[t]
    return min(max(acc / m, v[s]), v[s + m - 1])


def _window_bits_by_column(X: torch.Tensor, drop: int, centre: str) -> np.ndarray:
    """The window statistic of each column in float32 as the kernel computes it: the float64
    sum of the window (the core first when ``drop <= m``), the mean by the reciprocal, clamped
    to the window's ends, rounded to float32 (a zero's sign then follows how the sort ordered
    equal zeros, which Python's sort does not reproduce: compared by value)."""
    n = X.shape[0]
    m = n - drop
    out = np.empty(X.shape[1], dtype=np.float32)
    for j in range(X.shape[1]):
        v = sorted(X[:, j].double().tolist())
        if centre == "median":
            c = v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])
        else:  # the trimmed mean, as the kernel rounds it (float32 result of a float64 mean)
            t = 0.0
            for x in v[drop : n - drop]:
                t += x
            c = min(max(t * (1.0 / (n - 2 * drop)), v[drop]), v[n - drop - 1])
        s = 0
        while s < drop and (c - v[s]) > (v[s + m] - c):
            s += 1
        acc = 0.0
        if drop <= m:
            for t in range(drop, m):
                acc += v[t]
            for t in range(drop):
                acc += v[t + m] if t < s else v[t]
        else:
            for t in range(s, s + m):
                acc += v[t]
        r = acc * (1.0 / m)
        r = r if r > v[s] else v[s]
        out[j] = r if r < v[s + m - 1] else v[s + m - 1]
    return out


@pytest.mark.parametrize(
    "n,stat,drop",
    [
        (100, sel.CLOSEST_TO_MEDIAN, 20),
        (131, sel.CLOSEST_TO_TRIMMED, 26),
        (200, sel.CLOSEST_TO_MEDIAN, 40),
        (120, sel.CLOSEST_TO_MEDIAN, 80),  # Bulyan's second phase: a window shorter than drop
    ],
)
def test_float32_windows_without_their_ends_keep_every_bit(n, stat, drop):
    """float32 MeaMed, Phocas and Bulyan's short window sum without tracking the window's ends
    (the clamp cannot move a mean rounded to float32) and clamp only zero means: the values of
    the clamped statistic on ties, signed zeros, all-zero columns and spread values, with a
    negative zero where the clamp gives one, and the per-column path's bits but zeros' signs
    (blocks holding a missing value in one column take it)."""
    rng = np.random.default_rng(n)
    d = 2 * sel.LANES + 37
    values = rng.integers(-2, 3, (n, d)).astype(np.float32)
    values[(values == 0) & (rng.random((n, d)) < 0.5)] = -0.0
    values[:, 5::7] = np.where(rng.random((n, len(range(5, d, 7)))) < 0.5, -0.0, 0.0)
    values[:, 3::11] = rng.standard_normal((n, len(range(3, d, 11))))
    values[:, 9::13] = -0.0  # the clamp gives these a negative zero mean
    X = torch.from_numpy(values)
    centre = "median" if stat == sel.CLOSEST_TO_MEDIAN else "trimmed"
    want = _window_bits_by_column(X, drop, centre)
    got = run(X, stat, drop, drop + 1).numpy()
    assert np.array_equal(got, want)
    assert (got == 0).sum() > 20 and got[want != 0].tobytes() == want[want != 0].tobytes()
    assert np.signbit(got[9::13]).all() and not np.signbit(got[(got == 0) & ~np.signbit(got)]).any()
    Y = X.clone()
    missing = np.arange(1, d, sel.LANES)  # one column in every block
    Y[0, missing] = float("nan")
    lane = run(Y, stat, drop, drop).numpy()
    keep = np.ones(d, dtype=bool)
    keep[missing] = False
    assert np.array_equal(lane[keep], got[keep])
    nonzero = keep & (got != 0)  # (the per-column clamp, min and max, keeps a zero's sign)
    assert lane[nonzero].tobytes() == got[nonzero].tobytes()


@given(
    n=st.integers(3, 24),
    d=st.integers(1, 40),
    share=st.floats(0.5, 0.95),
    values=st.data(),
)
def test_short_window_around_the_median_gives_the_sequential_search_bits(n, d, share, values):
    """Bulyan's second phase (the values closest to the median, a window shorter than what is
    dropped): the vectorised path counts the window's start only around the median and reads
    the window's ends as it sums; the result is the sequential search's, bit for bit, with
    ties (small integers) as well as spread values."""
    drop = min(n - 1, max(n // 2 + 1, int(share * n)))  # m = n - drop < drop
    elements = st.one_of(
        st.integers(-2, 2).map(float), st.floats(-1e3, 1e3, allow_subnormal=False)
    )
    row = st.lists(elements, min_size=d, max_size=d)
    rows = values.draw(st.lists(row, min_size=n, max_size=n))
    X = torch.tensor(rows, dtype=torch.float64).reshape(n, d)
    out = run(X, sel.CLOSEST_TO_MEDIAN, drop, drop + 1)
    expected = [_closest_to_median_bits(X[:, j].tolist(), drop) for j in range(d)]
    assert out.tolist() == expected


def test_vector_bytes_follows_the_cpu_numba_compiles_for(monkeypatch):
    from llvmlite import binding
    from numba import config

    from byzlearn.aggregators import _simd

    host = 64 if binding.get_host_cpu_features().get("avx512f", False) else 32
    monkeypatch.setattr(config, "CPU_NAME", None)
    assert _simd.vector_bytes() == host
    monkeypatch.setattr(config, "CPU_NAME", "generic")
    monkeypatch.setattr(config, "CPU_FEATURES", "")
    assert _simd.vector_bytes() == 32
    monkeypatch.setattr(config, "CPU_NAME", "skylake-avx512")
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx2,+avx512f")
    assert _simd.vector_bytes() == 64


def test_prefetch_and_part_rules_of_the_plans():
    """The grouped kernel prefetches the next group from 3 groups on (not for one network or
    two groups), and takes its blocks in halves from 256 buffer rows (129 rows) on for float32,
    from 512 (257 rows) for float64."""
    from byzlearn.aggregators import _sortnet

    whole, half = _sortnet.LANES, _sortnet.LANES // 2
    assert not _sortnet.plan(25).ahead  # one network
    assert not _sortnet.plan(50).ahead  # two groups
    for n in (75, 100, 128, 129, 256, 257, 1000):
        assert _sortnet.plan(n).ahead, n
    for n in (25, 50, 100, 128):
        assert _sortnet.plan(n).part(4) == _sortnet.plan(n).part(8) == whole, n
    for n in (129, 200, 256):
        assert _sortnet.plan(n).wires == 256, n
        assert _sortnet.plan(n).part(4) == half and _sortnet.plan(n).part(8) == whole, n
    for n in (257, 300, 1000):
        assert _sortnet.plan(n).part(4) == _sortnet.plan(n).part(8) == half, n


@pytest.mark.parametrize("tail", [19, 150], ids=["last block in one part", "in two parts"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n", [64, 100, 160, 300])
def test_prefetch_and_parts_leave_every_output_bit(n, dtype, tail):
    """The kernel with and without the prefetch of the next group (``ahead``), in whole blocks
    and in halves, on a subset of the rows, blocks split between calls as threads split them
    (the last block of each call prefetches nothing), NaN, infinities and ties: the same
    outputs, and the same first short coordinate of each block (in either half, in both)."""
    from byzlearn.aggregators import _sortnet

    gen = torch.Generator().manual_seed(77 + n)
    d = 5 * sel.LANES + tail  # a short last block: one part, or a whole and a short one
    X = torch.randn(n + 7, d, generator=gen, dtype=torch.float64)
    X[:, ::5] = torch.randint(-2, 3, (n + 7, len(range(0, d, 5))), generator=gen).double()
    special = torch.rand(n + 7, d, generator=gen)
    X[special < 0.03] = math.nan
    X[(special >= 0.03) & (special < 0.05)] = math.inf
    # coordinates too short for the statistics that drop values: in the first and the second
    # half of block 0, the second of block 1, the last block's first (and second) part
    short = [11, 200, sel.LANES + 130, 5 * sel.LANES + 3, 5 * sel.LANES + tail - 1]
    X[3:, short] = math.nan
    Xn = X.to(dtype).numpy()
    rows = np.sort(np.random.default_rng(n).choice(n + 7, size=n, replace=False)).astype(np.int64)
    plan = _sortnet.plan(n)
    big = np.array([np.inf], Xn.dtype)
    blocks = plan.blocks(d)
    for stat in STATS:
        drop = 0 if stat in (sel.MEDIAN, sel.MEAN) else n // 5
        min_k = needed(stat, drop)
        exact_kinds, exact_table = _sortnet.exact_passes(n, _sortnet.read_positions(n, stat, drop))
        results = []
        for part in (_sortnet.LANES, _sortnet.LANES // 2):
            kernel = _sortnet.kernel(plan.size, part)
            for ahead in (False, True):
                out = np.full(d, -7.0, dtype=Xn.dtype)
                first_bad = np.full(blocks, -2, dtype=np.int64)
                for b0, b1 in ((0, 2), (2, 3), (3, blocks)):
                    kernel(Xn, rows, big, stat, drop, min_k, out, first_bad, b0, b1, plan.starts,
                           plan.slot, plan.wires, plan.pad, plan.kinds, plan.passes, exact_kinds,
                           exact_table, plan.two_lists(stat, drop, min_k), ahead)
                results.append((out.tobytes(), first_bad.tolist()))
        assert all(r == results[0] for r in results), NAMES[stat]
        if stat not in (sel.MEDIAN, sel.MEAN):  # each block's first short coordinate
            firsts = [min((c for c in short if c // sel.LANES == b), default=-1)
                      for b in range(blocks)]
            assert results[0][1] == firsts == [11, short[2], -1, -1, -1, short[3]]


def test_a_damaged_kernel_file_in_the_cache_is_rewritten(tmp_path, monkeypatch):
    """A generated kernel's file that is not UTF-8 (a damaged disk, another tool's bytes) made
    every call raise UnicodeDecodeError; the file is compared as bytes and written again."""
    from byzlearn.aggregators import _sortnet

    monkeypatch.setenv("BYZLEARN_CACHE", str(tmp_path))
    source = "def kernel():\n    return 42\n"
    path = tmp_path / "kernels" / "probe_kernel.py"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xff\xfe\x00 not a kernel")
    assert _sortnet._load_from_file("probe_kernel", source)() == 42
    assert path.read_bytes() == source.encode()
    path.unlink()
    # a folder where the file goes: not loadable from a file (the caller compiles in memory)
    path.mkdir()
    assert _sortnet._load_from_file("probe_kernel", source) is None


@settings(max_examples=80, deadline=None)
@given(
    rows=st.integers(1, 30),
    cols=st.integers(1, 8),
    values=st.sampled_from([(0.0, 0.05, 1 / 3), (0.0, 1.0), (-0.5, 0.0, 0.25, 2.0)]),
    seed=st.integers(0, 2**32 - 1),
)
def test_unique_rows_are_numpys(rows: int, cols: int, values: tuple, seed: int) -> None:
    """The lexsort behind the mixed rows' plan gives np.unique(axis=0)'s rows and inverse, on
    matrices with many repeated rows (NNM's overlapping neighbourhoods)."""
    from byzlearn.aggregators._select import unique_rows

    rng = np.random.default_rng(seed)
    A = rng.choice(np.asarray(values), size=(rows, cols))
    A[rng.integers(0, rows, rows // 2)] = A[0]  # repeats
    unique, inverse = unique_rows(A)
    ref_unique, ref_inverse = np.unique(A, axis=0, return_inverse=True)
    np.testing.assert_array_equal(unique, ref_unique)
    np.testing.assert_array_equal(inverse, ref_inverse.reshape(-1))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_the_mixed_rows_plan_rebuilds_the_mixing_matrix(n: int, k: int, seed: int) -> None:
    """Each row of an NNM-like mixing matrix (k of n inputs weighted 1/k, repeated rows) is its
    distinct row's common terms plus that row's extra terms, and no term is listed twice."""
    rng = np.random.default_rng(seed)
    k = min(k, n)
    A = np.zeros((n, n))
    for i in range(n):
        A[i, rng.choice(n, k, replace=False)] = 1 / k
    A[rng.integers(0, n, n // 2)] = A[0]
    n_unique, inverse, common, common_w, starts, extra, extra_w = sel._mixed_rows_plan(A)
    assert starts[0] == 0 and starts[-1] == extra.size == extra_w.size
    assert len(starts) == n_unique + 1
    for i in range(n):
        r = inverse[i]
        row = np.zeros(n)
        row[common] = common_w
        terms = extra[starts[r] : starts[r + 1]]
        assert not set(terms.tolist()) & set(common.tolist())
        assert np.all(np.diff(terms) > 0)
        row[terms] = extra_w[starts[r] : starts[r + 1]]
        np.testing.assert_array_equal(row, A[i])
