"""A checkpoint from elsewhere whose state loads but has parts of the wrong form (found by a
random search that damaged one place of real checkpoints of every protocol): one line naming
the checkpoint, never a traceback from the first round after the resume."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from byzlearn.engines import Message
from byzlearn.experiments import parse_config
from byzlearn.experiments.runner import CheckpointError, run
from tests.resume import kill_run

BASE = {
    "dataset": {"name": "digits"},
    "model": {"name": "mlp"},
    "n": 10,
    "f": 1,
    "steps": 6,
    "checkpoint_every": 2,
    "attack": {"name": "sign_flip"},
}


def _killed(tmp_path: Path, **extra: Any) -> tuple[Any, Path, dict[str, Any]]:
    config = parse_config({**BASE, "rule": {"name": "median"}, **extra})
    out = tmp_path / "run"
    kill_run(config, out, 4)
    return config, out, torch.load(out / "checkpoint.pt", weights_only=True)


def _resumed_with(config: Any, out: Path, state: dict[str, Any]) -> str:
    torch.save(state, out / "checkpoint.pt")
    with pytest.raises(CheckpointError) as info:
        run(config, out)
    message = str(info.value)
    assert "\n" not in message and str(out / "checkpoint.pt") in message
    return message


def test_a_tensor_replaced_by_a_number_is_refused_before_loading(tmp_path: Path) -> None:
    config, out, state = _killed(tmp_path)
    state["trainer"]["protocol"]["server"]["theta"] = 3
    message = _resumed_with(config, out, state)
    assert "/protocol/server/theta is int 3, not a tensor" in message


def test_a_tensor_of_another_dtype_is_refused(tmp_path: Path) -> None:
    config, out, state = _killed(tmp_path)
    server = state["trainer"]["protocol"]["server"]
    server["theta"] = server["theta"].double()
    assert "is torch.float64, not torch.float32" in _resumed_with(config, out, state)


def test_a_part_the_new_state_leaves_empty_fails_as_one_line_in_the_first_round(
    tmp_path: Path,
) -> None:
    # no momentum: the new state holds None there, so the loaded str is only found when the
    # first round uses it (it was a TypeError traceback)
    config, out, state = _killed(tmp_path, protocol={"name": "decentralized"})
    assert state["trainer"]["protocol"]["compute"]["m"] is None
    state["trainer"]["protocol"]["compute"]["m"] = "x"
    message = _resumed_with(config, out, state)
    assert re.search(r"round \d+, the first after resuming from it, failed \(TypeError", message)
    assert "--no-resume" in message
    assert [r["round"] for r in run(config, out, resume=False).records][-1] == 6


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("round", -32, "round is not an int >= 0"),
        ("round", None, "round is not an int >= 0"),
        ("dest", [1, 2], "dest is not a node id"),
        ("arrival", "soon", "arrival is not a time"),
        ("nosuchfield", 1, "a saved message must be a mapping of kind"),
    ],
)
def test_a_saved_message_of_the_wrong_form_is_one_line(field, value, expected) -> None:
    state = Message(kind="gradient", dest=1, round=2).to_state()
    state[field] = value
    with pytest.raises(ValueError, match=expected):
        Message.from_state(state)
