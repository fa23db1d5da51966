"""The fused kernel (``_fused``: the statistic in registers after the sort) gives the plain
kernel's bits, wherever its blocks fall back, and is taken only where it applies.

Each case runs ``_select.statistic_into`` twice on the same input: once with the fused path
forced on (``MIN_COLUMNS = 0``) and once forced off, and compares the outputs bit for bit and the
first short coordinate. The plain kernel is itself checked against the references of
test_select_kernel; here the point is that the two paths never differ in a bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from byzlearn.aggregators import _fused, _sortnet
from byzlearn.aggregators import _select as sel
from tests.aggregators import tie_case, tied_centre_input

LANES = _sortnet.LANES
D = LANES * 37 + 45  # several blocks and a short last one

# (n, stat, drop): every statistic at n = 10 (f = 2), MeaMed's short window (Bulyan's second
# phase: 15 rows, drop 10; 7 rows, drop 4), odd counts, a padded network (n = 9 of 10 rows)
CASES = [
    (10, sel.MEDIAN, 2),
    (10, sel.TRIMMED, 2),
    (10, sel.CLOSEST_TO_MEDIAN, 2),
    (10, sel.CLOSEST_TO_TRIMMED, 2),
    (10, sel.MEAN, 0),
    (9, sel.CLOSEST_TO_MEDIAN, 3),
    (7, sel.CLOSEST_TO_MEDIAN, 4),
    (5, sel.CLOSEST_TO_TRIMMED, 2),
    (8, sel.CLOSEST_TO_MEDIAN, 5),  # a short window of an even count (the median a mean)
]
BOTH = [torch.float32, torch.float64]
CASES = [(*case, dtype) for case in CASES for dtype in BOTH]
CASES.append((15, sel.CLOSEST_TO_MEDIAN, 10, torch.float32))  # 8 s to compile per dtype
# the 25-row network (depth first) without its pairs on the five padding rows
CASES.append((20, sel.CLOSEST_TO_TRIMMED, 4, torch.float32))
# the median and trimmed mean of two sorted groups (_two_lists) or merged: 25 + 25 rows,
# 17 + 16 rows, 14 + 13 rows (the 16-row network)
CASES += [(50, sel.MEDIAN, 10, torch.float64), (50, sel.TRIMMED, 10, torch.float32)]
CASES += [(33, sel.TRIMMED, 6, torch.float32), (27, sel.MEDIAN, 5, torch.float32)]
# MeaMed and Phocas beyond one network: the groups merged in registers (4-7 s to compile each),
# the median a mean of two (50 rows) or one value (33), Bulyan's short window on 30 rows
CASES += [
    (50, sel.CLOSEST_TO_MEDIAN, 10, torch.float32),
    (50, sel.CLOSEST_TO_TRIMMED, 12, torch.float64),
    (33, sel.CLOSEST_TO_MEDIAN, 6, torch.float64),
    (27, sel.CLOSEST_TO_TRIMMED, 5, torch.float32),
    (30, sel.CLOSEST_TO_MEDIAN, 20, torch.float32),
    (58, sel.CLOSEST_TO_TRIMMED, 11, torch.float32),  # four groups of 16 (12 s to compile)
    (64, sel.MEDIAN, 0, torch.float32),  # beyond the two lists: the median merged too
]
KINDS = (
    "gaussian",
    "ties",
    "nan_rows",
    "scattered_missing",
    "huge",
    "missing_in_few_blocks",
)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int64)


def both_paths(X, stat, drop, rows=None, monkeypatch=None):
    n = X.shape[0] if rows is None else rows.numel()
    min_k = sel.checked_min_k(stat, drop, 1, "rule")
    results = []
    for threshold in (1 << 62, 0):
        monkeypatch.setattr(_fused, "MIN_COLUMNS", threshold)
        dtype = X.numpy().dtype
        assert _fused.applies(n, stat, drop, min_k, X.shape[1], dtype) == (threshold == 0)
        out = torch.empty(X.shape[1], dtype=X.dtype)
        first = sel.statistic_into(X, stat, drop, min_k, out, rows)
        results.append((out, first))
    return results


def make(kind: str, n: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n, D, generator=gen, dtype=torch.float64)
    if kind == "ties":  # few distinct values, zeros of both signs
        X = torch.randint(-2, 3, (n, D), generator=gen).double()
        X[(X == 0) & (torch.rand(n, D, generator=gen) < 0.5)] = -0.0
    elif kind == "nan_rows":  # every block falls back (the retry doubles)
        X[0] = float("nan")
        X[n - 1, ::3] = float("inf")
    elif kind == "whole_missing_rows":  # dropped before the fused kernel (a NaN attack)
        X[1] = float("nan")
        X[n // 2] = float("inf")
        X[n // 2, 7] = float("-inf")
    elif kind == "scattered_missing":
        mask = torch.rand(n, D, generator=gen) < 0.002
        X[mask] = float("nan")
    elif kind == "huge":  # float64 sums overflow: the fused kernel hands those blocks back
        top = float(torch.finfo(dtype).max)
        X = X.clamp(-1, 1) * top
    elif kind == "missing_in_few_blocks":  # fused, plain, fused again, at the edges of ranges
        for j in (0, LANES * 5 + 3, LANES * 22, LANES * 22 + 1, D - 1):
            X[j % n, j] = float("-inf")
    return X.to(dtype)


@pytest.mark.parametrize("n,stat,drop,dtype", CASES)
def test_fused_kernel_gives_the_plain_kernels_bits(n, stat, drop, dtype, monkeypatch):
    # 26 to 50 rows: the median and the trimmed mean merged in registers (AVX-512 hosts) or
    # taken from the two sorted lists (the others), both checked on any host
    two_lists = 26 <= n <= 50 and stat in (sel.MEDIAN, sel.TRIMMED)
    for merge in (True, False) if two_lists else (True,):
        monkeypatch.setattr(_sortnet, "REGISTER_MERGE", merge)
        for seed, kind in enumerate(KINDS):
            X = make(kind, n, dtype, seed)
            (plain, first_plain), (fused, first_fused) = both_paths(
                X, stat, drop, None, monkeypatch
            )
            assert first_fused == first_plain, (kind, merge)
            assert torch.equal(bits(fused), bits(plain)), (kind, merge)


WINDOW_AND_CENTRE = (sel.MEDIAN, sel.TRIMMED, sel.CLOSEST_TO_MEDIAN, sel.CLOSEST_TO_TRIMMED)


def test_groups_merge_in_registers_on_hosts_that_do(monkeypatch):
    monkeypatch.setattr(_sortnet, "REGISTER_MERGE", True)
    for n in (26, 40, 50, 51, _fused.MERGED_MAX_ROWS):  # every statistic, no two lists
        assert _fused.merges_in_registers(n)
        for stat in WINDOW_AND_CENTRE:
            assert not _sortnet.plan(n).two_lists(stat, n // 5, 1)
    assert not _fused.merges_in_registers(25)  # one network
    assert not _fused.merges_in_registers(_fused.MERGED_MAX_ROWS + 1)
    assert not _fused.applies(_fused.MERGED_MAX_ROWS + 1, sel.CLOSEST_TO_MEDIAN, 10, 1, 1 << 20,
                              np.float32)
    # elsewhere (AVX2: 16 registers) the two lists and the buffer's merge, as measured there
    monkeypatch.setattr(_sortnet, "REGISTER_MERGE", False)
    for n in (26, 50, 64):
        assert not _fused.merges_in_registers(n)
    assert _sortnet.plan(50).two_lists(sel.MEDIAN, 10, 1)
    assert not _fused.applies(40, sel.CLOSEST_TO_MEDIAN, 8, 1, 1 << 20, np.float32)
    assert not _fused.applies(51, sel.MEDIAN, 10, 1, 1 << 20, np.float32)
    assert _fused.applies(50, sel.TRIMMED, 10, 1, 1 << 20, np.float32)


def test_phocas_centre_on_exact_ties_is_the_plain_kernels(monkeypatch):
    # the fused kernel's Phocas centre is divided, as the plain kernel's: taken by the
    # reciprocal, its unit of float64 above the exact centre moved the window across a tie
    # (test_coordinatewise.test_phocas_centre_is_the_divided_trimmed_mean); 51 rows, f = 1
    monkeypatch.setattr(_sortnet, "REGISTER_MERGE", True)
    f, c = tie_case(51)
    X = tied_centre_input(51, 300, c, seed=3).float()
    (plain, _), (fused, _) = both_paths(X, sel.CLOSEST_TO_TRIMMED, f, None, monkeypatch)
    assert torch.equal(bits(fused), bits(plain))
    expected = (51 * c - (c + 1.5) * f) / (51 - f)  # the f highest values left out
    assert fused.double().sub(expected).abs().max() < 1e-6


def test_fused_kernel_on_a_subset_of_rows_as_bulyan_calls_it(monkeypatch):
    gen = torch.Generator().manual_seed(5)
    X = torch.randn(25, D, generator=gen)
    rows = torch.randperm(25, generator=gen)[:15]
    (plain, _), (fused, _) = both_paths(X, sel.CLOSEST_TO_MEDIAN, 10, rows, monkeypatch)
    assert torch.equal(bits(fused), bits(plain))
    reference = X[rows].double().sort(dim=0).values  # a column's 5 values closest to the median
    med = reference[7]
    order = (reference - med).abs().argsort(dim=0, stable=True)[:5]
    expected = reference.gather(0, order).mean(dim=0)
    assert torch.allclose(fused.double(), expected, rtol=1e-6, atol=1e-6)


def test_fused_kernel_with_two_threads(monkeypatch):
    X = make("missing_in_few_blocks", 10, torch.float32, 3)
    X = torch.cat([X] * 4, dim=1)  # enough blocks for two threads
    monkeypatch.setattr(_fused, "MIN_COLUMNS", 0)
    outs = []
    for threads in (1, 2):
        monkeypatch.setattr(torch, "get_num_threads", lambda threads=threads: threads)
        out = torch.empty(X.shape[1])
        sel.statistic_into(X, sel.CLOSEST_TO_TRIMMED, 2, 5, out)
        outs.append(out)
    assert torch.equal(bits(outs[0]), bits(outs[1]))


def test_retry_takes_the_plain_kernel_for_growing_runs_after_failures(monkeypatch):
    X = make("nan_rows", 10, torch.float32, 1).numpy()
    calls = []
    plan = _sortnet.plan(10)
    real = type(plan).run

    def spy(self, *args):
        calls.append((args[-2], args[-1]))
        return real(self, *args)

    monkeypatch.setattr(type(plan), "run", spy)
    n_blocks = plan.blocks(D)
    out = np.empty(D, dtype=np.float32)
    first_bad = np.empty(n_blocks, dtype=np.int64)
    rows = np.arange(10, dtype=np.int64)
    big = np.array([np.inf], dtype=np.float32)
    _fused.run(X, rows, big, sel.MEDIAN, 2, 1, out, first_bad, 0, n_blocks)
    assert calls == [(0, 16), (16, 38)]  # 16 blocks, then twice as many (to the end)


def test_whole_missing_rows_are_dropped_before_the_fused_kernel(monkeypatch):
    X = make("whole_missing_rows", 10, torch.float32, 4)
    X[3, 100] = float("nan")  # and one block still falls back
    taken = []
    real = _fused.run
    monkeypatch.setattr(_fused, "run", lambda *a: taken.append(a[1].size) or real(*a))
    (plain, first_plain), (fused, first_fused) = both_paths(
        X, sel.CLOSEST_TO_TRIMMED, 2, None, monkeypatch
    )
    assert taken == [8]  # the 8 rows holding values, on one thread
    assert first_fused == first_plain == -1
    assert torch.equal(bits(fused), bits(plain))


def test_rows_holding_no_value_are_dropped_and_only_those():
    X = np.random.default_rng(0).standard_normal((6, 1000)).astype(np.float32)
    X[1] = np.nan
    X[2, 0] = np.nan  # a first value missing, but the row holds others
    X[4] = np.inf
    X[4, 999] = -np.inf
    rows = np.array([5, 4, 2, 1, 0], dtype=np.int64)
    assert _fused.rows_with_values(X, rows).tolist() == [5, 2, 0]
    assert _fused.rows_with_values(X, np.array([0, 3])).tolist() == [0, 3]


@pytest.mark.parametrize("threads", [2, 3])
def test_rows_holding_no_value_checked_by_several_threads(monkeypatch, threads):
    """The split check (every thread over its share of the coordinates) keeps the same rows as
    the one-call check, wherever a suspect row's only finite value lies."""
    monkeypatch.setattr(_fused, "SPLIT_CHECK_COLUMNS", 1)
    rng = np.random.default_rng(1)
    d = 1001
    for place in (1, d // 3, d // 2, d - 1):  # the one finite value, in each thread's share
        X = rng.standard_normal((7, d)).astype(np.float32)
        X[1] = np.nan
        X[2] = np.nan
        X[2, place] = 1.5
        X[4] = np.inf
        X[6, 0] = np.nan  # only its first value missing
        rows = np.array([6, 5, 4, 2, 1, 0], dtype=np.int64)
        expected = _fused.rows_with_values(X, rows, 1).tolist()
        assert expected == [6, 5, 2, 0]
        assert _fused.rows_with_values(X, rows, threads).tolist() == expected
    finite = rng.standard_normal((3, d)).astype(np.float32)
    assert _fused.rows_with_values(finite, np.arange(3), threads).tolist() == [0, 1, 2]


def test_too_few_rows_left_keeps_the_plain_kernel_and_its_report(monkeypatch):
    # MeaMed with drop 4 needs 5 values: with 6 of 10 rows missing, every coordinate is short
    X = make("gaussian", 10, torch.float32, 2)
    X[:6] = float("nan")
    (plain, first_plain), (fused, first_fused) = both_paths(
        X, sel.CLOSEST_TO_MEDIAN, 4, None, monkeypatch
    )
    assert first_plain == first_fused == 0
    assert torch.isnan(fused).all() and torch.isnan(plain).all()


@pytest.mark.parametrize(
    "n,stat,drop,min_k,d,dtype,expected",
    [
        (10, sel.MEDIAN, 2, 1, 1 << 16, np.float32, True),
        (10, sel.MEDIAN, 2, 1, (1 << 16) - 1, np.float32, False),  # too small to compile
        (10, sel.MEDIAN, 2, 1, 0, np.float32, False),
        (26, sel.MEDIAN, 5, 1, 1 << 20, np.float32, True),  # two groups (_two_lists)
        (50, sel.MEDIAN, 10, 1, 1 << 20, np.float64, True),
        (51, sel.MEDIAN, 10, 1, 1 << 20, np.float32, True),  # four groups merged in registers
        (65, sel.MEDIAN, 13, 1, 1 << 20, np.float32, False),  # 128 wires: merged in the buffer
        (26, sel.TRIMMED, 5, 1, 1 << 20, np.float32, True),
        (26, sel.TRIMMED, 13, 1, 1 << 20, np.float32, False),  # nothing left to average
        (40, sel.CLOSEST_TO_MEDIAN, 8, 1, 1 << 20, np.float32, True),  # merged in registers
        (65, sel.CLOSEST_TO_MEDIAN, 13, 1, 1 << 20, np.float32, False),  # 128 wires
        (50, sel.CLOSEST_TO_TRIMMED, 25, 1, 1 << 20, np.float32, False),  # nothing to trim to
        (10, sel.MEDIAN, 2, 1, 1 << 20, np.float16, False),
        (10, sel.MEDIAN, 2, 11, 1 << 20, np.float64, False),  # every coordinate short
        (10, sel.TRIMMED, 5, 11, 1 << 20, np.float64, False),
        (25, sel.CLOSEST_TO_MEDIAN, 10, 11, 1 << 20, np.float64, True),
    ],
)
def test_fused_kernel_applies_only_where_it_is_exact_and_worth_compiling(
    n, stat, drop, min_k, d, dtype, expected, monkeypatch
):
    monkeypatch.setattr(_sortnet, "REGISTER_MERGE", True)  # else: the test above
    assert _fused.applies(n, stat, drop, min_k, d, dtype) == expected


def test_generated_statistic_follows_full_block_order():
    # The sums start from 0.0 and add the sorted positions in order (as _sum_rows), and the
    # float32 means multiply by the float64 reciprocal (as _mean): what makes the bits equal.
    lines = _fused.statistic_lines(10, sel.TRIMMED, 2, recip=True)
    adds = [line for line in lines if line.startswith("acc = acc + ")]
    assert adds == [f"acc = acc + np.float64(a{r})" for r in range(2, 8)]
    assert f"r = acc * {1.0 / 6!r}" in lines
    assert "r = acc / 6" in _fused.statistic_lines(10, sel.TRIMMED, 2, recip=False)


@pytest.mark.parametrize("kind", ["bucketing", "nnm"])
def test_mixed_rows_take_the_fused_kernel_with_the_same_bits(kind, monkeypatch):
    """Pre-aggregated rows (bucketing's sparse pass, NNM's shared terms) built per block and
    sorted there: the fused kernel gives the bits of the plain one, NaN inputs included (they
    spoil their mixes, whole missing rows left out per block)."""
    from byzlearn.aggregators._gram import Inputs
    from byzlearn.aggregators.rules.mixing import nnm

    monkeypatch.setattr(sel, "_MIX_BLOCK", 5 * LANES)
    gen = torch.Generator().manual_seed(11)
    n = 13 if kind == "bucketing" else 9
    X = torch.randn(n, D, generator=gen)
    X[3] = float("nan")
    if kind == "bucketing":
        X[5, 700] = float("inf")  # a missing value of its own (NNM would impute it)
        M = torch.zeros(7, n, dtype=torch.float64)
        perm = torch.randperm(n, generator=gen)
        for b in range(7):
            members = perm[2 * b : 2 * b + 2]
            M[b, members] = 1.0 / len(members)
        mixed = Inputs(X=X, gram=None).mix(M)
        stat, drop, path = sel.MEDIAN, 0, sel._mixed_sparse
    else:
        mixed = nnm(Inputs.from_matrix(X), 2)
        # MeaMed: the median and the trimmed mean of few distinct mixes skip the sort
        stat, drop, path = sel.CLOSEST_TO_MEDIAN, 2, sel._mixed_fast
    min_k = sel.checked_min_k(stat, drop, 1, "rule")
    taken = []
    real = _fused.run
    monkeypatch.setattr(_fused, "run", lambda *a: taken.append(a[1].size) or real(*a))
    outs = []
    for threshold in (1 << 62, 0):
        monkeypatch.setattr(_fused, "MIN_COLUMNS", threshold)
        out = torch.empty(D)
        outs.append((path(mixed, stat, drop, min_k, out), out))
    (first_plain, plain), (first_fused, fused) = outs
    assert first_plain is not None  # the compiled mixing path was taken
    assert taken  # the fused kernel ran, on the mixes that hold values
    if kind == "bucketing":
        assert set(taken) == {6}  # of 7 buckets, the one holding the NaN row left out
    assert first_plain == first_fused
    assert torch.equal(bits(fused), bits(plain))


def test_one_kernel_for_every_drop_of_the_median(monkeypatch):
    built = []
    real = _fused.kernel
    monkeypatch.setattr(_fused, "kernel", lambda *key: built.append(key) or real(*key))
    monkeypatch.setattr(_fused, "MIN_COLUMNS", 0)
    X = make("gaussian", 10, torch.float32, 0)
    for drop in (1, 2, 3):
        sel.statistic_into(X, sel.MEDIAN, drop, 1, torch.empty(D))
    assert built == [(10, sel.MEDIAN, 0, True, False)] * 3


@pytest.mark.parametrize("merge", [False, True])
def test_two_group_median_with_zeros_of_both_signs(merge, monkeypatch):
    monkeypatch.setattr(_sortnet, "REGISTER_MERGE", merge)  # two lists, or merged
    X = make("gaussian", 50, torch.float32, 7)
    X[:, :LANES] = 0.0  # blocks of zero medians: the same signs of zero as the plain kernel
    X[:30, LANES : 2 * LANES] = -0.0
    (plain, _), (fused, _) = both_paths(X, sel.MEDIAN, 10, None, monkeypatch)
    assert torch.equal(bits(fused), bits(plain))
    expected = X.double().sort(dim=0).values[24:26].mean(dim=0).float()
    assert torch.equal(fused, expected)
