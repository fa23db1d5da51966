"""Shared by the aggregator tests."""

from __future__ import annotations

# Options that make the randomised rules (fresh draws per call by default) and clipping
# reproducible, so that two code paths or devices must agree on them.
SEEDED = {
    "clipping": {"max_norm": 1.0},
    "bucketing": {"seed": 0},
    "dnc": {"seed": 0},
    "signguard": {"seed": 0},
}


def seeded_options(name: str) -> dict:
    """:data:`SEEDED`'s options for a rule or a composition such as ``bucketing+median``."""
    parts = name.split("+")
    return {**SEEDED.get(parts[0], {}), **SEEDED.get(parts[-1], {})}
