"""Large CPU outputs on transparent huge pages (``_memory``)."""

from __future__ import annotations

import sys

import pytest
import torch

import byzlearn.aggregators as agg
from byzlearn.aggregators import _memory


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []

    def __call__(self, start: int, length: int, advice: int) -> int:
        self.calls.append((start, length, advice))
        return 0


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> _Recorder:
    rec = _Recorder()
    monkeypatch.setattr(_memory, "_madvise", lambda: rec)
    return rec


def test_large_cpu_tensors_are_advised_over_their_whole_pages(recorder: _Recorder) -> None:
    t = _memory.empty((3, (_memory.HUGE_MIN_BYTES // 4) // 3 + 5), dtype=torch.float32)
    assert t.is_contiguous() and t.dtype == torch.float32
    ((start, length, advice),) = recorder.calls
    assert advice == 14  # MADV_HUGEPAGE
    assert start % 4096 == 0 and length % 4096 == 0
    assert t.data_ptr() <= start < t.data_ptr() + 4096
    assert start + length <= t.data_ptr() + t.numel() * 4


def test_small_and_non_cpu_tensors_are_left_alone(recorder: _Recorder) -> None:
    small = _memory.empty(1000, dtype=torch.float64)
    meta = _memory.empty(_memory.HUGE_MIN_BYTES, dtype=torch.float32, device="meta")
    assert small.shape == (1000,) and meta.device.type == "meta"
    assert recorder.calls == []


def test_copy_of_is_an_independent_contiguous_copy() -> None:
    X = torch.randn(4, 6)
    c = _memory.copy_of(X.t())
    assert c.is_contiguous() and torch.equal(c, X.t())
    c.zero_()
    assert not torch.equal(c, X.t())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise is Linux's")
def test_the_real_madvise_accepts_the_advice() -> None:
    madvise = _memory._madvise()
    assert madvise is not None
    t = torch.empty(_memory.HUGE_MIN_BYTES // 4 + 4096, dtype=torch.float32)
    start = -(-t.data_ptr() // 4096) * 4096
    assert madvise(start, 1 << 20, 14) in (0, -1)  # -1 where the kernel has no THP: a hint
    t.fill_(1.0)
    assert float(t.sum()) == t.numel()


@pytest.mark.parametrize("rule", ["average", "median", "trimmed_mean", "krum", "nnm+median", "nnm"])
def test_rules_give_the_same_outputs_with_advised_outputs(
    rule: str, recorder: _Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # more than 2^18 values: `average` takes torch's mean (with an advised output)
    X = torch.randn(11, 25_000, generator=torch.Generator().manual_seed(3))
    X[-2:] *= -10
    before = agg.aggregate(rule, X, f=2).vector
    monkeypatch.setattr(_memory, "HUGE_MIN_BYTES", 0)  # advise every output
    after = agg.aggregate(rule, X, f=2).vector
    assert recorder.calls, "no output was advised"
    assert torch.equal(before, after)
