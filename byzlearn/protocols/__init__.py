"""Protocols: what each role does each round, written against :class:`byzlearn.engines.Engine`.

Now: the synchronous parameter server with momentum at the server or at the workers and local
steps. Asynchronous (Kardam), replicated servers and peer-to-peer protocols come later and reuse
the same roles and engine interface.
"""

from byzlearn.protocols.parameter_server import ParameterServer
from byzlearn.protocols.workers import ByzantineWorkers, ComputeWorkers

__all__ = ["ByzantineWorkers", "ComputeWorkers", "ParameterServer"]
