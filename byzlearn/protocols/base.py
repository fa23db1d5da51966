"""The protocol interface, its registry, and the event hub observers listen to.

A protocol describes roles (server, workers, peers) and the messages they exchange, written
against :class:`~byzlearn.engines.Engine` only; it never imports Ray. It is registered by name
in :data:`PROTOCOLS` with its options (a pydantic model whose ``name`` field is the
discriminator of the config's ``protocol`` section) and built by
:meth:`Protocol.build` from a :class:`World` (data, model, partitions, Byzantine workers) and an
engine. The driver (:class:`~byzlearn.experiments.trainer.Trainer`) then only calls
:meth:`Protocol.step`, evaluates :meth:`Protocol.models`, and checkpoints
:meth:`Protocol.state_dict`.

Roles never learn which nodes are Byzantine. What only ground truth can tell (how many
Byzantine inputs a rule kept, the honest training loss) is computed by *observers*: roles
:meth:`Events.emit` what they did, and observers, which do know, add fields to the step's record.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from byzlearn.aggregators import _memory
from byzlearn.aggregators._gram import sqdist_from_gram
from byzlearn.checks import check_real
from byzlearn.registry import Registry

if TYPE_CHECKING:
    from byzlearn.data import ArrayDataset
    from byzlearn.engines import Engine, FlatModel, Node
    from byzlearn.experiments.config import Config
    from byzlearn.protocols.workers import WorkerSet

__all__ = [
    "PROTOCOLS",
    "Events",
    "Observer",
    "Protocol",
    "Server",
    "ServerProtocol",
    "World",
    "accumulate",
    "check_momentum",
    "diameter",
    "stack_rows",
]

#: The pydantic configuration of the protocols' option models and of the config's sections:
#: unknown keys refused, assignments validated, no coercion, NaN and infinities refused.
STRICT_OPTIONS = ConfigDict(
    extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False
)


class Observer:
    """Listens to protocol events and adds fields to step records (base: does nothing)."""

    def on_event(self, name: str, data: dict[str, Any]) -> None:
        """Called for every event a role emits during a step."""

    def collect(self, record: dict[str, Any]) -> None:
        """Add this observer's fields to the record of the step that just ended."""

    def summary(self) -> dict[str, Any]:
        """Fields for the run's summary."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Cumulative state to checkpoint (plain data and tensors only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


class Events:
    """The hub roles emit events to; observers subscribe."""

    def __init__(self, observers: Iterable[Observer] = ()) -> None:
        self.observers: list[Observer] = list(observers)

    def subscribe(self, observer: Observer) -> None:
        """Add an observer."""
        self.observers.append(observer)

    def emit(self, name: str, **data: Any) -> None:
        """Tell every observer that ``name`` happened, with ``data``."""
        for observer in self.observers:
            observer.on_event(name, data)


@dataclass
class World:
    """What a protocol is built from, besides its engine.

    ``byzantine`` lists the indices (into the workers, ``0..n-1``) of the Byzantine workers: the
    protocol uses it only to give those workers the adversary's behaviour, never to its roles.
    """

    config: Config
    data: ArrayDataset
    model: FlatModel
    parts: list[np.ndarray]
    byzantine: list[int]
    events: Events = field(default_factory=Events)

    @property
    def honest(self) -> list[int]:
        """Indices of the honest workers."""
        byz = set(self.byzantine)
        return [i for i in range(self.config.n) if i not in byz]


class Protocol(ABC):
    """A distributed training protocol (see the module docstring)."""

    #: the registered name (also the ``name`` of the options model)
    name: ClassVar[str]
    #: the pydantic model of the protocol's config section
    Options: ClassVar[type[BaseModel]]

    @classmethod
    @abstractmethod
    def build(cls, world: World, engine: Engine) -> Protocol:
        """Register the protocol's nodes on ``engine`` and return the protocol."""

    @property
    @abstractmethod
    def steps_done(self) -> int:
        """Steps completed so far (rounds of a synchronous protocol, updates of an async one)."""

    @abstractmethod
    def step(self) -> dict[str, Any]:
        """Run one step; return its record (``step``, ``time`` and the protocol's fields)."""

    @property
    @abstractmethod
    def time(self) -> float:
        """Simulated (or wall-clock) time of the protocol's reference node."""

    def run_until(self, t: float, max_steps: int | None = None) -> list[dict[str, Any]]:
        """Step until :attr:`time` reaches ``t`` (or ``max_steps`` steps); return the records."""
        records: list[dict[str, Any]] = []
        while self.time < t and (max_steps is None or len(records) < max_steps):
            records.append(self.step())
        return records

    @abstractmethod
    def models(self) -> dict[str, torch.Tensor]:
        """The flat models to evaluate, by node label (the first is the reference model)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit for bit (plain data and tensors only)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


def check_momentum(mu: Any) -> float:
    """``mu`` as a float, checked: a momentum is a number in [0, 1) (NaN used to mean no
    momentum, a negative one too, silently; 1 or more diverges)."""
    return check_real(mu, "momentum", 0.0, 1.0, hi_open=True, type_error=ValueError)


def accumulate(
    buffer: torch.Tensor, g: torch.Tensor, mu: float, dampened: bool = False
) -> torch.Tensor:
    """One momentum step: heavy ball ``mu m + g``, or dampened ``mu m + (1 - mu) g`` (an
    exponential average: what an absolute clipping radius or learning rate then means does not
    change with mu)."""
    return mu * buffer + ((1.0 - mu) * g if dampened else g)


class Server(ABC):
    """What every server role shares: its ``node``, the flat model ``theta`` and its
    ``version`` (updates applied), the ``workers`` it serves, the learning-rate schedule ``lr``
    (step -> rate), server momentum and the event hub. Subclasses write :meth:`step` and
    :attr:`steps_done`, and extend :meth:`state_dict`."""

    role = "server"

    def __init__(
        self,
        node: Node,
        theta: torch.Tensor,
        workers: Iterable[int],
        *,
        lr: Callable[[int], float] = lambda t: 0.1,
        momentum: float = 0.0,
        dampened: bool = False,
        events: Events | None = None,
    ) -> None:
        self.node = node
        self.theta = theta.detach().clone()
        self.workers = [int(w) for w in workers]
        self.lr = lr
        self.momentum = check_momentum(momentum)
        self.dampened = bool(dampened)
        self.events = events or Events()
        self.buffer = torch.zeros_like(self.theta) if self.momentum > 0 else None
        self.version = 0

    def update(self, step: torch.Tensor, lr: float) -> None:
        """Apply ``step``: ``theta <- theta - lr step``, or with server momentum
        ``G <- mu G + step; theta <- theta - lr G``; the version goes up by one."""
        if self.buffer is not None:
            self.buffer = accumulate(self.buffer, step, self.momentum, self.dampened)
            step = self.buffer
        self.theta = self.theta - lr * step
        self.version += 1

    @abstractmethod
    def step(self) -> dict[str, Any]:
        """Run one step of the server; return its record."""

    @property
    @abstractmethod
    def steps_done(self) -> int:
        """Steps completed so far."""

    def state_dict(self) -> dict[str, Any]:
        """The model, momentum buffer and version (subclasses add their own state)."""
        return {"theta": self.theta, "buffer": self.buffer, "version": self.version}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.theta = state["theta"]
        self.buffer = state["buffer"]
        self.version = int(state["version"])


class ServerProtocol(Protocol):
    """A protocol with one :class:`Server` role (``server``) and parameter-server workers
    (``workers``: a :class:`~byzlearn.protocols.workers.WorkerSet`): the synchronous and
    asynchronous servers. Subclasses write ``build``, with :meth:`server_arguments`."""

    def __init__(self, server: Server, workers: WorkerSet) -> None:
        self.server = server
        self.workers = workers

    @staticmethod
    def server_arguments(world: World, engine: Engine, workers: WorkerSet) -> dict[str, Any]:
        """The :class:`Server` arguments from the config: a new ``server`` node (registered
        after the workers), the initial model, the workers' ids, the learning-rate schedule,
        server momentum (when the optimizer puts it at the server) and the event hub."""
        from byzlearn.experiments.schedules import learning_rate

        c, opt = world.config, world.config.optimizer
        return {
            "node": engine.add_node("server"),
            "theta": world.model.flatten(),
            "workers": workers.ids,
            "lr": learning_rate(opt, c.steps),
            "momentum": opt.momentum if opt.momentum_at == "server" else 0.0,
            "dampened": opt.dampened,
            "events": world.events,
        }

    @property
    def worker_ids(self) -> list[int]:
        """Node id of each worker index."""
        return list(self.workers.ids)

    @property
    def steps_done(self) -> int:
        return int(self.server.steps_done)

    @property
    def time(self) -> float:
        return float(self.server.node.clock)

    def step(self) -> dict[str, Any]:
        return dict(self.server.step())

    def models(self) -> dict[str, torch.Tensor]:
        return {"server": self.server.theta}

    def state_dict(self) -> dict[str, Any]:
        return {"server": self.server.state_dict(), "workers": self.workers.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.server.load_state_dict(state["server"])
        self.workers.load_state_dict(state["workers"])


def stack_rows(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(rows)`` of one or more vectors, read-only for the caller.

    Replies computed in one vectorised call of the workers are the consecutive rows of one
    contiguous matrix: that matrix is returned as it is, without a copy (the check reads two
    attributes per row, about 13 us for 25 rows, against 18-40 us to copy 25 x 4810 float32
    values, and a whole extra n x d matrix for a large model). Otherwise the rows are copied
    into memory from :func:`byzlearn.aggregators._memory.empty` (a large CPU matrix on huge
    pages: a 25 x 1e7 float32 matrix is a 1 GB new mapping, whose 4 KiB page faults alone cost
    about 0.4 s)."""
    first = rows[0]
    base = first._base
    if (
        base is not None
        and first.dim() == 1
        and base.dim() == 2
        and base.shape[0] == len(rows)
        and base.is_contiguous()
    ):
        shape, unit, dtype = (base.shape[1],), (1,), base.dtype
        step = base.shape[1] * base.element_size()
        at = base.data_ptr()
        for row in rows:  # the same matrix, its rows in order, each a whole row
            if (
                row._base is not base
                or row.data_ptr() != at
                or row.shape != shape
                or row.stride() != unit
                or row.dtype != dtype
            ):
                break
            at += step
        else:
            return base
    out = _memory.empty((len(rows), *first.shape), dtype=first.dtype, device=first.device)
    return torch.stack(list(rows), out=out)


def diameter(models: torch.Tensor) -> float:
    """The largest distance between two rows of ``models`` ((m, d); 0 for fewer than two),
    computed in float64 (NaN when a model is not finite)."""
    if len(models) < 2:
        return 0.0
    # from one product of the rows centred on their mean: ||x_i - x_j||^2 = K_ii + K_jj - 2 K_ij
    # (centred, the products lose nothing that matters in float64: errors scale with the spread,
    # not with the models' norms); torch.cdist took 2.1-2.4 ms for 25 models of 4810 values, this
    # 0.34-0.5 ms; a non-finite model makes the mean, so every entry, NaN
    X = models.double()
    A = X - X.mean(0)
    worst = float(sqdist_from_gram(A @ A.T).max())
    return math.sqrt(worst) if math.isfinite(worst) else math.nan


#: Protocols by name (``name -> Protocol subclass``).
PROTOCOLS: Registry[type[Protocol]] = Registry("protocol")


def register(cls: type[Protocol]) -> type[Protocol]:
    """Class decorator: register a protocol under its ``name``."""
    PROTOCOLS.add(cls.name, cls)
    return cls
