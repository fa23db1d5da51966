"""The ``ray`` engine: reactive nodes run as Ray actors, messages travel on real (wall-clock) time.

Placement. The protocol's code (its driven nodes: servers, peers it acts as) runs in the
driver, as on the ``local`` engine; every *group* of reactive nodes (the honest workers, the
Byzantine coalition) runs in Ray actors built from the group's handler, which is pickled once
(``ray.put``) and unpickled in each actor. An honest group is spread over ``actors`` actors
(contiguous slices of its members; each actor answers for its members only, and keyed
randomness makes the split change nothing but rounding); the adversary's group is one actor
(a coalition is one entity). Each actor reserves the resources of its role (``resources``:
CPUs, GPUs; default one CPU) and runs torch with as many threads as CPUs it reserved.

Transport. Messages a driven node sends to reactive nodes are buffered and handed out when the
driver next receives or discards (so a multicast reaches each actor in one call): one
``actor.handle`` call per actor and delivery, every distinct tensor payload put in the object
store once per delivery (a broadcast model is put once, not once per receiver). Answers come
back as the calls' results; the driver stamps them (sender, role, seq), applies topology and
faults, and routes them to a driven node's mailbox or, for a reactive destination, to the next
delivery.

Time is the wall clock (seconds since the engine was made; :meth:`RayEngine.load_state_dict`
continues from the checkpoint's time). A driven node's clock is the time of its last send, or
where its last ``recv`` left it; a deadline counts from the moment ``recv`` is called. ``recv``
waits on the calls in flight with ``ray.wait`` until ``q`` matching messages are in the mailbox
or the deadline (real seconds) passes. An answer's arrival is the time the actor finished it;
the clock of a driven node then stands at the q-th arrival, or at the deadline when fewer came.
When nothing more can arrive (no call in flight: the others crashed, were dropped or answered),
``recv`` returns at once, deadline or not, its clock at that moment. Messages that arrive after
a deadline they were waited for are counted ``late`` (when they arrive, not when the deadline
passes: a wall-clock engine cannot know earlier) and stay in the mailbox.

Faults. An actor whose process dies (``ray.kill``, a machine lost, out of memory) is a crashed
node: the messages it was handling and every later message to its members are ``dropped``, its
members are listed in :attr:`RayEngine.crashed` with the time it was found dead, and the
protocol's failure policy applies; a slow actor is a real straggler. The network model's keyed
faults are emulated exactly as on the ``local`` engine: crashes and omissions by round
(messages dropped), lost coordinates (NaN) on the lossy kinds. Simulated compute times, link
delays and stragglers are *not* emulated (the config refuses them for this engine), nor are
delay faults (an error). An exception raised by a handler is a bug, not a crash: it is raised
in the driver.

The adversary. Messages for the adversary's group are held until every honest call in flight
when they were handed out has finished (or ``adversary_wait`` seconds have passed), then the
coalition's actor gets them with its view: for each honest node, the latest message it had
sent by then, as on the ``local`` engine (with honest workers of equal speed, every honest
vector of a synchronous round: the omniscient adversary).

Checkpoints. :meth:`RayEngine.state_dict` first waits for every call in flight to finish (their
answers go to the mailboxes), then saves the mailboxes, the adversary's view, the counters,
the crashed nodes, the clock and each actor's handler state (``handler.state_dict()``, taken in
the actor: the driver's copy of a handler is not updated by the actors). A resumed engine
starts its actors with those states. Runs on wall-clock time are not bit-for-bit repeatable
(arrival order is real); a synchronous protocol without deadlines computes the same as on
``local`` within rounding.
"""

from __future__ import annotations

import logging
import math
import re
import time
import weakref
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
import torch

from byzlearn.allocator import keep_freed_memory, kept
from byzlearn.checks import check_int
from byzlearn.engines.base import (
    STATS,
    Handler,
    Match,
    Message,
    Node,
    check_deadline,
)
from byzlearn.engines.network import NetworkModel
from byzlearn.engines.nodes import NodeTable, node_id
from byzlearn.engines.topology import Complete, Topology

__all__ = ["RayEngine", "Resources"]

# expired waits remembered per driven node, to count the late messages that match them
_EXPIRED_KEPT = 16
# longest single ray.wait (s): the loop re-checks held adversary deliveries at least this often
_POLL = 0.5
# seconds the actors may take to start before the engine gives up
_START = 300.0
# exceptions that mean "the actor's process is gone" (a crash), not "the handler raised"
_DEAD = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)


@dataclass(frozen=True)
class Resources:
    """What one actor of a role reserves: ``cpus`` (also its torch threads) and ``gpus``."""

    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self) -> None:
        for name in ("cpus", "gpus"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"resources: {name} must be finite and >= 0, got {value}")


@dataclass(frozen=True)
class _Slot:
    """A payload shipped to an actor as a top-level argument (index into the call's args)."""

    index: int


class _GroupActor:
    """The actor holding a copy of a group's handler; answers the messages of its members."""

    def __init__(
        self, handler: Handler, threads: int, state: Any = None, keep_memory: bool = False
    ) -> None:
        torch.set_num_threads(max(1, int(threads)))
        if keep_memory:  # the driver's malloc thresholds (byzlearn.allocator)
            keep_freed_memory(environment=False)
        self.handler = handler
        if state is not None:
            self.load(state)

    def handle(
        self, inbox: list[Message], observed: list[Message], *payloads: Any
    ) -> tuple[list[Message], float]:
        for m in (*inbox, *observed):
            if isinstance(m.payload, _Slot):
                m.payload = payloads[m.payload.index]
        replies = list(self.handler.handle(inbox, observed))
        for r in replies:  # a row of a batch would carry the whole batch's storage along
            p = r.payload
            if isinstance(p, torch.Tensor) and p.untyped_storage().nbytes() > p.nbytes:
                r.payload = p.clone()
        return replies, time.time()

    def where(self) -> str:
        return str(ray.get_runtime_context().get_node_id())

    def state(self) -> Any:
        getter = getattr(self.handler, "state_dict", None)
        return getter() if callable(getter) else None

    def load(self, state: Any) -> None:
        setter = getattr(self.handler, "load_state_dict", None)
        if callable(setter) and state is not None:
            setter(state)


_RemoteGroupActor = ray.remote(_GroupActor)


def _plain(text: str) -> str:
    """``text`` without the terminal colour codes Ray puts in its error messages."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _cut(a: int, size: int, parts: int) -> int:
    """Where slice ``a`` of ``parts`` near-equal contiguous slices of ``size`` items starts."""
    return -(-a * size // parts)


@dataclass
class _Group:
    ids: list[int]
    handler: Handler
    adversary: bool
    actors: list[Any] = field(default_factory=list)  # actor handles
    members: list[list[int]] = field(default_factory=list)  # ids handled by each actor


@dataclass
class _Call:
    group: _Group
    actor: int  # index into group.actors
    msgs: list[Message]


@dataclass
class _Held:
    """A delivery to the adversary waiting for the honest calls in flight when it was made."""

    group: _Group
    msgs: list[Message]
    waits_for: set[Any]
    since: float


class RayEngine(NodeTable):
    """Reactive groups in Ray actors, wall-clock time (see the module docstring).

    ``address``: ``None`` starts a local Ray instance (with ``num_cpus`` CPUs, default all)
    unless Ray is already initialised in this process; ``"auto"`` or ``"host:port"`` joins a
    running cluster. ``actors``: actors per honest group (default: as many as the CPUs left by
    the other actors allow, at most one per member). ``resources``: per role.
    ``adversary_wait``: at most this many seconds the adversary waits for the honest calls of
    its delivery (default: until they finish). ``history``: honest messages kept per sender for
    the adversary's view.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        network: NetworkModel | None = None,
        topology: Topology | None = None,
        address: str | None = None,
        num_cpus: int | None = None,
        actors: int | None = None,
        resources: Mapping[str, Resources] | None = None,
        adversary_wait: float | None = None,
        history: int = 2,
    ) -> None:
        self.network = network if network is not None else NetworkModel(seed=seed)
        if address is not None and num_cpus is not None:  # it was silently ignored
            raise ValueError(
                "ray engine: num_cpus sizes the local instance Ray starts; with an address the "
                "cluster's own CPUs count (leave num_cpus out)"
            )
        self.address = address
        self.num_cpus = num_cpus
        self.actors = None if actors is None else check_int(actors, "actors", 1)
        self.resources = dict(resources or {})
        self.adversary_wait = check_deadline(adversary_wait)
        self._init_nodes(topology or Complete(), history)
        self._outbox: list[Message] = []
        self._calls: dict[Any, _Call] = {}
        self._held: list[_Held] = []
        self._expired: dict[int, list[tuple[float, Match]]] = {}
        self._dead: dict[int, float] = {}  # crashed node -> when it was found dead
        self._saved_states: list[list[Any]] | None = None  # handler states to start actors with
        self._started = False
        self._t0 = time.time()

    # ------------------------------------------------------------------ nodes
    def attach(self, ids: Sequence[int], handler: Handler, *, adversary: bool = False) -> None:
        if self._started:
            raise ValueError("ray engine: attach every group before the first message")
        # the adversary is handed out last
        self._register_group(_Group([node_id(i) for i in ids], handler, bool(adversary)))

    def driven(self, id: int, *, adversary: bool = False) -> Node:
        """The handle of node ``id``; ``adversary=True``: a Byzantine node acting on its own
        (its messages are not shown to the adversary as honest ones; it may :meth:`observe`)."""
        id = node_id(id)
        # the handle refers back through a weak proxy: no engine <-> node cycle, so a dropped
        # engine is freed at once and its actors (and their CPUs) with it
        proxy: Any = weakref.proxy(self)
        return self._register_driven(id, adversary, lambda: Node(proxy, id), self._wall())

    def add_node(self, role: str, *, adversary: bool = False) -> Node:
        """Reserve one node playing ``role`` and return its handle."""
        return self.driven(self.reserve(role, 1)[0], adversary=adversary)

    def observe(self, node: int, match: Match | None = None) -> list[Message]:
        """What the Byzantine driven node ``node`` sees: for each honest sender, the latest
        message (satisfying ``match``) it has sent so far (answers of finished calls included);
        the node's clock moves to the latest of their send times."""
        node = node_id(node)
        if node in self._byzantine:  # answers of calls finished by now count as sent
            self._flush()
            self._collect(0.0)
        return self._observed(node, match)

    def compute(self, node: int, round: int) -> float:
        """A driven node's local work (a peer's gradient) ran in the driver on real time:
        nothing to simulate; its clock moves to now."""
        node = node_id(node)
        if node not in self._driven:
            raise ValueError(f"node {node} is not a driven node")
        self._clock[node] = max(self._clock[node], self._wall())
        return self._clock[node]

    @property
    def crashed(self) -> dict[int, float]:
        """Nodes whose actor died, with the time (engine seconds) it was found dead."""
        return dict(self._dead)

    @property
    def stats(self) -> dict[str, int]:
        out = dict(self._stats)
        out["in_flight"] = (
            len(self._outbox)
            + sum(len(c.msgs) for c in self._calls.values())
            + sum(len(h.msgs) for h in self._held)
            + sum(len(box) for box in self._mail.values())
        )
        out["crashed"] = len(self._dead)
        return out

    def actor_of(self, node: int) -> Any:
        """The Ray actor handle running reactive node ``node`` (starts the actors if needed)."""
        self._start()
        node = node_id(node)
        group = self._group_of.get(node)
        if group is None:
            raise ValueError(f"node {node} is not a reactive node")
        for actor, members in zip(group.actors, group.members, strict=True):
            if node in members:
                return actor
        raise AssertionError("unreachable: every member has an actor")

    def placement(self) -> list[tuple[str, list[int], bool]]:
        """One ``(Ray node id, member ids, adversary)`` per actor (starts the actors if needed)."""
        self._start()
        pairs = [
            (a, m, g.adversary)
            for g in self._groups
            for a, m in zip(g.actors, g.members, strict=True)
        ]
        nodes = ray.get([a.where.remote() for a, _, _ in pairs])
        return [(node, list(m), adv) for node, (_, m, adv) in zip(nodes, pairs, strict=True)]

    def close(self) -> None:
        """Kill this engine's actors (Ray itself stays up); later messages to them are lost."""
        for group in self._groups:
            for actor in group.actors:
                ray.kill(actor)

    # ------------------------------------------------------------------ actors
    def _wall(self) -> float:
        return time.time() - self._t0

    def _resources(self, role: str) -> Resources:
        return self.resources.get(role, Resources())

    def _plan(self) -> list[int]:
        """Actors per group (the adversary: one; honest groups: ``actors`` or what is left)."""
        known = set(self._roles.values())
        in_actors = {self._roles[g.ids[0]] for g in self._groups if g.ids}
        unknown = sorted(set(self.resources) - known)
        if unknown:
            raise ValueError(
                f"ray engine: resources for role {unknown[0]!r}, which no node plays "
                f"(roles: {', '.join(sorted(known))})"
            )
        driver_only = sorted(set(self.resources) - in_actors)
        if driver_only:  # its nodes are driven: they run in the driver, no actor reserves
            raise ValueError(
                f"ray engine: resources for role {driver_only[0]!r}, whose nodes run in the "
                f"driver, not in actors (roles in actors: {', '.join(sorted(in_actors))})"
            )
        total = ray.cluster_resources()
        cpus, gpus = float(total.get("CPU", 0.0)), float(total.get("GPU", 0.0))
        fixed = sum(
            self._resources(self._roles[g.ids[0]]).cpus
            for g in self._groups
            if g.adversary and g.ids
        )
        honest = [g for g in self._groups if not g.adversary and g.ids]
        plan = []
        for g in self._groups:
            if not g.ids:
                plan.append(0)
            elif g.adversary:
                plan.append(1)
            elif self.actors is not None:
                plan.append(min(self.actors, len(g.ids)))
            else:
                per_actor = self._resources(self._roles[g.ids[0]]).cpus
                share = (cpus - fixed) / max(len(honest), 1)
                fit = int(share // per_actor) if per_actor > 0 else len(g.ids)
                plan.append(max(1, min(len(g.ids), fit)))
        need_cpu = sum(
            k * self._resources(self._roles[g.ids[0]]).cpus
            for g, k in zip(self._groups, plan, strict=True)
            if k
        )
        need_gpu = sum(
            k * self._resources(self._roles[g.ids[0]]).gpus
            for g, k in zip(self._groups, plan, strict=True)
            if k
        )
        if need_cpu > cpus + 1e-9 or need_gpu > gpus + 1e-9:
            raise ValueError(
                f"ray engine: the actors need {need_cpu:g} CPUs and {need_gpu:g} GPUs, the "
                f"cluster has {cpus:g} and {gpus:g}; lower engine.actors or engine.resources"
            )
        return plan

    def start(self) -> None:
        """Start Ray (if needed) and the groups' actors, and wait until they are ready (done
        by the first delivery otherwise, so that actor start-up never eats into a deadline)."""
        self._start()

    def _start(self) -> None:
        """Start Ray (if needed) and the groups' actors, once; wait until they are ready."""
        if self._started:
            return
        if not ray.is_initialized():
            ray.init(
                # no address: a new local instance, never another cluster found on the machine
                address=self.address or "local",
                num_cpus=self.num_cpus if self.address is None else None,
                include_dashboard=False,
                logging_level=logging.WARNING,
            )
        plan = self._plan()
        saved = self._saved_states
        if saved is not None and [len(s) for s in saved] != plan:
            raise ValueError(
                f"ray engine: the checkpoint has {[len(s) for s in saved]} actors per group, "
                f"this engine would start {plan}; resume with the same engine.actors and cluster"
            )
        for gi, (group, k) in enumerate(zip(self._groups, plan, strict=True)):
            if not k:
                continue
            res = self._resources(self._roles[group.ids[0]])
            handler_ref = ray.put(group.handler)
            for a in range(k):  # k contiguous slices, sizes differing by at most one
                members = group.ids[_cut(a, len(group.ids), k) : _cut(a + 1, len(group.ids), k)]
                state = saved[gi][a] if saved is not None else None
                actor = _RemoteGroupActor.options(num_cpus=res.cpus, num_gpus=res.gpus).remote(
                    handler_ref, max(1, math.ceil(res.cpus)), state, kept()
                )
                group.actors.append(actor)
                group.members.append(members)
        try:
            ray.get([a.where.remote() for g in self._groups for a in g.actors], timeout=_START)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise RuntimeError(
                f"ray engine: the actors did not start within {_START:g} s (a busy cluster, or "
                "resources no node has); nothing was run"
            ) from None
        except _DEAD as err:  # e.g. the handler cannot be unpickled there (a missing module)
            self.close()
            lines = [line.strip() for line in _plain(str(err)).splitlines() if line.strip()]
            raise RuntimeError(
                f"ray engine: an actor failed to start ({lines[-1] if lines else 'it died'}); "
                "nothing was run"
            ) from err
        self._started = True

    # ------------------------------------------------------------------ transport
    def send(self, sender: int, msg: Message) -> None:
        sender = node_id(sender)
        if sender not in self._driven:
            raise ValueError(f"node {sender} is not a driven node; reactive nodes answer")
        self._stamp(msg, sender)
        msg.sent_at = self._wall()
        msg.arrival = msg.sent_at
        self._clock[sender] = max(self._clock[sender], msg.sent_at)
        self._dispatch(msg)

    def _dispatch(self, msg: Message) -> None:
        """Put a stamped message in flight, applying topology and the emulated faults."""
        extra = self._admit(msg)
        if extra is None:
            return
        assert msg.sender is not None and msg.dest is not None
        dest = int(msg.dest)
        if extra > 0:
            raise ValueError("ray engine: delay faults are not emulated (real time only)")
        self._remember(msg)
        msg.payload = self.network.lose_coordinates(
            msg.payload, msg.sender, dest, msg.round, msg.kind
        )
        if dest in self._driven:
            self._deliver_mail(dest, msg)
        elif dest in self._dead:
            self._stats["dropped"] += 1
        else:
            self._outbox.append(msg)

    def _deliver_mail(self, dest: int, msg: Message) -> None:
        for expired_at, match in self._expired.get(dest, ()):
            if msg.arrival > expired_at and msg.seq not in self._late and match(msg):
                self._late.add(msg.seq)
                self._stats["late"] += 1
                break
        self._mail[dest].append(msg)

    def _flush(self) -> None:
        """Hand the buffered messages to the actors: honest groups now, the adversary held."""
        if not self._outbox:
            return
        self._start()
        outbox, self._outbox = self._outbox, []
        puts: dict[int, Any] = {}
        for group in self._groups:
            members = set(group.ids)
            inbox = [m for m in outbox if m.dest in members]
            if not inbox:
                continue
            if group.adversary:
                waits = {r for r, c in self._calls.items() if not c.group.adversary}
                self._held.append(_Held(group, inbox, waits, self._wall()))
                continue
            for a, ids in enumerate(group.members):
                mine = [m for m in inbox if m.dest in set(ids)]
                if mine:
                    self._call(group, a, mine, [], puts)

    def _call(
        self,
        group: _Group,
        actor: int,
        inbox: list[Message],
        observed: list[Message],
        puts: dict[int, Any],
    ) -> None:
        """One ``handle`` call; each distinct tensor payload goes to the object store once."""
        refs: list[Any] = []
        index: dict[int, int] = {}

        def stub(m: Message) -> Message:
            s = m.copy()
            p = m.payload
            if isinstance(p, torch.Tensor):
                key = id(p)
                if key not in puts:
                    puts[key] = ray.put(p)
                    self._stats["object_puts"] += 1
                if key not in index:
                    index[key] = len(refs)
                    refs.append(puts[key])
                s.payload = _Slot(index[key])
            return s

        stubs, seen = [stub(m) for m in inbox], [stub(m) for m in observed]
        ref = group.actors[actor].handle.remote(stubs, seen, *refs)
        self._calls[ref] = _Call(group, actor, inbox)

    def _release_held(self) -> None:
        """Hand the adversary the deliveries whose honest calls are done (or waited enough)."""
        if not self._held:
            return
        now = self._wall()
        still: list[_Held] = []
        for held in self._held:
            held.waits_for &= set(self._calls)
            waited = self.adversary_wait is not None and now - held.since >= self.adversary_wait
            if held.waits_for and not waited:
                still.append(held)
                continue
            if held.group.actors and not all(m.dest in self._dead for m in held.msgs):
                self._call(held.group, 0, held.msgs, self._view(), {})
            else:
                self._stats["dropped"] += len(held.msgs)
        self._held = still

    def _next_release(self) -> float:
        """Seconds until a held delivery's ``adversary_wait`` runs out (inf: none)."""
        if self.adversary_wait is None or not self._held:
            return math.inf
        return max(0.0, min(h.since for h in self._held) + self.adversary_wait - self._wall())

    def _collect(self, timeout: float, *, flush: bool = True) -> None:
        """Take the results of the finished calls (waiting up to ``timeout`` s for one); with
        ``flush``, hand the answers for reactive nodes out at once."""
        self._release_held()
        if not self._calls:
            return
        refs = list(self._calls)
        ready, _ = ray.wait(refs, num_returns=1, timeout=max(0.0, timeout))
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            call = self._calls.pop(ref)
            try:
                replies, finished = ray.get(ref)
            except _DEAD:
                self._crash(call)
                continue
            except ray.exceptions.RayTaskError as err:  # the handler raised: a bug, re-raised
                cause = err.cause
                if isinstance(cause, Exception):  # its own message; Ray's traceback as a note
                    cause.add_note(f"raised in a Ray actor:\n{_plain(str(err))}")
                    raise cause from None
                raise err.as_instanceof_cause() from None
            self._stats["delivered"] += len(call.msgs)
            at = min(max(finished - self._t0, max(m.sent_at for m in call.msgs)), self._wall())
            members = set(call.group.ids)
            for reply in replies:
                if reply.sender not in members:
                    self._stats["impostor"] += 1
                    continue
                sender = int(reply.sender)
                self._busy[sender] = max(self._busy[sender], at)
                self._stamp(reply, sender)
                reply.sent_at = reply.arrival = at
                self._dispatch(reply)
        if flush:
            self._flush()
        self._release_held()

    def _crash(self, call: _Call) -> None:
        """The actor of ``call`` died: its members are crashed, its messages dropped."""
        self._stats["dropped"] += len(call.msgs)
        now = self._wall()
        for node in call.group.members[call.actor]:
            self._dead.setdefault(node, now)
        dead = set(call.group.members[call.actor])
        kept = [m for m in self._outbox if m.dest not in dead]
        self._stats["dropped"] += len(self._outbox) - len(kept)
        self._outbox = kept

    def _busy_elsewhere(self) -> bool:
        return bool(self._calls or self._held or self._outbox)

    # ------------------------------------------------------------------ driven nodes
    def recv(
        self,
        dest: int,
        q: int = 1,
        match: Match | None = None,
        deadline: float | None = None,
    ) -> list[Message]:
        dest, q, deadline = self._recv_arguments(dest, q, deadline)
        if self._outbox:  # actor start-up (the first delivery) never eats into a deadline
            self._start()
        start = self._wall()
        limit = start + deadline if deadline is not None else math.inf
        self._flush()
        while True:
            self._collect(0.0)
            box = self._mail[dest]
            candidates = sorted(
                (m for m in box if match is None or match(m)), key=lambda m: (m.arrival, m.seq)
            )
            in_time = [m for m in candidates if m.arrival <= limit]
            now = self._wall()
            if len(in_time) >= q:
                taken = in_time[:q]
                if taken:
                    self._clock[dest] = max(self._clock[dest], taken[-1].arrival)
                break
            if now >= limit:  # too few in time: the clock stands at the deadline
                taken = in_time
                self._clock[dest] = limit
                expired = self._expired.setdefault(dest, [])
                expired.append((limit, match or (lambda m: True)))
                del expired[:-_EXPIRED_KEPT]
                break
            if not self._busy_elsewhere():  # nothing more can arrive: no need to wait
                taken = in_time
                self._clock[dest] = max(self._clock[dest], now)
                break
            self._collect(min(limit - now, self._next_release(), _POLL))
        return self._take(dest, taken)

    def discard(self, dest: int, match: Match) -> int:
        dest = self._driven_id(dest)
        # no delivery here: the buffered messages cannot have been answered yet, and handing
        # them out now would split a delivery the protocol is still making (several servers
        # each discarding, then multicasting: the adversary would get each server's part
        # alone, before the honest workers have a quorum, and stay silent)
        self._collect(0.0, flush=False)
        return self._discard(dest, match)

    def drain(self) -> None:
        """Wait until no call is in flight (answers go to the mailboxes)."""
        self._flush()
        while self._busy_elsewhere():
            self._collect(min(self._next_release(), _POLL))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        self.drain()
        handlers: list[list[Any]] = []
        if self._started:
            for group in self._groups:
                states: list[Any] = []
                for actor, members in zip(group.actors, group.members, strict=True):
                    if all(i in self._dead for i in members):
                        states.append(None)
                        continue
                    try:
                        states.append(ray.get(actor.state.remote()))
                    except _DEAD:
                        states.append(None)
                handlers.append(states)
        return {
            "clock": dict(self._clock),
            "busy": dict(self._busy),
            "now": self._wall(),
            "mail": {i: [m.to_state() for m in box] for i, box in self._mail.items()},
            "seen": {i: [m.to_state() for m in kept] for i, kept in self._seen.items()},
            "late": sorted(self._late),
            "seq": self._seq,
            "stats": dict(self._stats),
            "dead": {i: t for i, t in self._dead.items()},
            "handlers": handlers if self._started else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._t0 = time.time() - float(state["now"])
        for i, t in state["clock"].items():
            self._clock[int(i)] = float(t)
        for i, t in state["busy"].items():
            self._busy[int(i)] = float(t)
        self._mail = {
            int(i): [Message.from_state(m) for m in box] for i, box in state["mail"].items()
        }
        for i in self._driven:
            self._mail.setdefault(i, [])
        self._seen = {int(i): [Message.from_state(m) for m in k] for i, k in state["seen"].items()}
        self._late = {int(s) for s in state["late"]}
        self._seq = int(state["seq"])
        self._stats = Counter({k: 0 for k in STATS})
        self._stats.update({k: int(v) for k, v in state["stats"].items()})
        self._dead = {int(i): float(t) for i, t in state["dead"].items()}
        handlers = state.get("handlers")
        if handlers is None:
            return
        if self._started:  # actors already running: give them their states
            for group, states in zip(self._groups, handlers, strict=True):
                for actor, s in zip(group.actors, states, strict=True):
                    if s is not None:
                        ray.get(actor.load.remote(s))
        else:
            self._saved_states = handlers
