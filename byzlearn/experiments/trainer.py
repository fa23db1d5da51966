"""Wire a :class:`Config` into a runnable experiment: data, model, engine, roles.

:class:`Trainer` owns the objects of one run (engine, server, worker groups) and exposes one
round at a time (:meth:`Trainer.step`), evaluation, and the state needed to resume. The loop,
the metrics file and checkpoints live in :mod:`byzlearn.experiments.runner`.

Node ids: workers are ``0..n-1`` and the server is ``n``. Seeds: every random choice (model
initialisation, partition, Byzantine ids, minibatches, the attack's generator, the engine) is
derived from ``config.seed``, so a run is deterministic.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from byzlearn.data import ArrayDataset, load_dataset, partition
from byzlearn.engines import FlatModel, LocalEngine
from byzlearn.experiments.config import Config
from byzlearn.experiments.schedules import learning_rate
from byzlearn.models import build_model
from byzlearn.protocols import ByzantineWorkers, ComputeWorkers, ParameterServer

__all__ = ["Trainer", "byzantine_ids"]

# offsets added to config.seed for the independent random streams of a run
_SEED_MODEL, _SEED_PARTITION, _SEED_BYZ, _SEED_BATCH, _SEED_ATTACK, _SEED_ENGINE = range(6)


def byzantine_ids(config: Config) -> list[int]:
    """The ids of the Byzantine workers (``first``, ``last``, ``random`` under the seed, or a
    list)."""
    n, f, spec = config.n, config.f, config.byzantine
    if isinstance(spec, list):
        return sorted(int(i) for i in spec)
    if spec == "first":
        return list(range(f))
    if spec == "last":
        return list(range(n - f, n))
    rng = np.random.default_rng([config.seed, _SEED_BYZ])
    return sorted(int(i) for i in rng.choice(n, size=f, replace=False))


def _poisoned_labels(config: Config, data: ArrayDataset) -> torch.Tensor:
    import byzlearn.attacks as atk

    p = config.poisoning
    if p.kind == "flip_labels":
        return atk.flip_labels(data.y_train, data.num_classes, p.mapping)
    return atk.targeted_flip(data.y_train, p.source, p.target)


def _engine(config: Config, honest: list[int]) -> LocalEngine:
    """The local engine with the config's simulated network (stragglers, losses, crashes)."""
    import byzlearn.attacks as atk

    net, seed = config.network, config.seed * 1000 + _SEED_ENGINE
    rng = np.random.default_rng([config.seed, _SEED_ENGINE])
    slow = {int(i) for i in rng.choice(honest, size=net.stragglers, replace=False)}
    compute = {i: net.compute_time * (net.slowdown if i in slow else 1.0) for i in range(config.n)}
    faults: dict[int, Any] = {}
    if net.omission > 0:
        faults.update({i: atk.Omission(net.omission, seed=seed) for i in honest})
    faults.update({int(i): atk.Crash(int(r)) for i, r in net.crashes.items()})
    return LocalEngine(
        seed=seed,
        vectorise=config.vectorise,
        compute_time=compute,
        link_delay=net.link_delay,
        coordinate_drop=net.coordinate_drop,
        faults=faults,
        step_time=net.compute_time,
    )


class Trainer:
    """The roles of one synchronous parameter-server run, built from ``config``.

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
        byz = set(self.byzantine)
        honest = [i for i in range(c.n) if i not in byz]
        parts = partition(
            self.data.y_train,
            c.n,
            c.partition.kind,
            seed=c.seed * 1000 + _SEED_PARTITION,
            alpha=c.partition.alpha,
            shards_per_worker=c.partition.shards_per_worker,
            gamma=c.partition.gamma,
        )
        self.parts = parts
        self.engine = _engine(c, honest)
        opt = c.optimizer
        worker_momentum = opt.momentum if opt.momentum_at == "worker" else 0.0
        gradient_attack = c.attack.name != "none" and c.f > 0
        computing = honest if gradient_attack else list(range(c.n))
        labels: torch.Tensor | list[torch.Tensor] = self.data.y_train
        if c.poisoning.kind != "none" and c.f > 0:
            poisoned = _poisoned_labels(c, self.data)
            labels = [poisoned if i in byz else self.data.y_train for i in computing]
        self.workers = ComputeWorkers(
            computing,
            self.model,
            self.data.x_train,
            labels,
            [parts[i] for i in computing],
            batch_size=c.batch_size,
            seed=c.seed * 1000 + _SEED_BATCH,
            local_steps=c.local_steps,
            momentum=worker_momentum,
            weight_decay=opt.weight_decay,
            clip=opt.clip,
        )
        self.engine.add_group(computing, "worker", self.workers)
        self.attackers: ByzantineWorkers | None = None
        if gradient_attack:
            import byzlearn.attacks as atk

            self.attackers = ByzantineWorkers(
                self.byzantine,
                atk.get(c.attack.name),
                rule=c.rule.full_name,
                rule_options=c.rule.options,
                options=c.attack.options,
                identical=c.attack.identical,
                seed=c.seed * 1000 + _SEED_ATTACK,
            )
            self.engine.add_group(self.byzantine, "worker", self.attackers, omniscient=True)
        self.server = ParameterServer(
            self.engine,
            self.model.flatten(),
            server_id=c.n,
            rule=c.rule.full_name,
            f=c.f,
            rule_options=c.rule.options,
            lr=learning_rate(opt, c.steps),
            momentum=opt.momentum if opt.momentum_at == "server" else 0.0,
            q=c.q,
            deadline=c.deadline,
            byzantine_ids=self.byzantine,
        )

    # ------------------------------------------------------------------ rounds
    @property
    def round(self) -> int:
        """Rounds completed so far."""
        return self.server.round

    def step(self) -> dict[str, Any]:
        """Run one round; return the server's metrics for it."""
        return self.server.step()

    def evaluate(self) -> tuple[float, float]:
        """Test accuracy and test loss of the current model."""
        return self.model.evaluate(self.server.theta, self.data.x_test, self.data.y_test)

    @property
    def theta(self) -> torch.Tensor:
        """The server's current flat parameters."""
        return self.server.theta

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run bit-for-bit."""
        return {
            "server": self.server.state_dict(),
            "workers": self.workers.state_dict(),
            "attackers": None if self.attackers is None else self.attackers.state_dict(),
            "engine": self.engine.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.server.load_state_dict(state["server"])
        self.workers.load_state_dict(state["workers"])
        if self.attackers is not None:
            self.attackers.load_state_dict(state["attackers"])
        self.engine.load_state_dict(state["engine"])
