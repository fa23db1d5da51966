"""The honest ClientApp: SGD on this node's part of digits (``partition-id`` of ``num-partitions``
from the node's ``--node-config``; ``local-steps``, ``lr``, ``batch-size`` from the run config)."""

from __future__ import annotations

from functools import lru_cache

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from byzflower.task import digits, model_fn, partitions
from byzlearn.integrations.flower.clients import torch_client_app

app = ClientApp()


@lru_cache(maxsize=8)
def _trainer(num_partitions: int, local_steps: int, lr: float, batch_size: int) -> ClientApp:
    data = digits()
    return torch_client_app(
        model_fn,
        data.x_train,
        data.y_train,
        partitions(num_partitions),
        local_steps=local_steps,
        lr=lr,
        batch_size=batch_size,
    )


def _run(message: Message, context: Context) -> Message:
    cfg = context.run_config
    trainer = _trainer(
        int(context.node_config["num-partitions"]),
        int(cfg.get("local-steps", 2)),
        float(cfg.get("lr", 0.1)),
        int(cfg.get("batch-size", 32)),
    )
    return trainer(message, context)


@app.train()
def train(message: Message, context: Context) -> Message:
    """Train on this node's part; reply the model and ``train_loss``, ``num-examples``."""
    return _run(message, context)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Loss and accuracy of the received model on this node's part."""
    return _run(message, context)
