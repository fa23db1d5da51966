"""Tests that close gaps found by mutation testing of the compiled aggregation kernels
(the selection kernel ``_select`` and the finite-values mean of ``_mean``): each one fails on a
plausible bug (a mutant) that every other test of tests/aggregators/ let pass: the fallbacks for
sums that overflow float64, the median of an even count that overflows, the clamp of a mean to
the values it averages, the report of coordinates left with too few values by mixed rows.

The expected values come from exact arithmetic (``fractions.Fraction``) on each coordinate's
sorted finite values, written here independently of the library.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from byzlearn.aggregators import _mean
from byzlearn.aggregators import _select as sel

# (statistic, drop) pairs: every statistic, the "closest" ones with and without a drop
CASES = [
    pytest.param(sel.MEDIAN, 0, id="median"),
    pytest.param(sel.MEAN, 0, id="mean"),
    pytest.param(sel.TRIMMED, 1, id="trimmed-1"),
    pytest.param(sel.CLOSEST_TO_MEDIAN, 0, id="meamed-0"),
    pytest.param(sel.CLOSEST_TO_MEDIAN, 1, id="meamed-1"),
    pytest.param(sel.CLOSEST_TO_TRIMMED, 0, id="phocas-0"),
    pytest.param(sel.CLOSEST_TO_TRIMMED, 1, id="phocas-1"),
]


def _exact_mean(vals: list[float]) -> Fraction:
    """The mean of ``vals``, exactly."""
    return sum((Fraction(v) for v in vals), Fraction(0)) / len(vals)


def _exact_statistic(vals: list[float], stat: int, drop: int) -> float:
    """The statistic of the finite values ``vals`` in exact arithmetic, rounded once; the
    window of the "closest" statistics slides while its left end is strictly farther from the
    (exact) centre than the value after its right end."""
    v = sorted(vals)
    k = len(v)
    if stat == sel.MEAN:
        return float(_exact_mean(v))
    if stat == sel.MEDIAN:
        return float((Fraction(v[(k - 1) // 2]) + Fraction(v[k // 2])) / 2)
    if stat == sel.TRIMMED:
        return float(_exact_mean(v[drop : k - drop]))
    if stat == sel.CLOSEST_TO_MEDIAN:
        centre = (Fraction(v[(k - 1) // 2]) + Fraction(v[k // 2])) / 2
    else:
        centre = _exact_mean(v[drop : k - drop])
    m = k - drop
    s = 0
    while s < drop and centre - Fraction(v[s]) > Fraction(v[s + m]) - centre:
        s += 1
    return float(_exact_mean(v[s : s + m]))


# Columns whose sums overflow float64 (every value is 1e308 or more), with no near-ties, so
# the exact statistic picks the windows the kernels pick.
_HUGE = [
    [1.0e308, 1.7e308, 1.72e308, 1.74e308, 1.6e308],
    [1.7e308, 1.65e308, 1.6e308, 1.55e308, 1.5e308],
    [1.79e308, 1.2e308, 1.1e308, 1.5e308, 1.3e308],
    [1.5e308, 1.75e308, 1.62e308, 1.01e308, 1.77e308],
]


def _huge_columns() -> torch.Tensor:
    """(5, 8): the columns of ``_HUGE`` and their negatives."""
    cols = _HUGE + [[-x for x in c] for c in _HUGE]
    return torch.tensor(cols, dtype=torch.float64).T.contiguous()


def _check_against_exact(X: torch.Tensor, stat: int, drop: int) -> None:
    """The kernel's and the torch path's outputs: finite, within the values of their column,
    and the exact statistic to float64 rounding."""
    for force_torch in (False, True):
        out = sel.coordinatewise(X, stat, drop, 1, "rule", force_torch=force_torch)
        for j in range(X.shape[1]):
            vals = [float(x) for x in X[:, j].tolist() if math.isfinite(float(x))]
            want = _exact_statistic(vals, stat, drop)
            got = float(out[j])
            assert math.isfinite(got) and min(vals) <= got <= max(vals), (stat, drop, j, got)
            assert got == pytest.approx(want, rel=1e-14), (stat, drop, j, force_torch, got, want)


# --- sums that overflow: the scaled means, on every path ----------------------------------------
@pytest.mark.parametrize(("stat", "drop"), CASES)
def test_overflowing_sums_give_the_exact_statistic_on_whole_blocks(stat, drop):
    """All values finite: the vectorised block path (``_full_block``), whose overflowing sums
    (the mean, the trimmed mean, the window around the median or the trimmed mean) are redone
    from scaled values column by column; a result merely clamped into the range (the window's
    end) is not enough."""
    _check_against_exact(_huge_columns(), stat, drop)


def test_overflowing_short_windows_around_the_median_give_the_exact_statistic():
    """Bulyan's second phase (a window of m = 2 < drop = 3 of 5 values): the sum of the two
    values closest to the median overflows."""
    _check_against_exact(_huge_columns(), sel.CLOSEST_TO_MEDIAN, 3)


@pytest.mark.parametrize(("stat", "drop"), CASES)
def test_overflowing_sums_give_the_exact_statistic_with_missing_values(stat, drop):
    """A missing value in some columns of the block: every column goes the per-column path
    (``_lane_statistic``: ``_range_mean``, ``_window_mean`` and the median of an even count,
    each with its own overflow fallback)."""
    X = _huge_columns()
    extra = torch.full((1, X.shape[1]), 1.66e308, dtype=torch.float64)
    extra[0, ::2] = math.nan  # 5 finite values in the even columns, 6 in the odd ones
    extra[0, 5] = -1.66e308
    extra[0, 7] = -1.66e308
    _check_against_exact(torch.cat([X, extra]), stat, drop)


# --- the mean of the finite values: clamped to their range, at both ends ----------------------
def test_mean_of_finite_values_stays_within_their_range():
    """k equal values whose float64 sum divided by k rounds below the value (0.3615..., 0.9034...
    and -0.7434... here) or above it (0.1): the mean over a column's finite values is the value
    itself, clamped at both ends, in the columns holding a missing value."""
    cases = [(0.36159505490948474, 3), (0.9034701816518086, 5), (-0.7434992493538084, 6), (0.1, 3)]
    for v, k in cases:
        total = 0.0
        for _ in range(k):
            total += v
        assert total / k != v  # the unclamped mean misses the value
    n = 7
    X = torch.full((n, len(cases) + 1), math.nan, dtype=torch.float64)
    for j, (v, k) in enumerate(cases):
        X[:k, j] = v
    X[:, -1] = torch.arange(n, dtype=torch.float64)
    out = _mean.mean_of_finite(X)
    assert out is not None
    assert out[:-1].tolist() == [v for v, _ in cases]
    assert float(out[-1]) == 3.0



def test_an_even_median_that_overflows_centres_the_window():
    """Six finite values whose two middle ones overflow their sum: the median is halved first
    (1.55e308, not +inf), and the window of the values closest to it (MeaMed, Bulyan's second
    phase) is found around that centre on the vectorised block path too. Around +inf the
    window would slide to the largest values."""
    col = [1.4e308, 1.45e308, 1.5e308, 1.6e308, 1.65e308, 1.79e308]
    X = torch.tensor([col, [-x for x in col], col[::-1]], dtype=torch.float64).T.contiguous()
    for drop in (1, 2, 4):
        _check_against_exact(X, sel.CLOSEST_TO_MEDIAN, drop)
    assert sel.coordinatewise(X, sel.CLOSEST_TO_MEDIAN, 1, 1, "rule")[0] == pytest.approx(1.52e308)


@pytest.mark.parametrize("stat", [sel.MEAN, sel.TRIMMED, sel.CLOSEST_TO_TRIMMED])
def test_means_of_equal_values_with_missing_values_are_the_value(stat):
    """Columns holding a missing value take the per-column path: the mean of k equal values,
    whose float64 sum divided by k rounds below (0.3615..., 0.9034...) or above (0.1) the
    value, is clamped to the values averaged, so it is the value itself."""
    cases = [(0.36159505490948474, 3), (0.9034701816518086, 5), (-0.7434992493538084, 6), (0.1, 3)]
    n = 7
    X = torch.full((n, len(cases)), math.nan, dtype=torch.float64)
    for j, (v, k) in enumerate(cases):
        X[:k, j] = v
    drop = 0 if stat == sel.MEAN else 1
    for force_torch in (False, True):
        out = sel.coordinatewise(X, stat, drop, 1, "rule", force_torch=force_torch)
        assert out.tolist() == [v for v, _ in cases], force_torch


# --- mixed rows (NNM): too few rows left is reported, also by the weighted statistic ----------
def test_nnm_mixes_left_with_too_few_rows_report_them():
    """NNM of 9 rows, two of them NaN (their mixes are missing rows): 7 mixed rows hold values,
    all the same mix (one distinct row, the median / trimmed mean with multiplicities of
    ``_weighted_sort``). With ``min_k`` = 8 every coordinate has too few values: the rule
    reports it rather than aggregating the 7."""
    from byzlearn.aggregators._gram import Inputs
    from byzlearn.aggregators.rules.mixing import nnm

    g = torch.Generator().manual_seed(7)
    X = torch.randn(9, 3 * sel.LANES + 5, generator=g)
    X[[1, 4]] = math.nan
    mixed = nnm(Inputs.from_matrix(X), 2)
    for stat in (sel.MEDIAN, sel.TRIMMED):
        out = torch.empty(X.shape[1])
        assert sel._mixed_fast(mixed, stat, 0, 7, out) == -1  # 7 rows: enough
        assert sel._mixed_fast(mixed, stat, 0, 8, out) == 0
        with pytest.raises(ValueError, match=r"^rule: \d+ coordinate\(s\) have fewer than 8"):
            sel.coordinatewise_inputs(mixed, stat, 0, 8, "rule")


def test_mixed_rows_of_a_strided_input_name_the_short_coordinate_across_blocks(monkeypatch):
    """Bucketing of a non-contiguous input takes the general path (the compiled passes need
    contiguous rows), one block of columns at a time: a coordinate without a finite value in a
    later block is named counted from 0 across the blocks, not within its block."""
    from byzlearn.aggregators._gram import Inputs

    monkeypatch.setattr(sel, "_MIN_BLOCKS_PER_THREAD", 1)
    monkeypatch.setattr(sel, "_MIXED_BLOCK_ELEMENTS", 1)  # blocks of 2 * 256 columns
    X = torch.randn(3000, 9, generator=torch.Generator().manual_seed(8), dtype=torch.float64).T
    assert not X.is_contiguous()
    X[:, 1700] = math.nan
    M = torch.zeros(5, 9, dtype=torch.float64)
    for i in range(5):
        M[i, [i, i + 4]] = 0.5
    mixed = Inputs(X=X, gram=None).mix(M)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # blocks of 512 columns whatever the host
    try:
        with pytest.raises(ValueError, match=r"^rule: 1 coordinate\(s\).*coordinate 1700\)"):
            sel.coordinatewise_inputs(mixed, sel.MEDIAN, 0, 1, "rule")
    finally:
        torch.set_num_threads(before)
