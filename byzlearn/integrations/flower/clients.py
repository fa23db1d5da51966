"""An honest Flower ClientApp for a torch model on in-memory data (simulations, examples, tests).

``torch_client_app(model_fn, x, y, parts)`` answers

- ``train``: load the received ``arrays`` into ``model_fn()``, run ``local_steps`` steps of SGD
  (mini-batches of ``batch_size`` drawn from the node's part ``parts[partition-id]`` with a
  generator keyed on (seed, partition, round)), reply the model (``arrays``) and
  ``{"train_loss", "num-examples"}`` (``metrics``);
- ``evaluate``: the loss and accuracy of the received model on the node's part.

``partition-id`` comes from the node's ``Context.node_config`` (set by Flower's simulation and by
:class:`~byzlearn.integrations.flower.local.LocalGrid`; in a deployment, by
``flower-supernode --node-config "partition-id=3"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from byzlearn import keyed
from byzlearn.integrations.flower.byzantine import round_of

__all__ = ["torch_client_app"]


def _partition(context: Context, parts: Sequence[np.ndarray]) -> int:
    value = context.node_config.get("partition-id")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(parts):
        raise ValueError(
            f"node_config partition-id must be an int in [0, {len(parts)}), got {value!r}"
        )
    return value


def torch_client_app(
    model_fn: Callable[[], nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    parts: Sequence[np.ndarray],
    *,
    local_steps: int = 1,
    batch_size: int = 32,
    lr: float = 0.1,
    seed: int = 0,
) -> ClientApp:
    """A ClientApp training ``model_fn()`` on ``x[parts[partition-id]]`` (module docstring)."""
    if local_steps < 1 or batch_size < 1 or not lr > 0:
        raise ValueError("local_steps and batch_size must be >= 1 and lr > 0")
    app = ClientApp()
    loss_fn = nn.CrossEntropyLoss()

    def load(message: Message) -> nn.Module:
        model = model_fn()
        model.load_state_dict(message.content.array_records["arrays"].to_torch_state_dict())
        return model

    @app.train()
    def train(message: Message, context: Context) -> Message:
        part = _partition(context, parts)
        index = torch.as_tensor(parts[part], dtype=torch.long)
        model = load(message)
        optimiser = torch.optim.SGD(model.parameters(), lr=lr)
        g = keyed.generator((seed, "batch", part, round_of(message)))
        total = 0.0
        for _ in range(local_steps):
            batch = index[torch.randint(len(index), (min(batch_size, len(index)),), generator=g)]
            optimiser.zero_grad()
            loss = loss_fn(model(x[batch]), y[batch])
            loss.backward()
            optimiser.step()
            total += loss.item()
        content = RecordDict(
            {
                "arrays": ArrayRecord(model.state_dict()),
                "metrics": MetricRecord(
                    {"train_loss": total / local_steps, "num-examples": len(index)}
                ),
            }
        )
        return Message(content, reply_to=message)

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        index = torch.as_tensor(parts[_partition(context, parts)], dtype=torch.long)
        model = load(message)
        with torch.no_grad():
            logits = model(x[index])
            loss = float(loss_fn(logits, y[index]))
            accuracy = float((logits.argmax(1) == y[index]).float().mean())
        metrics = MetricRecord({"loss": loss, "accuracy": accuracy, "num-examples": len(index)})
        return Message(RecordDict({"metrics": metrics}), reply_to=message)

    return app
