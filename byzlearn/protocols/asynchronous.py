"""Asynchronous SGD and Kardam: the server applies each gradient as it arrives.

At the start the server sends the initial model to every worker. Then each step:

1. take the next gradient to arrive (waiting at most ``deadline`` simulated seconds; a step
   where none came is recorded ``skipped``); the workers presumed to have lost their last
   gradient get the current model again (:meth:`AsyncServer._resend`);
2. its staleness tau is the server's version minus the version of the model it sent that worker
   in the gradient's round (the server's own record: a worker cannot lie about it);
3. ``async_sgd`` accepts every gradient; ``kardam`` passes it through the Lipschitz and
   frequency filters (:mod:`byzlearn.protocols.kardam`);
4. an accepted gradient is applied as ``theta <- theta - lr_t Lambda(tau) g`` (optionally with
   server momentum); lost coordinates (NaN) are not applied (treated as 0);
5. the worker gets the current model back, accepted or not, and computes again.

A step is one received gradient (accepted or not), so "steps to a target accuracy" counts
gradients, i.e. time, as the paper's slowdown does. Kardam's first step (the *bootstrap*) takes
the first 2f + 1 gradients and applies their coordinate-wise median; a median that would move no
coordinate is not applied, and the next step bootstraps again with every worker heard so far.

The server never knows which workers are Byzantine; it emits an ``update`` event per gradient
(sender, accepted, reason, staleness, reported loss) for observers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field, field_validator

import byzlearn.aggregators as agg
from byzlearn.engines.base import Engine, Message, Node
from byzlearn.protocols.base import (
    STRICT_OPTIONS,
    Events,
    Server,
    ServerProtocol,
    World,
    register,
)
from byzlearn.protocols.kardam import Dampening, KardamFilter, check_summary, dampening
from byzlearn.protocols.workers import WorkerSet, build_workers

__all__ = [
    "AsyncSGDOptions",
    "AsyncSGDProtocol",
    "AsyncServer",
    "KardamOptions",
    "KardamProtocol",
]


_UNANSWERED = 16  # unanswered models remembered per worker (a reply to an older: the last)


class AsyncSGDOptions(BaseModel):
    """Config section ``protocol: {name: async_sgd, ...}``."""

    model_config = STRICT_OPTIONS

    name: Literal["async_sgd"] = "async_sgd"
    dampening: Dampening = Field("none", description="staleness weighting Lambda(tau)")
    alpha: float = Field(0.2, ge=0, description="exp dampening: Lambda = exp(-alpha tau)")
    deadline: float | None = Field(
        None, gt=0, description="simulated seconds to wait for one gradient (then skip)"
    )


class KardamOptions(AsyncSGDOptions):
    """Config section ``protocol: {name: kardam, ...}``: the options of asynchronous SGD
    (dampening ``exp`` by default), and the filters'."""

    name: Literal["kardam"] = "kardam"  # type: ignore[assignment]
    dampening: Dampening = Field("exp", description="staleness weighting Lambda(tau)")
    lipschitz: bool = Field(True, description="the Lipschitz filter")
    frequency: bool = Field(True, description="the frequency filter")
    history: int = Field(25, ge=1, description="coefficients kept per worker")
    summary: float | str = Field(
        0.85, description="a worker's coefficients summarised by this quantile, or their max"
    )
    quantile: float | None = Field(
        None, gt=0, le=1, description="quantile of the workers' summaries (default (n-f)/n)"
    )
    gap: int | None = Field(
        None, ge=1, description="versions between a gradient and its reference (default n)"
    )
    window: int | None = Field(
        None, ge=1, description="frequency filter: accepted gradients per window (default 2f+1)"
    )
    per_window: int | None = Field(
        None, ge=1, description="frequency filter: per worker and window (default max(f, 1))"
    )
    liveness: int | None = Field(
        None, ge=1, description="accept after this many consecutive rejections (reference code)"
    )

    @field_validator("summary", mode="before")
    @classmethod
    def _summary(cls, v: Any) -> float | str:
        # before the union's own parsing, which reports each member ("summary.float: ...")
        return check_summary(v)


class AsyncServer(Server):
    """The server role of asynchronous SGD, with Kardam's filter when ``kardam`` is given."""

    def __init__(
        self,
        node: Node,
        theta: torch.Tensor,
        workers: list[int],
        *,
        lr: Callable[[int], float] = lambda t: 0.1,
        dampening: str = "none",
        alpha: float = 0.2,
        momentum: float = 0.0,
        dampened: bool = False,
        deadline: float | None = None,
        kardam: KardamFilter | None = None,
        events: Events | None = None,
    ) -> None:
        super().__init__(
            node, theta, workers, lr=lr, momentum=momentum, dampened=dampened, events=events
        )
        self.dampening = dampening
        self.alpha = float(alpha)
        self.deadline = deadline
        self.kardam = kardam
        self.steps = 0
        self.started = False
        # worker -> round -> (version, model, time) sent to it in that round, not yet answered
        self.sent: dict[int, dict[int, tuple[int, torch.Tensor, float]]] = {}
        self.slowest = 0.0  # the longest a worker took to answer a model, so far
        self.recheck = 0.0  # no worker is due a model again before (a cache: not saved)
        self.heard: dict[int, torch.Tensor] = {}  # Kardam's bootstrap: worker -> its gradient

    # ------------------------------------------------------------------ messages
    def _send_model(self, worker: int, round: int) -> None:
        sent = self.sent.setdefault(worker, {})
        sent[round] = (self.version, self.theta, self.node.clock)
        if len(sent) > _UNANSWERED:  # lost long ago (see _resend's back-off)
            del sent[min(sent)]
        self.recheck = min(self.recheck, self.node.clock + 2 ** len(sent) * self.slowest)
        self.node.send(
            Message(
                kind="model",
                payload=self.theta,
                dest=worker,
                round=round,
                version=self.version,
                meta={"lr": float(self.lr(max(round, 1)))},
            )
        )

    def _resend(self, t: int, everyone: bool) -> None:
        """Send the current model again to the workers presumed to have lost their gradient (an
        omission): nothing else would ever send them one. ``everyone``: nothing can arrive any
        more (no deadline, nothing came), so every worker is. Otherwise a worker holding k
        unanswered models is once the last is ``2^k`` times the longest answer time seen so far
        old (none before a first answer): a worker merely slower than a deadline, or than the
        others, is left alone."""
        now = self.node.clock
        if not everyone and now < self.recheck:
            return
        self.recheck, later = math.inf, math.inf
        for w in self.workers:
            sent = self.sent.get(w, {})
            if sent and not everyone:
                due = sent[max(sent)][2] + 2 ** len(sent) * self.slowest
                if not self.slowest or now < due:
                    later = min(later, due if self.slowest else now)
                    continue
            self._send_model(w, t)
        self.recheck = min(self.recheck, later)

    def _start(self) -> None:
        for w in self.workers:
            self._send_model(w, 0)
        self.started = True

    def _model_of(self, msg: Message) -> tuple[int, torch.Tensor]:
        """The version and model a gradient was computed on, from the server's own record: the
        model it sent that worker in the reply's round (a worker may hold several after
        :meth:`_resend`, answered in any order), else the last one it sent it."""
        sent = self.sent.get(int(msg.sender), {})  # type: ignore[arg-type]
        if msg.round in sent:
            version, x, time = sent.pop(msg.round)
            self.slowest = max(self.slowest, msg.arrival - time)
            return version, x
        return sent[max(sent)][:2] if sent else (self.version, self.theta)

    # ------------------------------------------------------------------ updates
    def _apply(self, g: torch.Tensor, staleness: int, lr: float) -> float:
        weight = dampening(self.dampening, staleness, self.alpha)
        self.update(weight * g, lr)
        return weight

    def _consider(
        self, msg: Message, lr: float, verdict_override: str | None = None
    ) -> dict[str, Any]:
        """Filter and maybe apply one gradient; return its part of the record."""
        worker = int(msg.sender)  # type: ignore[arg-type]
        version, x = self._model_of(msg)
        staleness = self.version - version
        g = torch.nan_to_num(msg.payload, nan=0.0, posinf=0.0, neginf=0.0)
        info: dict[str, Any] = {"sender": worker, "staleness": staleness}
        if verdict_override is not None:
            accepted, reason = verdict_override == "accepted", verdict_override
        elif self.kardam is not None:
            verdict = self.kardam.check(worker, g, x, version)
            accepted, reason = verdict.accepted, verdict.reason
            finite = lambda v: v if math.isfinite(v) else None  # noqa: E731 - JSON: null
            info.update(lipschitz=finite(verdict.k), threshold=finite(verdict.threshold))
        else:
            accepted, reason = True, "accepted"
        if accepted:
            if self.kardam is not None:
                self.kardam.accept(worker, g, x, version)
            info["weight"] = self._apply(g, staleness, lr)
        info.update(accepted=accepted, reason=reason)
        self.events.emit(
            "update",
            sender=worker,
            accepted=accepted,
            reason=reason,
            staleness=staleness,
            loss=msg.meta.get("loss"),
        )
        return info

    # ------------------------------------------------------------------ one step
    def step(self) -> dict[str, Any]:
        """Handle the next gradient(s) to arrive; return the step's record."""
        if not self.started:
            self._start()
        t = self.steps + 1
        lr = float(self.lr(t))
        record: dict[str, Any] = {"round": t, "lr": lr}
        bootstrap = self.kardam is not None and self.version == 0 and not self.kardam.references
        q = 2 * self.kardam.f + 1 if bootstrap and self.kardam is not None else 1
        msgs = self.node.recv(q, lambda m: m.kind == "gradient", self.deadline)
        record["received"] = len(msgs)
        if not msgs:
            record.update(skipped=True, skip_reason="no gradient arrived")
        elif bootstrap:
            record.update(self._bootstrap(msgs, lr))
        else:
            record.update(self._consider(msgs[0], lr))
        for m in msgs:  # every worker heard gets the current model back
            self._send_model(int(m.sender), t)  # type: ignore[arg-type]
        self._resend(t, everyone=not msgs and self.deadline is None)
        self.steps = t
        record["version"] = self.version
        record["time"] = self.node.clock
        return record

    def _bootstrap(self, msgs: list[Message], lr: float) -> dict[str, Any]:
        """Kardam's first update: the coordinate-wise median of the first 2f + 1 gradients
        (all on the initial model, at most f Byzantine); the gradients themselves are rejected.
        A coordinate lost (non-finite) in some of them has fewer than the 2f + 1 values the
        median needs to be safe: it stays where it is (``unmoved``: their count). When that
        leaves every coordinate where it is, nothing is applied (not ``accepted``: a reference
        at the very model every gradient is computed on never gives a Lipschitz coefficient,
        and the filter would reject everything forever) and the next step bootstraps again,
        with the latest finite value of each coordinate from every worker heard so far (still
        on the initial model, one vector per worker, so at most f of them Byzantine)."""
        assert self.kardam is not None
        for m in msgs:
            self._consider(m, lr, "bootstrap")
            worker, g = int(m.sender), m.payload  # type: ignore[arg-type]
            known = self.heard.get(worker)
            self.heard[worker] = g if known is None else torch.where(torch.isfinite(g), g, known)
        X = torch.stack([self.heard[w] for w in sorted(self.heard)])
        f = agg.largest_f("median", len(X), self.kardam.f) or 0
        short = torch.isfinite(X).sum(0) < 2 * f + 1
        X[:, short] = 0.0
        median = agg.median(X, f=f)
        record = {"bootstrap": True, "heard": len(X), "unmoved": int(short.sum())}
        if not bool(median.any()):
            return {**record, "accepted": False, "reason": "bootstrap"}
        self.heard = {}
        self.kardam.accept(-1, median, self.theta, self.version)
        weight = self._apply(median, 0, lr)
        return {**record, "accepted": True, "reason": "bootstrap", "weight": weight}

    @property
    def steps_done(self) -> int:
        """Gradients received (steps) so far."""
        return self.steps

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "steps": self.steps,
            "started": self.started,
            "sent": {w: {r: list(e) for r, e in s.items()} for w, s in self.sent.items()},
            "slowest": self.slowest,
            "heard": dict(self.heard),
            "kardam": None if self.kardam is None else self.kardam.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.steps = int(state["steps"])
        self.started = bool(state["started"])
        self.sent = {int(w): _unanswered(s) for w, s in state["sent"].items()}
        self.slowest = float(state.get("slowest", 0.0))
        self.recheck = 0.0
        self.heard = {int(w): g for w, g in state.get("heard", {}).items()}
        if self.kardam is not None:
            self.kardam.load_state_dict(state["kardam"])


def _unanswered(saved: Any) -> dict[int, tuple[int, torch.Tensor, float]]:
    """A worker's saved record of unanswered models; a checkpoint written before the records
    were kept by round holds the last model sent only (``[version, model]``)."""
    if isinstance(saved, (list, tuple)):
        return {-1: (int(saved[0]), saved[1], 0.0)}
    return {int(r): (int(v), x, float(time)) for r, (v, x, time) in saved.items()}


class _AsyncBase(ServerProtocol):
    """Shared wiring of the asynchronous protocols: workers, then the server node."""

    server: AsyncServer
    workers: WorkerSet

    @classmethod
    def _kardam(cls, world: World) -> KardamFilter | None:
        return None

    @classmethod
    def build(cls, world: World, engine: Engine) -> _AsyncBase:
        options = world.config.protocol
        if not isinstance(options, AsyncSGDOptions):
            raise TypeError(f"{cls.name} built from the options of {options.name}")
        workers = build_workers(world, engine, same_round=False)
        server = AsyncServer(
            **cls.server_arguments(world, engine, workers),
            dampening=options.dampening,
            alpha=options.alpha,
            deadline=options.deadline,
            kardam=cls._kardam(world),
        )
        return cls(server, workers)


@register
class AsyncSGDProtocol(_AsyncBase):
    """Asynchronous SGD: every gradient applied as it arrives (the non-robust baseline)."""

    name = "async_sgd"
    Options = AsyncSGDOptions


@register
class KardamProtocol(_AsyncBase):
    """Kardam: asynchronous SGD with the Lipschitz and frequency filters and dampening."""

    name = "kardam"
    Options = KardamOptions

    @classmethod
    def _kardam(cls, world: World) -> KardamFilter:
        c = world.config
        o: KardamOptions = c.protocol  # type: ignore[assignment]
        return KardamFilter(
            c.n,
            c.declared_f,
            history=o.history,
            summary=o.summary,
            quantile=o.quantile,
            gap=o.gap,
            window=o.window,
            per_window=o.per_window,
            lipschitz=o.lipschitz,
            frequency=o.frequency,
            liveness=o.liveness,
        )
