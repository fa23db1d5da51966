"""Protocols: what each role does each step, written against :class:`byzlearn.engines.Engine`.

Registered in :data:`PROTOCOLS` by name, each with its config options:

- ``parameter_server``: the synchronous parameter server (momentum at the server or the
  workers, local steps, quorum and deadline, a failure policy for missing replies);
- ``async_sgd``: asynchronous SGD, each gradient applied as it arrives (staleness dampening);
- ``kardam``: asynchronous SGD with Kardam's Lipschitz and frequency filters (ICML 2018);
- ``byzsgd``, ``liubei``: replicated Byzantine parameter servers (PODC 2020; arXiv 1911.07537);
- ``decentralized``: peers on a graph with robust mixing (NNA/MoNNA, iterated trimmed mean,
  MDA averaging agreement, self-centred clipping, gossip).

See ``docs/runtime.md`` for the contract and how to write a protocol.
"""

from byzlearn.protocols.adversary import ByzantineNodes, NodeAttackConfig
from byzlearn.protocols.asynchronous import (
    AsyncServer,
    AsyncSGDOptions,
    AsyncSGDProtocol,
    KardamOptions,
    KardamProtocol,
)
from byzlearn.protocols.base import (
    PROTOCOLS,
    Events,
    Observer,
    Protocol,
    Server,
    ServerProtocol,
    World,
    register,
)
from byzlearn.protocols.decentralized import DecentralizedOptions, DecentralizedProtocol
from byzlearn.protocols.kardam import KardamFilter, dampening
from byzlearn.protocols.liubei import LiuBeiOptions, LiuBeiProtocol
from byzlearn.protocols.parameter_server import (
    ParameterServer,
    ParameterServerOptions,
    ParameterServerProtocol,
)
from byzlearn.protocols.replicated import ByzSGDOptions, ByzSGDProtocol
from byzlearn.protocols.workers import ByzantineWorkers, ComputeWorkers, WorkerSet, build_workers

__all__ = [
    "PROTOCOLS",
    "AsyncSGDOptions",
    "AsyncSGDProtocol",
    "AsyncServer",
    "ByzSGDOptions",
    "ByzSGDProtocol",
    "ByzantineNodes",
    "ByzantineWorkers",
    "ComputeWorkers",
    "DecentralizedOptions",
    "DecentralizedProtocol",
    "Events",
    "KardamFilter",
    "KardamOptions",
    "KardamProtocol",
    "LiuBeiOptions",
    "LiuBeiProtocol",
    "NodeAttackConfig",
    "Observer",
    "ParameterServer",
    "ParameterServerOptions",
    "ParameterServerProtocol",
    "Protocol",
    "Server",
    "ServerProtocol",
    "WorkerSet",
    "World",
    "build_workers",
    "dampening",
    "names",
    "register",
]


def names() -> list[str]:
    """Protocols available to configs."""
    return PROTOCOLS.names()
