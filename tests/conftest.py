"""Shared test settings: hypothesis profiles (CI runs the same profile as developers)."""

from __future__ import annotations

import os

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
