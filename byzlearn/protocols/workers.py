"""Worker roles shared by the parameter-server protocols (synchronous and asynchronous).

- :class:`ComputeWorkers`: workers that compute on their data: honest workers, and Byzantine
  workers doing data poisoning (honest computation on poisoned labels). Each model message is
  answered with one vector: sample a minibatch, run ``local_steps`` SGD steps (1 = plain
  gradient), add the l2 term, clip, apply worker momentum (m = mu*m + g, ICLR 2021), reply.
  One handler call may carry several messages per worker, each with its own model: they are
  answered in arrival order per worker, and each "layer" (the k-th message of every worker) is
  computed in one batched forward/backward.
- :class:`ByzantineWorkers`: the omniscient coalition, the engine's adversary. It observes the
  honest vectors sent so far and answers with the configured attack (rule-aware attacks are told
  the rule and its options). Attack state that lives across steps (mimic's running estimate) is
  kept here, so checkpoints carry it.

Randomness is keyed (:mod:`byzlearn.keyed`): worker i's minibatch for a message of round t is
drawn from ``(seed, "batch", i, t, k)`` (k the local step), the attack of round t from
``(seed, "attack", t)``; so the vectorised group, the per-worker loop and any other placement
compute the same vectors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from byzlearn import keyed
from byzlearn.checks import check_int, check_real
from byzlearn.engines.base import Engine, Handler, Message
from byzlearn.engines.functional import FlatModel
from byzlearn.protocols.base import accumulate, check_momentum, stack_rows

if TYPE_CHECKING:
    from byzlearn.protocols.base import World

__all__ = ["ByzantineWorkers", "ComputeWorkers", "WorkerSet", "build_workers", "computing_workers"]

# Rounds whose minibatches are drawn together (see ComputeWorkers._round_indices).
_ROUNDS_PER_DRAW = 32


class ComputeWorkers:
    """Workers that compute (possibly poisoned) stochastic gradients on their partitions.

    ``ids`` are node ids, ``indices`` the workers' indices (``0..n-1``) that key their
    randomness; ``labels`` one label vector for all or one per worker; ``parts`` one index array
    (into the training set) per worker.
    """

    def __init__(
        self,
        ids: Sequence[int],
        indices: Sequence[int],
        model: FlatModel,
        x: torch.Tensor,
        labels: torch.Tensor | Sequence[torch.Tensor],
        parts: Sequence[np.ndarray],
        *,
        batch_size: int = 32,
        seed: int = 0,
        local_steps: int = 1,
        momentum: float = 0.0,
        dampened: bool = False,
        weight_decay: float = 0.0,
        clip: float | None = None,
    ) -> None:
        self.ids = [int(i) for i in ids]
        self.indices = [int(i) for i in indices]
        if len(self.indices) != len(self.ids):
            raise ValueError("one worker index per node id")
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
        if h and int(self.sizes.min()) < 1:
            raise ValueError("every worker needs at least one sample")
        self.offsets = torch.cumsum(self.sizes, 0) - self.sizes
        self.flat_idx = torch.from_numpy(
            np.concatenate(parts).astype(np.int64) if h else np.zeros(0, np.int64)
        )
        self.batch_size = check_int(batch_size, "batch_size", 1, type_error=ValueError)
        self.local_steps = check_int(local_steps, "local_steps", 1, type_error=ValueError)
        self.momentum = check_momentum(momentum)
        self.dampened = bool(dampened)
        self.weight_decay = check_real(weight_decay, "weight_decay", 0.0, type_error=ValueError)
        self.clip = (  # a norm: 0 would zero every gradient, a negative one flip it
            None
            if clip is None
            else check_real(clip, "clip", 0.0, lo_open=True, type_error=ValueError)
        )
        self.seed = int(seed)
        dtype = model.flatten().dtype  # the momentum in the model's precision (float64 too)
        self.m = torch.zeros(h, model.dim, dtype=dtype) if self.momentum > 0 else None
        self._batches: dict[int, torch.Tensor] = {}  # block of rounds -> their sample indices
        worker_parts = np.array(self.indices, dtype=np.uint64)
        self._states = keyed.fold(keyed.key_state((self.seed, "batch"), h), worker_parts)

    # ------------------------------------------------------------------ data
    def indices_for(self, rows: Sequence[int], rounds: Sequence[int]) -> torch.Tensor:
        """``(local_steps, len(rows), b)`` sample indices: worker ``rows[j]`` at ``rounds[j]``.

        The draws of a round are made for all members at once and kept for the next calls of
        that round (the per-worker loop asks one member at a time); they are keyed, so this
        changes nothing but the cost. For every member in order (the vectorised group) the
        result is the kept draws themselves: read them, never write to them.
        """
        rounds = [int(t) for t in rounds]
        if len(set(rounds)) == 1:  # one round (a synchronous protocol): one gather
            block = self._round_indices(rounds[0])
            rows = list(rows)
            if rows == list(range(block.shape[1])):  # every member in order: the block itself
                return block
            return block[:, torch.as_tensor(rows)]
        columns = [self._round_indices(t)[:, r] for r, t in zip(rows, rounds, strict=True)]
        return torch.stack(columns, dim=1)

    def _round_indices(self, t: int) -> torch.Tensor:
        """``(local_steps, h, b)`` sample indices of every member for round ``t``.

        Drawn for a block of ``_ROUNDS_PER_DRAW`` consecutive rounds at once (one vectorised
        pass instead of a dozen small operations per round); the draws are keyed per (worker,
        round, local step), so the block size changes nothing but the cost.
        """
        block = t // _ROUNDS_PER_DRAW
        cached = self._batches.get(block)
        if cached is None:
            h, steps, b = len(self.ids), self.local_steps, self.batch_size
            rounds = np.arange(block * _ROUNDS_PER_DRAW, (block + 1) * _ROUNDS_PER_DRAW)
            at = keyed.fold(np.repeat(self._states[None, :], len(rounds), 0), rounds[:, None])
            states = np.stack([keyed.fold(at, k) for k in range(steps)], axis=1)  # (R, s, h)
            u = torch.from_numpy(keyed.uniform_states(states.reshape(-1), b))
            u = u.reshape(len(rounds), steps, h, b)
            sizes = self.sizes[None, None, :, None]
            pos = (u * sizes).long().clamp_max(sizes - 1)
            cached = self.flat_idx[self.offsets[None, None, :, None] + pos]
            self._batches[block] = cached
            while len(self._batches) > 2:  # the blocks still being answered
                del self._batches[next(iter(self._batches))]
        return cached[t % _ROUNDS_PER_DRAW]

    # ------------------------------------------------------------------ compute
    def _grads(
        self, theta: torch.Tensor, rows: list[int], idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients of members ``rows`` at ``theta`` ((d,) shared or (h, d)) on indices idx."""
        # gathers by index_select (the values of advanced indexing, at a third of its cost)
        flat = idx.reshape(-1)
        x = self.x.index_select(0, flat).view(*idx.shape, *self.x.shape[1:])
        if self.labels.stride(0) == 0:  # one label vector seen by every worker
            y = self.labels[0].index_select(0, flat).view(idx.shape)
        else:
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
        """Answer each model message with the member's submitted vector (a ``gradient``)."""
        queues: dict[int, list[Message]] = {}
        for m in inbox:
            assert m.dest is not None
            queues.setdefault(m.dest, []).append(m)
        replies: list[Message] = []
        depth = max((len(q) for q in queues.values()), default=0)
        for k in range(depth):  # the k-th message of every member, in one batched call
            layer = [q[k] for q in queues.values() if len(q) > k]
            replies.extend(self._answer(layer))
        return replies

    def _answer(self, msgs: list[Message]) -> list[Message]:
        nodes = [int(m.dest) for m in msgs]  # type: ignore[arg-type]
        shared = all(m.payload is msgs[0].payload for m in msgs)
        theta = msgs[0].payload if shared else torch.stack([m.payload for m in msgs])
        lrs = [float(m.meta.get("lr", 1.0)) for m in msgs]
        vec, loss = self.submit(nodes, theta, [m.round for m in msgs], lrs)
        losses = loss.tolist()  # one conversion, not one per member
        return [
            m.reply(row, kind="gradient", loss=value)
            for m, row, value in zip(msgs, vec.unbind(0), losses, strict=True)
        ]

    def gradients(
        self, nodes: Sequence[int], theta: torch.Tensor, t: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Plain stochastic gradients (l2 term and clipping, no momentum, no local steps) of
        members ``nodes`` at ``theta`` on their minibatches of round ``t``: what a worker uses
        to check a model, leaving its momentum untouched."""
        rows = [self.row[int(i)] for i in nodes]
        return self._grads(theta, rows, self.indices_for(rows, [t] * len(rows))[0])

    def submit(
        self,
        nodes: Sequence[int],
        theta: torch.Tensor,
        rounds: Sequence[int],
        lrs: Sequence[float] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The vectors members ``nodes`` (node ids, each at most once) submit at ``rounds``,
        from ``theta`` ((d,) shared or one row per member): the stochastic gradient (or the
        local-steps displacement divided by the learning rate ``lrs``), clipped, through worker
        momentum; and their losses. One batched forward/backward per local step."""
        rows = [self.row[int(i)] for i in nodes]
        idx = self.indices_for(rows, rounds)
        if self.local_steps == 1:
            vec, loss = self._grads(theta, rows, idx[0])
        else:
            lr = torch.tensor(list(lrs) if lrs is not None else [1.0] * len(rows))[:, None]
            local = (theta.expand(len(rows), -1) if theta.dim() == 1 else theta).clone()
            # the displacement divided by lr is the sum of the local gradients: summed as they
            # come, not (start - end) / lr, which loses them when lr * g is below the model's
            # float32 resolution and is 0 / 0 when a tiny lr rounds to 0 in float32
            vec = torch.zeros_like(local)
            for k in range(self.local_steps):
                g, loss = self._grads(local, rows, idx[k])
                local = local - lr * g
                vec = vec + g
        if self.m is not None:
            r = torch.tensor(rows)
            self.m[r] = accumulate(self.m[r], vec, self.momentum, self.dampened)
            vec = self.m[r].clone()
        return vec, loss

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"m": self.m}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.m = state["m"]


class ByzantineWorkers:
    """The omniscient Byzantine coalition running a gradient-space attack.

    For the messages it must answer, it takes the honest ``gradient`` messages it observed
    (with ``same_round=True``, those of the same round: a synchronous protocol), and all f
    members answer with ``attack(honest, f, rule=..., ...)``. It sees what honest workers had
    sent by the time its answers leave: with equal compute times (the default) that is every
    honest vector of the round, the omniscient adversary of the literature; with random compute
    times, those sent earlier. When what it saw is not enough for its attack (no honest vector,
    or fewer than the attack needs, e.g. two for ALIE's standard deviation) it stays silent for
    that round (counted in ``silent``).
    """

    def __init__(
        self,
        ids: Sequence[int],
        attack: Callable[..., torch.Tensor],
        *,
        rule: str | Callable[..., torch.Tensor],
        rule_options: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        identical: bool | None = None,
        seed: int = 0,
        same_round: bool = True,
        fanout: Sequence[int] | None = None,
    ) -> None:
        self.ids = [int(i) for i in ids]
        self.attack = attack
        # with fanout: every member sends its vector of a round to each of these nodes, once,
        # whatever message (a model, a timer) started its round
        self.fanout = None if fanout is None else [int(i) for i in fanout]
        self.answered: dict[int, int] = {}
        self.rule = rule
        self.rule_options = dict(rule_options or {})
        self.identical = identical
        self.seed = int(seed)
        self.same_round = same_round
        # running attack state (mimic's warm-up estimate), declared on the attack's spec
        spec = getattr(attack, "spec", None)
        # a seeded generator per round for the attacks that draw (a registered attack says
        # whether it does; a plain callable gets one); seeding one costs about 20 us
        self.randomized = bool(getattr(spec, "randomized", True))
        given: dict[str, Any] = dict(options or {})
        self.state: Any = None
        self.options: dict[str, Any] = given
        if spec is not None:
            self.options, self.state = spec.start(given)
        self.silent = 0  # rounds in which what it saw was not enough for its attack

    def handle(self, inbox: Sequence[Message], observed: Sequence[Message] = ()) -> list[Message]:
        """Attack: one crafted vector per message to answer, from the observed honest ones."""
        replies: list[Message] = []
        if self.fanout is not None:  # answer each (member, round) once, to every server
            inbox = [m for m in inbox if m.round > self.answered.get(int(m.dest), 0)]  # type: ignore[arg-type]
            firsts: dict[tuple[int, int], Message] = {}
            for m in inbox:
                firsts.setdefault((int(m.dest), m.round), m)  # type: ignore[arg-type]
            inbox = list(firsts.values())
        for rnd in sorted({m.round for m in inbox}):
            msgs = [m for m in inbox if m.round == rnd]
            honest = [
                o.payload
                for o in observed
                if o.kind == "gradient" and (not self.same_round or o.round == rnd)
            ]
            if not honest:
                self.silent += 1
                continue
            H = stack_rows(honest)
            extra: dict[str, Any] = {}
            if self.state is not None:
                self.state = self.state.observe(H)
                extra["state"] = self.state
            members = sorted({int(m.dest) for m in msgs if m.dest is not None})
            try:
                byz = self.attack(
                    H,
                    f=len(members),
                    rule=self.rule,
                    rule_options=self.rule_options,
                    generator=(
                        keyed.generator((self.seed, "attack", rnd)) if self.randomized else None
                    ),
                    identical=self.identical,
                    **self.options,
                    **extra,
                )
            except ValueError:  # too little observed for this attack (options are checked
                self.silent += 1  # when the config is parsed)
                continue
            row = {member: i for i, member in enumerate(members)}
            if self.fanout is not None:
                for m in msgs:
                    member = int(m.dest)  # type: ignore[arg-type]
                    self.answered[member] = rnd
                    vec = byz[row[member]].to(H.dtype)
                    replies.extend(
                        Message(
                            kind="gradient",
                            payload=vec,
                            dest=dest,
                            round=rnd,
                            sender=member,
                            reply_to=m.seq,
                        )
                        for dest in self.fanout
                    )
                continue
            # one crafted vector per member (a member asked by several servers answers each
            # with its own vector)
            replies.extend(
                m.reply(byz[row[int(m.dest)]].to(H.dtype), kind="gradient")  # type: ignore[arg-type]
                for m in msgs
            )
        return replies

    def state_dict(self) -> dict[str, Any]:
        fields = None
        if self.state is not None:
            fields = {f.name: getattr(self.state, f.name) for f in dataclasses.fields(self.state)}
        return {"attack_state": fields, "silent": self.silent, "answered": dict(self.answered)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("attack_state")
        if saved is not None and self.state is not None:
            self.state = type(self.state)(**saved)
        self.silent = int(state.get("silent", 0))
        self.answered = {int(k): int(v) for k, v in state.get("answered", {}).items()}


@dataclass
class WorkerSet:
    """The workers of a parameter-server protocol: node ids by worker index, their groups."""

    ids: list[int]  # ids[i] is worker i's node id
    compute: ComputeWorkers
    coalition: ByzantineWorkers | None

    def state_dict(self) -> dict[str, Any]:
        return {
            "compute": self.compute.state_dict(),
            "coalition": None if self.coalition is None else self.coalition.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.compute.load_state_dict(state["compute"])
        if self.coalition is not None:
            self.coalition.load_state_dict(state["coalition"])


def build_workers(
    world: World,
    engine: Engine,
    *,
    same_round: bool = True,
    ids: Sequence[int] | None = None,
    handler: Callable[[ComputeWorkers], Handler] | None = None,
    fanout: Sequence[int] | None = None,
) -> WorkerSet:
    """Reserve the config's n workers on ``engine`` (or use the reserved ``ids``) and attach
    their behaviours.

    Honest workers (and Byzantine ones doing data poisoning) compute; they are attached as
    ``handler(compute)`` when given (a protocol's own worker logic around the computation),
    else as the :class:`ComputeWorkers` themselves. With a gradient attack the Byzantine
    workers are the engine's adversary (with ``fanout``, each sends its vector of a round to
    every one of those nodes). Seeds derive from ``config.seed``.
    """
    import byzlearn.attacks as atk

    c = world.config
    ids = list(ids) if ids is not None else engine.reserve("worker", c.n)
    byz = set(world.byzantine)
    gradient_attack = c.attack.name != "none" and bool(byz)
    opt = c.optimizer
    compute = computing_workers(world, ids, opt.momentum if opt.momentum_at == "worker" else 0.0)
    engine.attach(compute.ids, compute if handler is None else handler(compute))
    coalition = None
    if gradient_attack:
        coalition = ByzantineWorkers(
            [ids[i] for i in sorted(byz)],
            atk.get(c.attack.name),
            rule=c.rule.full_name,
            rule_options=c.rule.options,
            options=c.attack.options,
            identical=c.attack.identical,
            seed=c.seed,
            same_round=same_round,
            fanout=fanout,
        )
        engine.attach(coalition.ids, coalition, adversary=True)
    return WorkerSet(ids, compute, coalition)


def computing_workers(world: World, ids: Sequence[int], momentum: float) -> ComputeWorkers:
    """The config's computing workers (node ``ids[i]`` for worker i): every honest one, and the
    Byzantine ones when they poison data (or have no attack) rather than run an attack; with
    ``momentum`` at the workers, and the config's batch, local steps, l2 and clipping."""
    c = world.config
    byz = set(world.byzantine)
    gradient_attack = c.attack.name != "none" and bool(byz)
    computing = [i for i in range(c.n) if not (gradient_attack and i in byz)]
    labels: torch.Tensor | list[torch.Tensor] = world.data.y_train
    if c.poisoning.kind != "none" and byz:
        poisoned = poisoned_labels(world)
        labels = [poisoned if i in byz else world.data.y_train for i in computing]
    return ComputeWorkers(
        [ids[i] for i in computing],
        computing,
        world.model,
        world.data.x_train,
        labels,
        [world.parts[i] for i in computing],
        batch_size=c.batch_size,
        seed=c.seed,
        local_steps=c.local_steps,
        momentum=momentum,
        dampened=c.optimizer.dampened,
        weight_decay=c.optimizer.weight_decay,
        clip=c.optimizer.clip,
    )


def poisoned_labels(world: World) -> torch.Tensor:
    """The training labels as the poisoning Byzantine workers see them."""
    import byzlearn.attacks as atk

    p, data = world.config.poisoning, world.data
    if p.kind == "flip_labels":
        return atk.flip_labels(data.y_train, data.num_classes, p.mapping)
    return atk.targeted_flip(data.y_train, p.source, p.target)
