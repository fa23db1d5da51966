"""Mutation-testing findings for the reference models: each test fails on a plausible bug that the
other model tests let through (a stride in every block, a max- instead of an average pooling)."""

from __future__ import annotations

import torch

from byzlearn.models import build_model


def _block_outputs(model: torch.nn.Module, x: torch.Tensor) -> tuple[list[tuple], torch.Tensor]:
    """Shapes of the ResNet's block outputs, and the last block's output."""
    shapes: list[tuple] = []
    last: list[torch.Tensor] = []

    def hook(_m: torch.nn.Module, _i: object, out: torch.Tensor) -> None:
        shapes.append(tuple(out.shape))
        last[:] = [out]

    for block in model.blocks:
        block.register_forward_hook(hook)
    model(x)
    return shapes, last[0]


def test_resnet_halves_the_resolution_once_per_stage() -> None:
    """depth 14: two blocks per stage; only the first block of stages 2 and 3 strides."""
    torch.manual_seed(0)
    model = build_model("resnet", (3, 16, 16), 5, depth=14, width=4, groups=2)
    shapes, _ = _block_outputs(model, torch.randn(2, 3, 16, 16))
    assert shapes == [
        (2, 4, 16, 16),
        (2, 4, 16, 16),
        (2, 8, 8, 8),
        (2, 8, 8, 8),
        (2, 16, 4, 4),
        (2, 16, 4, 4),
    ]


def test_resnet_head_reads_the_global_average_of_the_last_block() -> None:
    torch.manual_seed(0)
    model = build_model("resnet", (3, 8, 8), 5, depth=8, width=4, groups=2)
    x = torch.randn(3, 3, 8, 8)
    _, last = _block_outputs(model, x)
    with torch.no_grad():
        expected = model.head(last.mean(dim=(2, 3)))
        torch.testing.assert_close(model(x), expected)


def test_resnet_block_is_conv_norm_relu_conv_norm_plus_shortcut_then_relu() -> None:
    """Each block: relu(norm2(conv2(relu(norm1(conv1(x))))) + shortcut(x)), checked on a
    block with a projection shortcut and one with the identity."""
    torch.manual_seed(0)
    model = build_model("resnet", (3, 8, 8), 5, depth=14, width=4, groups=2)
    x = torch.randn(2, 4, 8, 8)
    for block in (model.blocks[1], model.blocks[2]):
        with torch.no_grad():
            inner = torch.relu(block.norm1(block.conv1(x)))
            expected = torch.relu(block.norm2(block.conv2(inner)) + block.shortcut(x))
            torch.testing.assert_close(block(x), expected)
        x = block(x).detach()
    assert isinstance(model.blocks[1].shortcut, torch.nn.Identity)
    assert not isinstance(model.blocks[2].shortcut, torch.nn.Identity)


def test_every_resnet_group_norm_uses_the_groups_option() -> None:
    """GroupNorm(min(groups, channels)) everywhere: stem, both norms of each block, shortcuts."""
    model = build_model("resnet", (3, 8, 8), 5, depth=8, width=4, groups=8)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 1 + 3 * 2 + 2  # stem, 3 blocks x 2, 2 projection shortcuts
    for norm in norms:
        assert norm.num_groups == min(8, norm.num_channels)
    assert {norm.num_groups for norm in norms} == {4, 8}
