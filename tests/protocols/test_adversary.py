"""The Byzantine coalition of driven nodes (``protocols/adversary.py``)."""

from __future__ import annotations

import pytest
import torch

from byzlearn.attacks import alie_z, honest_mean
from byzlearn.protocols.adversary import ByzantineNodes, NodeAttackConfig


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_equivocation_reflects_through_the_mean_the_attack_used(dtype: torch.dtype) -> None:
    """ALIE with z = 0 (3 honest nodes and 1 Byzantine) crafts the honest mean itself, so its
    reflection ``2 mu - a`` is the same vector bit for bit: receivers that should get the same
    model do (the correct servers of ByzSGD then take the same median). Half precision: the
    attack computes in float32, and so does the mean it is reflected through."""
    assert alie_z(4, 1) == 0.0
    gen = torch.Generator().manual_seed(0)
    honest = (torch.randn(3, 4810, generator=gen) * 1e-2 + 0.3).to(dtype)
    coalition = ByzantineNodes([], NodeAttackConfig(name="alie", equivocate=True), ids=[3])
    crafted = coalition.craft(list(honest), t=0)
    assert crafted is not None
    byz, mean = crafted
    first, second = (coalition.for_receiver(byz[0], mean, r) for r in (0, 1))
    assert torch.equal(first, second)
    assert torch.equal(mean, honest_mean(honest))
