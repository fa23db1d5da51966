"""Fixtures of the engine tests: one local Ray instance per test module (the ``ray`` extra)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def start_ray(**options: Any) -> Any:
    """``ray.init`` for tests: 2 CPUs, no dashboard, quiet, and the repository on the actors'
    path (handlers defined in test modules are pickled by reference)."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
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
