"""A run whose rounds cannot fit in the memory is refused in one line before it starts (it was
killed by the system, or a traceback from torch's allocator, mid-round); the config stays
readable (reports of finished runs on a smaller machine)."""

from __future__ import annotations

from pathlib import Path

import pytest

import byzlearn.experiments.config as config_module
from byzlearn.experiments import run
from byzlearn.experiments.config import ConfigError, parse_config, round_memory

SMALL = {"dataset": {"name": "digits"}, "n": 5, "f": 1, "steps": 1, "rule": {"name": "median"}}


def test_the_bound_counts_gradients_and_the_activations_computed_together() -> None:
    # the MLP on digits: d = 4810; one sample's activations: flatten 64, linear 64, relu 64,
    # linear 10 (the leaf modules' outputs)
    config = parse_config({"dataset": {"name": "digits"}, "n": 25, "f": 5})
    assert round_memory(config) == 4 * (25 * 4810 + 20 * 32 * 202)  # 20 honest batches at once
    loop = parse_config({**config.model_dump(), "engine": {"name": "local", "vectorise": False}})
    assert round_memory(loop) == 4 * (25 * 4810 + 32 * 202)  # one batch at a time


def test_a_round_beyond_the_available_memory_is_refused_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = parse_config(SMALL)  # read whatever the memory: the check is where a run starts
    monkeypatch.setattr(config_module, "available_bytes", lambda: round_memory(config) - 1)
    with pytest.raises(ConfigError, match=r"invalid config: memory: a round of this config needs"):
        run(config, tmp_path / "run")
    assert not any((tmp_path / "run").iterdir())  # nothing written
    monkeypatch.setattr(config_module, "available_bytes", lambda: round_memory(config))
    assert run(config, tmp_path / "run").status == "started"


def test_a_config_too_big_to_run_here_is_still_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a config never depends on the machine's memory; a model whose activations are
    too big for a real forward pass when the config is read is checked against the inputs on
    the meta device only."""
    monkeypatch.setattr(config_module, "available_bytes", lambda: 1)
    wide = {"name": "cnn", "options": {"channels": [4096, 8]}}  # 9.4 M activations a sample
    config = parse_config({"dataset": {"name": "cifar10"}, "model": wide})
    assert round_memory(config) > 20 * 2**30
    with pytest.raises(ConfigError, match=r"model\.name: resnet does not take synthetic's inputs"):
        parse_config({"dataset": {"name": "synthetic"}, "model": {"name": "resnet"}})
