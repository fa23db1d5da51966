"""The output written during the Gram pass (``_speculate``): the bits of the output formed after
it, whether the guess holds, fails or is never made."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import byzlearn.aggregators as agg
from byzlearn.aggregators import _gram, _gram_kernel, _registry, _speculate

pytestmark = pytest.mark.skipif(
    not _gram_kernel.available(np.zeros((1, 1), dtype=np.float32)), reason="needs numba"
)

N, F = 10, 2
BLOCKS = 40  # blocks of one pass of the tiles (512 coordinates) each
D = BLOCKS * 512 + 100


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of one pass of the tiles (512 coordinates, also where the input is in the cache),
    so that a small input has many; the central row chosen on a sample as for large inputs (the
    tiles then centre in registers where the CPU does)."""
    monkeypatch.setattr(_gram, "_KERNEL_BLOCK_ELEMENTS", 1)
    monkeypatch.setattr(_gram_kernel, "_WIDE_WHEN_CACHED", False)
    monkeypatch.setattr(_gram, "_SAMPLE_MIN_ELEMENTS", 1)
    monkeypatch.setattr(_speculate, "GUESS_BUDGET", 1e6)  # blocks of microseconds


@pytest.fixture
def counts(monkeypatch):
    """How many guesses were made and how many outputs came from one."""
    seen = {"made": 0, "used": 0}
    made, output = _speculate.Speculation.sums, _speculate.Speculation.output

    def counted_sums(self):
        seen["made"] += 1
        return made(self)

    def counted_output(self, X, weights):
        out = output(self, X, weights)
        seen["used"] += out is not None
        return out

    monkeypatch.setattr(_speculate.Speculation, "sums", counted_sums)
    monkeypatch.setattr(_speculate.Speculation, "output", counted_output)
    return seen


def _inputs(kind: str, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.5, 2.0, N, dtype=torch.float64)[:, None]  # far apart
    X = (1.0 + scales * torch.randn(N, D, generator=g, dtype=torch.float64)).to(dtype)
    if kind == "mean10":
        X[:F] = -10 * X[F:].mean(0)
    elif kind == "gauss200":
        X[:F] = 200 * torch.randn(D, generator=g, dtype=torch.float64).to(dtype)
    elif kind == "nan":
        X[:F] = float("nan")
    elif kind == "same_scale":  # iid rows: the kept rows differ from block to block
        X = (1.0 + torch.randn(N, D, generator=g, dtype=torch.float64)).to(dtype)
    return X


def _unguessed(name: str, X: torch.Tensor, f: int) -> agg.Result:
    """The rule on a prepared input (shared, so never guessed)."""
    return agg.aggregate(name, agg.prepare(X), f)


GUESSABLE = ["multi_krum", "mda", "cge", "nnm+multi_krum", "nnm+krum", "nnm+medoid"]


@pytest.mark.parametrize("name", GUESSABLE)
@pytest.mark.parametrize("kind", ["honest", "mean10", "gauss200", "nan"])
def test_guessed_output_has_the_bits_of_the_output_after_the_pass(
    name, kind, small_blocks, counts
):
    X = _inputs(kind)
    got = agg.aggregate(name, X, F)
    want = _unguessed(name, X, F)
    assert torch.equal(got.vector, want.vector)
    assert torch.equal(got.kept, want.kept)
    # attackers apart: the first blocks agree, and they are right; honest rows of distinct
    # spreads: the rules without NNM agree too (NNM's neighbours differ from block to block)
    if kind != "honest" or "nnm" not in name:
        assert counts == {"made": 1, "used": 1}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_guess_on_threads_and_dtypes(dtype, threads, small_blocks, counts):
    X = _inputs("gauss200", dtype=dtype, seed=3)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = agg.multi_krum(X, F)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(got, _unguessed("multi_krum", X, F).vector)
    assert counts["used"] == 1


@pytest.mark.parametrize("kind", ["gauss200", "nan"])
def test_guess_written_over_long_fused_spans(kind, monkeypatch, counts):
    """Blocks of several long fused spans (``FUSED_SPAN``, up to ``LONG_SPAN_MAX_ROWS`` active
    rows in groups of 3) and a partial one: the output written span by span has the unguessed
    bits, also where NaN rows make the first span of a block fail and go through the buffer."""
    span = _gram_kernel.FUSED_SPAN
    width = 2 * span + 1024  # the columns of a block
    monkeypatch.setattr(_gram, "_KERNEL_BLOCK_ELEMENTS", N * width)
    monkeypatch.setattr(_gram, "_SAMPLE_MIN_ELEMENTS", 1)
    monkeypatch.setattr(_speculate, "GUESS_BUDGET", 1e6)
    monkeypatch.setattr(_gram_kernel, "FUSED_CENTRING", _gram_kernel.FUSED_LONG)  # any host
    assert N - 1 <= _gram_kernel.LONG_SPAN_MAX_ROWS and (N - 1) % 3 == 0
    g = torch.Generator().manual_seed(11)
    d = (_speculate.MIN_BLOCKS + 1) * width + 300
    X = 1.0 + torch.linspace(0.5, 2.0, N)[:, None] * torch.randn(N, d, generator=g)
    X[:F] = float("nan") if kind == "nan" else 200 * torch.randn(d, generator=g)
    got = agg.aggregate("multi_krum", X, F)
    want = _unguessed("multi_krum", X, F)
    assert torch.equal(got.vector, want.vector)
    assert torch.equal(got.kept, want.kept)
    assert counts == {"made": 1, "used": 1}


def test_rows_alike_make_no_guess(small_blocks, counts):
    X = _inputs("same_scale")
    got = agg.multi_krum(X, F)
    assert torch.equal(got, _unguessed("multi_krum", X, F).vector)
    assert counts["made"] == 0


def test_wrong_guess_is_dropped(small_blocks, counts):
    """Row 0 stands out on the first blocks, row 1 (far more) on the rest: the guess drops
    row 0, the full matrix row 1."""
    X = _inputs("honest", seed=5)
    head = _speculate.HEAD_BLOCKS * 512
    X[0, :head] += 30.0
    X[1, head:] += 30.0
    got = agg.aggregate("multi_krum", X, 1)
    want = _unguessed("multi_krum", X, 1)
    assert torch.equal(got.vector, want.vector)
    assert 1 not in want.kept.tolist() and 0 in want.kept.tolist()
    assert counts == {"made": 1, "used": 0}


def test_rows_missing_a_few_values_make_the_guess_go(small_blocks, counts):
    """A row missing a few coordinates is imputed (a second pass): the output then holds
    imputed values, so a guess made in the first pass is not used."""
    X = _inputs("gauss200", seed=7)
    X[5, 7] = float("nan")
    got = agg.multi_krum(X, F)
    assert torch.equal(got, _unguessed("multi_krum", X, F).vector)
    assert counts["used"] == 0


def test_rules_that_are_not_guessable_make_no_guess(small_blocks, counts):
    X = _inputs("gauss200")
    for name in ["geometric_median", "centered_clipping", "bulyan", "krum", "medoid"]:
        assert torch.equal(agg.get(name)(X, 1), _unguessed(name, X, 1).vector), name
    assert counts["made"] == 0  # Krum and the medoid keep one row: no sums in the pass


def test_few_blocks_make_no_guess(monkeypatch, counts):
    monkeypatch.setattr(_gram, "_SAMPLE_MIN_ELEMENTS", 1)
    X = _inputs("gauss200")  # one block of the default size
    assert torch.equal(agg.multi_krum(X, F), _unguessed("multi_krum", X, F).vector)
    assert counts["made"] == 0


def test_guessable_rules():
    guessable = {n for n in _registry.names() if _registry.spec(n).guessable}
    assert guessable == {"krum", "multi_krum", "medoid", "mda", "cge", "nnm"}


class _Gram:
    """A stand-in for a Gram matrix: the weights a guess returns on it."""

    def __init__(self, weights: list[float] | None) -> None:
        self.weights = None if weights is None else torch.tensor(weights, dtype=torch.float64)


def _calls(grams: list[_Gram], budget: float = 1e9) -> tuple[torch.Tensor | None, int]:
    called = []

    def guess(gram):
        called.append(gram)
        return gram.weights

    return _speculate.agreed_weights(guess, grams, budget), len(called)  # type: ignore[arg-type]


def test_agreed_weights():
    same = [_Gram([0.5, 0.5, 0.0])] * 3
    w, calls = _calls(same)
    assert w is not None and w.tolist() == [0.5, 0.5, 0.0] and calls == 3
    assert _calls([_Gram([0.5, 0.5, 0.0]), _Gram([0.5, 0.0, 0.5]), *same]) == (None, 2)
    assert _calls([_Gram([1.0, 0.0]), _Gram([1.0, 0.0])]) == (None, 1)  # one row: no sums
    assert _calls([_Gram(None), *same]) == (None, 1)
    assert _calls(same, budget=-1.0) == (None, 0)


def test_speculation_output_is_handed_out_once():
    X = torch.randn(3, 5000)
    weights = torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64)
    spec = _speculate.Speculation(weights, torch.empty(5000), start=4096)
    rows, w, out = spec.sums()
    _gram_kernel.weighted_sum(X.numpy()[:, 4096:].copy(), rows, w, 1, out=out[4096:])
    assert spec.output(X, weights.clone() * 2) is None  # other weights: not this output
    got = spec.output(X, weights)
    want = _gram_kernel.weighted_sum(X.numpy(), rows, w, 1)
    assert got is not None and np.array_equal(got.numpy(), want)
    assert spec.output(X, weights) is None


def test_a_shared_prepared_input_makes_no_guess(small_blocks, counts):
    """Several rules may read a prepared input's Gram pass: none of them guesses in it."""
    X = _inputs("gauss200")
    prepared = agg.prepare(X)
    a = agg.aggregate("multi_krum", prepared, F).vector
    b = agg.aggregate("cge", prepared, F).vector
    assert counts["made"] == 0
    assert torch.equal(a, agg.multi_krum(X, F)) and torch.equal(b, agg.cge(X, F))
    assert counts == {"made": 2, "used": 2}


def test_mda_guess_gives_up_after_its_branches():
    """A guess runs MDA's search with ``GUESS_BRANCHES`` branches at most (the rule itself has
    ``max_branches``): on 100 rows alike the search takes more, and no guess is made."""
    from byzlearn.aggregators._gram import Inputs
    from byzlearn.aggregators.rules import mda

    X = torch.randn(100, 10_000, generator=torch.Generator().manual_seed(0))
    gram = Inputs.from_matrix(X).base
    guess = _registry._guess([_registry.spec("mda")], [{}], 20, X)
    assert guess(gram) is None
    with pytest.raises(ValueError, match="max_branches"):
        agg.mda(X, 20, max_branches=mda.GUESS_BRANCHES)
    assert agg.aggregate("mda", X, 20).kept.numel() == 80


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(5, 13),
    outliers=st.integers(0, 3),
    scale=st.sampled_from([0.0, 0.5, 3.0, 1e3]),
    nan_rows=st.integers(0, 1),
    name=st.sampled_from(["multi_krum", "mda", "cge", "nnm+multi_krum"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 10_000),
)
def test_guessed_or_not_same_bits_on_random_inputs(
    n, outliers, scale, nan_rows, name, dtype, seed
):
    """Random row counts, spreads, outliers placed on some blocks only, NaN rows: the output
    and the kept rows are those of the unguessed path, whatever the guess did."""
    f = (n - 1) // 2 if name in ("mda", "cge") else (n - 3) // 2
    f = max(0, min(f, outliers + nan_rows + 1))
    g = torch.Generator().manual_seed(seed)
    d = 24 * 512 + 37
    spreads = torch.rand(n, 1, generator=g, dtype=torch.float64) * scale + 1.0
    X = (torch.randn(n, d, generator=g, dtype=torch.float64) * spreads).to(dtype)
    for r in range(min(outliers, n - 1)):  # an outlier on a random stretch of blocks
        j0 = int(torch.randint(0, d - 1, (1,), generator=g))
        X[r, j0:] += 50.0
    if nan_rows and f >= 1:
        X[n - 1] = float("nan")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_gram, "_KERNEL_BLOCK_ELEMENTS", 1)
        mp.setattr(_gram_kernel, "_WIDE_WHEN_CACHED", False)  # blocks of 512 coordinates
        mp.setattr(_gram, "_SAMPLE_MIN_ELEMENTS", 1)
        mp.setattr(_speculate, "GUESS_BUDGET", 1e6)
        try:
            got = agg.aggregate(name, X, f)
        except ValueError as error:  # the rule's own errors, the same either way
            with pytest.raises(ValueError, match=re.escape(str(error)[:20])):
                _unguessed(name, X, f)
            return
        want = _unguessed(name, X, f)
    assert torch.equal(got.vector, want.vector) or (
        torch.isnan(got.vector).all() and torch.isnan(want.vector).all()
    )
    assert torch.equal(got.kept, want.kept)
