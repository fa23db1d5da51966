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
