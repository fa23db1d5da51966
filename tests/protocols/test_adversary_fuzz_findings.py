"""Findings of a random search over the Byzantine coalition of driven nodes
(``protocols/adversary.py``) and the protocols that use it."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from byzlearn.experiments import parse_config, run
from byzlearn.protocols.adversary import ByzantineNodes, NodeAttackConfig


def test_a_running_state_that_cannot_observe_makes_the_coalition_silent() -> None:
    """Mimic's state refuses a step whose honest vectors are all non-finite; the ValueError it
    raised escaped :meth:`ByzantineNodes.craft` (the state was updated outside its ``try``)."""
    coalition = ByzantineNodes(
        [], NodeAttackConfig(name="mimic", options={"warmup": 3}), ids=[5], seed=0
    )
    assert coalition.craft([torch.full((4,), math.nan)], t=1) is None
    assert coalition.silent == 1
    assert coalition.state.step == 0  # the refused step was not observed
    crafted = coalition.craft([torch.ones(4), torch.zeros(4), torch.ones(4)], t=2)
    assert crafted is not None and coalition.state.step == 1


@pytest.mark.parametrize(
    "protocol",
    [
        {"name": "liubei", "server_attack": {"name": "mimic", "options": {"warmup": 5}}},
        {"name": "byzsgd", "server_attack": {"name": "mimic", "options": {"warmup": 5}}},
        {"name": "decentralized"},
    ],
)
def test_a_diverging_run_with_a_mimic_server_or_peer_is_marked_not_aborted(
    protocol: dict[str, Any],
) -> None:
    """lr = 1e300: every honest model overflows at the first step; the Byzantine servers (or
    peers) running mimic, still in their warm-up, then observed only non-finite models and the
    run aborted with ``MimicState.observe: every honest vector holds a non-finite value``."""
    config: dict[str, Any] = {
        "dataset": {"name": "digits"},
        "model": {"name": "logistic"},
        "n": 10,
        "f": 1,
        "steps": 4,
        "eval_every": 2,
        "checkpoint_every": 0,
        "optimizer": {"lr": 1e300},
        "protocol": protocol,
    }
    if protocol["name"] == "decentralized":
        config["attack"] = {"name": "mimic", "options": {"warmup": 5}}
    result = run(parse_config(config))
    assert result.summary["diverged"]
