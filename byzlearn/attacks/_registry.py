"""Registry of gradient-space attacks, by name (same style as :mod:`byzlearn.aggregators`).

Every attack is written as an *implementation* ``impl(ctx, *, option=default, ...)`` working on an
:class:`~byzlearn.attacks._context.AttackContext` (the honest vectors, n, f, the rule in use, the
generator) and returning either one ``(d,)`` vector (sent by all f Byzantine workers) or an
``(f, d)`` tensor. :func:`register` wraps it into the public function

    attack(honest, f, *, rule=None, rule_options=None, generator=None, identical=None, **options)

that validates the common arguments and the options (unknown option -> ``TypeError`` naming it),
resolves the rule, and gives the ``(f, d)`` result back in the caller's kind, dtype and device.

* ``rule`` is needed by rule-aware attacks only (``ValueError`` when missing; :func:`needs_rule`
  says whether a call needs it, e.g. ``leeway`` with a given ``epsilon`` does not); other attacks
  ignore it.
* ``identical``: ``True``: the f rows are equal (the convention of the reference codes for
  attacks that compute one vector); ``False``: attacks registered with ``distinct=True``
  (gaussian, large_norm, nonfinite, bitflip) send f different vectors; the others have a single
  vector to send and still return f equal rows. ``None`` (default): the attack's own default,
  :attr:`AttackSpec.identical_default`, which follows the attack's paper where the paper is
  explicit: ``False`` for ``gaussian`` (the Krum paper's Byzantine workers each draw their own
  noise) and ``bitflip`` (each Byzantine worker negates its own gradient), ``True`` for the
  others.
* ``generator``: the only source of randomness (``randomized=True`` attacks); the same seed
  gives the same result.
* ``f = 0`` returns an empty ``(0, d)`` result after the common checks.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from byzlearn.aggregators._inputs import check_options as _check_options
from byzlearn.aggregators._inputs import without_grad
from byzlearn.attacks._context import AttackContext, make_context
from byzlearn.registry import Registry


@dataclass(frozen=True)
class RunningState:
    """An attack state the caller keeps across steps (declared on the attack's spec).

    ``factory(**options)`` builds the initial state from the config ``options`` named in
    ``options`` (they go to the factory, not to the attack); each step the caller replaces the
    state by ``state.observe(honest)`` and passes it to the attack as ``state=``. A config that
    gives none of these options runs the attack without a state.
    """

    factory: Callable[..., Any]
    options: tuple[str, ...]


@dataclass(frozen=True)
class AttackSpec:
    """What the registry knows of one gradient-space attack."""

    name: str
    impl: Callable[..., torch.Tensor]
    rule_aware: bool  # needs the aggregation rule (unless ``needs_rule`` says otherwise)
    distinct: bool  # honours identical=False by sending distinct vectors
    randomized: bool  # uses the generator
    reference: str
    options: tuple[str, ...]
    defaults: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    needs_rule: Callable[[dict], bool] | None = None  # option-dependent rule need
    identical_default: bool = True  # what identical=None means for this attack
    running_state: RunningState | None = None  # state kept across steps by the caller

    @property
    def config_options(self) -> tuple[str, ...]:
        """The options a config may give: the attack's own (without ``state``, which the
        caller makes) and those of its running state."""
        own = tuple(o for o in self.options if o != "state" or self.running_state is None)
        return own + (self.running_state.options if self.running_state else ())

    def start(self, options: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """Split config ``options`` into the attack's options and its initial running state
        (``None`` when the attack has none or none of its options is given)."""
        rs = self.running_state
        if rs is None:
            return dict(options), None
        own = {k: v for k, v in options.items() if k not in rs.options}
        given = {k: v for k, v in options.items() if k in rs.options}
        return own, (rs.factory(**given) if given else None)

    @property
    def summary(self) -> str:
        """First line of the docstring."""
        doc = (self.impl.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


# the public attacks by name; each carries its AttackSpec (``.spec``)
_ATTACKS: Registry[Attack] = Registry(
    "attack", normalise=lambda name: name.lower().replace("-", "_")
)


def _options_of(impl: Callable) -> tuple[tuple[str, ...], dict[str, Any]]:
    params = list(inspect.signature(impl).parameters.values())[1:]  # skip ctx
    opts = [p for p in params if p.kind == p.KEYWORD_ONLY]
    return tuple(p.name for p in opts), {p.name: p.default for p in opts}


def register(
    name: str,
    *,
    rule_aware: bool = False,
    distinct: bool = False,
    randomized: bool = False,
    reference: str = "",
    aliases: tuple[str, ...] = (),
    needs_rule: Callable[[dict], bool] | None = None,
    identical_default: bool = True,
    running_state: RunningState | None = None,
) -> Callable[[Callable[..., torch.Tensor]], Attack]:
    """Register ``impl(ctx, *, option=default, ...)`` under ``name``; return the public attack.

    ``identical_default`` is what ``identical=None`` (the default of the call) means for this
    attack; ``False`` needs ``distinct=True``. ``running_state`` declares a state the caller
    keeps across steps (the attack then takes it as its ``state`` option).
    """
    if not identical_default and not distinct:
        raise ValueError(f"attack {name!r}: identical_default=False needs distinct=True")

    def decorate(impl: Callable[..., torch.Tensor]) -> Attack:
        options, defaults = _options_of(impl)
        spec = AttackSpec(
            name=name,
            impl=impl,
            rule_aware=rule_aware,
            distinct=distinct,
            randomized=randomized,
            reference=reference,
            options=options,
            defaults=defaults,
            aliases=tuple(aliases),
            needs_rule=needs_rule,
            identical_default=bool(identical_default),
            running_state=running_state,
        )
        public = Attack(spec)
        _ATTACKS.add(name, public, aliases=tuple(aliases))
        return public

    return decorate


class Attack:
    """The public callable of one registered attack (what :func:`get` returns)::

        attack(honest, f, *, rule=None, rule_options=None, generator=None, identical=None,
               **options) -> (f, d) Byzantine vectors in the caller's kind, dtype and device

    ``spec`` is its :class:`AttackSpec`; ``inspect.signature(attack)`` lists its options.
    """

    def __init__(self, spec: AttackSpec) -> None:
        self.spec = spec
        self.__name__ = self.__qualname__ = spec.name
        self.__doc__ = spec.impl.__doc__
        self.__module__ = spec.impl.__module__
        impl_params = list(inspect.signature(spec.impl).parameters.values())[1:]
        P = inspect.Parameter
        self.__signature__ = inspect.Signature(
            [
                P("honest", P.POSITIONAL_OR_KEYWORD),
                P("f", P.POSITIONAL_OR_KEYWORD),
                P("rule", P.KEYWORD_ONLY, default=None),
                P("rule_options", P.KEYWORD_ONLY, default=None),
                P("generator", P.KEYWORD_ONLY, default=None),
                P("identical", P.KEYWORD_ONLY, default=None),
                *impl_params,
            ]
        )

    def __call__(
        self,
        honest: Any,
        f: int,
        *,
        rule: str | Callable[..., Any] | None = None,
        rule_options: dict[str, Any] | None = None,
        generator: torch.Generator | None = None,
        identical: bool | None = None,
        **options: Any,
    ) -> Any:
        return apply(
            self.spec.name,
            honest,
            f,
            rule=rule,
            rule_options=rule_options,
            generator=generator,
            identical=identical,
            options=options,
        )

    def __repr__(self) -> str:
        return f"<attack {self.spec.name}>"


# --- lookup --------------------------------------------------------------------------------
def names(kind: str | None = None) -> list[str]:
    """Names of the registered gradient-space attacks (canonical names, no aliases).

    ``kind="rule_aware"`` lists only the attacks that use the aggregation rule, ``"fixed"`` only
    the others; ``None`` (default) lists all.
    """
    if kind not in (None, "rule_aware", "fixed"):
        raise ValueError(f"kind must be None, 'rule_aware' or 'fixed', got {kind!r}")
    return sorted(
        n
        for n, a in _ATTACKS.items()
        if kind is None or (a.spec.rule_aware if kind == "rule_aware" else not a.spec.rule_aware)
    )


def aliases() -> dict[str, str]:
    """Alias -> canonical name (e.g. ``"fall_of_empires" -> "ipm"``)."""
    return _ATTACKS.aliases()


def spec(name: str) -> AttackSpec:
    """The :class:`AttackSpec` of one attack (aliases accepted)."""
    return _ATTACKS.get(name).spec


def get(name: str) -> Attack:
    """The public attack callable for ``name`` (aliases and ``-``/``_`` spellings accepted)."""
    return _ATTACKS.get(name)


def is_rule_aware(name: str) -> bool:
    """True when the attack ``name`` may use the aggregation rule (it is 'rule-aware')."""
    return spec(name).rule_aware


def needs_rule(name: str, **options) -> bool:
    """True when calling ``name`` with ``options`` requires ``rule=...``.

    Rule-aware attacks need it, except where an option fixes the factor (e.g. ``leeway`` with
    ``epsilon=...``). Unknown options raise ``TypeError`` as they would in the call.
    """
    s = spec(name)
    _check_options(s.name, s.options, options)
    if not s.rule_aware:
        return False
    return True if s.needs_rule is None else bool(s.needs_rule({**s.defaults, **options}))


# --- application ---------------------------------------------------------------------------
def apply(
    name: str,
    honest,
    f: int,
    *,
    rule=None,
    rule_options: dict | None = None,
    generator: torch.Generator | None = None,
    identical: bool | None = None,
    options: dict | None = None,
):
    """Run the attack ``name``; the body of every public attack.

    ``identical=None`` is the attack's own default (:attr:`AttackSpec.identical_default`).
    """
    s = spec(name)
    if identical is None:
        identical = s.identical_default
    options = dict(options or {})
    _check_options(s.name, s.options, options)
    required = s.rule_aware and (s.needs_rule is None or s.needs_rule({**s.defaults, **options}))
    ctx, kind = make_context(
        s.name,
        honest,
        f,
        rule=rule,
        rule_options=rule_options,
        generator=generator,
        identical=identical,
        rule_required=required,
    )
    if ctx.f == 0:
        return kind.restore(ctx.honest.new_zeros((0, ctx.d)))
    with without_grad():
        out = s.impl(ctx, **options)
        out = ctx.finish(out)
    return kind.restore(out)


__all__ = [
    "Attack",
    "AttackContext",
    "AttackSpec",
    "aliases",
    "apply",
    "get",
    "is_rule_aware",
    "names",
    "needs_rule",
    "register",
    "spec",
]
