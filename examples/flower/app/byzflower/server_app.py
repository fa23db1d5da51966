"""The ServerApp: byzlearn's RobustStrategy (or Flower's FedAvg) with central evaluation.

Run config (``[tool.flwr.app.config]`` of ``pyproject.toml``, or ``flwr run -c``): ``rule``
(``"fedavg"`` for Flower's FedAvg, else any byzlearn rule or composition), ``f``,
``server-momentum``, ``num-server-rounds``, ``on-shortfall``.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, Result

from byzflower.task import central_accuracy, initial_arrays
from byzlearn.integrations.flower import RobustStrategy

app = ServerApp()


def run(grid: Grid, config: dict, *, simulation: bool = False) -> tuple[Result, FedAvg]:
    """Run the federation on ``grid``; return Flower's Result and the strategy."""
    rule = str(config.get("rule", "nnm+krum"))
    common = {"fraction_evaluate": 0.0}  # evaluation is central (the test set)
    strategy: FedAvg
    if rule == "fedavg":
        strategy = FedAvg(**common)
    else:
        strategy = RobustStrategy(
            rule,
            f=int(config.get("f", 0)),
            server_momentum=float(config.get("server-momentum", 0.0)),
            on_shortfall=str(config.get("on-shortfall", "shrink")),  # type: ignore[arg-type]
            simulation=simulation,
            **common,
        )
    result = strategy.start(
        grid=grid,
        initial_arrays=initial_arrays(int(config.get("seed", 0))),
        num_rounds=int(config.get("num-server-rounds", 20)),
        evaluate_fn=central_accuracy,
    )
    return result, strategy


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of ``flwr run`` (simulation or deployment)."""
    run(grid, dict(context.run_config))
