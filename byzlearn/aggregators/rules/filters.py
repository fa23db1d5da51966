"""Filtering rules: Divide-and-Conquer (DnC), SignGuard and CAF.

Each rule removes (DnC, SignGuard) or down-weights (CAF) the inputs it suspects, then averages the
others. None of them needs more than one pass over the d coordinates besides the output:

- DnC reads ``subsample`` sampled coordinates per round (an n x b gather) plus one pass that finds
  the rows holding non-finite values (skipped when a pre-aggregator already built the Gram matrix);
- SignGuard reads the row norms (one pass, or the shared Gram matrix) and the signs of the sampled
  coordinates;
- CAF runs entirely on the n x n centred Gram matrix (the eigenvectors of a weighted covariance
  live in the span of the centred rows) and returns weights over the inputs.

Non-finite values. A row holding a NaN/Inf (or a value beyond :func:`~._gram.measurable_limit`,
as for the distance-based rules) is *incomplete*: it is removed before any filtering, never
enters a statistic (mean, median norm, clustering, covariance) and gets weight 0 in the output.
DnC and CAF count the k incomplete rows among the f Byzantine ones (they filter the n - k complete
rows with f - k) and raise ``ValueError`` when k > f; SignGuard, which does not use f, raises only
when no row is complete.

Random coordinates (DnC, SignGuard). ``rng = numpy.random.default_rng(s)`` with ``s = seed`` (an
int), or, when ``generator`` (a ``torch.Generator``) is given or ``seed=None``, with ``s`` one
``torch.randint(0, 2**63 - 1, (1,))`` draw from that generator or from torch's global one. A set
of k of the d coordinates is a uniform random k-subset drawn by Floyd's algorithm
(:func:`._sample.sorted_sample`): ``t = rng.integers(0, [d - k, ..., d - 1], endpoint=True)``,
then for q = 0..k-1 add ``t[q]``, or ``d - k + q`` when ``t[q]`` is already in the set; the set
is returned sorted (all d, without a draw, when k >= d). Successive sets come from the same
``rng``. (Earlier versions drew ``numpy.sort(rng.choice(d, size=k, replace=False))``, which
shuffles a d-entry permutation when k > d / 50: the same distribution, other coordinates.)
The default ``seed=None`` draws fresh coordinates at every call, as both papers do at every
aggregation: from ``generator`` when given, else from torch's global generator (so a run is
reproducible under ``torch.manual_seed``).
A fixed ``seed`` (an int) draws the same coordinates at every call for a given d.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from byzlearn.aggregators import _gram_kernel
from byzlearn.aggregators._device import KERNEL_DTYPES, cpu_kernels, kernel_input
from byzlearn.aggregators._gram import (
    Inputs,
    block_size,
    column_blocks,
    measurable_limit,
    rounding_unit,
    weighted_rows,
)
from byzlearn.aggregators._registry import (
    Combination,
    _rescue_exponent,
    _times_power_of_two,
    register,
)
from byzlearn.aggregators._sample import sorted_sample

# Elements per block of the validity / norm pass (float64 copies of one block stay small).
_STATS_BLOCK_ELEMENTS = 1 << 20


# --- shared helpers ---------------------------------------------------------------------------
def make_rng(seed: int | None, generator: torch.Generator | None, name: str) -> np.random.Generator:
    """The numpy generator that draws coordinates (see the module docstring)."""
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"{name}: generator must be a torch.Generator")
        return np.random.default_rng(int(torch.randint(0, 2**63 - 1, (1,), generator=generator)))
    if seed is None:
        return np.random.default_rng(int(torch.randint(0, 2**63 - 1, (1,))))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{name}: seed must be an int or None, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"{name}: seed must be >= 0, got {seed}")
    return np.random.default_rng(int(seed))


def draw_coordinates(rng: np.random.Generator, d: int, k: int) -> np.ndarray:
    """``k`` distinct coordinates of ``range(d)``, uniform over the k-subsets, sorted; all of
    them (no draw) when k >= d (Floyd's algorithm, see the module docstring)."""
    return sorted_sample(rng, d, k)


def _positive_int(value: object, option: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: {option} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: {option} must be >= 1, got {value}")
    return int(value)


def _row_stats(
    Y: torch.Tensor, norms: bool, sign_cols: np.ndarray | None = None
) -> tuple[torch.Tensor | None, torch.Tensor, np.ndarray | None]:
    """Squared norms (float64, CPU, +inf on incomplete rows; None unless ``norms``), the
    incomplete rows of Y (a NaN/Inf, or a value beyond :func:`measurable_limit`) and, with
    ``sign_cols``, the (n, 3) counts of positive, zero and negative values there when the
    compiled read computed them in the same pass (else None)."""
    n, d = Y.shape
    limit = measurable_limit(d)
    if kernel_input(Y) and _gram_kernel.available(
        Y.detach().numpy()
    ):
        # one compiled, sequential read of each row (torch: three reductions per block)
        sq_np, top_np, counts = _gram_kernel.row_stats(
            Y.detach().numpy(), torch.get_num_threads(), sign_cols
        )
        signs = None if sign_cols is None else counts.astype(np.float64)
        bad = torch.from_numpy(~(top_np <= limit))  # NaN compares False: incomplete
        if not norms:
            return None, bad, signs
        sq = torch.from_numpy(sq_np)
        sq[bad] = float("inf")
        return sq, bad, signs
    sq = torch.zeros(n, dtype=torch.float64, device=Y.device)
    largest = torch.zeros(n, dtype=torch.float64, device=Y.device)
    # on a GPU the device's blocks (no float64 copies here; small blocks cost a launch each)
    small = max(1024, _STATS_BLOCK_ELEMENTS // max(n, 1))
    size = small if cpu_kernels(Y.device) else block_size(n, d, Y.device)
    for j0, j1 in column_blocks(d, size):
        block = Y[:, j0:j1]
        # max |value| per row as max(amax, -amin): no |block| temporary; NaN propagates
        top = torch.maximum(block.amax(dim=1), -block.amin(dim=1)).double()
        largest = torch.maximum(largest, top)
        if norms:  # a block's sum in the input precision (pairwise), the blocks in float64
            sq += torch.linalg.vecdot(block, block, dim=1).double()
    bad = (~(largest <= limit)).cpu()  # NaN compares False: incomplete
    if not norms:
        return None, bad, None
    sq = sq.cpu()
    sq[bad] = float("inf")
    return sq, bad, None


@dataclass
class _Rows:
    """The rows a filter works on: validity, norms, sampled coordinates and the output."""

    inputs: Inputs
    Y: torch.Tensor | None  # the rows' coordinates; None: mix the base rows through inputs.A
    bad: torch.Tensor  # bool, CPU, (n,)
    sqnorms: torch.Tensor | None  # float64, CPU, (n,); +inf on bad rows
    # (n, 3) positive/zero/negative counts at the sign_cols of :meth:`of`, when computed
    signs: np.ndarray | None = None
    scale: int = 0  # Y holds the input rows times 2^scale (:meth:`rescued`)

    @classmethod
    def of(cls, inputs: Inputs, norms: bool, sign_cols: np.ndarray | None = None) -> _Rows:
        """The rows of ``inputs``, with their squared norms when ``norms``; with ``sign_cols``
        and the input rows themselves (no pre-aggregator), their sign counts there from the
        same read when the compiled kernel takes them."""
        if inputs.gram is not None:  # the Gram pass already flagged bad rows (and gives norms)
            sq = inputs.sqnorms().clone() if norms else None
            return cls(inputs=inputs, Y=None, bad=inputs.bad.clone(), sqnorms=sq)
        held_elsewhere = getattr(inputs, "row_stats", None)
        if held_elsewhere is not None:  # sharded inputs: the shards' statistics, combined
            sq, bad, signs = held_elsewhere(norms, sign_cols)
            return cls(inputs=inputs, Y=None, bad=bad, sqnorms=sq, signs=signs)
        Y = inputs.materialize()  # a view of X without a pre-aggregator
        cols = sign_cols if inputs.A is None else None
        sq, bad, signs = _row_stats(Y, norms, cols)
        return cls(inputs=inputs, Y=Y, bad=bad, sqnorms=sq, signs=signs)

    def rescued(self, good: torch.Tensor) -> _Rows:
        """These rows times a power of two, their norms computed again, where the squared
        norms of the complete rows ``good`` lost their bits (underflow to subnormals or 0, or
        overflow to inf in the input precision, e.g. float32 rows near 2^-80 or 2^+80, float64
        near 2^-540; see :func:`_rescue_exponent`); :meth:`output` divides back. ``self``
        otherwise, and where the rows are not held here (sharded inputs; the Gram pass has its
        own check in the registry)."""
        Y = self.Y
        if Y is None or self.sqnorms is None:
            return self
        exponent = _rescue_exponent(
            self.sqnorms[good], lambda: Y.index_select(0, good.to(Y.device)), Y.dtype, Y.shape[1]
        )
        if exponent is None:
            return self
        scaled = _times_power_of_two(Y, exponent)
        sq, _, _ = _row_stats(scaled, norms=True)
        assert sq is not None  # asked for
        sq[self.bad] = float("inf")  # the incomplete rows as found on the input rows
        return replace(self, Y=scaled, sqnorms=sq, scale=self.scale + exponent)

    def complete(self, f: int, name: str, count_in_f: bool) -> tuple[torch.Tensor, int]:
        """Indices of the complete rows and the f left for them."""
        good = torch.nonzero(~self.bad).flatten()
        k = self.bad.numel() - good.numel()
        if good.numel() == 0:
            raise ValueError(f"{name}: every input holds non-finite values")
        if not count_in_f:
            return good, f
        if k > f:
            raise ValueError(
                f"{name}: {k} inputs hold non-finite values but f={f} "
                "(incomplete inputs count among the f Byzantine ones)"
            )
        return good, f - k

    def columns(
        self, rows: torch.Tensor, cols: np.ndarray, exact: bool = True, on_host: bool = True
    ) -> torch.Tensor:
        """The values of ``rows`` at coordinates ``cols`` (CPU, or the rows' device where
        ``on_host`` is False and they need no mixing; float64 when ``exact``, else the input
        dtype where no mixing is needed, e.g. for their signs)."""
        Y = self.Y
        if exact and Y is not None and len(cols) == Y.shape[1] and rows.numel() == Y.shape[0]:
            # every row and every coordinate, in order (both are sorted and distinct): one
            # converting copy, not two gathers and a conversion (DnC with d <= b at 25 x 4810)
            return (Y.cpu() if on_host else Y).to(torch.float64, copy=True)
        c = torch.as_tensor(cols, dtype=torch.long)
        # Columns first: gathering rows first would copy whole rows of d values.
        if self.Y is not None:
            r, cd = rows.to(self.Y.device), c.to(self.Y.device)
            values = self.Y.index_select(1, cd).index_select(0, r)
            values = values.cpu() if on_host else values
            return values.double() if exact or values.dtype not in KERNEL_DTYPES else values
        if self.inputs.A is None:  # base rows, missing values imputed as by the Gram pass
            return self.inputs.gather(rows, c).cpu()
        A = self.inputs.A[rows]
        used = torch.nonzero((A != 0).any(dim=0)).flatten()
        return A[:, used] @ self.inputs.gather(used, c).cpu()

    def output(self, alpha: torch.Tensor, kept: torch.Tensor | None) -> Combination:
        if self.Y is None:
            return Combination(inputs=self.inputs, alpha=alpha, kept=kept)
        value = weighted_rows(self.Y, alpha, all_rows=not bool(self.bad.any()))
        if self.scale:
            value = _times_power_of_two(value, -self.scale)
        return Combination(inputs=self.inputs, alpha=alpha, kept=kept, value=value)


# --- DnC ----------------------------------------------------------------------------------------
def dnc_scores(S: torch.Tensor) -> torch.Tensor:
    """DnC outlier scores of the rows of S: ``<s_i - mu, v>^2`` with v the top right singular
    vector of the centred matrix ``C = S - 1 mu^T`` (float64).

    With ``C = U Sigma V^T``, ``C v = sigma_1 u_1``: the scores are ``lambda_1 u_1^2`` for the top
    eigenpair of the n x n matrix ``C C^T``, which costs one product and an n x n eigensolver
    where an SVD of C also forms the n x b factor V^T (n = 25, b = 10^4: about 10 ms a call for
    the SVD, 0.3 ms this way; ``docs/performance.md``)."""
    C = S - S.mean(dim=0)
    values, vectors = torch.linalg.eigh(C @ C.T)
    return values[-1].clamp(min=0.0) * vectors[:, -1] ** 2


@register(
    "dnc",
    min_n=lambda f: 2 * f + 1,
    requirement="n >= 2f + 1",
    selects=True,
    needs_gram=False,
)
def dnc(
    inputs: Inputs,
    f: int,
    *,
    iterations: int = 1,
    subsample: int = 10_000,
    fraction: float = 1.0,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Combination:
    r"""Divide-and-Conquer: the mean of the inputs that survive ``iterations`` spectral filters.

    Each round t: draw a sorted random set r of b = ``subsample`` coordinates (all coordinates
    when d <= b, in which case every round is the same and one is run); with the inputs restricted
    to r, ``mu = (1/n) sum_i g_i[r]``, v = the top right singular vector of the centred n x b
    matrix ``[g_i[r] - mu]_i``, scores ``s_i = <g_i[r] - mu, v>^2``; I_t = the n - floor(c f)
    inputs of lowest score (c = ``fraction``; ties by index; c f is rounded to 9 decimals before
    the floor so that e.g. 0.29 * 100 counts as 29). Output: the mean of the inputs in the
    intersection of the I_t (``ValueError`` if it is empty, possible only when iterations *
    floor(c f) >= n). Random coordinates: ``seed`` / ``generator`` as in the module docstring:
    by default fresh coordinates at every call, as the paper draws them at every aggregation
    (from ``generator``, else torch's global generator); ``seed=<int>`` fixes them.

    Reference: Shejwalkar, Houmansadr, "Manipulating the Byzantine: Optimizing Model Poisoning
    Attacks and Defenses for Federated Learning", NDSS 2021, Algorithm 2 (b = 10000, c = 1 and
    one round by default; the intersection starts from all inputs). Requirement: n >= 2f + 1;
    ``fraction`` must leave at least one input.
    Non-finite rows are removed first and count among the f (the rule filters the n - k complete
    rows with f - k; ``ValueError`` when k > f). Cost: one O(n d) validity pass (none after a
    pre-aggregator that built the Gram matrix), per round an n x b gather, an O(n^2 b) product and
    an n x n eigensolver (:func:`dnc_scores`), then one weighted sum of the kept rows.
    """
    rounds = _positive_int(iterations, "iterations", "dnc")
    b = _positive_int(subsample, "subsample", "dnc")
    c = float(fraction)
    if not (math.isfinite(c) and c >= 0.0):
        raise ValueError(f"dnc: fraction must be finite and >= 0, got {fraction}")
    rows = _Rows.of(inputs, norms=False)
    good, f_left = rows.complete(f, "dnc", count_in_f=True)
    n_good = good.numel()
    removed = math.floor(round(c * f_left, 9))
    m = n_good - removed
    if m < 1:
        raise ValueError(
            f"dnc: fraction={fraction} removes {removed} of the {n_good} complete inputs "
            f"(f={f_left}); at least one must remain"
        )
    rng = make_rng(seed, generator, "dnc")
    d = inputs.d
    if b >= d:
        rounds = 1  # every round would see all the coordinates: identical rounds
    kept = torch.ones(n_good, dtype=torch.bool)
    for _ in range(rounds):
        r = draw_coordinates(rng, d, b)
        S = rows.columns(good, r)
        scores = dnc_scores(S)
        # float64 rows near 2^-1000: the scores' squares underflowed (all read 0); the ranking
        # on the sampled values times a power of two is that of the rows at other scales
        exponent = _rescue_exponent(scores, S, S.dtype, S.shape[1])
        if exponent is not None:
            scores = dnc_scores(_times_power_of_two(S, exponent))
        lowest = torch.as_tensor(np.argsort(scores.numpy(), kind="stable")[:m])
        mask = torch.zeros(n_good, dtype=torch.bool)
        mask[lowest] = True
        kept &= mask
    if not bool(kept.any()):
        raise ValueError(
            f"dnc: no input survives all {rounds} rounds (each removes {removed}); "
            "use fewer iterations or a smaller fraction"
        )
    chosen = good[kept]
    alpha = torch.zeros(inputs.n, dtype=torch.float64)
    alpha[chosen] = 1.0 / chosen.numel()
    return rows.output(alpha, chosen)


# --- SignGuard ----------------------------------------------------------------------------------
def sign_features(V: torch.Tensor) -> np.ndarray:
    """Per row of V (n x k): the fractions of positive, zero and negative values."""
    k = V.shape[1]
    if V.device.type != "cpu":
        # counted on the device: only the (n, 3) counts cross to the host, not n x k values
        # (on an H200 at 25 x 1e8, with the norm pass in the device's blocks, SignGuard went
        # from 1.8-2.2 s to 0.33-0.35 s a call)
        counts = torch.stack([(V > 0).sum(dim=1), (V == 0).sum(dim=1), (V < 0).sum(dim=1)], 1)
        return counts.cpu().numpy().astype(np.float64) / k
    rows = V.numpy()
    # numpy's count_nonzero on one row at a time: about 25x faster than torch's bool sums
    positive = np.array([np.count_nonzero(r > 0) for r in rows], dtype=np.float64)
    zero = np.array([np.count_nonzero(r == 0) for r in rows], dtype=np.float64)
    negative = np.array([np.count_nonzero(r < 0) for r in rows], dtype=np.float64)
    return np.stack([positive, zero, negative], axis=1) / k


def _sign_features_of(rows: _Rows, good: torch.Tensor, cols: np.ndarray) -> np.ndarray:
    """:func:`sign_features` of the rows ``good`` at the coordinates ``cols``: counted by a
    compiled loop straight from the input rows when there is no pre-aggregator (no n x k
    gather), else from the gathered (mixed) values."""
    if rows.Y is not None and kernel_input(rows.Y):
        Yn = rows.Y.detach().numpy()
        if _gram_kernel.available(Yn):
            counts = _gram_kernel.sign_counts(Yn, good.numpy(), cols, torch.get_num_threads())
            if not counts[:, 3].any():  # finite sampled values only (else: the general path)
                return counts[:, :3].astype(np.float64) / max(1, len(cols))
    return sign_features(rows.columns(good, cols, exact=False, on_host=False))


def largest_sign_cluster(features: np.ndarray) -> np.ndarray:
    """Boolean mask of the largest MeanShift cluster of ``features`` (n x 3).

    ``MeanShift(bandwidth=estimate_bandwidth(features, quantile=0.5), bin_seeding=True,
    cluster_all=False)`` (the settings of the SignGuard authors' code, with the bandwidth estimated
    on all points); points farther than the bandwidth from every centre belong to no cluster. Ties
    between clusters of equal size go to the lower sklearn label, i.e. the centre with more points
    within the bandwidth (then the larger centre coordinates). When the estimated bandwidth is 0
    (at least half of the points share their feature vector with many others), the clusters are
    the groups of identical feature vectors (the zero-bandwidth limit), ties to the
    lexicographically smallest vector.
    """
    from sklearn.cluster import MeanShift

    bandwidth = _bandwidth(features)
    if not bandwidth > 0.0:
        _, inverse, counts = np.unique(features, axis=0, return_inverse=True, return_counts=True)
        return inverse.reshape(-1) == int(np.argmax(counts))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Binning data failed")
        found = _mean_shift(np.ascontiguousarray(features, dtype=np.float64), bandwidth)
        if found is None:  # brute force (few points) or moved internals: the estimator
            ms = MeanShift(bandwidth=bandwidth, bin_seeding=True, cluster_all=False)
            ms.fit(features)
            found = ms.labels_, len(ms.cluster_centers_)
    labels, n_clusters = found
    counts = np.bincount(labels[labels >= 0], minlength=n_clusters)
    return labels == int(np.argmax(counts))


_MEAN_SHIFT_MAX_ITER = 300  # MeanShift's default
_LEAF_SIZE = 30  # NearestNeighbors' default
_MAX_BRUTE_FEATURES = 15  # NearestNeighbors(algorithm="auto") takes brute force above


def _neighbour_tools() -> tuple[Any, Any, Any] | None:
    """scikit-learn's ``ArgKmin`` and ``RadiusNeighbors`` (the brute-force searches its
    ``NearestNeighbors`` runs) and ``KDTree``, or None where the private module moved (the
    estimators then run)."""
    try:
        from sklearn.metrics._pairwise_distances_reduction import ArgKmin, RadiusNeighbors
        from sklearn.neighbors import KDTree
    except ImportError:  # pragma: no cover (another scikit-learn)
        return None
    return ArgKmin, RadiusNeighbors, KDTree


def _brute_neighbours(
    X: np.ndarray, Y: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """(distances, indices) of each row of X's k nearest rows of Y, as ``NearestNeighbors(
    n_neighbors=k).fit(Y).kneighbors(X)`` computes them where it takes brute force (``k >=
    len(Y) // 2`` or more than 15 features): its ``ArgKmin`` call, without the estimators'
    input validation (about 0.2 ms a fit or query); None where it would not (a KD-tree) or
    ``ArgKmin`` does not take these arrays."""
    tools = _neighbour_tools()
    if tools is None or not (k >= Y.shape[0] // 2 or Y.shape[1] > _MAX_BRUTE_FEATURES):
        return None
    arg_kmin = tools[0]
    if not arg_kmin.is_usable_for(X, Y, "euclidean"):
        return None
    return arg_kmin.compute(
        X=X, Y=Y, k=k, metric="euclidean", metric_kwargs={}, strategy="auto",
        return_distance=True,
    )


def _bandwidth(features: np.ndarray) -> float:
    """``estimate_bandwidth(features, quantile=0.5)``: the mean over the points of the distance
    to their ``int(n / 2)``-th nearest point (themselves included), by its own brute-force
    search in batches of 500 queries (:func:`_brute_neighbours`), the same sums in the same
    order; the function itself where that search does not apply."""
    from sklearn.cluster import estimate_bandwidth

    X = np.ascontiguousarray(features, dtype=np.float64)
    n = X.shape[0]
    k = max(1, int(n * 0.5))
    total = 0.0
    for start in range(0, n, 500):  # scikit-learn's gen_batches(n, 500)
        found = _brute_neighbours(X[start : start + 500], X, k)
        if found is None:
            return float(estimate_bandwidth(features, quantile=0.5))
        total += np.max(found[0], axis=1).sum()
    return float(total / n) if n else float(estimate_bandwidth(features, quantile=0.5))


def _radius_tree(X: np.ndarray) -> Any | None:
    """The KD-tree ``NearestNeighbors(radius=...).fit(X)`` builds (``algorithm="auto"``, five
    neighbours by default: a KD-tree from 12 points in up to 15 dimensions), built directly;
    None where it would take brute force or ``KDTree`` is not there."""
    tools = _neighbour_tools()
    if tools is None or X.shape[0] // 2 <= 5 or X.shape[1] > _MAX_BRUTE_FEATURES:
        return None
    return tools[2](X, _LEAF_SIZE, metric="euclidean")


def _mean_shift(X: np.ndarray, bandwidth: float) -> tuple[np.ndarray, int] | None:
    """``(labels_, number of clusters)`` of ``MeanShift(bandwidth, bin_seeding=True,
    cluster_all=False).fit(X)``: scikit-learn's own steps (its bin seeds, mean shift from each
    seed, near-duplicate centres removed by intensity, labels), with the radius queries of the
    shifts sent straight to the KD-tree its ``NearestNeighbors`` builds, built directly
    (:func:`_radius_tree`: the same tree, the same query, so the same neighbours in the same
    order), the shifts of all seeds still moving in one query per step, and the labels' nearest
    centres from its brute-force search where it takes one (:func:`_nearest_centre`). Each
    seed's shift is scikit-learn's ``_mean_shift_single_seed`` (its own mean, its own stop); a
    query of several points runs the tree's search of each point as a query of that point alone
    does. Through the estimator each query went through its input validation as well: 11-12 ms
    a fit for 25 points; one query of the tree per seed and step, about 4 ms (each query costs
    about 60 us, most of it validation, whether it holds one point or 25); one per step, about
    1.3 ms. ``None`` when that estimator would not build a KD-tree (few points: brute force) or
    scikit-learn's internals are not where they were (1.9); the caller then fits the estimator.
    """
    from sklearn.cluster import get_bin_seeds

    tree = _radius_tree(X)
    if tree is None:
        return None
    seeds = get_bin_seeds(X, bandwidth, 1)
    means, within = _shift_seeds(X, tree, np.asarray(seeds), bandwidth)
    intensity: dict[tuple[float, ...], int] = {}
    for mean, count in zip(means, within, strict=True):  # in seed order: a later seed's
        if count:  # equal centre overwrites an earlier one's count, as in the estimator
            intensity[tuple(mean)] = int(count)
    if not intensity:
        raise ValueError(
            f"No point was within bandwidth={bandwidth:f} of any seed. Try a different "
            "seeding strategy or increase the bandwidth."
        )
    ordered = sorted(intensity.items(), key=lambda item: (item[1], item[0]), reverse=True)
    centres = np.array([item[0] for item in ordered])
    unique = np.ones(len(centres), dtype=bool)
    near = _within_radius(centres, bandwidth)
    for i in range(len(centres)):
        if unique[i]:
            unique[near(i)] = False
            unique[i] = True
    kept = centres[unique]
    distances, idxs = _nearest_centre(X, kept)
    labels = np.full(X.shape[0], -1, dtype=int)
    inside = distances.flatten() <= bandwidth
    labels[inside] = idxs.flatten()[inside]
    return labels, len(kept)


def _within_radius(centres: np.ndarray, radius: float) -> Any:
    """``i -> NearestNeighbors(radius=radius).fit(centres).radius_neighbors([centres[i]],
    return_distance=False)[0]``: the KD-tree it builds from 12 centres on (:func:`_radius_tree`,
    queried as it queries it), its brute-force ``RadiusNeighbors`` call below, each query of one
    centre as MeanShift sends it; the estimator where scikit-learn's internals moved."""
    from sklearn.neighbors import NearestNeighbors

    tree = _radius_tree(centres)
    if tree is not None:
        return lambda i: tree.query_radius(
            centres[i : i + 1], radius, return_distance=False, sort_results=False
        )[0]
    tools = _neighbour_tools()
    brute = None if tools is None else tools[1]
    few = centres.shape[0] // 2 <= 5 and centres.shape[1] <= _MAX_BRUTE_FEATURES
    if brute is not None and few and brute.is_usable_for(centres[:1], centres, "euclidean"):
        return lambda i: brute.compute(
            X=centres[i : i + 1], Y=centres, radius=radius, metric="euclidean",
            metric_kwargs={}, strategy="auto", return_distance=False, sort_results=False,
        )[0]
    near = NearestNeighbors(radius=radius, n_jobs=None).fit(centres)
    return lambda i: near.radius_neighbors([centres[i]], return_distance=False)[0]


def _nearest_centre(X: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``NearestNeighbors(n_neighbors=1).fit(centres).kneighbors(X)``: its ``ArgKmin`` call
    where it takes brute force (up to 3 centres: :func:`_brute_neighbours`), else the
    estimator."""
    from sklearn.neighbors import NearestNeighbors

    found = _brute_neighbours(X, centres, 1)
    if found is not None:
        return found
    return NearestNeighbors(n_neighbors=1, n_jobs=None).fit(centres).kneighbors(X)


def _shift_seeds(
    X: np.ndarray, tree: Any, seeds: np.ndarray, bandwidth: float
) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``_mean_shift_single_seed`` from every seed, the seeds still moving
    queried together: (the final means (float64), the points within the bandwidth of each
    at its last query). Per seed: query the points within the bandwidth of its mean; none:
    stop (the mean stays); else the mean moves to theirs, and stops when it moved by at most
    ``1e-3 * bandwidth`` or after ``_MEAN_SHIFT_MAX_ITER`` completed steps. The seed itself
    (float32 after binning) is widened exactly, so the first move is measured as there."""
    stop_thresh = 1e-3 * bandwidth
    means = seeds.astype(np.float64)  # exact: float32 seeds widen without rounding
    within = np.zeros(len(means), dtype=np.int64)
    steps = np.zeros(len(means), dtype=np.int64)
    moving = np.arange(len(means))
    while moving.size:
        found = tree.query_radius(means[moving], bandwidth, return_distance=False)
        still = []
        for s, idx in zip(moving.tolist(), found, strict=True):
            within[s] = len(idx)
            if not len(idx):
                continue
            old = means[s].copy()
            means[s] = np.mean(X[idx], axis=0)
            if np.linalg.norm(means[s] - old) <= stop_thresh or steps[s] == _MEAN_SHIFT_MAX_ITER:
                continue
            steps[s] += 1
            still.append(s)
        moving = np.asarray(still, dtype=np.int64)
    return means, within


@register(
    "signguard",
    min_n=lambda f: 2 * f + 1,
    requirement="n >= 2f + 1",
    selects=True,
    needs_gram=False,
)
def signguard(
    inputs: Inputs,
    f: int,
    *,
    lower: float = 0.1,
    upper: float = 3.0,
    coordinate_fraction: float = 0.1,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Combination:
    r"""SignGuard: norm filter and sign clustering, then the mean of the kept inputs clipped to
    the median norm.

    1. Norm filter: ``M = median_i ||g_i||`` (mean of the two middle norms for an even count),
       ``S1 = {i : L M <= ||g_i|| <= R M}`` (L = ``lower``, R = ``upper``; i.e.
       ``L <= ||g_i|| / M <= R``).
    2. Sign clustering: on k = max(1, floor(``coordinate_fraction`` * d)) random coordinates
       (fresh at every call by default, from ``generator`` or torch's global generator;
       ``seed=<int>`` fixes them; see the module docstring), each input's features are the
       fractions of its positive, zero and negative values; S2 = the largest MeanShift cluster of
       the features (see :func:`largest_sign_cluster`: ``bin_seeding=True``,
       ``cluster_all=False``, bandwidth by ``estimate_bandwidth(quantile=0.5)``; ties to the
       cluster sklearn ranks first).
    3. ``S = S1 & S2``; if empty, S = S1 (never empty: the median-norm input passes the norm
       filter). Output: ``(1/|S|) sum_{i in S} g_i min(1, M / ||g_i||)``.

    Reference: Xu, Huang, Tan, Wang, Huang, "SignGuard: Byzantine-robust Federated Learning
    through Collaborative Malicious Gradient Filtering", ICDCS 2022 (arXiv 2109.05872). The
    authors' code differs in details: it samples a contiguous block of coordinates at a random
    offset, divides each feature by its maximum over the inputs, uses strict inequalities in the
    norm filter and the lower median for the clipping; here the coordinates are a uniform random
    subset, the features the plain fractions and M one median for both. Requirement: n >= 2f + 1
    (an honest majority, which the median norm needs); f is not used otherwise. Non-finite
    rows are removed first (M, the clusters and the output use the complete rows only;
    ``ValueError`` when none is complete). Cost: one O(n d) norm pass (or the shared Gram
    matrix after a pre-aggregator), an n x k gather, MeanShift on n points in 3 dimensions, and
    one weighted sum.
    """
    lo, hi, frac = float(lower), float(upper), float(coordinate_fraction)
    if not (0.0 <= lo <= 1.0 <= hi):
        raise ValueError(f"signguard: need 0 <= lower <= 1 <= upper, got {lower}, {upper}")
    if not (0.0 < frac <= 1.0):
        raise ValueError(f"signguard: coordinate_fraction must be in (0, 1], got {frac}")
    d = inputs.d
    k = max(1, math.floor(round(frac * d, 9)))
    r = draw_coordinates(make_rng(seed, generator, "signguard"), d, k)
    rows = _Rows.of(inputs, norms=True, sign_cols=r)  # the sign counts from the same read
    good, _ = rows.complete(f, "signguard", count_in_f=False)
    rows = rows.rescued(good)  # norms that lost their bits: on the rows times a power of two
    assert rows.sqnorms is not None  # asked for above
    norms = rows.sqnorms[good].sqrt()
    M = float(np.median(norms.numpy()))
    s1 = (norms >= lo * M) & (norms <= hi * M)
    if rows.signs is not None:
        features = rows.signs[good.numpy()] / max(1, len(r))
    else:
        features = _sign_features_of(rows, good, r)
    s2 = torch.as_tensor(largest_sign_cluster(features))
    S = s1 & s2
    if not bool(S.any()):
        S = s1
    chosen = good[S]
    kept_norms = norms[S]
    scale = torch.where(kept_norms > M, M / kept_norms, torch.ones_like(kept_norms))
    alpha = torch.zeros(inputs.n, dtype=torch.float64)
    alpha[chosen] = scale / chosen.numel()
    return rows.output(alpha, chosen)


# --- CAF ----------------------------------------------------------------------------------------
@register("caf", min_n=lambda f: 2 * f + 1, requirement="n >= 2f + 1", max_missing=0.0)
def caf(inputs: Inputs, f: int) -> Combination:
    r"""CAF, the covariance-bound agnostic filter: iterative spectral down-weighting; returns the
    weighted mean of least top covariance eigenvalue seen.

    With weights ``c_i = 1``, repeat while ``sum_i c_i > n - 2f``: ``mu_c = sum c_i x_i / sum c_i``;
    ``Sigma_c = sum c_i (x_i - mu_c)(x_i - mu_c)^T / sum c_i`` with top eigenpair (lambda, v);
    remember mu_c when lambda is strictly below every lambda seen before; ``tau_i = <x_i - mu_c,
    v>^2``; ``c_i <- c_i (1 - tau_i / max_j tau_j)``, the max over the inputs still weighted
    (c_j > 0). Output: the remembered mu_c (a convex combination of the inputs).

    Reference: Allouah, Guerraoui, Stephan, "Towards Trustworthy Federated Learning with Untrusted
    Participants", ICML 2025 (arXiv 2505.01874), Algorithm 2 (CAF: Covariance bound-Agnostic
    Filter), as implemented in EPFL's byzfl (``byzfl.CAF``). Differences from byzfl's code, on
    purpose: (lambda, v) is the exact top eigenpair (byzfl runs one power iteration from a random
    vector, so its output is random); ``max_j tau_j`` excludes the inputs already at weight 0
    (byzfl takes it over all n, so a removed far outlier keeps the others' steps tiny: with exact
    eigenpairs, 5 outliers at +100 among 30 inputs take ~1500 iterations, at +1e4 over 200000,
    against at most 3 here); with f = 0 the loop does
    not run and the output is the mean (byzfl returns None); the loop also stops when lambda = 0
    (the weighted inputs coincide; nothing left to filter). Each iteration zeroes the weight of
    at least one input, so there are at most n iterations.

    Requirement: n >= 2f + 1 (byzfl refuses 2f >= n). Non-finite rows are removed first and
    count among the f (the filter runs on the n - k complete rows with f - k; ``ValueError``
    when k > f). Computed on the n x n Gram matrix: the nonzero eigenvalues of Sigma_c are those
    of ``W^1/2 K W^1/2`` (K the Gram matrix of the rows centred on mu_c, W = diag(c / sum c)),
    ``v = Z^T W^1/2 u / sqrt(lambda)`` and ``tau = (K W^1/2 u)^2 / lambda``. Cost: one Gram pass,
    O(n^3) per iteration, one weighted sum.
    """
    rows = _Rows.of(inputs, norms=False)
    good, f_left = rows.complete(f, "caf", count_in_f=True)
    n_good = good.numel()
    G = inputs.centred_gram()[good][:, good]
    c = torch.ones(n_good, dtype=torch.float64)
    best = c / n_good
    best_lambda = math.inf
    unit = rounding_unit(inputs.X.dtype)  # the rounding the Gram pass allows for
    while float(c.sum()) > n_good - 2 * f_left:
        a = c / c.sum()
        Ga = G @ a
        K = G - Ga[:, None] - Ga[None, :] + a @ Ga  # Gram of the rows centred on mu_c
        live = torch.nonzero(c > 0).flatten()
        K_live = K[live][:, live]
        root_w = a[live].sqrt()
        evals, evecs = torch.linalg.eigh(root_w[:, None] * K_live * root_w[None, :])
        lam = float(evals[-1])
        if lam < best_lambda:
            best_lambda, best = lam, a
        if not lam > 0.0:
            break
        tau = (K_live @ (root_w * evecs[:, -1])) ** 2 / lam
        # inputs whose tau is the largest up to the Gram pass's rounding (identical inputs: an
        # attack's one vector) all drop, as in exact arithmetic; dropping one of them and
        # keeping the others at a weight of about 1e-15 made the output depend on the row order
        keep = 1.0 - tau / tau.max()
        c[live] = c[live] * torch.where(keep > unit, keep, torch.zeros_like(keep))
    alpha = torch.zeros(inputs.n, dtype=torch.float64)
    alpha[good] = best
    return rows.output(alpha, None)
