"""The median and trimmed mean of two sorted lists (``_two_lists``) against references written
here, and its two twins (the generated lines of the fused kernel, the vectorised block of the
plain kernel) against each other, bit for bit.

The generated lines are executed in Python (``lo``, ``hi`` and ``pick`` written out), so the
arithmetic is checked without compiling a kernel; test_fused compares the compiled kernels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from byzlearn.aggregators import _select as sel
from byzlearn.aggregators import _sortnet, _two_lists

SELECTS = {
    "lo": lambda a, b: a if a < b else b,
    "hi": lambda a, b: b if a < b else a,
    "pick": lambda c, a, b: a if c else b,
}


def run_lines(lines: list[str], values: dict[str, float]) -> dict:
    dtype = type(next(iter(values.values())))
    scope = {"np": np, "zero": dtype(0), "one": dtype(1), **SELECTS, **values}
    for line in lines:
        exec(line, scope)
    return scope


def sorted_lists(rng, na: int, nb: int, ties: bool, dtype=np.float32, spread: bool = False):
    """Two sorted lists of random values: few distinct ones (``ties``, zeros of both signs), or
    magnitudes from 1e-30 to 1e30 (``spread``: float64 sums that depend on their order)."""
    draw = rng.integers(-3, 4, na + nb) if ties else rng.standard_normal(na + nb)
    if spread:
        draw = draw * 10.0 ** rng.uniform(-30, 30, na + nb)
    draw = draw.astype(dtype)
    if ties:  # zeros of both signs
        draw[(draw == 0) & (rng.random(na + nb) < 0.5)] = -0.0
    return np.sort(draw[:na]), np.sort(draw[na:])


def locals_of(a: np.ndarray, b: np.ndarray) -> dict:
    values = {f"a{i}": v for i, v in enumerate(a)}
    return values | {f"b{i}": v for i, v in enumerate(b)}


@pytest.mark.parametrize("na,nb", [(1, 1), (2, 1), (5, 5), (13, 12), (25, 25), (25, 24)])
def test_rank_is_the_merged_sorts_value(na, nb):
    rng = np.random.default_rng(na * 100 + nb)
    for trial in range(20):
        a, b = sorted_lists(rng, na, nb, ties=trial % 2 == 1)
        merged = np.sort(np.concatenate([a, b]))
        for p in range(na + nb):
            scope = run_lines(_two_lists.rank_lines("x", p, na, nb), locals_of(a, b))
            assert scope["x"] == merged[p], (p, a, b)


def reference(values: np.ndarray, stat: int, drop: int) -> float:
    s = np.sort(values.astype(np.float64))
    n = len(s)
    if stat == sel.MEDIAN:
        return float(np.mean(s[(n - 1) // 2 : n // 2 + 1]))
    return float(np.mean(s[drop : n - drop]))


CASES = [(26, sel.MEDIAN, 0), (33, sel.MEDIAN, 0), (50, sel.MEDIAN, 0), (26, sel.TRIMMED, 5)]
CASES += [(33, sel.TRIMMED, 6), (50, sel.TRIMMED, 10), (50, sel.TRIMMED, 24), (27, sel.TRIMMED, 0)]


@pytest.mark.parametrize("n,stat,drop", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lines_give_the_statistic_and_the_vectorised_twin_the_same_bits(n, stat, drop, dtype):
    rng = np.random.default_rng(n + 7 * drop + stat)
    na, nb = _two_lists.split(n)
    columns = 96
    slot = 32
    buf = np.full((2 * slot, _sortnet.LANES), np.inf, dtype=dtype)
    expected_bits = []
    for j in range(columns):
        a, b = sorted_lists(rng, na, nb, ties=j % 3 == 0, dtype=dtype, spread=j % 3 == 2)
        if j % 7 == 1:  # every value equal: the trimmed mean's L == U
            a[:] = b[:] = dtype(2.5)
        buf[:na, j], buf[slot : slot + nb, j] = a, b
        recip = dtype == np.float32
        scope = run_lines(_two_lists.statistic_lines(n, stat, drop, recip), locals_of(a, b))
        assert scope["fine"]
        got = dtype(scope["o"])
        values = np.concatenate([a, b])
        want = reference(values, stat, drop)
        scale = np.sort(np.abs(values.astype(np.float64)))[-1 - drop] if stat else abs(want)
        assert abs(float(got) - want) <= 4 * np.finfo(dtype).eps * max(1.0, scale), j
        expected_bits.append(got)
    out = np.full(columns, np.nan, dtype=dtype)
    ranks = np.empty((5, _sortnet.LANES), dtype=dtype)
    sums = np.empty((2, _sortnet.LANES))
    fine = _two_lists.two_list_block(buf, slot, na, nb, stat, drop, columns, out, 0, ranks, sums)
    assert fine
    np.testing.assert_array_equal(out.view(np.uint8), np.array(expected_bits, dtype).view(np.uint8))


def test_a_mean_that_overflows_is_reported_by_both_twins():
    n, drop = 30, 3
    na, nb = _two_lists.split(n)
    top = np.finfo(np.float64).max
    a, b = np.full(na, top / 2), np.full(nb, top / 2)
    a[0] = -1.0
    with np.errstate(over="ignore", invalid="ignore"):
        lines = _two_lists.statistic_lines(n, sel.TRIMMED, drop, False)
        scope = run_lines(lines, locals_of(a, b))
    assert not scope["fine"]  # the sum of 24 values of top / 2 overflows
    buf = np.full((32, _sortnet.LANES), np.inf)
    buf[:na, 0], buf[16 : 16 + nb, 0] = a, b
    out = np.empty(1)
    ranks = np.empty((5, _sortnet.LANES))
    sums = np.empty((2, _sortnet.LANES))
    assert not _two_lists.two_list_block(buf, 16, na, nb, sel.TRIMMED, drop, 1, out, 0, ranks, sums)


@pytest.mark.parametrize(
    "n,stat,drop,expected",
    [
        (25, sel.MEDIAN, 0, False),  # one network
        (26, sel.MEDIAN, 0, True),
        (50, sel.TRIMMED, 10, True),
        (50, sel.TRIMMED, 25, False),  # nothing left
        (51, sel.MEDIAN, 0, False),
        (40, sel.CLOSEST_TO_MEDIAN, 8, False),
        (40, sel.MEAN, 0, False),
    ],
)
def test_applies_where_the_two_lists_give_the_statistic(n, stat, drop, expected, monkeypatch):
    monkeypatch.setattr(_sortnet, "REGISTER_MERGE", False)  # the hosts that take them
    assert _two_lists.applies(n, stat, drop) == expected
    plan = _sortnet.plan(n)
    if expected:  # the plan sorts the same two groups
        assert plan.starts.tolist() == [0, _two_lists.split(n)[0], n]
        assert plan.two_lists(stat, drop, 1) and not plan.two_lists(stat, drop, n + 1)


@pytest.mark.parametrize("merge", [False, True])
def test_plain_kernel_gives_the_reference_on_attacked_and_tied_inputs(merge, monkeypatch):
    monkeypatch.setattr(_sortnet, "REGISTER_MERGE", merge)  # two lists, or the buffer's merge
    gen = torch.Generator().manual_seed(3)
    n, d = 50, 3 * _sortnet.LANES + 11
    X = torch.randn(n, d, generator=gen)
    X[:10] = -10 * X[10:].mean(dim=0)  # the -10 x mean attack
    X[:, ::5] = torch.randint(-2, 3, (n, len(range(0, d, 5))), generator=gen).float()
    for stat, drop in ((sel.MEDIAN, 0), (sel.TRIMMED, 10)):
        out = torch.empty(d)
        assert sel.statistic_into(X, stat, drop, 1, out) == -1
        s = X.double().sort(dim=0).values
        want = s[24:26].mean(dim=0) if stat == sel.MEDIAN else s[drop : n - drop].mean(dim=0)
        assert torch.allclose(out.double(), want, rtol=1e-6, atol=1e-6)
