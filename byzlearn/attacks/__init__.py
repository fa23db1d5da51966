"""Byzantine behaviours: gradient-space attacks, data poisoning and node behaviours.

>>> import torch, byzlearn.attacks as atk
>>> honest = torch.randn(20, 1000) + 1.0           # the (h, d) honest vectors of this step
>>> byz = atk.get("alie")(honest, f=5)             # (5, 1000): f identical Byzantine vectors
>>> byz = atk.get("leeway")(honest, f=5, rule="krum", coordinates=0)   # rule-aware
>>> byz = atk.get("gaussian")(honest, f=5, generator=torch.Generator().manual_seed(0))
>>> # (5, 1000): f distinct draws, gaussian's default (identical=True: one draw sent f times)

Every attack is ``attack(honest, f, *, rule=None, rule_options=None, generator=None,
identical=None, **options)``: a pure function of what an omniscient adversary knows (this step's
honest vectors, n = h + f, the rule in use, a seeded generator) returning the ``(f, d)``
Byzantine vectors in the caller's kind, dtype and device. ``identical=None`` is the attack's own
default (``atk.spec(name).identical_default``: ``False`` for gaussian and bitflip, whose papers
have each Byzantine worker send its own vector; ``True`` otherwise). Unknown options raise
``TypeError``; a rule-aware attack called without ``rule`` raises ``ValueError``; ``f = 0``
gives ``(0, d)``.
See ``docs/attacks.md`` for the list, the formulas, defaults and references.

Data poisoning: :func:`flip_labels`, :func:`targeted_flip`. Node behaviours for protocols:
:mod:`byzlearn.attacks.behaviours` (``Crash``, ``Omission``, ``Delay``, ``Equivocation``).
The (attack x rule) damage table: :func:`byzlearn.attacks.matrix.attack_matrix`.
"""

from byzlearn.attacks import gradient as _gradient  # noqa: F401  (registers the attacks)
from byzlearn.attacks import minmax as _minmax  # noqa: F401
from byzlearn.attacks import optimised as _optimised  # noqa: F401
from byzlearn.attacks import strategic as _strategic  # noqa: F401
from byzlearn.attacks._context import AttackContext, honest_mean
from byzlearn.attacks._registry import (
    Attack,
    AttackSpec,
    RunningState,
    aliases,
    get,
    is_rule_aware,
    names,
    needs_rule,
    spec,
)
from byzlearn.attacks._search import maximise_factor
from byzlearn.attacks.behaviours import (
    Behaviour,
    Crash,
    Delay,
    Equivocation,
    Omission,
    Reliable,
)
from byzlearn.attacks.gradient import alie_z
from byzlearn.attacks.mimic import MimicState
from byzlearn.attacks.minmax import min_max_gamma, min_sum_gamma
from byzlearn.attacks.poisoning import flip_labels, targeted_flip

__all__ = [
    "Attack",
    "AttackContext",
    "AttackSpec",
    "Behaviour",
    "Crash",
    "Delay",
    "Equivocation",
    "MimicState",
    "Omission",
    "Reliable",
    "RunningState",
    "aliases",
    "alie_z",
    "flip_labels",
    "get",
    "honest_mean",
    "is_rule_aware",
    "maximise_factor",
    "min_max_gamma",
    "min_sum_gamma",
    "names",
    "needs_rule",
    "spec",
    "targeted_flip",
]
