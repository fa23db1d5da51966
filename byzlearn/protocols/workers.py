"""Worker roles of the parameter-server protocols.

- :class:`ComputeWorkers`: workers that compute on their data: honest workers, and Byzantine
  workers doing data poisoning (honest computation on poisoned labels). One request = one round:
  sample a minibatch per worker, run ``local_steps`` SGD steps (1 = plain gradient), add the l2
  term, clip, apply worker momentum (m = mu*m + g, ICLR 2021) and send the result.
- :class:`ByzantineWorkers`: the omniscient coalition. It observes the vectors the honest workers
  submitted this round and replies with the configured attack (rule-aware attacks are told the
  rule and its options). Attack state that lives across rounds (mimic's running estimate) is
  kept here, so that checkpoints carry it.

Minibatches are drawn for all members at once per round from one generator, so the vectorised
engine (one call for the group) and the per-worker loop (one call per member) see the same data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from byzlearn.engines.base import Message
from byzlearn.engines.functional import FlatModel

__all__ = ["ByzantineWorkers", "ComputeWorkers"]


class ComputeWorkers:
    """Workers that compute (possibly poisoned) stochastic gradients on their partitions."""

    def __init__(
        self,
        ids: Sequence[int],
        model: FlatModel,
        x: torch.Tensor,
        labels: torch.Tensor | Sequence[torch.Tensor],
        parts: Sequence[np.ndarray],
        *,
        batch_size: int = 32,
        seed: int = 0,
        local_steps: int = 1,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        clip: float | None = None,
    ) -> None:
        self.ids = [int(i) for i in ids]
        self.row = {node: r for r, node in enumerate(self.ids)}
        self.model = model
        self.x = x
        h = len(self.ids)
        if len(parts) != h:
            raise ValueError(f"one partition per worker: {len(parts)} for {h} workers")
        if isinstance(labels, torch.Tensor) and labels.dim() == 1:
            self.labels = labels[None].expand(h, -1)  # (h, N) view: every worker sees the same
        else:
            if len(labels) != h:
                raise ValueError(f"one label vector per worker: {len(labels)} for {h} workers")
            self.labels = torch.stack(list(labels))  # (h, N): worker r's view of the labels
        self.sizes = torch.tensor([len(p) for p in parts], dtype=torch.long)
        if int(self.sizes.min()) < 1:
            raise ValueError("every worker needs at least one sample")
        self.offsets = torch.cumsum(self.sizes, 0) - self.sizes
        self.flat_idx = torch.from_numpy(np.concatenate(parts).astype(np.int64))
        self.batch_size = int(batch_size)
        self.local_steps = int(local_steps)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.clip = clip
        self.generator = torch.Generator().manual_seed(int(seed))
        self.m = torch.zeros(h, model.dim) if self.momentum > 0 else None
        self._batch_round: int | None = None
        self._batch: torch.Tensor | None = None

    # ------------------------------------------------------------------ data
    def _indices(self, round: int) -> torch.Tensor:
        """``(local_steps, h, b)`` sample indices of every member for ``round`` (drawn once)."""
        if self._batch_round != round:
            u = torch.rand(
                (self.local_steps, len(self.ids), self.batch_size), generator=self.generator
            )
            pos = (u * self.sizes[None, :, None]).long().clamp_max(self.sizes[None, :, None] - 1)
            self._batch = self.flat_idx[self.offsets[None, :, None] + pos]
            self._batch_round = round
        assert self._batch is not None
        return self._batch

    # ------------------------------------------------------------------ compute
    def _grads(
        self, theta: torch.Tensor, rows: list[int], idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients of members ``rows`` at ``theta`` ((d,) shared or (h, d)) on indices idx."""
        x = self.x[idx]
        y = self.labels[torch.tensor(rows)[:, None], idx]
        if len(rows) > 1:
            g, loss = self.model.batched_grads(theta, x, y)
        else:
            g, loss = self.model.grad(theta if theta.dim() == 1 else theta[0], x[0], y[0])
            g, loss = g[None], loss[None]
        th = theta if theta.dim() == 2 else theta[None]
        if self.weight_decay:
            g = g + self.weight_decay * th
        if self.clip is not None:
            norms = g.norm(dim=1, keepdim=True).clamp_min(1e-12)
            g = g * (self.clip / norms).clamp(max=1.0)
        return g, loss

    def handle(self, inbox: Sequence[Message], observed: Sequence[Message] = ()) -> list[Message]:
        """Reply to the server's model broadcast with each member's submitted vector."""
        if not inbox:
            return []
        rnd = inbox[0].round
        if any(m.round != rnd for m in inbox):
            raise ValueError("a compute group handles one round per call")
        rows = [self.row[m.dest] for m in inbox]
        theta = inbox[0].payload
        idx = self._indices(rnd)[:, rows]
        if self.local_steps == 1:
            vec, loss = self._grads(theta, rows, idx[0])
        else:
            lr = float(inbox[0].meta.get("lr", 1.0))
            local = theta.expand(len(rows), -1).clone()
            for k in range(self.local_steps):
                g, loss = self._grads(local, rows, idx[k])
                local = local - lr * g
            vec = (theta[None] - local) / lr
        if self.m is not None:
            r = torch.tensor(rows)
            self.m[r] = self.momentum * self.m[r] + vec
            vec = self.m[r].clone()
        return [
            Message(
                sender=m.dest,
                role="worker",
                round=rnd,
                version=m.version,
                payload=vec[i],
                dest=m.sender,
                meta={"loss": float(loss[i])},
            )
            for i, m in enumerate(inbox)
        ]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "m": self.m}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.m = state["m"]
        self._batch_round = None


class ByzantineWorkers:
    """The omniscient Byzantine coalition running a gradient-space attack."""

    def __init__(
        self,
        ids: Sequence[int],
        attack: Callable[..., torch.Tensor],
        *,
        rule: str | Callable[..., torch.Tensor],
        rule_options: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        identical: bool = True,
        seed: int = 0,
    ) -> None:
        self.ids = [int(i) for i in ids]
        self.attack = attack
        self.rule = rule
        self.rule_options = dict(rule_options or {})
        self.options = dict(options or {})
        self.identical = identical
        self.generator = torch.Generator().manual_seed(int(seed))
        self.state: Any = None  # running attack state (mimic's warm-up estimate)
        warmup = self.options.pop("warmup", None)
        if warmup is not None:
            from byzlearn.attacks import MimicState

            self.state = MimicState(warmup=int(warmup))

    def handle(self, inbox: Sequence[Message], observed: Sequence[Message] = ()) -> list[Message]:
        """Attack: craft ``len(inbox)`` vectors from the honest vectors of the same round."""
        if not inbox:
            return []
        rnd = inbox[0].round
        honest = [m.payload for m in observed if m.round == rnd and m.role == "worker"]
        if not honest:
            return []
        extra: dict[str, Any] = {}
        if self.state is not None:
            self.state = self.state.observe(torch.stack(honest))
            extra["state"] = self.state
        byz = self.attack(
            torch.stack(honest),
            f=len(inbox),
            rule=self.rule,
            rule_options=self.rule_options,
            generator=self.generator,
            identical=self.identical,
            **self.options,
            **extra,
        )
        return [
            Message(
                sender=m.dest,
                role="worker",
                round=rnd,
                version=m.version,
                payload=byz[i].to(honest[0].dtype),
                dest=m.sender,
            )
            for i, m in enumerate(inbox)
        ]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "attack_state": self.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.state = state.get("attack_state")
