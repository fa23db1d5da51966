"""Engines: where protocol nodes run and how their messages travel.

``local`` (in-process, vectorised honest workers, event-driven simulated clock) is the default;
``ray`` (:mod:`byzlearn.engines.ray_engine`: worker groups in Ray actors, wall-clock time; the
optional extra ``ray``, imported only when used) implements the same :class:`Engine` contract.
Engines are registered by name in :data:`ENGINES`; :func:`build` makes one from a config section.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from byzlearn.engines.base import STATS, Engine, Handler, Match, Message, Node, match_all
from byzlearn.engines.functional import FlatModel
from byzlearn.engines.local import LocalEngine
from byzlearn.engines.network import Delay, NetworkModel
from byzlearn.engines.topology import (
    Complete,
    ErdosRenyi,
    Explicit,
    Graph,
    RandomRegular,
    Ring,
    Topology,
)
from byzlearn.registry import Registry

__all__ = [
    "ENGINES",
    "STATS",
    "Complete",
    "Delay",
    "Engine",
    "ErdosRenyi",
    "Explicit",
    "FlatModel",
    "Graph",
    "Handler",
    "LocalEngine",
    "Match",
    "Message",
    "NetworkModel",
    "Node",
    "RandomRegular",
    "Ring",
    "Topology",
    "build",
    "match_all",
    "names",
]

EngineFactory = Callable[..., Engine]

#: Engines by name: ``factory(options, *, seed, network) -> Engine`` where ``options`` is the
#: config's ``engine`` section.
ENGINES: Registry[EngineFactory] = Registry("engine")


@ENGINES.register("local")
def _local(options: Any, *, seed: int, network: NetworkModel) -> Engine:
    return LocalEngine(seed=seed, vectorise=getattr(options, "vectorise", True), network=network)


@ENGINES.register("ray")
def _ray(options: Any, *, seed: int, network: NetworkModel) -> Engine:
    try:
        from byzlearn.engines.ray_engine import RayEngine, Resources
    except ModuleNotFoundError as err:
        if err.name != "ray":
            raise
        raise ValueError(
            'the ray engine needs the optional extra: pip install -e ".[ray]"'
        ) from None
    return RayEngine(
        seed=seed,
        network=network,
        address=getattr(options, "address", None),
        num_cpus=getattr(options, "num_cpus", None),
        actors=getattr(options, "actors", None),
        resources={
            role: Resources(cpus=r.cpus, gpus=r.gpus)
            for role, r in getattr(options, "resources", {}).items()
        },
        adversary_wait=getattr(options, "adversary_wait", None),
    )


def names() -> list[str]:
    """Engines available to configs."""
    return ENGINES.names()


def build(options: Any, *, seed: int = 0, network: NetworkModel | None = None) -> Engine:
    """The engine named ``options.name`` built from its config section."""
    factory = ENGINES.get(options.name)
    return factory(options, seed=seed, network=network or NetworkModel(seed=seed))
