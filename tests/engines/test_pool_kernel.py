"""The compiled forward and backward of a non-overlapping max-pool (and the ReLU after it),
against torch's ``max_pool2d`` + ``relu`` and ``max_pool2d_with_indices`` +
``threshold_backward`` + ``max_unpool2d``: the same values, bit for bit, including ties, signed
zeros, NaN and -inf in a window and sizes the kernel does not divide."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F  # noqa: N812

from byzlearn.engines._pool_kernel import applies, pool_backward, pool_forward

LAST = torch.channels_last


def _torch(g: torch.Tensor, z: torch.Tensor, kernel: tuple[int, int], relu: bool) -> torch.Tensor:
    q, idx = F.max_pool2d(z, kernel, kernel, 0, 1, False, True)
    if relu:
        g = torch.ops.aten.threshold_backward(g, torch.relu(q), 0)
    return F.max_unpool2d(g, idx, kernel, kernel, [0, 0], z.shape[-2:])


def _input(n, c, h, w, special, dtype, gen) -> torch.Tensor:
    z = torch.randn(n, c, h, w, generator=gen, dtype=dtype)
    if special == "ties":
        z = (z * 1.5).round()  # many equal values, zeros and negatives
    elif special == "signed zeros":
        z = torch.where(z < 0, -0.0, 0.0).to(dtype) + (z > 1.5) * z  # -0.0, 0.0 and a few > 0
    elif special != "none":
        mask = torch.rand(n, c, h, w, generator=gen) < 0.3
        z[mask] = float("nan") if special == "nan" else -float("inf")
    return z.contiguous(memory_format=LAST)


def _same_bits(got: torch.Tensor, ref: torch.Tensor) -> None:
    assert torch.equal(got.isnan(), ref.isnan())
    values = got.nan_to_num(), ref.nan_to_num()
    assert torch.equal(*values)
    assert torch.equal(torch.signbit(values[0]), torch.signbit(values[1]))  # -0.0 is not 0.0


SPECIAL = st.sampled_from(["none", "ties", "signed zeros", "nan", "-inf"])
# Shapes, kernels (sizes they need not divide), the ReLU, special values, dtypes and seeds.
POOL_CASES = given(
    n=st.integers(1, 3),
    c=st.integers(1, 20),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    kh=st.integers(1, 3),
    kw=st.integers(1, 3),
    relu=st.booleans(),
    special=SPECIAL,
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 10_000),
)


@settings(max_examples=80, deadline=None)
@POOL_CASES
def test_forward_matches_torch_bit_for_bit(n, c, h, w, kh, kw, relu, special, dtype, seed) -> None:
    if h < kh or w < kw:
        return
    z = _input(n, c, h, w, special, dtype, torch.Generator().manual_seed(seed))
    assert applies(z, z)
    got = pool_forward(z, (kh, kw), relu)
    assert got.is_contiguous(memory_format=LAST) and got.dtype == dtype
    ref = F.max_pool2d(z, (kh, kw), (kh, kw))
    _same_bits(got, torch.relu(ref) if relu else ref)


@settings(max_examples=80, deadline=None)
@POOL_CASES
def test_backward_matches_torch_bit_for_bit(n, c, h, w, kh, kw, relu, special, dtype, seed) -> None:
    if h < kh or w < kw:
        return
    gen = torch.Generator().manual_seed(seed)
    z = _input(n, c, h, w, special, dtype, gen)
    g = torch.randn(n, c, h // kh, w // kw, generator=gen, dtype=dtype)
    g = g.contiguous(memory_format=LAST)
    assert applies(z, g)
    got = pool_backward(g, z, (kh, kw), relu)
    assert got.is_contiguous(memory_format=LAST)
    _same_bits(got, _torch(g, z, (kh, kw), relu))


def test_what_it_does_not_take() -> None:
    z = torch.randn(2, 3, 4, 4).contiguous(memory_format=LAST)
    g = torch.randn(2, 3, 2, 2).contiguous(memory_format=LAST)
    assert applies(z, g)
    assert not applies(z.contiguous(), g)  # 3 channels: the default layout is not channels-last
    assert not applies(z, g.double())
    assert not applies(z.half(), g.half())


@pytest.mark.parametrize("relu", [False, True])
def test_the_cnn_model_shape(relu: bool) -> None:
    gen = torch.Generator().manual_seed(4)
    z = (torch.randn(32, 400, 8, 8, generator=gen) * 4).round().contiguous(memory_format=LAST)
    g = torch.randn(32, 400, 4, 4, generator=gen).contiguous(memory_format=LAST)
    assert torch.equal(pool_backward(g, z, (2, 2), relu), _torch(g, z, (2, 2), relu))
    q = F.max_pool2d(z, 2, 2)
    assert torch.equal(pool_forward(z, (2, 2), relu), torch.relu(q) if relu else q)
