"""Synchronous parameter server (Blanchard et al. 2017; momentum placement of ICLR 2021).

One round ``t``:

1. the server broadcasts ``(theta_t, version, lr_t)`` to every worker (round ``t``);
2. it gathers the first ``q`` replies of round ``t`` (default ``q = n``; with a ``deadline``,
   whatever arrived by then); stale or mislabelled replies are dropped by the engine;
3. it aggregates them with the rule (pre-aggregators included, e.g. ``nnm+krum``);
4. it updates ``theta_{t+1} = theta_t - lr_t * u_t`` with ``u_t`` the aggregate, or with server
   momentum ``G_t = mu * G_{t-1} + aggregate`` (momentum at the workers lives in the workers).

A round with no reply, or whose replies hold too many non-finite coordinates for the rule to
aggregate, is recorded as ``skipped`` (with ``aggregation_error``) and leaves the model as is.

The server only sees the replies; ``byzantine_ids`` is ground truth used for metrics alone
(how many Byzantine inputs a selection rule kept; distance of the aggregate to the honest mean).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

import byzlearn.aggregators as agg
from byzlearn.engines.base import Engine, Message

__all__ = ["ParameterServer"]


class ParameterServer:
    """The server role of the synchronous parameter-server protocol."""

    role = "server"

    def __init__(
        self,
        engine: Engine,
        theta: torch.Tensor,
        *,
        server_id: int,
        rule: str,
        f: int,
        rule_options: dict[str, Any] | None = None,
        lr: Callable[[int], float] = lambda t: 0.1,
        momentum: float = 0.0,
        q: int | None = None,
        deadline: float | None = None,
        byzantine_ids: Sequence[int] = (),
    ) -> None:
        self.engine = engine
        self.theta = theta.detach().clone()
        self.id = int(server_id)
        self.rule_name = rule
        self.rule = agg.get(rule)
        self._selects = agg.spec(rule.split("+")[-1]).selects
        self.rule_options = dict(rule_options or {})
        self.f = int(f)
        self.lr = lr
        self.momentum = float(momentum)
        self.q = q
        self.deadline = deadline
        self.byzantine = {int(i) for i in byzantine_ids}
        self.version = 0
        self.round = 0
        self.buffer = torch.zeros_like(self.theta) if self.momentum > 0 else None
        self.previous: torch.Tensor | None = None  # last aggregate

    # ------------------------------------------------------------------ aggregation
    def _options(self) -> dict[str, Any]:
        opts = dict(self.rule_options)
        uses_center = "centered_clipping" in self.rule_name.split("+")
        if uses_center and "center" not in opts and self.previous is not None:
            opts["center"] = self.previous  # CC starts from the previous aggregate
        return opts

    def aggregate(self, vectors: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The rule's output on ``vectors`` and the seconds it took."""
        start = time.perf_counter()
        out = self.rule(vectors, f=self.f, **self._options())
        return out, time.perf_counter() - start

    def _kept(self, vectors: torch.Tensor) -> list[int] | None:
        """Rows a selection rule kept (None for rules that do not select inputs)."""
        if not self._selects:
            return None
        idx = agg.selected_indices(self.rule_name, vectors, f=self.f, **self._options())
        return [int(i) for i in idx]

    # ------------------------------------------------------------------ one round
    def step(self) -> dict[str, Any]:
        """Run one synchronous round; return its metrics."""
        t = self.round + 1
        lr = float(self.lr(t))
        n_workers = len(self.engine.nodes("worker"))
        request = Message(
            sender=self.id,
            role=self.role,
            round=t,
            version=self.version,
            payload=self.theta,
            meta={"lr": lr},
        )
        self.engine.broadcast(request, role="worker")
        replies = self.engine.gather(self.id, t, q=self.q or n_workers, deadline=self.deadline)
        replies = sorted(
            (m for m in replies if m.role == "worker" and m.version == self.version),
            key=lambda m: m.sender,
        )
        record: dict[str, Any] = {"round": t, "lr": lr, "received": len(replies)}
        senders = [m.sender for m in replies]
        is_byz = torch.tensor([s in self.byzantine for s in senders], dtype=torch.bool)
        honest_losses = [m.meta["loss"] for m in replies if m.sender not in self.byzantine]
        record["train_loss"] = sum(honest_losses) / len(honest_losses) if honest_losses else None
        if not replies:
            record.update(agg_seconds=0.0, skipped=True)
            self.round = t
            return record
        vectors = torch.stack([m.payload for m in replies])
        try:
            out, seconds = self.aggregate(vectors)
        except ValueError as err:
            if bool(torch.isfinite(vectors).all()):
                raise
            # too many missing (non-finite) coordinates to aggregate: skip the update
            record.update(agg_seconds=0.0, skipped=True, aggregation_error=str(err))
            self.round = t
            return record
        record["agg_seconds"] = seconds
        kept = self._kept(vectors)
        if kept is not None:
            record["kept"] = [senders[i] for i in kept]  # node ids
            record["kept_byzantine"] = int(sum(bool(is_byz[i]) for i in kept))
        honest = vectors[~is_byz]
        if len(honest):
            record["dist_honest_mean"] = float((out - honest.mean(dim=0)).norm())
        record["aggregate_norm"] = float(out.norm())
        self.previous = out.detach().clone()
        step = out
        if self.buffer is not None:
            self.buffer = self.momentum * self.buffer + out
            step = self.buffer
        self.theta = self.theta - lr * step
        self.version += 1
        self.round = t
        return record

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "theta": self.theta,
            "version": self.version,
            "round": self.round,
            "buffer": self.buffer,
            "previous": self.previous,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.theta = state["theta"]
        self.version = int(state["version"])
        self.round = int(state["round"])
        self.buffer = state["buffer"]
        self.previous = state["previous"]
