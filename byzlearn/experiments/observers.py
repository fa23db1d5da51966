"""Observers: the metrics that need ground truth or the engine's view, added to step records.

Roles never know which workers are Byzantine; these observers do (they are built by the driver
from the config) and turn the roles' events into metrics:

- :class:`TruthObserver`: ``train_loss`` (mean loss reported by honest senders),
  ``variance_norm_ratio`` (sqrt(E||h - mean||^2) / ||mean|| of the honest submitted vectors),
  ``kept_byzantine`` (Byzantine inputs a selection rule kept), ``dist_honest_mean`` (distance
  of the aggregate to the honest inputs' mean); for asynchronous protocols ``byzantine_sender``
  per step and cumulative accepted / rejected counts, honest and Byzantine, and per worker;
- :class:`EngineObserver`: per step, the engine's message counters (``messages_sent``,
  ``bytes_sent``, ``messages_dropped``, ``messages_late``, ``messages_discarded``,
  ``impostors``, ``blocked``) as differences since the previous step, and ``in_flight``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from byzlearn.engines import Engine
from byzlearn.experiments._honest_stats import honest_statistics
from byzlearn.finite import all_finite
from byzlearn.protocols.base import Observer

__all__ = ["EngineObserver", "TruthObserver"]


class TruthObserver(Observer):
    """Metrics that need to know which senders are Byzantine (node ids in ``byzantine``)."""

    def __init__(self, byzantine: Iterable[int], workers: Iterable[int]) -> None:
        self.byzantine = {int(i) for i in byzantine}
        self.workers = [int(i) for i in workers]
        self._fields: dict[str, Any] = {}
        self.accepted = {w: 0 for w in self.workers}
        self.rejected = {w: 0 for w in self.workers}

    def on_event(self, name: str, data: dict[str, Any]) -> None:
        if name == "aggregated":
            self._aggregated(data)
        elif name == "update":
            self._update(data)

    def _honest_loss(self, losses: dict[int, float]) -> float | None:
        honest = [v for s, v in losses.items() if s not in self.byzantine and v is not None]
        return sum(honest) / len(honest) if honest else None

    def _aggregated(self, data: dict[str, Any]) -> None:
        senders: list[int] = data["senders"]
        self._fields["train_loss"] = self._honest_loss(data["losses"])
        kept = data.get("kept")
        if kept is not None:
            self._fields["kept_byzantine"] = sum(1 for s in kept if s in self.byzantine)
        vectors, output = data.get("vectors"), data.get("output")
        if vectors is not None and output is not None:
            honest = [i for i, s in enumerate(senders) if s not in self.byzantine]
            if honest:
                self._spread(vectors, honest, output)

    def _spread(self, vectors: torch.Tensor, honest: list[int], output: torch.Tensor) -> None:
        """``dist_honest_mean`` and ``variance_norm_ratio`` of the honest rows: one compiled
        call (:func:`._honest_stats.honest_statistics`), else (lost coordinates, no numba,
        another device) torch operations that skip non-finite coordinates."""
        fused = honest_statistics(vectors, honest, output)
        if fused is not None:
            dist, spread, norm = fused
            self._fields["dist_honest_mean"] = dist
            if len(honest) > 1:
                self._fields["variance_norm_ratio"] = spread / norm if norm > 0 else None
            return
        rows = (  # index_select: the rows of advanced indexing, at a third of its cost
            vectors
            if len(honest) == len(vectors)
            else vectors.index_select(0, torch.tensor(honest, device=vectors.device))
        )
        mean = rows.mean(dim=0)
        # a non-finite entry makes its column's mean non-finite: a finite mean means
        # finite rows (one small test instead of one over all the rows)
        finite = all_finite(mean)
        if not finite:  # lost coordinates: skip them
            mean = rows.nanmean(dim=0)
        self._fields["dist_honest_mean"] = _norm(output - mean)
        if len(rows) > 1 and (finite or all_finite(rows)):
            # sqrt(E ||h - mean||^2) / ||mean||: the variance-norm ratio of ICLR 2021,
            # the spread as the Frobenius norm of the centred rows over sqrt(rows)
            spread = _norm(rows - mean) / len(rows) ** 0.5
            norm = _norm(mean)
            self._fields["variance_norm_ratio"] = spread / norm if norm > 0 else None

    def _update(self, data: dict[str, Any]) -> None:
        sender = int(data["sender"])
        byz = sender in self.byzantine
        self._fields["byzantine_sender"] = byz
        if not byz and data.get("loss") is not None:
            self._fields["train_loss"] = float(data["loss"])
        table = self.accepted if data["accepted"] else self.rejected
        table[sender] = table.get(sender, 0) + 1

    def _totals(self) -> dict[str, int]:
        def total(table: dict[int, int], byz: bool) -> int:
            return sum(v for w, v in table.items() if (w in self.byzantine) == byz)

        return {
            "accepted_honest": total(self.accepted, False),
            "rejected_honest": total(self.rejected, False),
            "accepted_byzantine": total(self.accepted, True),
            "rejected_byzantine": total(self.rejected, True),
        }

    def collect(self, record: dict[str, Any]) -> None:
        record.update(self._fields)
        if "accepted" in record:  # an asynchronous step: running totals
            record.update(self._totals())
        self._fields = {}

    def summary(self) -> dict[str, Any]:
        if not any(self.accepted.values()) and not any(self.rejected.values()):
            return {}
        out: dict[str, Any] = dict(self._totals())
        out["per_worker"] = {
            str(w): {
                "byzantine": w in self.byzantine,
                "accepted": self.accepted.get(w, 0),
                "rejected": self.rejected.get(w, 0),
            }
            for w in self.workers
        }
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"accepted": dict(self.accepted), "rejected": dict(self.rejected)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.accepted = {int(k): int(v) for k, v in state["accepted"].items()}
        self.rejected = {int(k): int(v) for k, v in state["rejected"].items()}


def _norm(v: torch.Tensor) -> float:
    """``||v||``, also where its squares pass the floats (values past 1e154 in float64, 1e19
    in float32: a plain norm is inf): then that of ``v`` scaled by its largest entry."""
    norm = float(torch.linalg.vector_norm(v))
    if math.isinf(norm) and all_finite(v):
        top = v.abs().amax()
        norm = float(top.double() * torch.linalg.vector_norm(v / top).double())
    return norm


_COUNTERS = {
    "messages_sent": "sent",
    "bytes_sent": "bytes",
    "messages_dropped": "dropped",
    "messages_late": "late",
    "messages_discarded": "discarded",
    "impostors": "impostor",
    "blocked": "blocked",
}


class EngineObserver(Observer):
    """The engine's message counters, per step."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._last = dict(engine.stats)
        self._crashed: set[int] = set()

    def collect(self, record: dict[str, Any]) -> None:
        now = self.engine.stats
        for key, stat in _COUNTERS.items():
            record[key] = int(now.get(stat, 0) - self._last.get(stat, 0))
        record["in_flight"] = int(now.get("in_flight", 0))
        self._last = dict(now)
        # nodes found dead during the step (engines with real crashes: ``engine.crashed``)
        new = sorted(set(getattr(self.engine, "crashed", ())) - self._crashed)
        if new:
            record["crashed"] = new
            self._crashed.update(new)

    def summary(self) -> dict[str, Any]:
        stats = self.engine.stats
        out: dict[str, Any] = {f"total_{k}": int(stats.get(v, 0)) for k, v in _COUNTERS.items()}
        if self._crashed:
            out["crashed_nodes"] = sorted(self._crashed)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"last": dict(self._last), "crashed": sorted(self._crashed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._last = {k: int(v) for k, v in state["last"].items()}
        self._crashed = {int(i) for i in state.get("crashed", [])}
