"""Fixtures of the engine tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def engines(ray_instance) -> Iterator[list[Any]]:
    """Ray engines made by a test; their actors are killed when it ends."""
    made: list[Any] = []
    yield made
    for engine in made:
        engine.close()
