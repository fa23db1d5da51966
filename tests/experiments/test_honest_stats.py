"""The observer's fused honest statistics against float64 loops, and the torch path it
replaces."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzlearn.experiments._honest_stats import honest_statistics
from byzlearn.experiments.observers import TruthObserver


def _loops(X: torch.Tensor, honest: list[int], a: torch.Tensor) -> tuple[float, float, float]:
    rows = [X[i].double().tolist() for i in honest]
    d = X.shape[1]
    mean = [sum(r[j] for r in rows) / len(rows) for j in range(d)]
    dist = math.sqrt(sum((float(a[j]) - mean[j]) ** 2 for j in range(d)))
    spread = math.sqrt(sum(sum((r[j] - mean[j]) ** 2 for j in range(d)) for r in rows) / len(rows))
    return dist, spread, math.sqrt(sum(v * v for v in mean))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 9),
    d=st.integers(1, 70),
    scale=st.sampled_from([1e-3, 1.0, 1e4]),
    offset=st.sampled_from([0.0, 5.0]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 10_000),
    data=st.data(),
)
def test_honest_statistics_match_float64_loops(
    n: int, d: int, scale: float, offset: float, dtype: torch.dtype, seed: int, data
) -> None:
    gen = torch.Generator().manual_seed(seed)
    X = (torch.randn(n, d, generator=gen, dtype=torch.float64) * scale + offset).to(dtype)
    a = (torch.randn(d, generator=gen, dtype=torch.float64) * scale).to(dtype)
    honest = sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1)))
    got = honest_statistics(X, honest, a)
    assert got is not None
    for value, ref in zip(got, _loops(X, honest, a), strict=True):
        assert value == pytest.approx(ref, rel=1e-9, abs=1e-12 * scale)


@pytest.mark.parametrize("d", [511, 512, 513, 1300])
@pytest.mark.parametrize("honest", [[0], [1, 2], [0, 2, 3], [0, 1, 3, 4], [0, 1, 2, 3, 4]])
def test_honest_statistics_across_column_blocks(d: int, honest: list[int]) -> None:
    """Widths around and beyond the kernel's column block (512), odd and even row counts."""
    gen = torch.Generator().manual_seed(d)
    X = torch.randn(5, d, generator=gen) * 3 + 1
    a = torch.randn(d, generator=gen)
    got = honest_statistics(X, honest, a)
    assert got is not None
    for value, ref in zip(got, _loops(X, honest, a), strict=True):
        assert value == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_non_finite_honest_values_and_other_inputs_take_the_torch_path() -> None:
    X, a = torch.randn(4, 6), torch.randn(6)
    X[1, 2] = float("nan")
    assert honest_statistics(X, [0, 1, 2], a) is None
    assert honest_statistics(X, [0, 2, 3], a) is not None  # the NaN row is not honest
    X[1, 2] = float("inf")
    assert honest_statistics(X, [1, 3], a) is None
    assert honest_statistics(X.int(), [0], a) is None
    assert honest_statistics(X, [0], a.double()) is None
    assert honest_statistics(X, [], a) is None


def test_the_observer_records_what_the_torch_path_records(monkeypatch: pytest.MonkeyPatch) -> None:
    from byzlearn.experiments import observers

    gen = torch.Generator().manual_seed(3)
    X, out = torch.randn(7, 50, generator=gen) + 0.3, torch.randn(50, generator=gen)
    senders = list(range(10, 17))
    records = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(observers, "honest_statistics", lambda *args: None)
        obs = TruthObserver(byzantine=[12, 15], workers=senders)
        obs.on_event("aggregated", {"senders": senders, "losses": {}, "vectors": X, "output": out})
        rec: dict = {}
        obs.collect(rec)
        records.append(rec)
    keys = {"train_loss", "dist_honest_mean", "variance_norm_ratio"}
    assert records[0].keys() == records[1].keys() == keys
    for key in ("dist_honest_mean", "variance_norm_ratio"):
        assert records[0][key] == pytest.approx(records[1][key], rel=1e-5)


def _record(X: torch.Tensor, a: torch.Tensor) -> dict:
    senders = list(range(len(X)))
    obs = TruthObserver(byzantine=[], workers=senders)
    obs.on_event("aggregated", {"senders": senders, "losses": {}, "vectors": X, "output": a})
    rec: dict = {}
    obs.collect(rec)
    return rec


def test_squares_past_the_floats_are_not_a_zero_spread_or_an_infinite_distance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """float64 values past 1e154: their squares overflow. The kernel's deviations were
    inf - inf (NaN), clamped to 0: a spread of 0 recorded as a variance-norm ratio of 0."""
    X = torch.tensor([[0.0], [1.5e154], [1.5e154]], dtype=torch.float64)
    a = torch.zeros(1, dtype=torch.float64)
    assert honest_statistics(X, [0, 1, 2], a) is None  # was (1e154, 0.0, 1e154)
    rec = _record(X, a)
    assert rec["variance_norm_ratio"] == pytest.approx(math.sqrt(0.5), rel=1e-12)
    assert rec["dist_honest_mean"] == pytest.approx(1e154, rel=1e-12)
    # the torch path's norms overflowed too (an infinite ratio, an infinite distance)
    X = torch.tensor([[1e300, 1.0], [-1e300, 2.0], [5e299, 3.0]], dtype=torch.float64)
    rec = _record(X, torch.zeros(2, dtype=torch.float64))
    mean = 0.5 / 3  # in units of 1e300 (the ratio does not depend on the unit)
    spread = math.sqrt(((1 - mean) ** 2 + (1 + mean) ** 2 + (0.5 - mean) ** 2) / 3)
    assert rec["dist_honest_mean"] == pytest.approx(mean * 1e300, rel=1e-12)
    assert rec["variance_norm_ratio"] == pytest.approx(spread / mean, rel=1e-12)
    monkeypatch.setattr("byzlearn.experiments.observers.honest_statistics", lambda *a: None)
    X32 = torch.tensor([[3e19, 1.0], [-3e19, 2.0], [1e19, 3.0]])
    rec = _record(X32, torch.zeros(2))
    mean, rows = 1e19 / 3, [3e19, -3e19, 1e19]
    spread = math.sqrt(sum((r - mean) ** 2 for r in rows) / 3)
    assert rec["dist_honest_mean"] == pytest.approx(mean, rel=1e-6)
    assert rec["variance_norm_ratio"] == pytest.approx(spread / mean, rel=1e-6)
