"""Sharded aggregation: n vectors of d coordinates split over k shards (Ray actors), for models
too big for one machine.

>>> import torch
>>> from byzlearn.aggregators import sharded
>>> X = torch.randn(9, 10_000)
>>> V = sharded.scatter(X, k=3, backend="local")   # backend="ray": one Ray actor per shard
>>> res = sharded.aggregate("krum", V, f=2)
>>> bool(torch.equal(res.vector(), __import__("byzlearn").aggregators.krum(X, f=2)))
True

Shard ``s`` holds the coordinates ``[j_s, j_{s+1})`` of every input. The rules decompose as
follows, and the result is the unsharded rule's (``byzlearn.aggregators``):

- **Coordinate-wise** (``average``, ``median``, ``trimmed_mean``, ``meamed``, ``phocas``): each
  shard runs the rule on its coordinates; the output is the concatenation. Exactly equal.
- **Distance-based** (``krum``, ``multi_krum``, ``medoid``, ``mda``, ``cge``,
  ``geometric_median``, ``centered_clipping``, ``caf``, Bulyan's selection, and the
  pre-aggregators ``nnm``, ``bucketing``, ``clipping``, ``arc``): every such rule runs on the
  (n+1) x (n+1) centred Gram matrix of the inputs, and ``G = sum_s G_s`` over the shards'
  coordinate ranges. Each shard computes its partial Gram matrix, the coordinator sums them and
  runs the rule's n x n work once (the same code as unsharded), and broadcasts its outcome: the
  weights ``alpha`` over the inputs (output ``sum_i alpha_i x_i`` per shard), Bulyan's selected
  rows (phase 2, coordinate-wise, per shard), or a pre-aggregator's mixing matrix ``A`` for the
  rule after it. The Weiszfeld iterations of the geometric median, the centred-clipping and
  CAF iterations need only norms of differences of combinations of the inputs, which this Gram
  matrix gives, so they run once on the coordinator and no d-vector moves between iterations.
  The summed Gram matrix equals the unsharded one up to the order of float64 additions, so the
  selections are the unsharded ones (barring exact or near ties) and outputs that average
  selected rows are bitwise equal (the same per-coordinate sums of the same rows); outputs whose
  weights are real functions of the Gram matrix (geometric median, centred clipping, CAF, rules
  after ``clipping`` or ``arc``) equal them within float32 rounding (measured: one unit in the
  last place at most), except where the geometric median is ill-conditioned: f identical rows
  just short of outweighing the others (ALIE at n = 8, f = 3 or n = 39, f = 18) leave the
  objective so flat that the two Gram matrices' last bits move its minimiser by up to 7e-4
  of the input scale for float32 inputs (1.2e-8 for float64; a random search of 1600 and 800
  draws): the float32 Gram's rounding bounds the accuracy there. Rows that tie exactly in
  exact arithmetic stay ties decided by rounding: ``clipping`` and ``arc`` give the clipped rows
  one norm, so ``cge`` after them may keep other clipped rows than unsharded.
- Missing values (NaN/Inf) follow the unsharded policy (``docs/aggregators.md``): the central
  row the Gram pass is centred on is chosen on the same sample of coordinates, gathered from the
  shards; a row's count of missing coordinates is the sum over the shards, and the imputation
  pass visits the shards in order, carrying each row's count, so the budget is checked block by
  block as unsharded. Blocks end at shard boundaries: a row that crosses the budget part-way
  can be flagged one block apart from the unsharded pass, which changes only whether its
  finite values enter the imputation medians of that block (rows well within the budget, and
  NaN rows, are handled identically: tested).

- **Filters that read sampled coordinates** (``dnc``, ``signguard``): their n x n work runs on
  the coordinator as well; the rows' validity and norms are sums (and maxima) of the shards'
  per-row statistics, the sampled coordinates are drawn over all of d (the same draw as
  unsharded) and each shard answers for the ones it holds (DnC gathers its b sampled columns,
  SignGuard gets the sign counts per row). Selections as unsharded; DnC's output is exactly
  equal, SignGuard's (whose clipping scales come from the norms) within float32 rounding.

Traffic per aggregation: each shard sends O(n^2) numbers (its Gram block) and receives O(n^2)
(the weights or the mixing matrix); the d coordinates never leave their shard, except for the
output, which stays on the shards until :meth:`ShardedResult.vector` gathers it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from byzlearn.aggregators import _gram, _memory
from byzlearn.aggregators._device import kernel_input
from byzlearn.aggregators._gram import BaseGram, Inputs, MissingEntries, weighted_rows
from byzlearn.aggregators._inputs import InputKind, as_matrix, check_f
from byzlearn.aggregators._registry import (
    Combination,
    RuleSpec,
    _check_sizes,
    _kept,
    _max_missing,
    _parts,
    _route,
    spec,
)
from byzlearn.aggregators._select import missing_error
from byzlearn.aggregators.rules.bulyan import bulyan_selection, bulyan_trim

__all__ = ["Shard", "ShardedResult", "ShardedVectors", "aggregate", "scatter", "sharded_names"]

Maker = Callable[[int, int], torch.Tensor]


class Shard:
    """The coordinates ``[offset, offset + d_s)`` of n vectors, and the per-shard steps of a
    sharded aggregation (a Ray actor's class, or a plain object with ``backend="local"``)."""

    def __init__(self, X: torch.Tensor | None, offset: int, d: int, make: Maker | None = None):
        if X is None:
            if make is None:
                raise ValueError("a shard needs its vectors or a function making them")
            X = make(offset, offset + d)
        self.X = X.contiguous()
        self.offset = offset
        self.d_total = d
        self.missing: MissingEntries | None = None
        self._log: Any = None
        self.output: torch.Tensor | None = None

    def info(self) -> tuple[int, int, str]:
        """``(n, d_s, dtype)`` of the shard."""
        return self.X.shape[0], self.X.shape[1], str(self.X.dtype).removeprefix("torch.")

    def set_threads(self, threads: int) -> int:
        """Torch (and kernel) threads of this shard's process; returns the previous count."""
        previous = torch.get_num_threads()
        torch.set_num_threads(int(threads))
        return previous

    def read(self) -> float:
        """One streaming read of the shard (``X.sum()``): the memory floor of benchmarks."""
        return float(self.X.sum())

    def columns(self, cols: np.ndarray) -> torch.Tensor:
        """The values of the given local columns (the central-row sample)."""
        return self.X[:, torch.as_tensor(cols, dtype=torch.long)]

    def gram_pass(self, centre: torch.Tensor | None, centre_row: int | None):
        """The shard's partial (n+1) x (n+1) centred Gram matrix and its rows holding a
        non-finite value (the fast pass of :func:`byzlearn.aggregators._gram.base_gram`)."""
        X = self.X
        on_kernel = kernel_input(X)
        if on_kernel and _gram._gram_kernel.available(X.numpy()):
            acc, bad, _ = _gram._kernel_pass(X, centre, centre_row)
        else:
            acc, bad = _gram._torch_pass(X, centre, centre_row)
        return acc.cpu(), bad.cpu()

    def gather(self, rows: torch.Tensor, cols: torch.Tensor, aug, bad) -> torch.Tensor:
        """``X[rows][:, cols]`` (local columns) in float64, missing values imputed as by the
        Gram pass (see :meth:`byzlearn.aggregators._gram.Inputs.gather`)."""
        gram = None
        if aug is not None and bad is not None:
            gram = BaseGram(aug=aug, bad=bad, missing=self.missing)
        return Inputs(X=self.X, gram=gram).gather(rows, cols)

    def row_stats(self, A: torch.Tensor | None, sign_cols: np.ndarray | None):
        """Per row of ``A X`` here: the sum of squares (float64), the largest magnitude (NaN
        when the row holds a NaN or an infinity) and, with ``sign_cols`` (local, sorted), the
        (n', 3) counts of positive, zero and negative values there."""
        Y = Inputs(X=self.X, gram=None, A=A).materialize()
        if Y.dtype in (torch.float32, torch.float64) and _gram._gram_kernel.available(
            Y.numpy()
        ):
            sq_np, top_np, signs_np = _gram._gram_kernel.row_stats(
                Y.numpy(), torch.get_num_threads(), sign_cols
            )
            return torch.from_numpy(sq_np), torch.from_numpy(top_np), torch.from_numpy(signs_np)
        sq = torch.zeros(Y.shape[0], dtype=torch.float64)
        top = torch.zeros(Y.shape[0], dtype=torch.float64)
        for j0, j1 in _gram.column_blocks(Y.shape[1], 1 << 16):
            block = Y[:, j0:j1]
            top = torch.maximum(top, torch.maximum(block.amax(dim=1), -block.amin(dim=1)).double())
            sq += torch.linalg.vecdot(block, block, dim=1).double()
        signs = torch.zeros(Y.shape[0], 3, dtype=torch.long)
        if sign_cols is not None and len(sign_cols):
            V = Y[:, torch.as_tensor(sign_cols, dtype=torch.long)]
            signs = torch.stack([(V > 0).sum(1), (V == 0).sum(1), (V < 0).sum(1)], dim=1)
        return sq, top, signs

    def missing_counts(self, rows: list[int], d_total: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per given row: its non-finite values here, and whether it holds a value too large to
        measure (see :func:`byzlearn.aggregators._gram.measurable_limit`)."""
        limit = _gram.measurable_limit(d_total)
        counts = torch.zeros(len(rows), dtype=torch.long)
        huge = torch.zeros(len(rows), dtype=torch.bool)
        for k, i in enumerate(rows):
            row = self.X[i]
            finite = torch.isfinite(row)
            counts[k] = int((~finite).sum())
            huge[k] = bool((row[finite].abs() > limit).any())
        return counts, huge

    def imputed_pass(
        self,
        centre: torch.Tensor | None,
        centre_row: int | None,
        max_missing: float,
        counts: torch.Tensor,
        known_bad: torch.Tensor,
    ):
        """The float64 pass imputing missing values, continuing the rows' missing counts and
        the rows found bad of the shards before this one (left out of this shard's medians);
        returns the partial Gram matrix, the rows found bad, the counts after this shard and the
        rows' penalties (their imputed coordinates' spreads)."""
        n = self.X.shape[0]
        log = _gram._MissingLog(n, self.d_total, max_missing)
        log.counts = counts.clone()
        log.bad = known_bad.clone()
        acc, _ = _gram._torch_pass(self.X, centre, centre_row, log)
        self._log = log
        # (the imputing pass adds every row it finds bad to log.bad: the carried ones and these)
        return acc.cpu(), log.bad, log.counts, log.penalty

    def set_gram(self, bad: torch.Tensor, imputed: bool) -> None:
        """Keep the imputed entries of the rows that stay in (``bad`` is the final, global
        flag), for the outputs."""
        self.missing = None
        if imputed and self._log is not None:
            entries = self._log.entries(~bad)
            self.missing = None if entries is None else entries.restricted(~bad)
        self._log = None

    def apply(self, plan: tuple, aug: torch.Tensor | None, bad: torch.Tensor | None):
        """Compute this shard's part of the output (kept here); returns None, or ``(kind,
        message)`` of the error a rule raised."""
        kind, A, centre, args = plan
        gram = None
        if aug is not None and bad is not None:
            gram = BaseGram(aug=aug, bad=bad, missing=self.missing)
        inputs = Inputs(X=self.X, gram=gram, A=A, centre=centre)
        self.output = None
        out: Any
        try:
            if kind == "combine":
                alpha, centre_weight = args
                if gram is None:  # DnC, SignGuard: no Gram pass, no imputed values
                    out = weighted_rows(inputs.materialize(), alpha.to(torch.float64))
                else:
                    out = inputs.combine(alpha)
                if centre_weight != 0.0 and centre is not None:
                    out = out + centre_weight * centre
            elif kind == "bulyan":
                out = bulyan_trim(inputs, *args)
            elif kind == "rule":
                name, f, options = args
                out = spec(name).impl(inputs, f, **options)
            else:  # "vectors": a pre-aggregator's rows
                out = inputs.materialize().clone()
        except (ValueError, TypeError) as err:
            return type(err).__name__, str(err)
        self.output = out
        return None

    def part(self) -> torch.Tensor:
        """This shard's part of the last output."""
        if self.output is None:
            raise ValueError("no output on this shard (aggregate first)")
        return self.output


class ShardedVectors:
    """n vectors split by coordinates over k :class:`Shard` s (Ray actors or local objects).

    Build with :func:`scatter` (from a tensor) or :meth:`generate` (each shard makes its own
    coordinates, so the full matrix never exists in one process).
    """

    def __init__(self, shards: list[Any], bounds: list[int], n: int, dtype: torch.dtype,
                 ray: bool) -> None:
        self.shards = shards
        self.bounds = bounds
        self.n = n
        self.d = bounds[-1]
        self.dtype = dtype
        self.ray = ray
        self.kind: InputKind | None = None  # how :func:`scatter` got them (for the output)

    @property
    def k(self) -> int:
        return len(self.shards)

    @classmethod
    def generate(
        cls, n: int, d: int, k: int, make: Maker, backend: str = "ray", **actor_options: Any
    ) -> ShardedVectors:
        """k shards, shard s holding ``make(j_s, j_{s+1})`` (an (n, j_{s+1} - j_s) tensor made
        where the shard lives; ``make`` must be picklable for Ray)."""
        bounds = _bounds(d, k)
        shards = _start(
            backend, [(None, bounds[s], bounds[s + 1] - bounds[s], make) for s in range(k)],
            actor_options,
        )
        vectors = cls(shards, bounds, n, torch.float32, backend == "ray")
        infos = vectors._all("info")
        for s, (rows, cols, _) in enumerate(infos):
            if rows != n or cols != bounds[s + 1] - bounds[s]:
                raise ValueError(
                    f"make({bounds[s]}, {bounds[s + 1]}) gave shape ({rows}, {cols}), expected "
                    f"({n}, {bounds[s + 1] - bounds[s]})"
                )
        vectors.dtype = getattr(torch, infos[0][2])
        return vectors

    # --- calls on every shard -----------------------------------------------------------
    def _all(self, method: str, *args: Any, each: Sequence[tuple] | None = None) -> list[Any]:
        """Call ``method`` on every shard (with ``each[s]`` as extra leading arguments), in
        parallel for Ray actors; the results in shard order."""
        calls = [((each[s] if each is not None else ()) + args) for s in range(self.k)]
        if self.ray:
            import ray

            return ray.get(
                [getattr(h, method).remote(*a) for h, a in zip(self.shards, calls, strict=True)]
            )
        return [getattr(h, method)(*a) for h, a in zip(self.shards, calls, strict=True)]

    def close(self) -> None:
        """Stop the shards' Ray actors (their memory is freed); local shards are dropped."""
        if self.ray:
            import ray

            for handle in self.shards:
                ray.kill(handle)
        self.shards = []

    def __enter__(self) -> ShardedVectors:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _one(self, s: int, method: str, *args: Any) -> Any:
        if self.ray:
            import ray

            return ray.get(getattr(self.shards[s], method).remote(*args))
        return getattr(self.shards[s], method)(*args)

    def _split(self, v: torch.Tensor | None) -> list[tuple]:
        """Per shard, ``(v[j_s:j_{s+1}],)`` (``(None,)`` when v is None)."""
        if v is None:
            return [(None,)] * self.k
        return [(v[self.bounds[s] : self.bounds[s + 1]].clone(),) for s in range(self.k)]


def _bounds(d: int, k: int) -> list[int]:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"sharded: k must be a positive int, got {k!r}")
    if k > d:
        raise ValueError(
            f"sharded: k={k} shards for d={d} coordinates (at most one per coordinate)"
        )
    return [d * s // k for s in range(k + 1)]


#: seconds :func:`scatter` and :meth:`ShardedVectors.generate` wait for the actors to start
START_TIMEOUT = 120.0


def _start(backend: str, args: list[tuple], actor_options: dict) -> list[Any]:
    if backend == "local":
        return [Shard(*a) for a in args]
    if backend != "ray":
        raise ValueError(f"sharded: backend must be 'ray' or 'local', got {backend!r}")
    try:
        import ray
    except ImportError:
        raise ImportError(
            "sharded aggregation on Ray needs the ray extra: pip install -e '.[ray]'"
        ) from None
    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    options = {"num_cpus": 1, **actor_options}
    actor: Any = ray.remote(Shard).options(**options)
    handles: list[Any] = [actor.remote(*a) for a in args]
    ready, _ = ray.wait([h.info.remote() for h in handles], num_returns=len(handles),
                        timeout=START_TIMEOUT)
    if len(ready) < len(handles):
        for h in handles:
            ray.kill(h)
        raise RuntimeError(
            f"sharded: only {len(ready)} of {len(handles)} shard actors started within "
            f"{START_TIMEOUT:.0f} s (each asks for {options['num_cpus']} CPU(s): free CPUs on "
            "the cluster, close() unused ShardedVectors, or pass num_cpus=...)"
        )
    ray.get(ready)  # an actor that failed to start (e.g. make() raised) raises here
    return handles


def scatter(vectors: Any, k: int, backend: str = "ray", **actor_options: Any) -> ShardedVectors:
    """Split ``vectors`` (what the rules take: an (n, d) tensor, ...) into k shards of
    consecutive coordinates (``backend="ray"``: one Ray actor each, ``ray.init`` first when
    needed; ``"local"``: in this process)."""
    X, kind = as_matrix(vectors, "sharded")
    bounds = _bounds(X.shape[1], k)
    parts = [X[:, bounds[s] : bounds[s + 1]].contiguous() for s in range(k)]
    args = [(parts[s], bounds[s], X.shape[1], None) for s in range(k)]
    shards = _start(backend, args, actor_options)
    sharded = ShardedVectors(shards, bounds, X.shape[0], X.dtype, backend == "ray")
    sharded.kind = kind
    return sharded


@dataclass
class ShardedResult:
    """A sharded aggregation: its output stays on the shards until :meth:`vector`; ``kept``
    lists the inputs a selection rule kept (as :func:`byzlearn.aggregators.aggregate`)."""

    vectors: ShardedVectors
    kept: torch.Tensor | None
    matrix: bool = False  # a pre-aggregator's vectors (n', d) rather than one (d,) vector

    def vector(self) -> Any:
        """The whole output, gathered from the shards: (d,), or (n', d) for a pre-aggregator,
        in the kind, dtype and vector shape :func:`scatter` was given."""
        parts = self.vectors._all("part")
        dim = 1 if self.matrix else 0
        shape = list(parts[0].shape)
        shape[dim] = sum(p.shape[dim] for p in parts)
        out = _memory.empty(shape, dtype=parts[0].dtype, device=parts[0].device)
        torch.cat(parts, dim=dim, out=out)  # a large output on huge pages (see _memory)
        kind = self.vectors.kind
        if kind is None:
            return out
        return kind.matrix(out) if self.matrix else kind.vector(out)


# ------------------------------------------------------------------------------ coordinator
@dataclass
class _ShardedInputs(Inputs):
    """The coordinator's view of sharded inputs: X is a shape-only (meta) tensor; the n x n
    statistics are here, and the few reads of coordinates a rule makes (DnC's and SignGuard's
    sampled coordinates, their rows' norms and validity) are answered by the shards."""

    shards: ShardedVectors | None = None

    def _vectors(self) -> ShardedVectors:
        if self.shards is None:  # pragma: no cover - always set by aggregate()
            raise ValueError("internal error: sharded inputs without their shards")
        return self.shards

    def gather(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """``X[rows][:, cols]`` in float64 (missing values imputed), from the shards."""
        V = self._vectors()
        rows = torch.as_tensor(rows, dtype=torch.long)
        cols = torch.as_tensor(cols, dtype=torch.long)
        out = torch.empty(rows.numel(), cols.numel(), dtype=torch.float64)
        aug = None if self.gram is None else self.gram.aug
        bad = None if self.gram is None else self.gram.bad
        where = []
        each = []
        for s in range(V.k):
            at = torch.nonzero((cols >= V.bounds[s]) & (cols < V.bounds[s + 1])).flatten()
            where.append(at)
            each.append((rows, cols[at] - V.bounds[s], aug, bad))
        for at, values in zip(where, V._all("gather", each=each), strict=True):
            out[:, at] = values
        return out

    def row_stats(self, norms: bool, sign_cols: np.ndarray | None):
        """What :func:`byzlearn.aggregators.rules.filters._row_stats` gives for the rows
        ``A X``: squared norms (+inf on incomplete rows; None unless ``norms``), the
        incomplete rows and, without a pre-aggregator, sign counts at ``sign_cols``."""
        V = self._vectors()
        cols = sign_cols if self.A is None else None
        each = []
        for s in range(V.k):
            local = None
            if cols is not None:
                local = cols[(cols >= V.bounds[s]) & (cols < V.bounds[s + 1])] - V.bounds[s]
            each.append((self.A, local))
        parts = V._all("row_stats", each=each)
        top = parts[0][1]
        for _, t, _ in parts[1:]:
            top = torch.maximum(top, t)  # NaN (a non-finite value) propagates
        bad = ~(top <= _gram.measurable_limit(V.d))
        signs = None
        if cols is not None:
            signs = sum(p[2] for p in parts).numpy().astype(np.float64)
        if not norms:
            return None, bad, signs
        sq = sum((p[0] for p in parts), torch.zeros(top.numel(), dtype=torch.float64))
        sq[bad] = float("inf")
        return sq, bad, signs

    def materialize(self) -> torch.Tensor:  # pragma: no cover - guards against a silent bug
        raise ValueError("internal error: a sharded rule asked for all the coordinates")


# ------------------------------------------------------------------------------ Gram pass
def _centre_row(V: ShardedVectors) -> int | None:
    """:func:`byzlearn.aggregators._gram.centre_row_from_sample` on the shards: the same sample
    of coordinates, gathered."""
    n, d = V.n, V.d
    if n < 3 or n * d < _gram._SAMPLE_MIN_ELEMENTS:
        return None
    cols = _gram.sample_columns(d)
    each = [
        (cols[(cols >= V.bounds[s]) & (cols < V.bounds[s + 1])] - V.bounds[s],)
        for s in range(V.k)
    ]
    return _gram.central_row_of_sample(torch.cat(V._all("columns", each=each), dim=1))


def _base_gram(
    V: ShardedVectors, centre: torch.Tensor | None, row: int | None, max_missing: float
) -> tuple[BaseGram, bool]:
    """:func:`byzlearn.aggregators._gram.base_gram` on the shards: partial Gram matrices
    summed; whether the imputation pass ran."""
    n = V.n
    centres = V._split(centre)
    parts = V._all("gram_pass", row, each=centres)
    acc = sum((p[0] for p in parts), torch.zeros(n + 1, n + 1, dtype=torch.float64))
    bad = torch.stack([p[1] for p in parts]).any(dim=0)
    imputed = False
    if max_missing > 0 and bool(bad.any()):
        rows = torch.nonzero(bad).flatten().tolist()
        found = V._all("missing_counts", rows, V.d)
        counts = torch.stack([c for c, _ in found]).sum(dim=0)
        huge = torch.stack([h for _, h in found]).any(dim=0)
        if bool(((counts > 0) & (counts <= max_missing * V.d) & ~huge).any()):
            imputed = True
            acc = torch.zeros(n + 1, n + 1, dtype=torch.float64)
            bad = torch.zeros(n, dtype=torch.bool)
            penalty = torch.zeros(n, dtype=torch.float64)
            carried = torch.zeros(n, dtype=torch.long)
            for s in range(V.k):  # in order: each shard continues the rows' counts and bad
                a, b, carried, p = V._one(s, "imputed_pass", centres[s][0], row, max_missing,
                                          carried, bad)
                acc += a
                bad |= b
                penalty += p
            bad |= carried > max_missing * V.d
            acc.diagonal()[:n] += torch.where(bad, 0.0, penalty)
    return _gram._masked_base(acc, bad), imputed


def _gram_of(
    V: ShardedVectors, centre: torch.Tensor | None, max_missing: float
) -> tuple[BaseGram, bool]:
    """:meth:`byzlearn.aggregators._gram.Inputs.from_matrix` on the shards."""
    row = None if centre is not None else _centre_row(V)
    gram, imputed = _base_gram(V, centre, row, max_missing)
    if centre is None:
        refined = _gram._refinement(gram.aug, gram.bad, V.dtype)[1]
        if refined is not None and refined != row:
            gram, imputed = _base_gram(V, None, refined, max_missing)
    return gram, imputed


# ------------------------------------------------------------------------------ aggregation
# rules that cannot run sharded, and why (one line each)
_UNSHARDED = {
    "skewed_geometric_median": "its skewing matrix S mixes coordinates that different shards "
    "hold (run it unsharded: S x_i needs whole vectors)",
}


def _refuse(name: str, parts: list[RuleSpec], options: dict) -> None:
    last = parts[-1]
    if last.name in _UNSHARDED:
        raise ValueError(f"{name}: cannot run sharded: {_UNSHARDED[last.name]}")
    if last.name == "bulyan":
        selection = options.get("selection", "krum")
        chosen = _parts(selection)[-1] if isinstance(selection, str) else None
        if chosen is None or not chosen.needs_gram:
            raise ValueError(
                f"{name}: sharded Bulyan needs a distance-based selection rule (one that builds "
                f"the Gram matrix), got {selection!r}"
            )


def sharded_names() -> list[str]:
    """The registered rules and pre-aggregators :func:`aggregate` runs sharded (all but the
    skewed geometric median)."""
    from byzlearn.aggregators._registry import names

    return [n for n in names() if n not in _UNSHARDED]


def aggregate(name: str, vectors: ShardedVectors, f: int = 0, **options: Any) -> ShardedResult:
    """Run the (possibly composed) rule ``name`` on sharded vectors, as
    :func:`byzlearn.aggregators.aggregate` would on the whole matrix (same options, checks and
    errors); the output stays on the shards (:meth:`ShardedResult.vector` gathers it)."""
    if not isinstance(vectors, ShardedVectors):
        raise TypeError(
            f"sharded.aggregate: vectors must be ShardedVectors (see sharded.scatter), got "
            f"{type(vectors).__name__}"
        )
    parts = _parts(name)
    options = dict(options)
    max_missing = _max_missing(name, parts, options)
    routed = _route(name, parts, options)
    f = check_f(f, name)
    _check_sizes(parts, routed, vectors.n, f)
    _refuse(name, parts, routed[-1])
    V = vectors
    meta = torch.empty((V.n, V.d), dtype=V.dtype, device="meta")  # shape only, no data
    centre = None
    if parts[-1].accepts_centre and routed[-1].get("center") is not None:
        centre = torch.as_tensor(routed[-1]["center"]).detach().reshape(-1).to(torch.float64)
        if centre.numel() != V.d:
            raise ValueError(
                f"{parts[-1].name}: center has {centre.numel()} values, vectors have {V.d}"
            )
        if not bool(torch.isfinite(centre).all()):
            raise ValueError(f"{parts[-1].name}: center must be finite")
        centre = centre.to(V.dtype)
        routed[-1] = {**routed[-1], "center": torch.empty(V.d, dtype=V.dtype, device="meta")}
    aug = bad = None
    if any(p.needs_gram for p in parts):
        gram, imputed = _gram_of(V, centre, max_missing)
        V._all("set_gram", gram.bad, imputed)
        aug, bad = gram.aug, gram.bad
        inputs: Inputs = _ShardedInputs(X=meta, gram=gram, shards=V)
    else:
        inputs = _ShardedInputs(X=meta, gram=None, shards=V)
    with torch.no_grad():
        for part, opts in zip(parts[:-1], routed[:-1], strict=True):
            inputs = _vectors(part.impl(inputs, f, **opts))
        last, opts = parts[-1], routed[-1]
        kept = None
        matrix = False
        if last.kind == "pre":
            inputs = _vectors(last.impl(inputs, f, **opts))
            plan: tuple = ("vectors", inputs.A, None, ())
            matrix = True
        elif last.name == "bulyan":
            chosen, drop = bulyan_selection(inputs, f, **opts)
            plan = ("bulyan", inputs.A, None, (chosen, drop))
            kept = _kept(Combination(inputs=inputs, alpha=None, kept=chosen))
        elif not last.needs_gram and not last.selects:  # coordinate-wise: run per shard
            plan = ("rule", inputs.A, None, (last.name, f, opts))
        else:
            result = last.impl(inputs, f, **opts)
            if not isinstance(result, Combination) or result.alpha is None:
                raise ValueError(f"{name}: not available sharded")  # pragma: no cover
            plan = ("combine", result.inputs.A, None, (result.alpha, result.centre_weight))
            kept = _kept(result)
        each = V._split(centre)
        errors = V._all(
            "apply", aug, bad,
            each=[((plan[0], plan[1], c, plan[3]),) for (c,) in each],
        )
    _raise_first(errors, V.bounds)
    return ShardedResult(V, kept, matrix)


def _vectors(result: object) -> Inputs:
    if not isinstance(result, Inputs):  # pragma: no cover - pre-aggregators return Inputs
        raise TypeError(f"internal error: a pre-aggregator returned {type(result).__name__}")
    return result


_MISSING = re.compile(
    r"^(?P<name>.+): (?P<count>\d+) coordinate\(s\) have fewer than (?P<min_k>\d+) finite "
    r"values \(first: coordinate (?P<first>\d+)\)"
)


def _raise_first(errors: list[Any], bounds: list[int]) -> None:
    """Raise the shards' error as the unsharded rule would: too-few-values errors are merged
    (counts summed, the first coordinate in global numbering)."""
    found = [(s, e) for s, e in enumerate(errors) if e is not None]
    if not found:
        return
    matches = [(s, _MISSING.match(msg)) for s, (_, msg) in found]
    if all(m is not None for _, m in matches):
        first_s, first = matches[0]
        assert first is not None
        count = sum(int(m.group("count")) for _, m in matches if m is not None)
        raise missing_error(
            first.group("name"), count, int(first.group("min_k")),
            bounds[first_s] + int(first.group("first")),
        )
    kind, message = found[0][1]
    raise (TypeError if kind == "TypeError" else ValueError)(message)
