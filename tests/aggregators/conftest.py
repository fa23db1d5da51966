"""Fixtures of the aggregator tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def triton_interpreter(monkeypatch):
    """Triton's interpreter for the kernels the test launches, so that a CPU runs them (the
    modules of the Triton kernels' tests use it for every test: ``pytestmark``)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
