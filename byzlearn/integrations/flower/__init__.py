"""byzlearn inside Flower (``pip install -e ".[flower]"``; targets flwr 1.42's message API).

>>> from byzlearn.integrations.flower import RobustStrategy, ByzantineClientApp, LocalGrid
>>> strategy = RobustStrategy("nnm+krum", f=3, server_momentum=0.9)   # a flwr Strategy
>>> result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=20)

- :class:`RobustStrategy`: a ``flwr.serverapp.strategy`` Strategy (FedAvg's sampling and
  evaluation) that aggregates the clients' updates with any byzlearn rule or composition, with
  a documented policy for short and malformed rounds and a per-round report in Flower's metrics;
- :class:`ByzantineClientApp` / :func:`byzantine_clients`: a ClientApp wrapper that applies a
  byzlearn attack or node behaviour (omniscient attacks see the round's honest updates when run
  by :class:`LocalGrid`);
- :class:`LocalGrid`: an in-process Flower ``Grid`` for simulations and tests.

See ``docs/flower.md``.
"""

from __future__ import annotations

try:
    import flwr  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        'byzlearn.integrations.flower needs Flower: pip install -e ".[flower]"'
    ) from err

from byzlearn.integrations.flower.byzantine import (
    ByzantineClientApp,
    byzantine_clients,
    round_of,
)
from byzlearn.integrations.flower.local import LocalGrid
from byzlearn.integrations.flower.strategy import (
    BYZANTINE_KEY,
    METRIC_KEYS,
    RobustStrategy,
    RoundReport,
)

__all__ = [
    "BYZANTINE_KEY",
    "METRIC_KEYS",
    "ByzantineClientApp",
    "LocalGrid",
    "RobustStrategy",
    "RoundReport",
    "byzantine_clients",
    "round_of",
]
