"""Synchronous parameter server (Blanchard et al. 2017; momentum placement of ICLR 2021).

One round ``t`` of the server node:

1. discard the replies of earlier rounds still in flight (counted ``discarded``; they arrived
   too late for their round);
2. multicast ``(theta_t, version, lr_t)`` to every worker (kind ``model``, round ``t``);
3. gather the first ``q`` gradients of round t (default ``q = n``; with a ``deadline``, what
   arrived by then; the rest stay in flight and are counted ``late``);
4. if fewer arrived than the rule needs, apply the failure policy ``on_missing``:
   ``shrink`` (default) aggregates with the largest f' <= f the rule allows on what arrived,
   ``wait`` waits up to ``max_waits`` more deadlines for the missing replies (then skips),
   ``skip`` skips the round; a skipped round leaves the model as is and is recorded
   ``skipped`` with its reason;
5. aggregate once with the rule (:func:`byzlearn.aggregators.aggregate`: output and kept rows
   from the same computation; randomised rules get a generator keyed on (seed, round));
   inputs too damaged to aggregate (too many missing coordinates) also skip the round;
6. update ``theta_{t+1} = theta_t - lr_t u_t`` with ``u_t`` the aggregate, or with server momentum
   ``G_t = mu G_{t-1} + aggregate`` (momentum at the workers lives in the workers).

The server only sees the replies; it never knows which workers are Byzantine. It emits an
``aggregated`` event (senders, inputs, output, kept senders, reported losses) for observers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal, get_args

import torch
from pydantic import BaseModel, Field

import byzlearn.aggregators as agg
from byzlearn.checks import check_choice, check_int, check_real
from byzlearn.engines.base import Engine, Message, Node
from byzlearn.protocols.base import (
    STRICT_OPTIONS,
    Events,
    Server,
    ServerProtocol,
    World,
    register,
    stack_rows,
)
from byzlearn.protocols.workers import WorkerSet, build_workers

__all__ = ["ParameterServer", "ParameterServerOptions", "ParameterServerProtocol"]

OnMissing = Literal["shrink", "skip", "wait"]


class ParameterServerOptions(BaseModel):
    """Config section ``protocol: {name: parameter_server, ...}``."""

    # strict like the rest of the config: ``q: true`` or ``deadline: "2"`` are errors, not 1, 2.0
    model_config = STRICT_OPTIONS

    name: Literal["parameter_server"] = "parameter_server"
    q: int | None = Field(None, ge=1, description="replies gathered per round (default n)")
    deadline: float | None = Field(None, gt=0, description="simulated seconds to wait per round")
    on_missing: OnMissing = Field(
        "shrink", description="too few replies for the rule: shrink f, skip the round, or wait"
    )
    max_waits: int = Field(3, ge=1, description="on_missing=wait: extra deadlines to wait")


class ParameterServer(Server):
    """The server role of the synchronous parameter-server protocol (see the module docstring)."""

    def __init__(
        self,
        node: Node,
        theta: torch.Tensor,
        workers: list[int],
        *,
        rule: str,
        f: int,
        rule_options: dict[str, Any] | None = None,
        lr: Callable[[int], float] = lambda t: 0.1,
        momentum: float = 0.0,
        dampened: bool = False,
        q: int | None = None,
        deadline: float | None = None,
        on_missing: OnMissing = "shrink",
        max_waits: int = 3,
        seed: int = 0,
        events: Events | None = None,
    ) -> None:
        super().__init__(
            node, theta, workers, lr=lr, momentum=momentum, dampened=dampened, events=events
        )
        _check_options(f, q, deadline, on_missing, max_waits)
        self.rule_name = rule
        self.rule_options = dict(rule_options or {})
        self.f = int(f)
        self.q = q
        self.deadline = deadline
        self.on_missing = on_missing
        self.max_waits = int(max_waits)
        self.seed = int(seed)
        self.round = 0
        self.previous: torch.Tensor | None = None  # last aggregate
        self.needed = _fewest_inputs(rule, self.f, self.rule_options)
        if q is not None and q < self.needed:  # (the config refuses it as well)
            raise ValueError(
                f"q={q}: {rule} with f={self.f} needs at least {self.needed} replies a round"
            )

    # ------------------------------------------------------------------ aggregation
    def _options(self, t: int) -> dict[str, Any]:
        # CC starts from the previous aggregate; randomised rules draw from (seed, "rule", t)
        return agg.call_options(
            self.rule_name, self.rule_options, centre=self.previous, key=(self.seed, "rule", t)
        )

    def _gather(self, t: int) -> tuple[list[Message], str | None]:
        """The round's replies and, when too few came, the policy's verdict."""
        q = self.q or len(self.workers)
        replies = self.node.gather(t, q, self.deadline, kind="gradient")
        needed = self.needed  # <= q (checked when built)
        waits = 0
        while len(replies) < needed and self.on_missing == "wait" and waits < self.max_waits:
            if self.deadline is None:
                break  # without a deadline everything that could arrive has arrived
            waits += 1
            replies += self.node.gather(t, q - len(replies), self.deadline, kind="gradient")
        if len(replies) >= needed:
            return replies, None
        return replies, f"received {len(replies)} of the {needed} replies the rule needs"

    # ------------------------------------------------------------------ one round
    def step(self) -> dict[str, Any]:
        """Run one synchronous round; return its record."""
        t = self.round + 1
        self.send_model(t)
        return self.collect(t)

    def send_model(self, t: int) -> None:
        """Start round ``t``: discard what is left of earlier rounds, send the model to every
        worker (kind ``model``, with the round's learning rate)."""
        self.node.discard(lambda m: m.round < t)
        request = Message(kind="model", round=t, version=self.version, payload=self.theta)
        request.meta["lr"] = float(self.lr(t))
        self.node.multicast(request, self.workers)

    def collect(self, t: int) -> dict[str, Any]:
        """End round ``t``: gather the gradients, aggregate them (or apply the failure policy),
        update; return the round's record."""
        lr = float(self.lr(t))
        replies, shortfall = self._gather(t)
        replies.sort(key=lambda m: m.sender if m.sender is not None else -1)
        senders = [int(m.sender) for m in replies if m.sender is not None]
        record: dict[str, Any] = {"round": t, "lr": lr, "received": len(replies)}
        f = self.f
        if shortfall is not None and self.on_missing == "shrink":
            shrunk = agg.largest_f(self.rule_name, len(replies), self.f, **self.rule_options)
            if shrunk is not None and replies:
                f, shortfall = shrunk, None
                record["f_used"] = f
        losses = {
            s: m.meta["loss"] for s, m in zip(senders, replies, strict=True) if "loss" in m.meta
        }
        vectors = stack_rows([m.payload for m in replies]) if replies else None
        result, seconds = None, 0.0
        if shortfall is None and vectors is not None:
            start = time.perf_counter()
            try:
                result = agg.aggregate(self.rule_name, vectors, f=f, **self._options(t))
            except ValueError as err:  # too many missing coordinates to aggregate
                shortfall = str(err)
            seconds = time.perf_counter() - start
        record["agg_seconds"] = seconds
        if result is None:
            record.update(skipped=True, skip_reason=shortfall or "no reply")
        else:
            out = result.vector
            if result.kept is not None:
                record["kept"] = [senders[i] for i in result.kept.tolist()]
            record["aggregate_norm"] = float(torch.linalg.vector_norm(out))
            self.previous = out.detach().clone()
            self.update(out, lr)
        self.round = t
        record["time"] = self.node.clock
        self.events.emit(
            "aggregated",
            senders=senders,
            vectors=vectors,
            output=None if result is None else result.vector,
            kept=record.get("kept"),
            losses=losses,
        )
        return record

    @property
    def steps_done(self) -> int:
        """Rounds completed."""
        return self.round

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "round": self.round, "previous": self.previous}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.round = int(state["round"])
        self.previous = state["previous"]


def _check_options(
    f: int, q: int | None, deadline: float | None, on_missing: str, max_waits: int
) -> None:
    """The server's options checked (one line each), as the config section checks them."""
    check_int(f, "f", 0, type_error=ValueError)
    if q is not None:
        check_int(q, "q", 1, type_error=ValueError)
    if deadline is not None:
        check_real(deadline, "deadline", 0.0, lo_open=True, type_error=ValueError)
    check_choice(on_missing, "on_missing", get_args(OnMissing))
    check_int(max_waits, "max_waits", 1, type_error=ValueError)


def _fewest_inputs(rule: str, f: int, options: dict[str, Any]) -> int:
    """Fewest inputs ``rule`` runs on with ``f`` Byzantine ones.

    A rule that runs on n inputs runs on more (every requirement is ``n >= min_n(f)``), so a
    doubling then a bisection find it in O(log n) checks; a scan from 1 took 12 s for f = 30000
    and gave up, with a wrong message, past 100000 inputs."""

    def runs(n: int) -> bool:
        return agg.largest_f(rule, n, f, **options) == f

    high = 1
    while not runs(high):
        if high > 2**62:
            raise ValueError(f"{rule} cannot run with f={f} on any number of inputs")
        high *= 2
    low = high // 2  # 0, or a number of inputs the rule does not run on
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if runs(middle) else (middle, high)
    return high


@register
class ParameterServerProtocol(ServerProtocol):
    """The synchronous parameter server: n workers (ids first), then the server node."""

    name = "parameter_server"
    Options = ParameterServerOptions
    server: ParameterServer
    workers: WorkerSet

    @classmethod
    def build(cls, world: World, engine: Engine) -> ParameterServerProtocol:
        c = world.config
        options: ParameterServerOptions = c.protocol  # type: ignore[assignment]
        workers = build_workers(world, engine, same_round=True)
        server = ParameterServer(
            **cls.server_arguments(world, engine, workers),
            rule=c.rule.full_name,
            f=c.declared_f,
            rule_options=c.rule.options,
            q=options.q,
            deadline=options.deadline,
            on_missing=options.on_missing,
            max_waits=options.max_waits,
            seed=c.seed,
        )
        return cls(server, workers)
