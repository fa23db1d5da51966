"""Wire a :class:`Config` into a runnable experiment: data, model, engine, protocol, observers.

:class:`Trainer` is the driver of one run: it builds the engine named by ``config.engine`` and the
protocol named by ``config.protocol`` (from their registries), then only steps the protocol,
lets the observers add their fields to each step's record, evaluates the protocol's models and
checkpoints. The loop, the metrics file and checkpoints live in
:mod:`byzlearn.experiments.runner`.

Node ids are allocated by the protocol (the parameter-server protocols reserve the n workers
first, so worker i is node i, then the server). Worker *indices* (``0..n-1``) are what the config
speaks of (``byzantine``, ``network.crashes``). Every random choice (model initialisation,
partition, Byzantine workers, minibatches, the attack, the network) derives from
``config.seed``, so a run is deterministic.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from byzlearn.data import ArrayDataset, load_dataset, partition
from byzlearn.engines import Delay, FlatModel, NetworkModel
from byzlearn.engines import build as build_engine
from byzlearn.experiments.config import Config, DelayConfig
from byzlearn.experiments.observers import EngineObserver, TruthObserver
from byzlearn.models import build_model
from byzlearn.protocols import PROTOCOLS, Events, Protocol, World

__all__ = ["Trainer", "byzantine_ids", "deal"]

# offsets added to config.seed for the independent random streams of a run
_SEED_MODEL, _SEED_PARTITION, _SEED_BYZ, _SEED_STRAGGLERS = 0, 1, 2, 5


def byzantine_ids(config: Config) -> list[int]:
    """The indices of the Byzantine workers (``first``, ``last``, ``random`` under the seed, or
    a list); ``config.byzantine_count`` of them."""
    n, f, spec = config.n, config.byzantine_count, config.byzantine
    if isinstance(spec, list):
        return sorted(int(i) for i in spec)
    if spec == "first":
        return list(range(f))
    if spec == "last":
        return list(range(n - f, n))
    rng = np.random.default_rng([config.seed, _SEED_BYZ])
    return sorted(int(i) for i in rng.choice(n, size=f, replace=False))


def deal(config: Config, labels: torch.Tensor, byzantine: list[int]) -> list[np.ndarray]:
    """Each worker's training indices (``config.partition``): disjoint parts dealt to all
    workers or to the honest ones only (Byzantine workers then get the whole training set, for
    the attacks that compute: data poisoning), or the whole set to everyone (``full``)."""
    p, n = config.partition, config.n
    everything = np.arange(len(labels))
    if p.kind == "full":
        return [everything] * n
    byz = set(byzantine) if p.among == "honest" else set()
    owners = [i for i in range(n) if i not in byz]
    try:
        parts = partition(
            labels,
            len(owners),
            p.kind,
            seed=config.seed * 1000 + _SEED_PARTITION,
            alpha=p.alpha,
            shards_per_worker=p.shards_per_worker,
            gamma=p.gamma,
        )
    except ValueError as exc:  # the data cannot be dealt so: say which section
        raise ValueError(f"partition: {exc}") from None
    out = [everything] * n
    for owner, part in zip(owners, parts, strict=True):
        out[owner] = part
    return out


def _delay(d: DelayConfig) -> Delay:
    return Delay(dist=d.dist, mean=d.mean, sigma=d.sigma, shape=d.shape)


def network_model(config: Config) -> NetworkModel:
    """The config's network, before node-specific settings (see :meth:`Trainer.place`)."""
    net = config.network
    return NetworkModel(
        seed=config.seed,
        compute=_delay(net.compute_time),
        link=_delay(net.link_delay),
        coordinate_drop=net.coordinate_drop,
        step_time=net.compute_time.mean,
    )


class Trainer:
    """The driver of one run, built from ``config``.

    ``model`` (any ``nn.Module`` without buffers updated in ``forward``) and ``dataset`` override
    the config's ``model`` and ``dataset`` sections.
    """

    def __init__(
        self,
        config: Config,
        *,
        model: nn.Module | None = None,
        dataset: ArrayDataset | None = None,
    ) -> None:
        self.config = c = config
        self.data = dataset or load_dataset(
            c.dataset.name,
            root=c.dataset.root,
            download=c.dataset.download,
            **{"seed": c.seed, **c.dataset.options},  # options may fix the data's own seed
        )
        if model is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(c.seed * 1000 + _SEED_MODEL)
                model = build_model(
                    c.model.name, self.data.input_shape, self.data.num_classes, **c.model.options
                )
        self.model = FlatModel(model)
        self.byzantine = byzantine_ids(c)
        self.parts = deal(c, self.data.y_train, self.byzantine)
        self.events = Events()
        self.engine = build_engine(c.engine, seed=c.seed, network=network_model(c))
        self.world = World(c, self.data, self.model, self.parts, self.byzantine, self.events)
        self.protocol: Protocol = PROTOCOLS.get(c.protocol.name).build(self.world, self.engine)
        self.place()
        ids = self.worker_ids
        self.observers = [
            TruthObserver([ids[i] for i in self.byzantine], ids),
            EngineObserver(self.engine),
        ]
        for observer in self.observers:
            self.events.subscribe(observer)

    # ------------------------------------------------------------------ network
    @property
    def worker_ids(self) -> list[int]:
        """Node id of each worker index."""
        return list(getattr(self.protocol, "worker_ids", []))

    def place(self) -> None:
        """Node-specific network settings: stragglers, omissions and crashes of the workers."""
        import byzlearn.attacks as atk

        c, net = self.config, self.config.network
        network = getattr(self.engine, "network", None)
        ids = self.worker_ids
        if network is None or not ids:
            return
        honest = self.world.honest
        rng = np.random.default_rng([c.seed, _SEED_STRAGGLERS])
        slow = [int(i) for i in rng.choice(honest, size=net.stragglers, replace=False)]
        network.slowdown = {ids[i]: net.slowdown for i in slow}
        faults: dict[int, Any] = {}
        if net.omission > 0:
            faults.update({ids[i]: atk.Omission(net.omission, seed=c.seed) for i in honest})
        faults.update({ids[int(i)]: atk.Crash(int(r)) for i, r in net.crashes.items()})
        network.faults = faults

    # ------------------------------------------------------------------ steps
    @property
    def round(self) -> int:
        """Steps completed so far."""
        return self.protocol.steps_done

    def step(self) -> dict[str, Any]:
        """Run one protocol step; return its record with the observers' fields."""
        record = self.protocol.step()
        for observer in self.observers:
            observer.collect(record)
        return record

    @property
    def theta(self) -> torch.Tensor:
        """The reference model (the first of the protocol's models)."""
        return next(iter(self.protocol.models().values()))

    def evaluate(self) -> tuple[float, float]:
        """Test accuracy and test loss of the reference model."""
        return self.model.evaluate(self.theta, self.data.x_test, self.data.y_test)

    def evaluate_models(self) -> dict[str, tuple[float, float]]:
        """Test accuracy and loss of each of the protocol's models (every correct server of a
        replicated protocol, every honest peer), by label."""
        x, y = self.data.x_test, self.data.y_test
        return {k: self.model.evaluate(v, x, y) for k, v in self.protocol.models().items()}

    def summary(self) -> dict[str, Any]:
        """The observers' fields for the run's summary."""
        out: dict[str, Any] = {}
        for observer in self.observers:
            out.update(observer.summary())
        return out

    # ------------------------------------------------------------------ roles (shortcuts)
    @property
    def server(self) -> Any:
        """The protocol's server role (protocols with one server)."""
        return self.protocol.server  # type: ignore[attr-defined]

    @property
    def workers(self) -> Any:
        """The honest (computing) workers' handler."""
        return self.protocol.workers.compute  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run bit for bit (plain data and tensors only)."""
        return {
            "protocol": self.protocol.state_dict(),
            "engine": self.engine.state_dict(),
            "observers": [o.state_dict() for o in self.observers],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.protocol.load_state_dict(state["protocol"])
        self.engine.load_state_dict(state["engine"])
        for observer, saved in zip(self.observers, state["observers"], strict=True):
            observer.load_state_dict(saved)
