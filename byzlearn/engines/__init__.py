"""Engines: where protocol roles run and how their messages travel.

``local`` (in-process, vectorised workers, simulated clock) is here; a ``ray`` engine (actors)
comes in a later issue and implements the same :class:`Engine` interface.
"""

from byzlearn.engines.base import Engine, Group, Message
from byzlearn.engines.functional import FlatModel
from byzlearn.engines.local import LocalEngine

__all__ = ["Engine", "FlatModel", "Group", "LocalEngine", "Message", "names"]


def names() -> list[str]:
    """Engines available to configs."""
    return ["local"]
