"""Shared test settings: hypothesis profiles (CI runs the same profile as developers), and one
local Ray instance per test module for the tests marked ``ray`` (the ``ray`` extra)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", parent=settings.get_profile("default"), max_examples=300)
settings.load_profile(os.environ.get("BYZLEARN_HYPOTHESIS_PROFILE", "default"))

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]  # the repository (parents[2] was the folder above)


def start_ray(**options: Any) -> Any:
    """``ray.init`` for tests: 2 CPUs, no dashboard, quiet, and the repository on the actors'
    path (handlers defined in test modules are pickled by reference)."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local",  # our own instance, even when another runs on the machine
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
        **options,
    )
    return ray


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[Any]:
    """A local Ray instance (num_cpus=2) for the whole module."""
    ray = start_ray()
    yield ray
    ray.shutdown()
