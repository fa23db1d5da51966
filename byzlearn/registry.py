"""One small registry for every kind of named component: rules, attacks, protocols, engines.

>>> from byzlearn.registry import Registry
>>> shapes = Registry("shape")
>>> shapes.add("square", 4)
>>> shapes.get("square")
4
>>> shapes.get("circle")
Traceback (most recent call last):
...
KeyError: "unknown shape 'circle' (known: square)"

A name is registered once: a second registration under a name or alias already taken raises
``ValueError`` (a plugin can never silently replace a built-in component). Names and aliases
are non-empty strings without surrounding whitespace (lookups strip it), aliases a tuple.
Lookups of unknown names raise ``KeyError`` listing the known names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind (``kind`` is used in error messages), with optional aliases.

    ``normalise`` maps a looked-up name to its key (e.g. lower-casing, ``-`` to ``_``); it is
    applied to registered names and aliases too.
    """

    def __init__(self, kind: str, *, normalise: Callable[[str], str] | None = None) -> None:
        self.kind = kind
        self._article = "an" if kind[:1].lower() in "aeiou" else "a"  # (messages: an attack)
        self._normalise = normalise or (lambda name: name)
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    # ------------------------------------------------------------------ registration
    def add(self, name: str, entry: T, *, aliases: tuple[str, ...] = ()) -> None:
        """Register ``entry`` under ``name`` (and ``aliases``); taken names raise ``ValueError``."""
        if isinstance(aliases, str) or not isinstance(aliases, (tuple, list)):
            raise TypeError(
                f"{self.kind} {name!r}: aliases must be a tuple of names, got {aliases!r}"
            )
        key = self._normalise(self._registrable(name))
        keys = [key, *(self._normalise(self._registrable(a)) for a in aliases)]
        for k in keys:
            if k in self._entries or k in self._aliases:
                raise ValueError(f"{self.kind} {k!r} is already registered")
        if len(set(keys)) != len(keys):
            raise ValueError(f"{self.kind} {name!r}: an alias repeats the name or another alias")
        self._entries[key] = entry
        for alias in keys[1:]:
            self._aliases[alias] = key

    def _registrable(self, name: object) -> str:
        """``name`` if it can be registered: a lookup finds it (it strips surrounding spaces and
        refuses an empty name, so a name with either could never be looked up)."""
        if not isinstance(name, str) or not name:
            raise TypeError(
                f"{self._article} {self.kind} name must be a non-empty string, got {name!r}"
            )
        if name != name.strip():
            raise ValueError(
                f"{self.kind} name {name!r}: no leading or trailing whitespace "
                f"(lookups strip it: the name could never be found)"
            )
        return name

    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator form of :meth:`add`; returns the decorated object unchanged."""

        def decorate(entry: T) -> T:
            self.add(name, entry, aliases=aliases)
            return entry

        return decorate

    # ------------------------------------------------------------------ lookup
    def canonical(self, name: str) -> str:
        """The registered name that ``name`` (or an alias of it) refers to."""
        if not isinstance(name, str) or not name:
            raise TypeError(
                f"{self._article} {self.kind} name must be a non-empty string, got {name!r}"
            )
        key = self._normalise(name.strip())
        key = self._aliases.get(key, key)
        if key not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r} (known: {', '.join(self.names())})")
        return key

    def get(self, name: str) -> T:
        """The entry registered under ``name`` (aliases accepted)."""
        return self._entries[self.canonical(name)]

    def names(self) -> list[str]:
        """Registered names, sorted (aliases excluded)."""
        return sorted(self._entries)

    def aliases(self) -> dict[str, str]:
        """Alias -> registered name."""
        return dict(sorted(self._aliases.items()))

    def items(self) -> Iterator[tuple[str, T]]:
        """``(name, entry)`` pairs in registration order."""
        return iter(list(self._entries.items()))

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str) or not name:
            return False
        key = self._normalise(name.strip())
        return key in self._entries or key in self._aliases

    def __len__(self) -> int:
        return len(self._entries)
