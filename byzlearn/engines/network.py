"""The simulated network of the ``local`` engine: compute times, link delays, faults, losses.

Every draw is keyed (:mod:`byzlearn.keyed`) on the run's seed and on what it is about, never on
the order in which the engine asks:

- compute time of node i handling a message of round t: ``(seed, "compute", i, t)``;
- link delay of a message from a to b of round t: ``(seed, "link", a, b, t)``;
- lost coordinates of that message: ``(seed, "drop", a, b, t, kind)``.

Time distributions (:class:`Delay`) are given by their mean: ``constant``, ``exponential``,
``lognormal`` (``sigma`` the standard deviation of the log) and ``pareto`` (heavy-tailed
stragglers, tail index ``shape`` > 1). Node behaviours (:mod:`byzlearn.attacks.behaviours`:
``Crash``, ``Omission``, ``Delay``) decide per (node, round) whether a node's message is lost or
late by whole steps of ``step_time`` seconds. Lost coordinates hit the message kinds listed in
``lossy_kinds`` (gradients by default: the workers' uplink, as in the studies of lossy links;
models reach the workers whole).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from byzlearn import keyed
from byzlearn.checks import check_real

__all__ = ["DISTRIBUTIONS", "Delay", "NetworkModel"]

DISTRIBUTIONS = ("constant", "exponential", "lognormal", "pareto")


@dataclass(frozen=True)
class Delay:
    """A distribution of non-negative durations with the given ``mean`` (seconds).

    ``constant``: always ``mean``. ``exponential``: ``-mean * ln(1 - u)``. ``lognormal``:
    ``exp(mu + sigma z)`` with ``mu = ln(mean) - sigma^2 / 2`` (so its mean is ``mean``).
    ``pareto``: ``x_m (1 - u)^(-1/shape)`` with ``x_m = mean (shape - 1) / shape`` (heavy
    tail; the variance is infinite for ``shape <= 2``).
    """

    dist: str = "constant"
    mean: float = 1.0
    sigma: float = 1.0
    shape: float = 2.5

    def __post_init__(self) -> None:
        if self.dist not in DISTRIBUTIONS:
            raise ValueError(
                f"unknown distribution {self.dist!r} (known: {', '.join(DISTRIBUTIONS)})"
            )
        check_real(self.mean, "mean", 0.0)
        check_real(self.sigma, "sigma", 0.0, lo_open=True)
        check_real(self.shape, "shape", 1.0, lo_open=True)

    @property
    def random(self) -> bool:
        """Whether draws vary (every distribution but ``constant`` with a positive mean)."""
        return self.dist != "constant" and self.mean > 0

    def sample(self, key: keyed.Key) -> float:
        """The draw of ``key``."""
        if not self.random:
            return float(self.mean)
        if self.dist == "lognormal":
            z = float(keyed.normal(key, 1)[0])
            return math.exp(math.log(self.mean) - self.sigma**2 / 2 + self.sigma * z)
        u = float(keyed.uniform(key, 1)[0])
        if self.dist == "exponential":
            return -self.mean * math.log1p(-u)
        x_m = self.mean * (self.shape - 1.0) / self.shape
        return x_m * (1.0 - u) ** (-1.0 / self.shape)


@dataclass
class NetworkModel:
    """Times, faults and losses of the simulated network (see the module docstring).

    ``slowdown`` multiplies the compute time of some nodes (stragglers); ``faults`` maps a node
    to a behaviour with ``reply(step, node) -> int | None``; ``coordinate_drop`` is the
    probability that each coordinate of a tensor payload is lost (arrives as NaN).
    """

    seed: int = 0
    compute: Delay = field(default_factory=Delay)
    link: Delay = field(default_factory=lambda: Delay(mean=0.0))
    slowdown: Mapping[int, float] = field(default_factory=dict)
    faults: Mapping[int, Any] = field(default_factory=dict)
    coordinate_drop: float = 0.0
    step_time: float = 1.0
    lossy_kinds: tuple[str, ...] = ("gradient",)

    def __post_init__(self) -> None:
        for name in ("compute", "link"):
            if not isinstance(getattr(self, name), Delay):
                got = type(getattr(self, name)).__name__
                raise TypeError(f"{name} must be a Delay (e.g. Delay('constant', 1.0)), got {got}")
        check_real(self.coordinate_drop, "coordinate_drop", 0.0, 1.0, hi_open=True)
        check_real(self.step_time, "step_time", 0.0)
        for node, factor in self.slowdown.items():
            check_real(factor, f"slowdown of node {node}", 0.0)
        # a bare string would be matched by substring ("grad" in "gradient")
        kinds = self.lossy_kinds
        if isinstance(kinds, str) or not all(isinstance(k, str) for k in kinds):
            raise TypeError(f"lossy_kinds must be a tuple of message kinds, got {kinds!r}")
        self.lossy_kinds = tuple(kinds)

    def compute_time(self, node: int, round: int) -> float:
        """Seconds node ``node`` spends on one message of ``round``."""
        c = self.compute
        base = c.sample((self.seed, "compute", node, round)) if c.random else c.mean
        return base * self.slowdown[node] if node in self.slowdown else base

    def constant_compute_time(self) -> float | None:
        """The compute time of every node and round when it is one constant (a constant
        distribution, no straggler), else None: callers then take it once, not per message."""
        return None if self.compute.random or self.slowdown else self.compute.mean

    def link_delay(self, sender: int, dest: int, round: int) -> float:
        """Seconds a message of ``round`` takes from ``sender`` to ``dest``."""
        link = self.link
        return link.sample((self.seed, "link", sender, dest, round)) if link.random else link.mean

    def fault_delay(self, sender: int, round: int) -> float | None:
        """``None`` when the sender's behaviour loses its message of ``round``, else the extra
        delay it adds (seconds)."""
        if sender not in self.faults:
            return 0.0
        behaviour = self.faults[sender]
        steps = behaviour.reply(max(int(round), 0), sender)
        return None if steps is None else float(steps) * self.step_time

    def lose_coordinates(self, payload: Any, sender: int, dest: int, round: int, kind: str) -> Any:
        """``payload`` with each coordinate turned into NaN with probability coordinate_drop
        (a new tensor) when ``kind`` is one of ``lossy_kinds``; anything else unchanged."""
        if self.coordinate_drop <= 0 or not isinstance(payload, torch.Tensor):
            return payload
        if kind not in self.lossy_kinds:
            return payload
        if not payload.is_floating_point():
            return payload
        gen = keyed.generator((self.seed, "drop", sender, dest, round, kind))
        mask = torch.rand(payload.shape, generator=gen) < self.coordinate_drop
        return payload.masked_fill(mask.to(payload.device), float("nan"))
