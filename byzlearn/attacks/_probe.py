"""Try an attack's option values once on small random honest vectors (:func:`probe_attack`).

A config names an attack and its options; the names are checked by the registry, but only the
attack itself knows which *values* it takes (a negative ``std``, a coordinate index beyond d, a
worker index beyond h, a string where a number goes). In a run a refused value surfaces late
and badly: a ``ValueError`` is read as "too little observed" (the Byzantine nodes silently send
nothing) and a ``TypeError`` aborts the run at its first step. The config readers (the workers'
``attack``, the replicated servers' ``server_attack``) therefore run the attack once when the
config is parsed, as a run calls it, and turn its refusal into one line naming the option.
"""

from __future__ import annotations

from typing import Any

import torch

from byzlearn.attacks._registry import get, spec
from byzlearn.attacks._search import MAX_EVALUATIONS
from byzlearn.attacks.strategic import MAX_RESTARTS

PROBE_DIM = 4
"""The fewest coordinates of the probe's honest vectors."""
PROBE_VALUES = 1 << 22
"""The most values of the probe's honest vectors (16 MiB of float32)."""
BUDGET_CAPS = (("evaluations", 8, MAX_EVALUATIONS), ("restarts", 1, MAX_RESTARTS))
"""The probe checks values, not quality: the search budgets of rule-aware attacks are capped
(an absent one, the attack's default, and an int above the cap become the cap; one below it,
above the largest budget the attacks take, or not an int is kept, so that an invalid one stays
invalid)."""


def probe_dim(options: dict[str, Any], rows: int, max_dim: int) -> int:
    """Coordinates of the ``rows`` honest vectors the ``options`` are tried on: enough for every
    integer in them (in lists too) to be a coordinate index (leeway's ``coordinates: 10`` was
    refused on 4 coordinates), at most ``max_dim`` (the model's: an index beyond it fails in
    the run too), and at most :data:`PROBE_VALUES` values over the rows; at least
    :data:`PROBE_DIM`."""
    largest = PROBE_DIM - 1
    pending: list[Any] = list(options.values())
    while pending:
        value = pending.pop()
        if isinstance(value, (list, tuple)):
            pending.extend(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            largest = max(largest, value)
    return max(PROBE_DIM, min(max_dim, largest + 1, PROBE_VALUES // max(rows, 1)))


def probe_attack(
    name: str,
    options: dict[str, Any],
    *,
    honest: int,
    f: int,
    max_dim: int,
    rule: str | None = None,
    rule_options: dict[str, Any] | None = None,
    identical: bool | None = None,
) -> None:
    """Run the attack ``name`` once with the config ``options``, as a run does: the options are
    split into the attack's own and its running state (:meth:`~byzlearn.attacks.AttackSpec.
    start`), the state observes the honest vectors and is passed as ``state=``, and the search
    budgets are capped (:data:`BUDGET_CAPS`). The ``honest`` vectors (at most
    :data:`PROBE_VALUES` / :data:`PROBE_DIM` of them) have :func:`probe_dim` coordinates and are
    drawn from a generator seeded with 0, which the attack also gets.

    Raises whatever the attack raises for a bad value (``ValueError``, ``TypeError``); the
    caller adds the config field to the message.
    """
    attack_spec = spec(name)
    own, state = attack_spec.start(options)
    for key, cap, largest in BUDGET_CAPS:
        if key in attack_spec.options:  # an absent budget is the attack's default, above cap
            value = own.get(key, cap)
            # an int only: min(100.0, 8) would turn a float the run refuses into the int cap;
            # and one the attack takes: 10**30 would have become the cap, refused in the run
            valid = isinstance(value, int) and value <= largest
            own[key] = min(value, cap) if valid else value
    rows = min(honest, PROBE_VALUES // PROBE_DIM)
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(rows, probe_dim(own, rows, max_dim), generator=generator)
    extra = {} if state is None else {"state": state.observe(vectors)}
    get(name)(
        vectors,
        f,
        rule=rule,
        rule_options=rule_options,
        generator=generator,
        identical=identical,
        **own,
        **extra,
    )
