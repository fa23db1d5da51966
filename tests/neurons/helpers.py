"""Small networks shared by the neuron fault-tolerance tests."""

from __future__ import annotations

import itertools

import torch
from torch import nn

ACTS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU, "softplus": nn.Softplus}


def random_mlp(
    sizes: list[int], act: str = "sigmoid", seed: int = 0, scale: float = 1.0
) -> nn.Sequential:
    """Random MLP with a linear output, weights N(0, scale²/fan_in) and biases N(0, 1/4)."""
    g = torch.Generator().manual_seed(seed)
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.copy_(scale * torch.randn(b, a, generator=g) / a**0.5)
            lin.bias.copy_(0.5 * torch.randn(b, generator=g))
        mods.append(lin)
        if i < len(sizes) - 2:
            mods.append(ACTS[act]())
    return nn.Sequential(*mods).eval()
