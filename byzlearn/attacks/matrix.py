"""The (attack x rule) damage table on synthetic Gaussian honest vectors.

Setup (one draw, seeded): ``h = n - f`` honest vectors ``g_i = signal * 1_d + xi_i`` with
``xi_i ~ N(0, I_d)`` (so ``||E g|| = signal * sqrt(d)`` and the variance-norm ratio is
``1 / signal``), and the f Byzantine vectors of each attack (rule-aware attacks are given the
rule of the column). The cell is

    ||F(honest ∪ byzantine) - mean(honest)|| / s,   s = sqrt( sum_i ||g_i - mean||^2 / (h - 1) )

i.e. the aggregate's distance to the honest mean in units of the honest **norm standard
deviation** ``s`` (the square root of the trace of the honest sample covariance, about
``sqrt(d)`` here): 1 means "as far from the mean as a typical honest vector". A non-finite
aggregate gives ``inf``; a rule that raises gives ``nan`` (the message is kept in ``errors``).
The row ``"none"`` is the baseline where the f Byzantine workers behave honestly (f more draws).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch

import byzlearn.aggregators as agg
from byzlearn.attacks._checks import integer, real
from byzlearn.attacks._context import norm_std
from byzlearn.attacks._registry import get, names

#: The largest seed (the draws use seeds up to ``seed + 10 000``, within torch's 64 bits).
MAX_SEED = 2**63 - 1

RULES: tuple[str, ...] = (
    "average",
    "median",
    "trimmed_mean",
    "meamed",
    "phocas",
    "krum",
    "multi_krum",
    "geometric_median",
    "mda",
    "bulyan",
    "centered_clipping",
    "nnm+krum",
)
BASELINE = "none"


def honest_draw(h: int, d: int, *, signal: float = 1.0, seed: int = 0) -> torch.Tensor:
    """The ``(h, d)`` float64 honest vectors ``signal * 1 + N(0, I)`` of the table (seeded)."""
    g = torch.Generator().manual_seed(seed)
    return signal + torch.randn(h, d, generator=g, dtype=torch.float64)


def attack_matrix(
    attacks: Sequence[str] | None = None,
    rules: Sequence[str] | None = None,
    *,
    n: int = 25,
    f: int = 5,
    d: int = 1000,
    seed: int = 0,
    signal: float = 1.0,
    attack_options: dict[str, dict] | None = None,
) -> dict:
    """Compute the table (see the module docstring).

    Args:
        attacks: attack names (default: ``"none"`` then every registered attack).
        rules: aggregator names, compositions allowed (default :data:`RULES`).
        n, f, d: sizes (``h = n - f >= 2`` honest vectors).
        seed: seeds the honest draw (``seed``) and the attacks' generator (``seed + 1``);
            0 to :data:`MAX_SEED`.
        signal: the honest mean is ``signal * 1_d`` (default 1).
        attack_options: per-attack options, e.g. ``{"leeway": {"evaluations": 16}}``.

    Returns a dict with ``values[attack][rule]`` (float), ``rows``, ``columns``, ``n``, ``f``,
    ``d``, ``seed``, ``signal``, ``honest_std`` (``s``), ``errors[(attack, rule)]`` and
    ``seconds``.
    """
    n = integer("attack_matrix", "n", n, minimum=3)
    f = integer("attack_matrix", "f", f, minimum=0)
    d = integer("attack_matrix", "d", d, minimum=1)
    seed = integer("attack_matrix", "seed", seed, minimum=0)
    if seed > MAX_SEED:  # seed + 10 000 must still seed a torch generator
        raise ValueError(f"attack_matrix: seed must be <= {MAX_SEED}, got {seed}")
    signal = real("attack_matrix", "signal", signal)
    if n - f < 2:
        raise ValueError(f"attack_matrix: needs n - f >= 2 honest vectors, got n={n}, f={f}")
    rows = [BASELINE, *names()] if attacks is None else list(attacks)
    cols = list(RULES if rules is None else rules)
    opts = dict(attack_options or {})
    for r in cols:
        agg.check(r, n, f)
    for a in rows:  # unknown names fail here, before any work
        if a != BASELINE:
            get(a)
    honest = honest_draw(n - f, d, signal=signal, seed=seed)
    extra = honest_draw(f, d, signal=signal, seed=seed + 10_000)
    mean = honest.mean(0)
    s = norm_std(honest)
    values: dict[str, dict[str, float]] = {}
    errors: dict[tuple[str, str], str] = {}
    start = time.perf_counter()
    for a in rows:
        values[a] = {}
        fixed = None
        if a != BASELINE and not get(a).spec.rule_aware:
            fixed = _byzantine(a, honest, f, None, seed, opts.get(a, {}))
        for r in cols:
            try:
                if a == BASELINE:
                    byz = extra
                elif fixed is not None:
                    byz = fixed
                else:
                    byz = _byzantine(a, honest, f, r, seed, opts.get(a, {}))
                out = agg.get(r)(torch.cat([honest, byz]), f=f).to(torch.float64)
                dist = float(torch.linalg.vector_norm(out - mean))
                values[a][r] = dist / s if math.isfinite(dist) else math.inf
            except (ValueError, RuntimeError) as exc:
                values[a][r] = math.nan
                errors[(a, r)] = f"{type(exc).__name__}: {exc}"
    return {
        "values": values,
        "rows": rows,
        "columns": cols,
        "n": n,
        "f": f,
        "d": d,
        "seed": seed,
        "signal": signal,
        "honest_std": s,
        "errors": errors,
        "seconds": time.perf_counter() - start,
    }


def _byzantine(
    attack: str, honest: torch.Tensor, f: int, rule: str | None, seed: int, options: dict
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    return get(attack)(honest, f, rule=rule, generator=g, **options)


def format_matrix(result: dict, *, markdown: bool = False, digits: int = 2) -> str:
    """The table of :func:`attack_matrix` as plain text or a Markdown table."""
    cols = result["columns"]
    header = ["attack \\ rule", *cols]
    body = [[a, *(_cell(result["values"][a][r], digits) for r in cols)] for a in result["rows"]]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *body]
    )


def _cell(v: float, digits: int) -> str:
    if math.isnan(v):
        return "error"
    if math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}" if v < 1e4 else f"{v:.2e}"
