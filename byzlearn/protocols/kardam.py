"""Kardam's filters and staleness dampening (Damaskinos, El Mhamdi, Guerraoui, Patra, Taziki,
"Asynchronous Byzantine Machine Learning (the case of SGD)", ICML 2018).

**Dampening.** An accepted gradient of staleness tau (server version now minus the version it
was computed on) is applied as ``theta <- theta - lr Lambda(tau) g`` with ``Lambda(tau) =
exp(-alpha tau)`` (``exp``, the paper's form; alpha = 0.2 in the reference code),
``1 / (tau + 1)`` (``inverse``) or 1 (``none``).

**Lipschitz filter.** The empirical Lipschitz coefficient of a gradient g, computed at model x,
against the latest accepted gradient g' computed at a different model x' is

    k = ||g - g'|| / ||x - x'||.

Each worker keeps its last ``history`` (25) coefficients and is summarised by their maximum. A
gradient is accepted when ``k <= K``, where K is the (n - f)/n quantile of the workers'
summaries: with m workers heard so far, the ``min(ceil(q m), m - f)``-th smallest (q = (n - f)/n
by default), so f Byzantine workers reporting huge coefficients can never raise K above an
honest worker's summary. A gradient's own coefficient enters its worker's history before the
check (as in the reference code).

**Frequency filter.** Among the last ``window`` accepted gradients (default 2f + 1) a worker may
account for at most ``per_window`` (default 1): any window then holds at least f + 1 honest
gradients, so a fast Byzantine worker cannot monopolise the updates. [The paper's exact window
could not be checked; this is the reading documented in ``docs/training.md``.]

Deviations from the paper and the Java reference (LPD-EPFL/kardam, ``Filtering.java``), all
documented in ``docs/training.md``:

- the reference compares ``||g - g_last||`` with the server's *current* model step
  ``||x_now - x_last||`` while its per-worker coefficients use the workers' own consecutive
  gradients (and lr-scaled gradients); the two scales differ by about the number of workers, so
  honest gradients are mostly rejected. Here both the check and the per-worker coefficients use
  the same quantity, k above;
- a reference gradient at the same model (x = x') carries no Lipschitz information: the latest
  accepted gradient at another model is used; with none (only at the start), the gradient is
  rejected (``no_reference``);
- *bootstrap*: the first update is the medoid of the first 2f + 1 gradients (all computed on the
  initial model), the other 2f are rejected; the filter then *warms up*, rejecting until n - f
  workers have a coefficient. Without this, the first gradient (possibly Byzantine and huge) would
  be applied unchecked;
- the reference accepts after ``workers`` consecutive rejections (a liveness rule not in the
  paper): available as ``liveness``, off by default.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["DAMPENINGS", "KardamFilter", "Verdict", "dampening"]

DAMPENINGS = ("exp", "inverse", "none")


def dampening(kind: str, staleness: int, alpha: float = 0.2) -> float:
    """``Lambda(tau)``: ``exp(-alpha tau)``, ``1 / (tau + 1)`` or 1."""
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    if kind == "exp":
        return math.exp(-alpha * staleness)
    if kind == "inverse":
        return 1.0 / (staleness + 1.0)
    if kind == "none":
        return 1.0
    raise ValueError(f"unknown dampening {kind!r} (known: {', '.join(DAMPENINGS)})")


@dataclass(frozen=True)
class Verdict:
    """What the filter decided for one gradient (``k``/``threshold`` NaN when not computed)."""

    accepted: bool
    reason: str  # "accepted", "liveness", "lipschitz", "frequency", "warmup", "no_reference"
    k: float = math.nan
    threshold: float = math.nan


class KardamFilter:
    """Kardam's Lipschitz and frequency filters over n workers, f of them Byzantine."""

    def __init__(
        self,
        n: int,
        f: int,
        *,
        history: int = 25,
        summary: float | str = 0.85,
        quantile: float | None = None,
        gap: int | None = None,
        window: int | None = None,
        per_window: int | None = None,
        lipschitz: bool = True,
        frequency: bool = True,
        liveness: int | None = None,
    ) -> None:
        if n < 3 * f + 1:
            raise ValueError(f"kardam needs n >= 3f + 1, got n={n}, f={f}")
        self.n, self.f = int(n), int(f)
        self.history = int(history)
        if summary != "max" and not (isinstance(summary, (int, float)) and 0 < summary <= 1):
            raise ValueError(
                f"kardam: summary must be 'max' or a quantile in (0, 1], got {summary!r}"
            )
        self.summary = summary
        self.quantile = (n - f) / n if quantile is None else float(quantile)
        self.gap = int(n) if gap is None else int(gap)
        self.window = 2 * f + 1 if window is None else int(window)
        self.per_window = max(f, 1) if per_window is None else int(per_window)
        self.lipschitz = lipschitz
        self.frequency = frequency
        self.liveness = liveness
        self.coefficients: dict[int, deque[float]] = {}
        self.references: deque[tuple[torch.Tensor, torch.Tensor, int]] = deque(
            maxlen=max(2 * self.gap, 2)
        )
        # the last window - 1 accepted workers: with a new one they make a window
        self.recent: deque[int] = deque(maxlen=max(self.window - 1, 0))
        self.rejections = 0  # consecutive

    # ------------------------------------------------------------------ statistics
    def _summarise(self, values: deque[float]) -> float:
        if self.summary == "max":
            return max(values)
        ordered = sorted(values)  # the ceil(s h)-th smallest of the worker's h coefficients
        return ordered[max(math.ceil(float(self.summary) * len(ordered)), 1) - 1]

    def threshold(self) -> float:
        """K: the (n - f)/n quantile of the workers' summaries (NaN while warming up)."""
        summaries = sorted(self._summarise(c) for c in self.coefficients.values() if c)
        m = len(summaries)
        if m < self.n - self.f or m <= self.f:
            return math.nan
        index = min(math.ceil(self.quantile * m), m - self.f)
        return summaries[max(index, 1) - 1]

    def reference(self, version: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The accepted gradient k is measured against: the latest one computed at least
        ``gap`` versions before ``version``, else the oldest one at another version."""
        older = [(g, x) for g, x, v in self.references if v <= version - self.gap]
        if older:
            return older[-1]
        other = [(g, x) for g, x, v in self.references if v != version]
        return other[0] if other else None

    def coefficient(self, g: torch.Tensor, x: torch.Tensor, version: int) -> float:
        """k against :meth:`reference` (NaN when there is none)."""
        ref = self.reference(version)
        if ref is None:
            return math.nan
        dx = float((x - ref[1]).norm())
        return float((g - ref[0]).norm()) / dx if dx > 0 else math.nan

    # ------------------------------------------------------------------ decisions
    def check(self, worker: int, g: torch.Tensor, x: torch.Tensor, version: int) -> Verdict:
        """Decide on gradient ``g`` of ``worker``, computed at model ``x`` of ``version``."""
        k = self.coefficient(g, x, version) if self.lipschitz else math.nan
        if self.lipschitz and not math.isnan(k):
            kept = self.coefficients.setdefault(worker, deque(maxlen=self.history))
            kept.append(k)
        verdict = self._decide(worker, k)
        if not verdict.accepted and self.liveness is not None and self.rejections >= self.liveness:
            verdict = Verdict(True, "liveness", verdict.k, verdict.threshold)
        self.rejections = 0 if verdict.accepted else self.rejections + 1
        return verdict

    def _decide(self, worker: int, k: float) -> Verdict:
        threshold = self.threshold() if self.lipschitz else math.nan
        if self.lipschitz:
            if math.isnan(k):
                return Verdict(False, "no_reference", k, threshold)
            if math.isnan(threshold):
                return Verdict(False, "warmup", k, threshold)
            if not k <= threshold:
                return Verdict(False, "lipschitz", k, threshold)
        if self.frequency and self.recent.count(worker) >= self.per_window:
            return Verdict(False, "frequency", k, threshold)
        return Verdict(True, "accepted", k, threshold)

    def accept(self, worker: int, g: torch.Tensor, x: torch.Tensor, version: int) -> None:
        """Record an applied gradient (the reference of later coefficients)."""
        self.references.append((g, x, int(version)))
        self.recent.append(int(worker))

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "coefficients": {w: list(c) for w, c in self.coefficients.items()},
            "references": [[g, x, v] for g, x, v in self.references],
            "recent": list(self.recent),
            "rejections": self.rejections,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.coefficients = {
            int(w): deque((float(v) for v in c), maxlen=self.history)
            for w, c in state["coefficients"].items()
        }
        self.references.clear()
        self.references.extend((g, x, int(v)) for g, x, v in state["references"])
        self.recent.clear()
        self.recent.extend(int(w) for w in state["recent"])
        self.rejections = int(state["rejections"])
