"""What an attack knows (the :class:`AttackContext`) and the checks of the common arguments.

Conventions shared by every attack:

* ``honest`` is the ``(h, d)`` stack of the honest vectors of this step (``h = n - f``); it may
  also be an ``(h, *shape)`` tensor, a numpy array or a sequence of 1-D tensors/arrays (the input
  kinds of :func:`byzlearn.aggregators._inputs.as_matrix`, which does the conversion). The result
  is an ``(f, d)`` (or ``(f, *shape)``) tensor, numpy when the input was numpy, in the input's
  floating dtype and device (half precision is computed in float32 and cast back; integer input
  gives the default floating dtype). The caller's input is never modified.
* ``f = 0`` gives an empty ``(0, d)`` result (after the common arguments are checked).
* Statistics (mean, standard deviation) are per coordinate over the honest vectors. The standard
  deviation is the unbiased one (``correction=1``, as ``torch.std`` in the reference codes).
  A representable statistic is computed at any magnitude: sums that overflow and squares that
  overflow or underflow are redone on values scaled by a power of two (exact).
* Non-finite honest entries (NaN, +-Inf: e.g. coordinates dropped by the network) are *missing*,
  as in the aggregators: the per-coordinate statistics ignore them (a coordinate with no finite
  value has a NaN mean), and attacks that use distances between honest vectors or copy one honest
  vector use the fully finite rows only (``ValueError`` when there is none).
* The rule, when needed, sees ``concat(honest, byzantine)`` (honest rows first) with the same
  ``f``; its output is compared with the honest mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from byzlearn.aggregators import _memory
from byzlearn.aggregators._inputs import as_matrix, check_f
from byzlearn.aggregators._mean import mean_of_rows, std_of_rows
from byzlearn.finite import all_finite

_LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class OutputKind:
    """How to give the Byzantine vectors back in the form the caller used."""

    as_numpy: bool
    shape: tuple[int, ...]  # shape of one vector: (d,) or e.g. (c, h, w)
    dtype: torch.dtype

    def restore(self, out: torch.Tensor):
        """The (f, d) result as an (f, *shape) tensor (or array) in the caller's dtype."""
        out = out.to(self.dtype).reshape((out.shape[0], *self.shape))
        return out.numpy() if self.as_numpy else out


def _source_dtype(honest) -> torch.dtype | None:
    """The floating dtype the caller used when it is one ``as_matrix`` computes in float32."""
    if isinstance(honest, torch.Tensor):  # the common case, without the ABC check below
        return honest.dtype if honest.dtype in _LOW_PRECISION else None
    first = honest
    if isinstance(honest, Sequence) and not isinstance(honest, (str, bytes)) and len(honest):
        first = honest[0]
    if isinstance(first, torch.Tensor) and first.dtype in _LOW_PRECISION:
        return first.dtype
    if isinstance(first, np.ndarray) and first.dtype == np.float16:
        return torch.float16
    return None


def as_honest_matrix(honest, name: str) -> tuple[torch.Tensor, OutputKind]:
    """``honest`` as an ``(h, d)`` compute tensor (a view when possible) and its output kind.

    The conversion is the aggregators' :func:`~byzlearn.aggregators._inputs.as_matrix` (same
    accepted kinds, same ``TypeError``/``ValueError``); its messages are prefixed with
    ``"<attack> (honest)"``. Only the output differs: ``(f, *shape)`` in the caller's dtype.
    """
    X, kind = as_matrix(honest, f"{name} (honest)")
    dtype = _source_dtype(honest) or X.dtype
    return X, OutputKind(as_numpy=kind.as_numpy, shape=kind.shape, dtype=dtype)


def resolve_rule(rule, rule_options: dict | None, n: int, f: int, name: str):
    """Return ``(callable(X) -> (d,) tensor, label)`` for a registry name or a callable rule.

    A registry name is checked against ``(n, f)`` with :func:`byzlearn.aggregators.check`
    (``ValueError`` when the rule cannot run); a callable is called as ``rule(X, f=f, **opts)``.
    """
    opts = dict(rule_options or {})
    if isinstance(rule, str):
        import byzlearn.aggregators as agg

        fn = agg.get(rule)
        if agg.is_preaggregator(rule):
            raise ValueError(f"{name}: {rule!r} is a pre-aggregator; the rule must end in a rule")
        agg.check(rule, n, f, **opts)
        label = rule
    elif callable(rule):
        fn = rule
        label = getattr(rule, "__name__", repr(rule))
    else:
        raise TypeError(
            f"{name}: rule must be an aggregator name or a callable(vectors, f=...), "
            f"got {type(rule).__name__}"
        )

    def run(X: torch.Tensor) -> torch.Tensor:
        out = torch.as_tensor(fn(X, f=f, **opts))
        if out.numel() != X.shape[1]:
            raise ValueError(
                f"{name}: rule {label!r} returned {out.numel()} values for d={X.shape[1]}; "
                f"a rule must return one (d,) aggregate"
            )
        return out.reshape(-1).to(device=X.device, dtype=X.dtype)

    return run, label


@dataclass
class AttackContext:
    """Everything an omniscient adversary knows at one step (plus cached honest statistics).

    ``honest`` is the (h, d) compute tensor (never written to); ``rule`` is the resolved rule
    (``X -> (d,)``) or None when the attack does not need it; ``generator`` is the caller's
    seeded generator (None: torch's global one).
    """

    name: str
    honest: torch.Tensor
    f: int
    identical: bool
    generator: torch.Generator | None
    rule: Callable[[torch.Tensor], torch.Tensor] | None
    rule_label: str | None
    _cache: dict = field(default_factory=dict, repr=False)

    # --- sizes ------------------------------------------------------------------------------
    @property
    def h(self) -> int:
        """Number of honest vectors."""
        return self.honest.shape[0]

    @property
    def n(self) -> int:
        """Total number of vectors the rule receives (h + f)."""
        return self.h + self.f

    @property
    def d(self) -> int:
        """Dimension."""
        return self.honest.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.honest.dtype

    @property
    def device(self) -> torch.device:
        return self.honest.device

    # --- honest statistics ------------------------------------------------------------------
    @property
    def all_finite(self) -> bool:
        """True when every honest entry is finite."""
        if "finite" not in self._cache:
            self._cache["finite"] = all_finite(self.honest)
        return self._cache["finite"]

    def mean(self) -> torch.Tensor:
        """Coordinate-wise mean of the honest vectors (non-finite entries ignored):
        :func:`honest_mean`."""
        if "mean" not in self._cache:
            mean, finite = _mean_and_finiteness(self.honest, self._cache.get("finite"))
            self._cache["mean"] = mean
            self._cache["finite"] = finite
        return self._cache["mean"]

    def std(self) -> torch.Tensor:
        """Coordinate-wise unbiased standard deviation of the honest vectors (needs h >= 2).

        Non-finite entries are ignored; a coordinate with fewer than two finite values gets 0.
        """
        if "std" not in self._cache:
            if self.h < 2:
                raise ValueError(
                    f"{self.name}: needs at least 2 honest vectors to estimate the std"
                )
            X = self.honest
            # one compiled call (torch's std(0) is 20-30x slower, see std_of_rows), else torch
            s = std_of_rows(X)
            if s is None and self.all_finite:
                s = X.std(0, correction=1)
            elif s is None:  # float64 squares: a float32 one overflowed beyond 1.8e19
                s = _finite_std(X.to(_wide(X))).to(X.dtype)
            self._cache["std"] = _rescaled_std(X, s)
        return self._cache["std"]

    def wide_std(self) -> torch.Tensor:
        """:meth:`std` in float64 (for float32 honest vectors a std beyond 3.4e38 is inf in
        float32 while ``mu - z sigma`` may not be); not cached: a rare fallback."""
        if self.dtype == torch.float64:
            return self.std()
        W = self.honest.to(torch.float64)
        return _rescaled_std(W, _finite_std(W))

    def finite_rows(self) -> torch.Tensor:
        """The honest rows without any non-finite entry (the rows distance-based attacks use):
        the honest matrix itself when every row is finite (read it, do not write it)."""
        if self.all_finite:
            return self.honest
        return self.honest[self.finite_index()]

    def finite_index(self) -> torch.Tensor:
        """Indices of the fully finite honest rows (``ValueError`` when there is none)."""
        if "finite_index" not in self._cache:
            if self.all_finite:  # one read, no mask
                self._cache["finite_index"] = torch.arange(self.h, device=self.device)
            else:
                keep = torch.isfinite(self.honest).all(1)
                if not bool(keep.any()):
                    raise ValueError(f"{self.name}: every honest vector holds a non-finite value")
                self._cache["finite_index"] = torch.nonzero(keep).flatten()
        return self._cache["finite_index"]

    def spread(self) -> float:
        """The honest 'norm std' ``sqrt(sum_i ||g_i - mean||^2 / (h - 1))`` over finite rows
        (0 when fewer than two are finite): the typical distance of an honest vector to the mean.
        """
        if "spread" not in self._cache:
            self._cache["spread"] = norm_std(self.finite_rows())
        return self._cache["spread"]

    # --- helpers ----------------------------------------------------------------------------
    def repeat(self, v: torch.Tensor) -> torch.Tensor:
        """The (f, d) matrix of f copies of one (d,) vector."""
        row = v.reshape(1, -1)
        return _memory.empty((self.f, row.shape[1]), dtype=v.dtype, device=v.device).copy_(
            row.expand(self.f, -1)
        )

    def rows(self) -> int:
        """How many distinct vectors a randomized attack draws: 1 when identical, else f."""
        return 1 if self.identical else self.f

    def randn(self, *shape: int) -> torch.Tensor:
        """Standard normal draws from the generator (float64 on its device, then moved)."""
        dev = self.generator.device if self.generator is not None else torch.device("cpu")
        out = torch.randn(*shape, generator=self.generator, device=dev, dtype=torch.float64)
        return out.to(device=self.device, dtype=self.dtype)

    def rand(self, *shape: int) -> torch.Tensor:
        """Uniform [0, 1) draws (float64) from the generator, on the honest vectors' device."""
        dev = self.generator.device if self.generator is not None else torch.device("cpu")
        out = torch.rand(*shape, generator=self.generator, device=dev, dtype=torch.float64)
        return out.to(device=self.device)

    def require_rule(self) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.rule is None:
            raise _no_rule(self.name)
        return self.rule

    def aggregate(self, byz: torch.Tensor) -> torch.Tensor:
        """The rule's output on ``concat(honest, byz)``; ``byz`` is (d,) (sent f times) or
        (f, d)."""
        rule = self.require_rule()
        B = self.repeat(byz) if byz.dim() == 1 else byz
        return rule(torch.cat([self.honest, B.to(self.dtype)], dim=0))

    def deviation(self, byz: torch.Tensor, coordinates: torch.Tensor | None = None) -> float:
        """``||F(honest ∪ byz) - mean(honest)||`` in float64 (restricted to ``coordinates`` when
        given); a non-finite value counts as ``inf``."""
        out = self.aggregate(byz).to(torch.float64) - self.mean().to(torch.float64)
        if coordinates is not None:
            out = out[coordinates]
        val = scaled_norm(out)
        return val if math.isfinite(val) else math.inf

    def finish(self, out: torch.Tensor) -> torch.Tensor:
        """Validate an implementation's result and return the (f, d) Byzantine matrix."""
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(out)
        if out.dim() == 1:
            out = self.repeat(out)
        if tuple(out.shape) != (self.f, self.d):
            raise RuntimeError(
                f"{self.name}: produced shape {tuple(out.shape)}, expected {(self.f, self.d)}"
            )
        return out.to(device=self.device, dtype=self.dtype)


_TINY = 2.0**-450
"""Below this (about 3e-136) a float64 value's square has lost bits (or is 0)."""
_HUGE = 2.0**500
"""Above this (about 3e150) sums of float64 squares may overflow."""


def norm_std(X: torch.Tensor) -> float:
    """``sqrt(sum_i ||x_i - mean||^2 / (m - 1))`` over the m rows of ``X`` (float64; 0 when
    ``m < 2``): the norm standard deviation, i.e. the square root of the trace of the sample
    covariance."""
    m = X.shape[0]
    if m < 2:
        return 0.0

    def spread(Y: torch.Tensor) -> float:
        dev = Y - Y.mean(0)
        return math.sqrt(float((dev * dev).sum()) / (m - 1))

    return scaled(spread, X.to(torch.float64))


def scaled(length: Callable[[torch.Tensor], float], X: torch.Tensor) -> float:
    """``length(X)`` for a float64 ``length`` of degree one (``length(c X) = c length(X)`` for
    c > 0: a norm, a standard deviation), also where its squares overflow (values beyond about
    1e154) or underflow (below 1e-154): then ``c length(X / c)`` with c the power of two above
    X's largest magnitude (exact). As computed where X is empty or holds an inf or a NaN."""
    value = length(X)
    if _TINY < value < math.inf or X.numel() == 0:
        return value
    c = power_of_two_above(float(X.abs().max()))
    if c == 0.0 or not math.isfinite(c):
        return value  # 0, or inf (an inf entry), or NaN (a NaN entry)
    return c * length(X / c)


def power_of_two_above(x: float) -> float:
    """The power of two ``2^e >= |x|`` closest to it (``2^1023`` beyond it; 0, inf and NaN as
    they are): a scale that divides and multiplies float values exactly (away from
    subnormals)."""
    if x == 0.0 or not math.isfinite(x):
        return x
    return math.ldexp(1.0, min(math.frexp(abs(x))[1], 1023))  # 2^1024 is not a float


def scale_for(x: float) -> float:
    """1 where float64 squares of values of magnitude up to ``|x|`` are safe (``|x|`` between
    about 3e-136 and 3e150, or 0, inf, NaN), else :func:`power_of_two_above`: the statistics
    of normal values keep their bits, extreme ones are computed scaled."""
    if x == 0.0 or not math.isfinite(x) or _TINY <= abs(x) <= _HUGE:
        return 1.0
    return power_of_two_above(x)


def scaled_norm(v: torch.Tensor) -> float:
    """``||v||_2`` in float64, also where the squares of ``v``'s entries overflow (beyond 1e154)
    or underflow (below 1e-154) (:func:`scaled`; ``torch``'s norm does not scale: ``[1e200,
    1e200]`` gave inf). NaN when ``v`` holds one, inf for inf."""
    return scaled(lambda u: float(torch.linalg.vector_norm(u)), v.to(torch.float64))


def _powers_of_two_above(top: torch.Tensor) -> torch.Tensor:
    """:func:`power_of_two_above` of each (positive, finite) float64 value of ``top``."""
    return torch.exp2(torch.ceil(torch.log2(top)).clamp_max(1023))


def _wide(X: torch.Tensor) -> torch.dtype:
    """float64, the accumulation dtype of the fallbacks (kept as is where a device lacks it)."""
    return X.dtype if X.device.type == "mps" else torch.float64


def _finite_std(X: torch.Tensor) -> torch.Tensor:
    """The unbiased std of each column's finite values (0 where fewer than two), in X's dtype."""
    finite = torch.isfinite(X)
    cnt = finite.sum(0)
    mean = torch.where(finite, X, torch.zeros_like(X)).sum(0) / cnt.clamp_min(1)
    dev = torch.where(finite, X - mean, torch.zeros_like(X))
    return ((dev * dev).sum(0) / (cnt - 1).clamp_min(1)).sqrt()


def _rescaled_std(X: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``s`` (the std of X's columns, float64 squares) again, where a float64 column's largest
    magnitude is beyond 3e150 or below 3e-136, from that column scaled by a power of two:
    its squares overflowed (ALIE sent -inf for values of 1e200) or underflowed (the std of
    values of 1e-200 was 0, ALIE sent the mean)."""
    if X.dtype != torch.float64 or X.shape[0] < 2:
        return s
    if bool(torch.isfinite(s).all()) and float(s.min()) >= _TINY:
        return s  # no column can be extreme (s = 0 of a constant column calls for a look)
    top = torch.where(torch.isfinite(X), X.abs(), torch.zeros_like(X)).amax(0)
    redo = torch.nonzero((top > _HUGE) | ((top < _TINY) & (top > 0))).flatten()
    if redo.numel() == 0:
        return s
    c = _powers_of_two_above(top[redo])
    s = s.clone()
    s[redo] = _finite_std(X[:, redo] / c) * c
    return s


def _no_rule(name: str) -> ValueError:
    return ValueError(
        f"{name} is rule-aware: pass rule=<aggregator name or callable(vectors, f=...)>"
    )


def honest_mean(honest: torch.Tensor) -> torch.Tensor:
    """The coordinate-wise mean of the honest vectors, non-finite entries ignored, exactly as
    the attacks compute it (:meth:`AttackContext.mean`, on the same compute tensor: half
    precision in float32) and in the caller's dtype, as the attacks' outputs are. Code that
    combines an attack's output with the honest mean (an equivocating adversary's reflection
    ``2 mu - a``) must use this same vector: ``a = mu`` (ALIE with z = 0) then reflects onto
    itself, bit for bit."""
    X, kind = as_honest_matrix(honest, "honest_mean")
    return _mean_and_finiteness(X, None)[0].to(kind.dtype)


def _mean_and_finiteness(X: torch.Tensor, finite: bool | None) -> tuple[torch.Tensor, bool]:
    """(the honest mean of X, whether every value of X is finite); ``finite``: already known."""
    mean = None if finite is False else mean_of_rows(X)  # one pass: None when not finite
    if mean is not None:
        return mean, True
    if finite is None:
        finite = all_finite(X)
    # here: not finite, no rows, a matrix the kernel does not take, or finite values whose
    # float64 sum overflows
    mean = X.mean(0) if finite else _nanmean(X)
    if X.shape[0] and not bool(torch.isfinite(mean).all()):
        # a sum overflowed (float32 sums: 3e38 + 2e38; float64 ones: 1.5e308 + 1.2e308) or a
        # column holds no finite value (NaN): the mean of the scaled values, scaled back
        mean = _scaled_nanmean(X)
    return mean, finite


def _nanmean(X: torch.Tensor) -> torch.Tensor:
    finite = torch.isfinite(X)
    total = torch.where(finite, X, torch.zeros_like(X)).sum(0)
    cnt = finite.sum(0)
    return torch.where(cnt > 0, total / cnt.clamp_min(1), torch.full_like(total, math.nan))


def _scaled_nanmean(X: torch.Tensor) -> torch.Tensor:
    """The mean of each column's finite values (NaN where none), in float64 from the values
    divided by a power of two above the column's largest finite magnitude (no overflow), in
    X's dtype: a mean of finite values is always representable."""
    W = X.to(_wide(X))
    finite = torch.isfinite(W)
    vals = torch.where(finite, W, torch.zeros_like(W))
    top = vals.abs().amax(0)
    c = torch.where(top > 0, _powers_of_two_above(top), torch.ones_like(top))
    cnt = finite.sum(0)
    mean = (vals / c).sum(0) / cnt.clamp_min(1) * c
    return torch.where(cnt > 0, mean, torch.full_like(mean, math.nan)).to(X.dtype)


def make_context(
    name: str,
    honest,
    f: int,
    *,
    rule=None,
    rule_options: dict | None = None,
    generator: torch.Generator | None = None,
    identical: bool = True,
    rule_required: bool = False,
) -> tuple[AttackContext, OutputKind]:
    """Validate the common arguments of an attack call and build its context.

    A rule is resolved (and checked against n, f) only when the attack needs it; otherwise
    ``rule`` and ``rule_options`` are ignored.
    """
    X, kind = as_honest_matrix(honest, name)
    f = check_f(f, name)
    if f * X.shape[1] >= 2**63:  # torch's own refusal is a page of C++ frames
        raise ValueError(
            f"{name}: f={f} Byzantine vectors of d={X.shape[1]} values are too many to allocate"
        )
    if not isinstance(identical, (bool, np.bool_)):
        raise TypeError(f"{name}: identical must be a bool, got {type(identical).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name}: generator must be a torch.Generator or None")
    if rule_options is not None and not isinstance(rule_options, dict):
        raise TypeError(f"{name}: rule_options must be a dict or None")
    run = label = None
    if rule_required:
        if rule is None:
            raise _no_rule(name)
        run, label = resolve_rule(rule, rule_options, X.shape[0] + f, f, name)
    ctx = AttackContext(
        name=name,
        honest=X,
        f=f,
        identical=bool(identical),
        generator=generator,
        rule=run,
        rule_label=label,
    )
    return ctx, kind
