"""The mimic attack (Karimireddy, He, Jaggi, ICLR 2022) and its explicit running state.

Every Byzantine worker copies one honest worker, chosen to maximise heterogeneity: the honest
worker lying farthest along the main direction of variation of the honest vectors. Copying an
honest vector is undetectable by any rule, but over-weights one worker's (non-iid) data.

Two ways to choose the worker, both pure:

* **with a running estimate** (the reference's heuristic, epfml ``codes/attacks/mimic.py``,
  ``MimicVariantAttacker``): the caller keeps a :class:`MimicState`, updates it with
  :meth:`MimicState.observe` every step and passes it as ``state=``. At the first observation
  the top direction ``z`` starts, as in the reference, from a **seeded Gaussian direction**
  (``start="gaussian"``, default; ``torch.Generator().manual_seed(0)`` unless a seed or a
  generator is given) and takes one power-iteration step; during the warm-up the state tracks a
  running mean ``mu`` and a running ``z`` (one power-iteration step per observation) and
  re-picks ``argmax_i <g_i, z>``; after the warm-up the pick is frozen. ``start="deviation"``
  starts instead from the first honest vector's deviation ``g_0 - mu`` (this library's choice
  before it followed the reference; deterministic without any draw). Nothing is stored anywhere
  else: the state object is the whole memory.
* **per step** (no state, the default of a call): ``z`` = the exact top principal direction of
  this step's centred honest vectors (the fixed point the reference's power iteration
  approaches), and the copied worker is ``argmax_i |<g_i - mu, z>|`` (sign-free, since an
  eigenvector's sign is arbitrary). Deterministic. This form is this library's stateless
  variant, not the reference's code, which needs a warm-up across steps.

>>> state = MimicState(warmup=10)
>>> for honest in steps:                       # doctest: +SKIP
...     state = state.observe(honest)
...     byz = atk.get("mimic")(honest, f=5, state=state)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from byzlearn.attacks._checks import choice, integer
from byzlearn.attacks._context import AttackContext, as_honest_matrix, scale_for, scaled_norm
from byzlearn.attacks._registry import RunningState, register
from byzlearn.finite import all_finite

STARTS = ("gaussian", "deviation")
"""How :class:`MimicState` starts its power iteration: the reference's seeded Gaussian
direction, or the first honest vector's deviation from the mean."""


@dataclass(frozen=True, eq=False)
class MimicState:
    """The running estimate of the mimic heuristic; immutable, :meth:`observe` returns a new one.

    Attributes:
        warmup: number of observed steps during which ``mu``, ``z`` and the pick are updated
            (default 1: the pick is made on the first observed step and then frozen); ``>= 1``.
        start: where the power iteration starts at the first observation: ``"gaussian"``
            (default, the reference's ``torch.randn(d, generator=manual_seed(0))``) or
            ``"deviation"`` (``g_0 - mu``, the first finite honest vector's deviation).
        seed: the seed of the Gaussian start (default 0, the reference's) when
            :meth:`observe` is given no generator; ``>= 0``.
        step: number of steps observed so far.
        mu: running mean of the honest mean (float64, ``None`` before the first observation).
        z: running unit estimate of the top principal direction (float64).
        target: index (into the honest vectors) of the worker to copy, ``None`` before the first
            observation.
    """

    warmup: int = 1
    step: int = 0
    mu: torch.Tensor | None = None
    z: torch.Tensor | None = None
    target: int | None = None
    start: str = "gaussian"
    seed: int = 0

    def __post_init__(self) -> None:
        integer("MimicState", "warmup", self.warmup, minimum=1)
        integer("MimicState", "step", self.step, minimum=0)
        choice("MimicState", "start", self.start, STARTS)
        integer("MimicState", "seed", self.seed, minimum=0)

    def observe(self, honest, generator: torch.Generator | None = None) -> MimicState:
        """The state after seeing this step's honest vectors (``(h, d)`` or any attack input).

        Step ``t`` (0-based) with ``t < warmup`` updates (over the fully finite rows ``g_i``)::

            mu <- (t mu + mean_i g_i) / (t + 1)
            c   = sum_i <g_i - mu, z> (g_i - mu)
            z  <- normalise((t z + c / ||c||) / (t + 1))          (z <- c / ||c|| at t = 0)
            target = argmax_i <g_i, z>

        where, at ``t = 0``, ``z`` is the start: ``xi ~ N(0, I_d)`` drawn in float32 from
        ``generator`` (default: a CPU generator seeded with ``seed``, which reproduces the
        reference's draw) for ``start="gaussian"``, or ``g_0 - mu`` for ``start="deviation"``.
        Later steps only advance ``step`` (the target is frozen).
        Reference: epfml/byzantine-robust-noniid-optimizer ``codes/attacks/mimic.py``
        (``MimicVariantAttacker``: ``_init_callback``, ``_warmup_callback``, ``_attack_callback``
        with ``argmax=True``).
        """
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError("MimicState.observe: generator must be a torch.Generator or None")
        X, _ = as_honest_matrix(honest, "MimicState.observe")
        if self.step >= self.warmup:
            return replace(self, step=self.step + 1)
        keep = torch.nonzero(torch.isfinite(X).all(1)).flatten()
        if keep.numel() == 0:
            raise ValueError("MimicState.observe: every honest vector holds a non-finite value")
        G = X[keep].to(torch.float64)
        t = self.step
        avg = G.mean(0)
        if self.mu is None or self.z is None:
            mu = avg
            z = self._start(G, mu, generator)
        else:
            if self.mu.numel() != G.shape[1]:
                raise ValueError(
                    f"MimicState.observe: the state has d={self.mu.numel()}, got d={G.shape[1]}"
                )
            mu = (t * self.mu + avg) / (t + 1)
            z = self.z
        # z is a direction and the pick an argmax: computed on values scaled by a power of two
        # where their squares would overflow or underflow (values of 1e200 gave a NaN z)
        scale = scale_for(float(G.abs().max()))
        A = (G - mu) / scale
        c = _unit((A @ z) @ A)
        z = c if t == 0 else _unit((t * z + c) / (t + 1))
        target = int(keep[int(torch.argmax((G / scale) @ z))])
        return replace(self, step=t + 1, mu=mu, z=z, target=target)

    def _start(
        self, G: torch.Tensor, mu: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """The initial direction of the power iteration (float64, on ``G``'s device)."""
        if self.start == "deviation":
            return _unit(G[0] - mu)
        gen = generator if generator is not None else torch.Generator().manual_seed(self.seed)
        xi = torch.randn(G.shape[1], generator=gen, device=gen.device, dtype=torch.float32)
        return xi.to(device=G.device, dtype=torch.float64)


def _unit(v: torch.Tensor) -> torch.Tensor:
    norm = scaled_norm(v)  # no overflow or underflow of the squares
    return v / norm if norm > 0 else v


def most_heterogeneous(X: torch.Tensor) -> int:
    """Index of the row of ``X`` (fully finite rows only) farthest along the top principal
    direction of the centred finite rows: ``argmax_i |<x_i - mean, z>|`` (first on ties).

    Computed from the small ``(h, h)`` Gram matrix: with ``A`` the centred rows and ``v`` the top
    eigenvector of ``A A^T``, the projections ``A z`` are proportional to ``v``.
    """
    if all_finite(X):  # one read (the elementwise test: 0.25 ms on 20 x 4810 values)
        keep, A = torch.arange(X.shape[0], device=X.device), X.to(torch.float64)
    else:
        keep = torch.nonzero(torch.isfinite(X).all(1)).flatten()
        if keep.numel() == 0:
            raise ValueError("mimic: every honest vector holds a non-finite value")
        A = X[keep].to(torch.float64)
    scale = float(A.abs().max())  # the eigenvectors do not change; huge values overflowed
    if scale > 0.0:  # A A^T (rows of 1e155: the wrong row; of 1e200: eigh failed)
        A = A / scale
    A = A - A.mean(0)
    _, vecs = torch.linalg.eigh(A @ A.T)
    return int(keep[int(torch.argmax(vecs[:, -1].abs()))])


@register(
    "mimic",
    reference="Karimireddy, He, Jaggi, 'Byzantine-Robust Learning on Heterogeneous Datasets "
    "via Bucketing', ICLR 2022 (arXiv 2006.09365)",
    running_state=RunningState(lambda warmup: MimicState(warmup=int(warmup)), ("warmup",)),
)
def mimic(ctx: AttackContext, *, worker: int | None = None, state: MimicState | None = None):
    r"""Mimic: every Byzantine worker sends ``b = g_k``, a copy of one honest worker's vector.

    Options:
        worker: the honest index ``k`` to copy (default ``None``: chosen, see below).
        state: a :class:`MimicState` updated by the caller (``state = state.observe(honest)``)
            before the call; ``k = state.target``: the reference's heuristic (running mean and
            power iteration started from a seeded Gaussian direction, pick frozen after the
            warm-up). Default ``None``: this library's stateless per-step choice
            ``k = argmax_i |<g_i - mu, z>|`` with ``z`` the exact top principal direction of
            this step's honest vectors (:func:`most_heterogeneous`).

    A chosen (not given) worker is always a fully finite row: when ``state.target`` holds a
    non-finite value at this step, the per-step choice is used instead.
    Reference: Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via
    Bucketing", ICLR 2022 (arXiv 2006.09365), the mimic attack (epfml ``codes/attacks/mimic.py``).
    """
    if worker is not None and state is not None:
        raise TypeError(f"{ctx.name}: pass at most one of worker= and state=")
    if worker is not None:
        k = integer(ctx.name, "worker", worker, minimum=0)
        if k >= ctx.h:
            raise ValueError(f"{ctx.name}: worker must be in [0, h={ctx.h}), got {k}")
        return ctx.honest[k].clone()
    if state is not None:
        if not isinstance(state, MimicState):
            raise TypeError(f"{ctx.name}: state must be a MimicState, got {type(state).__name__}")
        if state.target is None:
            raise ValueError(
                f"{ctx.name}: the MimicState has observed nothing; call state.observe(honest) first"
            )
        if state.target >= ctx.h:
            raise ValueError(f"{ctx.name}: state.target={state.target} but h={ctx.h}")
        if bool(torch.isfinite(ctx.honest[state.target]).all()):
            return ctx.honest[state.target].clone()
    return ctx.honest[most_heterogeneous(ctx.honest)].clone()
