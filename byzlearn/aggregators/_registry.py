"""Registry of aggregation rules and pre-aggregators, by name, with composition ``"nnm+krum"``.

Every rule is written as an *implementation* that works on :class:`~._gram.Inputs` (n vectors with
their shared Gram matrix) and returns either a :class:`Combination` (weights over the input rows:
distance-based rules), a (d,) tensor (coordinate-wise rules) or, for pre-aggregators, new
``Inputs``. :func:`register` wraps it into the public function ``rule(vectors, f=0, **options)``
that checks the input, ``f``, the options and the rule's n/f requirement, and gives the result back
in the caller's kind.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from byzlearn.aggregators._gram import DEFAULT_MAX_MISSING, BaseGram, Inputs
from byzlearn.aggregators._inputs import (
    InputKind,
    Vectors,
    as_matrix,
    check_f,
    check_requirement,
)
from byzlearn.aggregators._inputs import check_options as _check_options
from byzlearn.aggregators._inputs import without_grad as _without_grad
from byzlearn.aggregators._speculate import Guess
from byzlearn.registry import Registry


@dataclass
class Combination:
    """A rule's output as weights over the rows of its Inputs (plus an optional centre term).

    output = sum_i alpha_i Y_i + centre_weight * centre   (or ``value`` when given)
    ``kept`` lists the rows a selection rule kept (None for rules that select nothing).
    """

    inputs: Inputs
    alpha: torch.Tensor | None  # float64 (n,); None when ``value`` is given
    kept: torch.Tensor | None = None
    centre_weight: float = 0.0
    centre: torch.Tensor | None = None
    value: torch.Tensor | None = None  # an output already computed (e.g. Bulyan's second phase)

    def vector(self) -> torch.Tensor:
        """The (d,) output vector (one pass over the rows with non-zero weight)."""
        if self.value is not None:
            return self.value
        if self.alpha is None:
            raise ValueError("internal error: a combination with neither weights nor a value")
        out = self.inputs.combine(self.alpha)
        if self.centre_weight != 0.0 and self.centre is not None:
            out = out + self.centre_weight * self.centre
        return out


Output = Combination | torch.Tensor | Inputs


def equal_weights(n: int, rows) -> torch.Tensor:
    """The float64 weights ``1 / len(rows)`` on ``rows`` (distinct indices) and 0 on the other
    of n inputs: the mean of a selection. Built in numpy (a torch zeros and an indexed write
    took about 20 us on one core, a sizeable part of a small model's aggregation)."""
    index = np.asarray(rows, dtype=np.int64).reshape(-1)
    alpha = np.zeros(n)
    alpha[index] = 1.0 / index.size
    return torch.from_numpy(alpha)


@dataclass(frozen=True)
class RuleSpec:
    """What the registry knows of one rule."""

    name: str
    impl: Callable[..., Output]
    kind: str  # "rule" or "pre"
    min_n: Callable[[int], int]
    requirement: str
    selects: bool
    options: tuple[str, ...]
    out_n: Callable[[int, dict], int] | None = None  # pre-aggregators: how many vectors come out
    needs_gram: bool = True  # distance-based (needs the Gram pass) or not
    accepts_centre: bool = False
    max_missing: float = DEFAULT_MAX_MISSING  # default missing-coordinate budget of its rows
    # weights over the inputs decided by the distances and deterministic (a subset's mean):
    # guessed from the Gram pass's first blocks, the output written during the pass (._speculate)
    guessable: bool = False
    # options of those guesses (over the caller's): a bound on a dear search
    guess_options: tuple[tuple[str, Any], ...] = ()


_RULES: Registry[RuleSpec] = Registry("aggregator")
_PUBLIC: dict[str, AggregationRule] = {}


def _options_of(impl: Callable) -> tuple[str, ...]:
    params = list(inspect.signature(impl).parameters.values())[2:]  # skip (inputs, f)
    return tuple(p.name for p in params if p.kind == p.KEYWORD_ONLY)


def register(
    name: str,
    *,
    kind: str = "rule",
    min_n: Callable[[int], int] = lambda f: max(1, f + 1),
    requirement: str = "n >= f + 1",
    selects: bool = False,
    out_n: Callable[[int, dict], int] | None = None,
    needs_gram: bool = True,
    accepts_centre: bool = False,
    max_missing: float = DEFAULT_MAX_MISSING,
    guessable: bool = False,
    guess_options: tuple[tuple[str, Any], ...] = (),
) -> Callable[[Callable[..., Output]], Callable]:
    """Register ``impl(inputs, f, *, option=default, ...)`` under ``name``.

    Returns ``impl`` unchanged (so implementations can call each other); the public callable is
    ``get(name)``.
    """

    def decorate(impl: Callable[..., Output]) -> Callable:
        spec = RuleSpec(
            name=name,
            impl=impl,
            kind=kind,
            min_n=min_n,
            requirement=requirement,
            selects=selects,
            options=_options_of(impl),
            out_n=out_n,
            needs_gram=needs_gram,
            accepts_centre=accepts_centre,
            max_missing=max_missing,
            guessable=guessable,
            guess_options=guess_options,
        )
        _RULES.add(name, spec)
        _PUBLIC[name] = _make_public(spec)
        return impl

    return decorate


class AggregationRule:
    """The public callable of a registered rule or composition (what :func:`get` returns)::

        rule(vectors, f=0, **options) -> the (d,) aggregate (pre-aggregators: the new vectors),
        in the caller's kind, dtype, device and shape

    ``name`` is its registry name (``"nnm+krum"`` for a composition); ``inspect.signature``
    lists its options.
    """

    def __init__(self, name: str, doc: str | None, module: str, params: list) -> None:
        self.name = name
        self.__name__ = self.__qualname__ = name
        self.__doc__ = doc
        self.__module__ = module
        P = inspect.Parameter
        head = [P("vectors", P.POSITIONAL_OR_KEYWORD), P("f", P.POSITIONAL_OR_KEYWORD, default=0)]
        self.__signature__ = inspect.Signature([*head, *params])

    def __call__(self, vectors: Vectors | Prepared, f: int = 0, **options: Any) -> Any:
        return apply(self.name, vectors, f, options)

    def __repr__(self) -> str:
        return f"<aggregation rule {self.name}>"


def _make_public(spec: RuleSpec) -> AggregationRule:
    params = list(inspect.signature(spec.impl).parameters.values())[2:]
    return AggregationRule(spec.name, spec.impl.__doc__, spec.impl.__module__, params)


# --- lookup --------------------------------------------------------------------------------
def names(kind: str | None = None) -> list[str]:
    """Names of the registered rules (``kind="rule"``), pre-aggregators (``"pre"``) or all."""
    return sorted(n for n, s in _RULES.items() if kind is None or s.kind == kind)


def spec(name: str) -> RuleSpec:
    """The :class:`RuleSpec` of one registered name (no composition)."""
    return _RULES.get(name)


def accepts(name: str, option: str) -> bool:
    """Whether the (possibly composed) rule ``name`` takes ``option`` (in one of its parts)."""
    return any(option in p.options for p in _parts(name))


def call_options(
    name: str,
    options: dict[str, Any] | None = None,
    *,
    centre: torch.Tensor | None = None,
    key: tuple | None = None,
) -> dict[str, Any]:
    """``options`` completed the way a role calls the rule ``name`` step after step: a centred
    rule (centred clipping) starts from ``centre`` (the previous aggregate, a peer's own
    vector) when its options give no ``center``; a randomised rule (bucketing) gets a generator
    keyed on ``key`` (:func:`byzlearn.keyed.generator`) when its options fix neither a
    ``generator`` nor a ``seed``; in a composition of several randomised parts
    (``bucketing+dnc``) each part gets its own, keyed on ``(*key, part)``, in its
    ``<part>_options``."""
    from byzlearn import keyed

    opts = dict(options or {})
    takes_centre, drawing = _call_needs(name)
    if centre is not None and takes_centre and "center" not in opts:
        opts["center"] = centre
    if key is None or not drawing:
        return opts
    if len(drawing) == 1:  # the one randomised part takes the plain option
        if not {"generator", "seed"} & set(opts):
            opts["generator"] = keyed.generator(key)
        return opts
    for part in drawing:  # several (bucketing+dnc): each its own stream, in its own options
        sub = dict(opts.get(f"{part}_options") or {})
        if not {"generator", "seed"} & set(sub):
            sub["generator"] = keyed.generator((*key, part))
            opts[f"{part}_options"] = sub
    return opts


@functools.lru_cache(maxsize=256)
def _call_needs(name: str) -> tuple[bool, tuple[str, ...]]:
    """Whether the (possibly composed) rule ``name`` starts from a centre, and the names of
    its parts that take a generator: :func:`call_options` asks every step, and the registry
    is fixed by then."""
    drawing = tuple(dict.fromkeys(p.name for p in _parts(name) if "generator" in p.options))
    return spec(name.split("+")[-1].strip()).accepts_centre, drawing


def _parts(name: str) -> list[RuleSpec]:
    if not isinstance(name, str) or not name:
        raise TypeError(f"an aggregator name must be a non-empty string, got {name!r}")
    pieces = [p.strip() for p in name.split("+")]
    if "" in pieces:
        raise ValueError(f"{name!r}: an empty part; compose names as 'pre+rule' (e.g. 'nnm+krum')")
    parts = [spec(p) for p in pieces]
    for p in parts[:-1]:
        if p.kind != "pre":
            raise ValueError(
                f"{name!r}: only pre-aggregators ({', '.join(names('pre'))}) may come before "
                f"'+', but {p.name!r} is a rule"
            )
    return parts


def is_preaggregator(name: str) -> bool:
    """True when ``name`` (possibly composed) returns vectors rather than one aggregate."""
    return _parts(name)[-1].kind == "pre"


def get(name: str) -> AggregationRule:
    """The public callable for ``name``; ``"nnm+krum"`` composes pre-aggregators left to right.

    Options of a composed rule go to the one component that accepts them; when two accept the
    same name, pass ``<component>_options={...}`` for that component.
    """
    parts = _parts(name)
    if len(parts) == 1:
        return _PUBLIC[parts[0].name]
    doc = f"Composition {' then '.join(p.name for p in parts)} (left to right)."
    params = [
        inspect.Parameter(o, inspect.Parameter.KEYWORD_ONLY, default=None)
        for p in parts
        for o in p.options
    ]
    unique = list({p.name: p for p in params}.values())
    return AggregationRule(name, doc, __name__, unique)


def check(name: str, n: int, f: int, **options) -> None:
    """Raise ``ValueError`` when ``name`` cannot run on n inputs with f Byzantine ones
    (``TypeError`` for an unknown option)."""
    f = check_f(f, name)
    parts = _parts(name)
    options = dict(options)
    _max_missing(name, parts, options)
    _check_sizes(parts, _route(name, parts, options), n, f)


def _check_sizes(parts: list[RuleSpec], routed: list[dict], n: int, f: int) -> None:
    """Check each part's n/f requirement on the number of inputs it receives."""
    for part, opts in zip(parts, routed, strict=True):
        check_requirement(part.name, n, f, part.min_n, part.requirement)
        if part.out_n is not None:
            n = part.out_n(n, opts)


def largest_f(name: str, n: int, f: int, **options) -> int | None:
    """The largest ``f' <= f`` for which ``name`` can run on ``n`` inputs (None if no f' >= 0).

    A protocol that received fewer inputs than its rule needs may aggregate with this f'
    (a documented failure policy: fewer Byzantine inputs tolerated, but no crash). A rule that
    tolerates f' Byzantine inputs tolerates fewer (every requirement grows with f), so a
    bisection finds f' in O(log f) checks; a scan from f down took minutes for a huge f.
    """

    def runs(g: int) -> bool:
        try:
            check(name, n, g, **options)
        except ValueError:
            return False
        return True

    f = int(f)
    if f < 0 or not runs(0):
        return None
    if runs(f):
        return f
    low, high = 0, f  # low runs, high does not
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if runs(middle) else (low, middle)
    return low


def _max_missing(name: str, parts: list[RuleSpec], options: dict) -> float:
    """Pop and validate the ``max_missing`` option (distance-based rules only); the default is
    the smallest of the parts' defaults."""
    if "max_missing" not in options:
        return min((p.max_missing for p in parts if p.needs_gram), default=DEFAULT_MAX_MISSING)
    value = options.pop("max_missing")
    if not any(p.needs_gram for p in parts):
        raise TypeError(
            f"{name}() got an unexpected option 'max_missing' (it applies to distance-based "
            "rules, which build the Gram matrix)"
        )
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name}: max_missing must be a number in [0, 1], got {value!r}")
    return float(value)


def _route(name: str, parts: list[RuleSpec], options: dict) -> list[dict]:
    routed: list[dict] = [{} for _ in parts]
    rest = dict(options)
    for i, p in enumerate(parts):
        key = f"{p.name}_options"
        if key in rest and len(parts) > 1:
            extra = rest.pop(key)
            if not isinstance(extra, dict):
                raise TypeError(f"{key} must be a dict of options")
            _check_options(p.name, p.options, extra)
            routed[i].update(extra)
    for opt, value in rest.items():
        owners = [i for i, p in enumerate(parts) if opt in p.options]
        if not owners:
            allowed = tuple(o for p in parts for o in p.options)
            _check_options(name, allowed, {opt: value})
        if len(owners) > 1:
            raise TypeError(
                f"{name}: option {opt!r} is accepted by several components; pass it as "
                f"<component>_options={{...}}"
            )
        routed[owners[0]][opt] = value
    return routed


# --- application ---------------------------------------------------------------------------
class Prepared:
    """Input vectors checked and converted once; their Gram pass is shared by every rule run
    on them (e.g. several servers aggregating the same replies).

    >>> import torch, byzlearn.aggregators as agg
    >>> p = agg.prepare(torch.randn(10, 100))
    >>> a, b = agg.aggregate("krum", p, f=2), agg.aggregate("mda", p, f=2)  # one Gram pass
    """

    def __init__(self, vectors: Vectors | Prepared, name: str = "prepare") -> None:
        if isinstance(vectors, Prepared):
            vectors = vectors.X
        self.X: torch.Tensor
        self.kind: InputKind
        self.X, self.kind = as_matrix(vectors, name)
        self._inputs: dict[float, Inputs] = {}

    @property
    def n(self) -> int:
        return self.X.shape[0]

    def inputs(
        self, max_missing: float = DEFAULT_MAX_MISSING, guess: Guess | None = None
    ) -> Inputs:
        """The inputs with their (uncentred) Gram pass, computed once per ``max_missing``
        (``guess``: see :meth:`Inputs.from_matrix`)."""
        if max_missing not in self._inputs:
            self._inputs[max_missing] = Inputs.from_matrix(
                self.X, max_missing=max_missing, guess=guess
            )
        return self._inputs[max_missing]


def prepare(vectors: Vectors) -> Prepared:
    """Check and convert ``vectors`` once, so that several rules share one Gram pass."""
    return Prepared(vectors)


@dataclass(frozen=True)
class Result:
    """What :func:`aggregate` returns: the output vector, and the inputs a selection rule kept
    (sorted indices into the inputs; ``None`` for rules that do not select)."""

    vector: torch.Tensor
    kept: torch.Tensor | None


def _prepare(name: str, vectors: Vectors | Prepared, f: int, options: dict):
    parts = _parts(name)
    options = dict(options)
    max_missing = _max_missing(name, parts, options)
    routed = _route(name, parts, options)
    prepared = vectors if isinstance(vectors, Prepared) else Prepared(vectors, name)
    f = check_f(f, name)
    _check_sizes(parts, routed, prepared.n, f)
    return parts, routed, prepared, f, max_missing


def _run(
    parts: list[RuleSpec],
    routed: list[dict],
    prepared: Prepared,
    f: int,
    max_missing: float,
    output: bool = False,
) -> Combination | torch.Tensor | Inputs | _Rescaled:
    """The parts applied in turn to the prepared inputs. ``output``: the caller forms the
    output and is the only user of ``prepared`` (which it made), so a guessable rule may have
    its output written during the Gram pass (:mod:`._speculate`)."""
    X = prepared.X
    centre = routed[-1].get("center") if parts[-1].accepts_centre else None
    if centre is not None:
        centre = torch.as_tensor(centre).detach().reshape(-1).to(device=X.device, dtype=X.dtype)
        if centre.numel() != X.shape[1]:
            raise ValueError(
                f"{parts[-1].name}: center has {centre.numel()} values, vectors have {X.shape[1]}"
            )
        if not bool(torch.isfinite(centre).all()):
            raise ValueError(f"{parts[-1].name}: center must be finite")
        routed[-1] = {**routed[-1], "center": centre}
    if not any(p.needs_gram for p in parts):
        inputs = Inputs(X=X, gram=None)
    elif centre is not None:  # a Gram matrix centred on the given centre (not shared)
        inputs = Inputs.from_matrix(X, centre=centre, max_missing=max_missing)
    else:
        guessable = output and all(p.guessable for p in parts)
        inputs = prepared.inputs(max_missing, _guess(parts, routed, f, X) if guessable else None)
    if inputs.gram is not None and (scale := _underflow_scale(inputs)) is not None:
        rescaled = Prepared(_times_power_of_two(X, scale))
        again = _run(parts, _scaled_options(routed, scale), rescaled, f, max_missing)
        if isinstance(again, _Rescaled):  # (not expected: the rescaled rows are not tiny)
            return _Rescaled(again.result, scale + again.scale)
        return _Rescaled(again, scale)
    result: Combination | torch.Tensor | Inputs = inputs
    for part, opts in zip(parts, routed, strict=True):
        result = part.impl(result, f, **opts)
    return result


# options that are lengths (or points) in the input space: rescaled with the rows
_LENGTH_OPTIONS = ("max_norm", "radius", "center", "nu")


@dataclass(frozen=True)
class _Rescaled:
    """A run on the rows multiplied by 2^``scale``: its output, divided back."""

    result: Combination | torch.Tensor | Inputs
    scale: int


def _times_power_of_two(value: Any, exponent: int) -> Any:
    """``value * 2**exponent`` in two exact steps (2^1060 itself would overflow)."""
    half = exponent // 2
    return value * 2.0**half * 2.0 ** (exponent - half)


def _underflow_scale(inputs: Inputs) -> int | None:
    """The exponent of a power of two to multiply tiny rows by, where their squared
    distances were lost to underflow (the largest finite one below d * tiny / eps of the input
    dtype: the squares were subnormal or zero), e.g. Krum at 2^-540 in float64 or 2^-80 in
    float32, whose distances all read 0 and whose pick fell on the first row, an attacker's;
    None otherwise (one reduction of the (n + 1)^2 Gram entries on normal inputs; a read of X
    for tiny rows)."""
    X = inputs.X
    info = torch.finfo(X.dtype)
    lost = X.shape[1] * info.tiny / info.eps
    # Rows this tiny make every entry of the pass's Gram matrix (centred rows, centre; float64,
    # CPU) smaller than 4 n lost (|c_i.c_j| <= max(||c_i||^2, ||m||^2), ||m||^2 <= n max
    # ||x_i||^2): one numpy reduction (NaN ignored) rules out every other input; the torch
    # checks below cost ~50 us a call at 25 x 4810 (a third of Krum's time there)
    aug = np.abs(inputs.base.aug.cpu().numpy())
    if float(np.fmax.reduce(aug, axis=None, initial=0.0)) >= 4 * X.shape[0] * lost:
        return None
    D = inputs.sqdist()
    norms = inputs.sqnorms()  # (equal rows that are not tiny have small distances, not lost)
    squares = torch.cat([D[torch.isfinite(D)], norms[torch.isfinite(norms)]])
    return _rescue_exponent(squares, lambda: X, X.dtype, X.shape[1])


def _rescue_exponent(
    squares: torch.Tensor,
    values: torch.Tensor | Callable[[], torch.Tensor],
    dtype: torch.dtype,
    d: int,
) -> int | None:
    """The exponent of a power of two that brings the largest finite magnitude of ``values``
    (a tensor, or a callable that reads it) into [0.5, 1), where ``squares`` (sums of d squares
    in ``dtype``) lost their bits: the largest below d * tiny / eps of ``dtype`` (the squares
    were subnormal or zero), or one not finite (a square overflowed); None otherwise, or when
    the values are all zero, or not tiny (near-equal rows). On normal inputs: one reduction
    of the given squares (n values); ``values`` is read only where they lost their bits. Run
    again on the rows times 2^exponent and divided back, a rule's output is scale-equivariant
    (exact: powers of two)."""
    info = torch.finfo(dtype)
    lost = d * info.tiny / info.eps
    top = float(squares.max()) if squares.numel() else 0.0
    if lost <= top < math.inf:
        return None
    magnitudes = (values if isinstance(values, torch.Tensor) else values()).abs()
    magnitudes = magnitudes[torch.isfinite(magnitudes)]
    largest = float(magnitudes.max()) if magnitudes.numel() else 0.0
    if largest == 0.0:
        return None
    if top < lost and largest * largest >= info.tiny / info.eps:
        return None  # small squares of rows that are not tiny: no bits lost
    return -int(np.frexp(largest)[1])


def _scaled_options(routed: list[dict], scale: int) -> list[dict]:
    """The routed options with every length multiplied by 2^``scale``."""
    return [
        {
            k: (_times_power_of_two(v, scale) if k in _LENGTH_OPTIONS and v is not None else v)
            for k, v in opts.items()
        }
        for opts in routed
    ]


def _guess(parts: list[RuleSpec], routed: list[dict], f: int, X: torch.Tensor) -> Guess:
    """The weights over the base rows that the parts give on a Gram matrix (of the first
    blocks of the pass), or None where they raise or give no weights."""

    def weights(gram: BaseGram) -> torch.Tensor | None:
        result: Combination | torch.Tensor | Inputs = Inputs(X=X, gram=gram)
        try:
            for part, opts in zip(parts, routed, strict=True):
                result = part.impl(result, f, **{**opts, **dict(part.guess_options)})
        except (ValueError, ArithmeticError):
            return None  # the full matrix decides (and the real call raises, if it must)
        if not isinstance(result, Combination) or result.alpha is None:
            return None
        if result.value is not None or result.centre_weight != 0.0:
            return None
        return result.inputs.base_weights(result.alpha)

    return weights


def _kept(result) -> torch.Tensor | None:
    """Indices of the base inputs with non-zero weight in what a selection rule kept."""
    if isinstance(result, _Rescaled):
        return _kept(result.result)
    if not isinstance(result, Combination) or result.kept is None:
        return None
    if result.inputs.A is None:  # the base rows themselves (no n x n identity to build)
        kept = torch.as_tensor(result.kept, dtype=torch.long)
        return kept if kept.numel() < 2 else torch.unique(kept)  # one index: as it is
    A = result.inputs.coefficients()[result.kept]
    return torch.nonzero((A != 0).any(dim=0)).flatten()


def _output(result, kind: InputKind):
    if isinstance(result, _Rescaled):  # the output of the rows times a power of two
        inner = result.result
        if isinstance(inner, Inputs):
            return kind.matrix(_times_power_of_two(inner.materialize(), -result.scale))
        vector = inner.vector() if isinstance(inner, Combination) else inner
        return kind.vector(_times_power_of_two(vector, -result.scale))
    if isinstance(result, Inputs):
        return kind.matrix(result.materialize())
    if isinstance(result, Combination):
        return kind.vector(result.vector())
    return kind.vector(result)


def apply(name: str, vectors: Vectors | Prepared, f: int, options: dict):
    """Run the (possibly composed) rule ``name``; the body of every public rule."""
    parts, routed, prepared, f, max_missing = _prepare(name, vectors, f, options)
    fresh = not isinstance(vectors, Prepared)
    with _without_grad():
        return _output(_run(parts, routed, prepared, f, max_missing, fresh), prepared.kind)


def aggregate(name: str, vectors: Vectors | Prepared, f: int = 0, **options) -> Result:
    """Run the rule ``name`` once and return its output and, for a selection rule, the inputs
    it kept (:class:`Result`); ``vectors`` may be a :func:`prepare` d input.

    For a composition such as ``"nnm+krum"`` the kept inputs are those with non-zero weight in
    what the final selection kept (e.g. the n - f neighbours mixed into Krum's pick). A
    pre-aggregator alone (``"nnm"``) returns its vectors as ``Result.vector`` (a matrix).
    """
    parts, routed, prepared, f, max_missing = _prepare(name, vectors, f, options)
    fresh = not isinstance(vectors, Prepared)
    with _without_grad():
        result = _run(parts, routed, prepared, f, max_missing, fresh)
        return Result(vector=_output(result, prepared.kind), kept=_kept(result))


def selected_indices(name: str, vectors: Vectors | Prepared, f: int = 0, **options) -> torch.Tensor:
    """Indices (sorted, into ``vectors``) of the inputs that the selection rule ``name`` kept.

    See :func:`aggregate`, which returns them with the output in one call. Raises ``TypeError``
    for rules that do not select inputs (coordinate-wise rules, averages).
    """
    parts = _parts(name)
    if not parts[-1].selects:
        selecting = ", ".join(n for n, s in _RULES.items() if s.selects)
        raise TypeError(f"{name} does not select inputs; selection rules: {selecting}")
    parts, routed, prepared, f, max_missing = _prepare(name, vectors, f, options)
    with _without_grad():
        kept = _kept(_run(parts, routed, prepared, f, max_missing))  # no output vector built
    assert kept is not None
    return kept
