"""LiuBei (El Mhamdi, Guerraoui, Guirguis, Rouault, "Fast Machine Learning with Byzantine
Workers and Servers", arXiv 1911.07537): replicated servers, one model pulled per step.

Network synchrony, no trusted component. Servers and workers are all *reactive* nodes; each step
starts with local timers (:meth:`~byzlearn.engines.Engine.alarm`), as rounds of a synchronous
system start at known times. Step t, starting at time T:

1. at T every correct server s sends its model to the workers assigned to it this step, worker
   i being assigned to server ``(i + t) mod servers`` (so each worker gets **one** model);
2. a worker checks the model it got with :class:`~byzlearn.protocols.replicated.ModelFilter`
   (the model-distance filter, bound by what the rule could have moved the model, and the
   Lipschitz filter; a worker that read no model at step 1 bounds it with its gradient at the
   initial model); accepted: it computes its gradient there and sends it to every server;
   rejected: it *pulls* the next server's model (``pull`` -> ``model`` reply) and checks that,
   and so on through the servers;
3. at ``T + timeout`` a worker that has received no model yet (its server is silent or slow)
   pulls the next server's; a pulled server that does not answer times out in turn (at
   ``T + k timeout``, k = 2, 3, ...): the worker pulls the next one;
4. a correct server aggregates the first ``gradient_quorum`` gradients of step t (default
   n - f) with the rule (MDA by default) and updates; a pull that comes after it updated is
   answered with the model of step t it kept. At ``T + deadline`` (default ``T + timeout``;
   a *close* timer) a server short of gradients follows ``on_missing`` (shrink f, or skip);
5. every ``gather_every`` steps (scatter/gather) each correct server sends its model to the
   others and replaces its model by the coordinate-wise median of its own and the first
   ``model_quorum - 1`` others.

Byzantine servers (:class:`ByzantineServers`) get the same timers: they send crafted models to
the workers assigned to them (or nothing: ``silent``), answer pulls with crafted models, and
send crafted models in the gather phase; Byzantine workers send their crafted gradient of a step
to every server, once. A step costs n models and n x servers gradients when no model is
rejected: LiuBei's point against ByzSGD's n x servers models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

import byzlearn.aggregators as agg
from byzlearn.engines.base import Engine, Message
from byzlearn.protocols.adversary import ByzantineNodes
from byzlearn.protocols.base import (
    Events,
    Protocol,
    World,
    accumulate,
    diameter,
    register,
    stack_rows,
)
from byzlearn.protocols.replicated import (
    ModelFilter,
    ReplicatedOptions,
    _median,
    byzantine_servers,
    server_order,
)
from byzlearn.protocols.workers import ComputeWorkers, WorkerSet, build_workers

__all__ = ["ByzantineServers", "LiuBeiOptions", "LiuBeiProtocol", "LiuBeiServers", "LiuBeiWorkers"]


class LiuBeiOptions(ReplicatedOptions):
    """Config section ``protocol: {name: liubei, ...}``."""

    name: Literal["liubei"] = "liubei"
    #: engines it runs on: its servers and workers are reactive nodes started by timers, whose
    #: state the protocol reads in the driver (on Ray they live in actors)
    engines: ClassVar[tuple[str, ...]] = ("local",)
    timeout: float = Field(1.5, gt=0, description="seconds after a step starts to pull another")
    slack: float = Field(1.0, ge=0, description="distance filter slack (ModelFilter)")
    lipschitz_factor: float = Field(3.0, gt=0, description="Lipschitz filter factor")


def assigned(server_index: int, t: int, num_workers: int, num_servers: int) -> list[int]:
    """Indices of the workers whose model server ``server_index`` sends at step t."""
    return [i for i in range(num_workers) if (i + t) % num_servers == server_index]


def _model(dest: int, cause: Message, t: int, payload: torch.Tensor, lr: float) -> Message:
    """A model sent by ``cause.dest`` in reaction to ``cause`` (a timer, a pull): it holds the
    model, so sending takes no compute time."""
    msg = Message(
        kind="model",
        payload=payload,
        dest=dest,
        round=t,
        sender=cause.dest,
        reply_to=cause.seq,
        computed=False,
    )
    msg.meta["lr"] = lr
    return msg


class LiuBeiWorkers:
    """The honest workers (a reactive group's handler): check one model, pull the next on
    rejection or timeout, send the gradient to every server."""

    def __init__(
        self,
        compute: ComputeWorkers,
        servers: Sequence[int],
        model_filter: ModelFilter,
        theta0: torch.Tensor,
    ) -> None:
        self.compute = compute
        self.servers = [int(s) for s in servers]
        self.filter = model_filter
        self.filters = {m: ModelFilter.start(theta0) for m in compute.ids}
        self.answered: dict[int, int] = {}
        self.tried: dict[int, tuple[int, list[int]]] = {}  # member -> (step, servers asked)
        self.waiting: dict[int, tuple[int, int]] = {}  # member -> (step, server pulled, no reply)
        self.counts = {"accepted": 0, "rejected": 0, "pulls": 0, "timeouts": 0, "gave_up": 0}

    def _order(self, member: int, t: int) -> list[int]:
        return server_order(self.servers, self.compute.indices[self.compute.row[member]], t)

    def _asked(self, member: int, t: int) -> list[int]:
        step, asked = self.tried.get(member, (t, []))
        if step != t:
            asked = []
        self.tried[member] = (t, asked)
        return asked

    def _pull_next(
        self, member: int, t: int, cause: Message, computed: bool = False
    ) -> list[Message]:
        """Ask the next server not asked yet, in reaction to ``cause`` (a rejected model, a
        timeout); ``computed``: the check before took a gradient's compute time."""
        asked = self._asked(member, t)
        rest = [s for s in self._order(member, t) if s not in asked]
        if not rest:
            self.counts["gave_up"] += 1
            self.waiting.pop(member, None)
            return []
        asked.append(rest[0])
        self.waiting[member] = (t, rest[0])
        self.counts["pulls"] += 1
        pull = Message(
            kind="pull",
            dest=rest[0],
            round=t,
            sender=member,
            reply_to=cause.seq,
            computed=computed,
        )
        return [pull]

    def waiting_on(self, t: int) -> list[int]:
        """The members still waiting at step t for the model of a server they pulled (after
        the engine settled: that server is silent, or the pull or its answer was lost)."""
        return sorted(m for m, (step, _) in self.waiting.items() if step == t)

    def _missed_start(self, member: int, t: int) -> None:
        """A worker that accepted no model yet has no gradient norm to bound the distance
        filter's radius (zero: only the initial model passes, right at step 1 only); after
        step 1 (it got no model then: silent servers, a lost message) it estimates the norm by
        its gradient at the initial model, which it knows, instead of rejecting every model of
        the run."""
        state = self.filters[member]
        if state["g_norm"] is None and t > 1:
            g, _ = self.compute.gradients([member], state["theta"], t)
            state["g_norm"] = float(g[0].norm())

    def handle(self, inbox: Sequence[Message], observed: Sequence[Message] = ()) -> list[Message]:
        # by member, then arrival: the order of the engine's calls when each message has its
        # own, so that the answers leave in the same order (ties of arrival at the servers
        # break the same way) whether the group is vectorised or not
        out: list[Message] = []
        accepted: list[tuple[int, Message, int]] = []  # and where its gradients go in ``out``
        for m in sorted(inbox, key=lambda m: (m.dest, m.arrival, m.seq)):
            member, t = int(m.dest), m.round  # type: ignore[arg-type]
            if t <= self.answered.get(member, 0):
                continue
            if m.kind == "timeout":
                if not self._asked(member, t):  # no model came: its server timed out
                    self.counts["timeouts"] += 1
                    self._asked(member, t).append(self._order(member, t)[0])
                    out += self._pull_next(member, t, m)
                elif self.waiting.get(member, (None,))[0] == t:  # its pulled server is silent
                    self.counts["timeouts"] += 1
                    out += self._pull_next(member, t, m)
                continue
            if m.kind != "model" or m.sender is None:
                continue
            if self.waiting.get(member) == (t, m.sender):
                del self.waiting[member]
            asked = self._asked(member, t)
            if m.sender not in asked:
                asked.append(int(m.sender))
            lr = float(m.meta.get("lr", 1.0))
            self._missed_start(member, t)
            verdict = self.filter.check(
                self.compute, member, m.payload, self.filters[member], t, lr
            )
            if verdict == "accepted":
                self.counts["accepted"] += 1
                self.answered[member] = t
                accepted.append((member, m, len(out)))
            else:  # the Lipschitz check took a gradient's compute time, the distance none
                self.counts["rejected"] += 1
                out += self._pull_next(member, t, m, computed=verdict == "lipschitz")
        if not accepted:
            return out
        members = [member for member, _, _ in accepted]
        theta = torch.stack([m.payload for _, m, _ in accepted])
        rounds = [m.round for _, m, _ in accepted]
        lrs = [float(m.meta.get("lr", 1.0)) for _, m, _ in accepted]
        vec, loss = self.compute.submit(members, theta, rounds, lrs)
        for i, (member, m, at) in reversed(list(enumerate(accepted))):  # later slots first
            self.filters[member]["g_norm"] = float(vec[i].norm())
            out[at:at] = [
                Message(
                    kind="gradient",
                    payload=vec[i],
                    dest=server,
                    round=m.round,
                    meta={"loss": float(loss[i])},
                    sender=member,
                    reply_to=m.seq,
                )
                for server in self.servers
            ]
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "filters": {m: {**s, "k": list(s["k"])} for m, s in self.filters.items()},
            "answered": dict(self.answered),
            "tried": {m: [t, list(a)] for m, (t, a) in self.tried.items()},
            "waiting": {m: [t, s] for m, (t, s) in self.waiting.items()},
            "counts": dict(self.counts),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.filters = {int(m): dict(s) for m, s in state["filters"].items()}
        self.answered = {int(k): int(v) for k, v in state["answered"].items()}
        self.tried = {int(m): (int(t), [int(x) for x in a]) for m, (t, a) in state["tried"].items()}
        waiting = state.get("waiting", {})  # checkpoints of earlier versions have none
        self.waiting = {int(m): (int(t), int(s)) for m, (t, s) in waiting.items()}
        self.counts = {k: int(v) for k, v in state["counts"].items()}


@dataclass
class _ServerState:
    """One correct server's state: its model, the model of the step it is aggregating (what a
    late pull gets), server momentum, the last aggregate (a centred rule's centre), the step it
    aggregates and the last one done, that step's gradients, the gather phase's models and the
    step's record."""

    theta: torch.Tensor
    momentum: float = 0.0
    served: torch.Tensor | None = None
    buffer: torch.Tensor | None = None
    previous: torch.Tensor | None = None
    round: int = 0
    done: int = 0
    grads: dict[int, Message] = field(default_factory=dict)
    models: list[torch.Tensor] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)
    finished: float = 0.0  # when it last finished a step or a gather (the step's end)

    def __post_init__(self) -> None:
        self.theta = self.theta.clone()
        if self.served is None:
            self.served = self.theta
        if self.buffer is None and self.momentum > 0:
            self.buffer = torch.zeros_like(self.theta)

    def to_state(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["grads"] = {k: m.to_state() for k, m in self.grads.items()}
        return out

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _ServerState:
        grads = {int(k): Message.from_state(m) for k, m in state["grads"].items()}
        return cls(**{**state, "grads": grads, "models": list(state["models"])})


class LiuBeiServers:
    """The correct servers (a reactive group's handler; one state per server)."""

    def __init__(
        self,
        ids: Sequence[int],
        all_servers: Sequence[int],
        workers: Sequence[int],
        theta0: torch.Tensor,
        *,
        rule: str,
        f: int,
        rule_options: dict[str, Any],
        quorum: int,
        model_quorum: int,
        on_missing: Literal["shrink", "skip"],
        lr: Any,
        momentum: float,
        dampened: bool,
        seed: int,
        events: Events,
    ) -> None:
        self.ids = [int(i) for i in ids]
        self.all_servers = [int(i) for i in all_servers]
        self.workers = [int(w) for w in workers]
        self.rule, self.f, self.rule_options = rule, int(f), dict(rule_options)
        self.quorum, self.model_quorum = int(quorum), int(model_quorum)
        self.on_missing = on_missing
        self.lr, self.momentum, self.seed = lr, float(momentum), int(seed)
        self.dampened = bool(dampened)
        self.events = events
        self.state = {s: _ServerState(theta0, momentum) for s in self.ids}

    def theta(self, server: int) -> torch.Tensor:
        return self.state[server].theta

    def handle(self, inbox: Sequence[Message], observed: Sequence[Message] = ()) -> list[Message]:
        out: list[Message] = []
        for m in inbox:  # by server, in arrival order
            server = int(m.dest)  # type: ignore[arg-type]
            st, t = self.state[server], m.round
            if m.kind == "scatter":
                out += self._scatter(m, st, t)
            elif m.kind == "pull":
                model = st.theta if st.done < t else st.served
                out.append(_model(int(m.sender), m, t, model, float(self.lr(t))))  # type: ignore[arg-type]
            elif m.kind == "gradient" and t == st.round and st.done < t:
                st.grads[int(m.sender)] = m  # type: ignore[arg-type]
                if len(st.grads) >= self.quorum:
                    st.finished = max(st.finished, m.arrival)
                    self._aggregate(server, st, t, self.f)
            elif m.kind == "close" and st.done < t:
                st.finished = max(st.finished, m.arrival)
                self._close(server, st, t)
            elif m.kind == "gather":
                out += [
                    Message(
                        kind="server_model",
                        payload=st.theta,
                        dest=o,
                        round=t,
                        sender=server,
                        reply_to=m.seq,
                        computed=False,
                    )
                    for o in self.all_servers
                    if o != server
                ]
                st.models = []
            elif m.kind == "server_model" and len(st.models) < self.model_quorum - 1:
                st.models.append(m.payload)
                if len(st.models) == self.model_quorum - 1:
                    st.theta = _median([st.theta, *st.models])
                    st.finished = max(st.finished, m.arrival)
        return out

    def _scatter(self, alarm: Message, st: _ServerState, t: int) -> list[Message]:
        st.round, st.grads, st.served, st.record = t, {}, st.theta, {}
        k = self.all_servers.index(int(alarm.dest))  # type: ignore[arg-type]
        lr = float(self.lr(t))
        n, m = len(self.workers), len(self.all_servers)
        return [_model(self.workers[i], alarm, t, st.theta, lr) for i in assigned(k, t, n, m)]

    def _close(self, server: int, st: _ServerState, t: int) -> None:
        got = len(st.grads)
        shrunk = agg.largest_f(self.rule, got, self.f, **self.rule_options) if got else None
        if self.on_missing == "shrink" and shrunk is not None:
            st.record["f_used"] = shrunk
            self._aggregate(server, st, t, shrunk)
        else:
            st.done = t
            st.record.update(skipped=True, skip_reason=f"received {got} gradients")

    def _aggregate(self, server: int, st: _ServerState, t: int, f: int) -> None:
        senders = sorted(st.grads)
        replies = [st.grads[s] for s in senders]
        vectors = stack_rows([m.payload for m in replies])
        opts = agg.call_options(
            self.rule, self.rule_options, centre=st.previous, key=(self.seed, "rule", t)
        )
        st.done = t
        record = st.record
        record["received"] = len(replies)
        try:
            result = agg.aggregate(self.rule, vectors, f=f, **opts)
        except ValueError as err:
            record.update(skipped=True, skip_reason=str(err))
            return
        step = result.vector
        st.previous = step.detach().clone()
        if st.buffer is not None:
            st.buffer = accumulate(st.buffer, step, self.momentum, self.dampened)
            step = st.buffer
        st.theta = st.theta - float(self.lr(t)) * step
        if result.kept is not None:
            record["kept"] = [senders[i] for i in result.kept.tolist()]
        record["aggregate_norm"] = float(result.vector.norm())
        if server == self.ids[0]:
            losses = {s: m.meta["loss"] for s, m in st.grads.items() if "loss" in m.meta}
            self.events.emit(
                "aggregated",
                senders=senders,
                vectors=vectors,
                output=result.vector,
                kept=record.get("kept"),
                losses=losses,
            )

    def state_dict(self) -> dict[str, Any]:
        return {str(s): st.to_state() for s, st in self.state.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for s, saved in state.items():
            self.state[int(s)] = _ServerState.from_state(saved)


class ByzantineServers:
    """The Byzantine servers of LiuBei (the adversary's reactive group): crafted models to the
    workers assigned to them, in answer to pulls, and in the gather phase. Crafting a model takes
    no compute time (``instant``): the adversary is never slowed by its own work."""

    instant = True

    def __init__(
        self, coalition: ByzantineNodes, all_servers: Sequence[int], workers: Sequence[int], lr: Any
    ) -> None:
        self.coalition = coalition
        self.ids = coalition.ids
        self.all_servers = [int(i) for i in all_servers]
        self.workers = [int(w) for w in workers]
        self.lr = lr
        self.crafted: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor] | None] = {}

    def _craft(self, t: int, kind: str, observed: Sequence[Message]) -> Any:
        key = (t, kind)
        if key not in self.crafted:
            seen = [o.payload for o in observed if o.kind == kind and o.round == t]
            stage = 0 if kind == "model" else 1
            self.crafted = {k: v for k, v in self.crafted.items() if k[0] >= t}
            self.crafted[key] = self.coalition.craft(seen, t, stage)
        return self.crafted[key]

    def handle(self, inbox: Sequence[Message], observed: Sequence[Message] = ()) -> list[Message]:
        out: list[Message] = []
        for m in inbox:
            me, t = int(m.dest), m.round  # type: ignore[arg-type]
            j = self.ids.index(me)
            if m.kind in ("scatter", "pull"):
                crafted = self._craft(t, "model", observed)
                if crafted is None:
                    continue
                byz, mean = crafted
                lr = float(self.lr(t))
                if m.kind == "pull":
                    r = self.workers.index(int(m.sender))  # type: ignore[arg-type]
                    vec = self.coalition.for_receiver(byz[j], mean, r)
                    out.append(_model(int(m.sender), m, t, vec, lr))  # type: ignore[arg-type]
                    continue
                k = self.all_servers.index(me)
                mine = assigned(k, t, len(self.workers), len(self.all_servers))
                for r, i in enumerate(mine):
                    vec = self.coalition.for_receiver(byz[j], mean, r)
                    out.append(_model(self.workers[i], m, t, vec, lr))
            elif m.kind == "gather":
                crafted = self._craft(t, "server_model", observed)
                if crafted is None:
                    continue
                byz, mean = crafted
                others = [o for o in self.all_servers if o != me]
                for r, dest in enumerate(others):
                    vec = self.coalition.for_receiver(byz[j], mean, r)
                    out.append(
                        Message(
                            kind="server_model",
                            payload=vec,
                            dest=dest,
                            round=t,
                            sender=me,
                            reply_to=m.seq,
                            computed=False,
                        )
                    )
        return out

    def state_dict(self) -> dict[str, Any]:
        return self.coalition.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.coalition.load_state_dict(state)
        self.crafted = {}


@register
class LiuBeiProtocol(Protocol):
    """LiuBei (see the module docstring). Node ids: the n workers, then the servers."""

    name = "liubei"
    Options = LiuBeiOptions

    def __init__(
        self,
        engine: Engine,
        options: LiuBeiOptions,
        workers: WorkerSet,
        handler: LiuBeiWorkers,
        servers: LiuBeiServers,
        byzantine: ByzantineServers,
        server_ids: list[int],
        lr: Any,
    ) -> None:
        self.engine = engine
        self.options = options
        self.workers = workers
        self.handler = handler
        self.servers = servers
        self.byzantine = byzantine
        self.server_ids = server_ids
        self.lr = lr
        self.round = 0
        self.start = 0.0  # simulated time the next step starts

    @classmethod
    def build(cls, world: World, engine: Engine) -> LiuBeiProtocol:
        from byzlearn.experiments.schedules import learning_rate

        c = world.config
        options: LiuBeiOptions = c.protocol  # type: ignore[assignment]
        worker_ids = engine.reserve("worker", c.n)
        server_ids = engine.reserve("server", options.servers)
        theta0 = world.model.flatten()
        model_filter = ModelFilter(slack=options.slack, lipschitz_factor=options.lipschitz_factor)
        holder: list[LiuBeiWorkers] = []

        def handler(compute: ComputeWorkers) -> LiuBeiWorkers:
            holder.append(LiuBeiWorkers(compute, server_ids, model_filter, theta0))
            return holder[0]

        workers = build_workers(world, engine, ids=worker_ids, handler=handler, fanout=server_ids)
        lr = learning_rate(c.optimizer, c.steps)
        bad = set(byzantine_servers(options, c.seed))
        honest = [sid for k, sid in enumerate(server_ids) if k not in bad]
        servers = LiuBeiServers(
            honest,
            server_ids,
            worker_ids,
            theta0,
            rule=c.rule.full_name,
            f=c.declared_f,
            rule_options=c.rule.options,
            quorum=options.gradient_quorum or c.n - c.declared_f,
            model_quorum=options.quorum,
            on_missing=options.on_missing,
            lr=lr,
            momentum=c.optimizer.momentum if c.optimizer.momentum_at == "server" else 0.0,
            dampened=c.optimizer.dampened,
            seed=c.seed,
            events=world.events,
        )
        if honest:
            engine.attach(honest, servers)
        coalition = ByzantineNodes(
            [],
            options.server_attack,
            rule="median",
            seed=c.seed,
            label="servers",
            fallback=theta0,
            ids=[server_ids[k] for k in sorted(bad)],
        )
        byzantine = ByzantineServers(coalition, server_ids, worker_ids, lr)
        if coalition.ids:
            engine.attach(coalition.ids, byzantine, adversary=True)
        return cls(engine, options, workers, holder[0], servers, byzantine, server_ids, lr)

    # ------------------------------------------------------------------ steps
    @property
    def worker_ids(self) -> list[int]:
        return list(self.workers.ids)

    @property
    def steps_done(self) -> int:
        return self.round

    @property
    def time(self) -> float:
        return self.start

    def _now(self) -> float:
        """When the correct servers finished (the step's end in a synchronous system)."""
        done = [self.servers.state[s].finished for s in self.servers.ids]
        return max([*done, self.start])

    def step(self) -> dict[str, Any]:
        t, T, opts, eng = self.round + 1, self.start, self.options, self.engine
        before = dict(self.handler.counts)
        eng.alarm(self.server_ids, T, t, "scatter")
        eng.settle()
        eng.alarm(self.workers.ids, T + opts.timeout, t, "timeout")
        eng.settle()
        for k in range(2, len(self.server_ids) + 1):  # a pulled server that does not answer
            waiting = self.handler.waiting_on(t)  # times out too: pull the next one
            if not waiting:
                break
            eng.alarm(waiting, T + k * opts.timeout, t, "timeout")
            eng.settle()
        if self.servers.ids:
            eng.alarm(self.servers.ids, T + (opts.deadline or opts.timeout), t, "close")
            eng.settle()
        gathered = t % opts.gather_every == 0
        if gathered:
            eng.alarm(self.server_ids, self._now(), t, "gather")
            eng.settle()
        self.round, self.start = t, self._now()
        states = [self.servers.state[s] for s in self.servers.ids]
        record: dict[str, Any] = {"round": t, "lr": float(self.lr(t))}
        if states:
            record.update(states[0].record)
        record["servers_skipped"] = sum(1 for st in states if st.record.get("skipped"))
        if gathered:  # the other models the median used (none where fewer than needed came)
            need = opts.quorum - 1
            used = [len(st.models) if len(st.models) == need else 0 for st in states]
            record["gather_models"] = min(used, default=0)
        record["gathered"] = gathered
        thetas = [st.theta for st in states]
        record["server_diameter"] = diameter(torch.stack(thetas)) if thetas else 0.0
        record.update({f"reads_{k}": v - before.get(k, 0) for k, v in self.handler.counts.items()})
        record["time"] = self.start
        return record

    def models(self) -> dict[str, torch.Tensor]:
        """Every correct server's model (the initial one while there is none)."""
        out = {f"server{s}": self.servers.theta(s) for s in self.servers.ids}
        if not out:
            return {"initial": self.handler.filters[self.handler.compute.ids[0]]["theta"]}
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "start": self.start,
            "workers": self.workers.state_dict(),
            "handler": self.handler.state_dict(),
            "servers": self.servers.state_dict(),
            "byzantine": self.byzantine.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.round, self.start = int(state["round"]), float(state["start"])
        self.workers.load_state_dict(state["workers"])
        self.handler.load_state_dict(state["handler"])
        self.servers.load_state_dict(state["servers"])
        self.byzantine.load_state_dict(state["byzantine"])
