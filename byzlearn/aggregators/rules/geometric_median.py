"""Geometric median by smoothed Weiszfeld iterations in the coefficient space of the Gram matrix."""

from __future__ import annotations

import numpy as np
import torch

from byzlearn.aggregators._gram import Inputs, blas_threads, rounding_unit
from byzlearn.aggregators._registry import Combination, register

try:
    from numba import njit
except ImportError:  # pragma: no cover
    njit = None  # type: ignore[assignment]


def affine_distances(G: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``||x_i - z||`` for ``z = sum_j alpha_j x_j`` with ``sum alpha = 1``, from a centred Gram."""
    Ga = G @ alpha
    sq = G.diagonal() - 2.0 * Ga + alpha @ Ga
    return sq.clamp(min=0.0).sqrt()


@register("geometric_median", min_n=lambda f: 2 * f + 1, requirement="n >= 2f + 1")
def geometric_median(
    inputs: Inputs,
    f: int,
    *,
    tol: float = 1e-8,
    max_iter: int = 1000,
    nu: float | None = None,
    weights: torch.Tensor | None = None,
) -> Combination:
    r"""Geometric median ``argmin_z sum_i a_i ||z - x_i||`` by smoothed Weiszfeld iterations.

    ``z <- sum_i b_i x_i / sum_i b_i`` with ``b_i = a_i / max(nu, ||z - x_i||)`` (RFA: Pillutla,
    Kakade, Harchaoui, "Robust Aggregation for Federated Learning", arXiv 1912.13445), started from
    the mean of the finite inputs and run until the step ``||z_{t+1} - z_t||`` falls below
    ``tol`` times the typical distance between inputs, or ``max_iter`` iterations. ``z`` stays a
    convex combination of the inputs, so each iteration costs O(n^2) on the Gram matrix and the d
    coordinates are read only to form the output. ``nu`` defaults to 1e-9 of the typical distance;
    ``weights`` (a_i) default to 1. Rows with non-finite values get weight 0. With the default
    ``nu``, an input that satisfies the optimality condition of a data point (an attack's vector
    sent by enough rows) is returned exactly rather than the iterations' approach to it
    (:func:`_input_if_optimal`), and iterations still running after :data:`NEWTON_AFTER`
    continue as Newton steps on the plain objective (:func:`_newton`; Weiszfeld's linear
    rate comes near 1 where f identical rows nearly outweigh the others). Breakdown point 1/2;
    requirement: n >= 2f + 1. Cost: one Gram pass + O(iterations n^2) (+ O(n^3) per Newton
    step, where they run) + one weighted sum.
    """
    if tol <= 0 or max_iter < 1:
        raise ValueError("geometric_median: tol must be > 0 and max_iter >= 1")
    n = inputs.n
    good = ~inputs.bad
    a = torch.ones(n, dtype=torch.float64)
    if weights is not None:
        a = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        if a.numel() != n or bool((a < 0).any()) or not bool(torch.isfinite(a).all()):
            raise ValueError(f"geometric_median: weights must be {n} finite values >= 0")
    a = a * good
    if float(a.sum()) <= 0:
        raise ValueError("geometric_median: no finite input with a positive weight")
    G = inputs.centred_gram().clone()
    G[~good, :] = 0.0
    G[:, ~good] = 0.0
    D = inputs.sqdist()
    finite_d = D[good][:, good]
    scale = float(finite_d[finite_d > 0].sqrt().median()) if bool((finite_d > 0).any()) else 0.0
    if scale == 0.0:  # all finite inputs coincide
        alpha = a / a.sum()
        return Combination(inputs=inputs, alpha=alpha)
    smoothing = 1e-9 * scale if nu is None else float(nu)
    if smoothing <= 0:
        raise ValueError("geometric_median: nu must be > 0")
    alpha = torch.from_numpy(
        _minimise(G.numpy(), a.numpy(), (a / a.sum()).numpy(), smoothing, tol * scale, max_iter,
                  nu is None)
    )
    if nu is None:  # the minimiser of the plain objective: an input, where it is one
        unit = rounding_unit(inputs.X.dtype)
        if njit is not None:
            Gn, Dn = G.numpy(), np.ascontiguousarray(D.numpy())
            alpha = torch.from_numpy(
                _input_weights(Gn, Dn, a.numpy(), alpha.numpy(), smoothing, unit)
            )
        else:  # pragma: no cover (numba missing)
            alpha = _input_if_optimal(G, D, a, alpha, smoothing, unit)
    return Combination(inputs=inputs, alpha=alpha)


# Weiszfeld iterations before the default objective switches to Newton steps (_newton): the
# sweep's inputs (n = 10 to 200, f = n / 5, every attack kind) converge in fewer; an input
# set whose minimiser sits close to f identical rows that nearly outweigh the others (ALIE at
# n = 39, f = 18) converges linearly at a rate near 1 and was still 1.4e-3 of the typical
# distance away after 1000 iterations in float64.
NEWTON_AFTER = 100
# Newton steps before the iterations go back to Weiszfeld's: from Weiszfeld's point they
# converged in 2 to 8 on the inputs above; more means a degenerate Hessian (collinear inputs).
NEWTON_STEPS = 30


def _minimise(G, a, alpha, smoothing, stop, max_iter, plain):
    """The weights of the minimiser on numpy arrays: Weiszfeld's iterations (compiled where
    numba is there); for the plain objective (``plain``, the default ``nu``) those left
    unconverged after :data:`NEWTON_AFTER` continue as Newton steps (:func:`_newton`), then as
    Weiszfeld's again where Newton's steps stall (at an input, where the objective has a kink).
    Every step counts against ``max_iter``."""
    loop = _weiszfeld if njit is not None else _weiszfeld_torch
    first = min(max_iter, NEWTON_AFTER) if plain else max_iter
    alpha, used, done = loop(G, a, alpha, smoothing, stop, first, plain)
    if done or used >= max_iter:
        return alpha
    with blas_threads(torch.get_num_threads()):  # numpy's BLAS: the caller's thread count
        alpha, steps, done = _newton(G, a, alpha, smoothing, stop, max_iter - used)
    used += steps
    if not done and used < max_iter:
        alpha, _, _ = loop(G, a, alpha, smoothing, stop, max_iter - used, plain)
    return alpha


def _weiszfeld_torch(G, a, alpha, smoothing, stop, max_iter, from_inputs):
    """:func:`_weiszfeld` in torch, for hosts without numba: (alpha, iterations, converged)."""
    Gt, at_, alpha = torch.from_numpy(G), torch.from_numpy(a), torch.from_numpy(alpha)
    for used in range(1, max_iter + 1):
        dist = affine_distances(Gt, alpha)
        at = (dist <= smoothing) & (at_ > 0) if from_inputs else torch.zeros_like(at_, dtype=bool)
        beta = torch.where(at, 0.0, at_ / dist.clamp(min=smoothing))
        if float(beta.sum()) == 0.0:
            return alpha.numpy(), used, True  # every input with weight coincides with z
        new = beta / beta.sum()
        eta = float(at_[at].sum())
        if eta > 0.0:  # Vardi and Zhang's step from an input (see _weiszfeld)
            gap = new - alpha
            r = float(beta.sum()) * float((gap @ Gt @ gap).clamp(min=0).sqrt())
            keep = min(1.0, eta / r) if r > 0.0 else 1.0
            new = (1.0 - keep) * new + keep * alpha
        step = new - alpha
        alpha = new
        if float((step @ Gt @ step).clamp(min=0).sqrt()) <= stop:
            return alpha.numpy(), used, True
    return alpha.numpy(), max_iter, False


def _newton(G, a, alpha, tiny, stop, budget):
    r"""Newton steps on ``F(z) = sum_i a_i ||z - x_i||`` from ``z = sum_i alpha_i x_i``, in
    the coordinates of the differences ``b_j = x_j - x_k`` to the input x_k nearest to z:
    (alpha, steps, converged).

    With ``r_i = ||z - x_i||``, ``c = sum_i a_i / r_i`` and ``z - x_i = sum_j W_ji b_j``
    (``W_ji = alpha_j - [i = j]``, j != k), the gradient is ``sum_j gamma_j b_j``, ``gamma = W
    (a / r)``, and the Hessian ``sum_i a_i (I - u_i u_i^T) / r_i`` maps ``sum_j beta_j b_j`` to
    ``sum_j (c beta - W diag(a / r^3) W^T B beta)_j b_j`` (B the Gram matrix of the b_j), so the
    step solves ``(c B - B W diag(a / r^3) W^T B) beta = -B gamma``: symmetric, O(n^3) once per
    step, its solution in the range of B (a tiny ridge for rank-deficient inputs: directions B
    cannot see move nothing); backtracking halves a step until F falls; at most
    :data:`NEWTON_STEPS` steps. Converged once a step moves z by at most ``stop``, or when the
    predicted decrease is below F's rounding. Stalled (not converged, the Weiszfeld iterations
    and Vardi and Zhang's step take over) where z reaches an input (within ``tiny``), no halving
    lowers F, or a step would be ten times as long as the distance to the nearest input (the
    kinks of F; on collinear inputs the Hessian vanishes) or change the weights by more than 1
    in sum of absolute values (F from G loses precision on large weights); shorter steps go at
    most half way to the nearest input.
    """
    live = np.flatnonzero(a > 0)
    m = live.size
    if m < 2:
        return alpha, 0, False
    Gl = G[np.ix_(live, live)]
    al = a[live]
    x = alpha[live].copy()
    diagonal = np.diagonal(Gl).copy()

    def radii(x: np.ndarray) -> np.ndarray:
        Gx = Gl @ x
        return np.sqrt(np.maximum(diagonal - 2.0 * Gx + x @ Gx, 0.0))

    def result(x: np.ndarray) -> np.ndarray:
        out = np.zeros_like(alpha)
        out[live] = x
        return out

    r = radii(x)
    F = float(al @ r)
    rounding = rounding_unit(torch.float64) * m  # F's rounding over m float64 terms
    budget = min(budget, NEWTON_STEPS)
    for step in range(1, budget + 1):
        k = int(np.argmin(r))
        if r[k] <= tiny:
            return result(x), step - 1, False
        o = np.delete(np.arange(m), k)
        B = Gl[np.ix_(o, o)] - Gl[o, k][:, None] - Gl[k, o][None, :] + Gl[k, k]
        w1, w3 = al / r, al / r**3
        c = float(w1.sum())
        v = B @ x[o]  # B W_i = v - B e_i (i != k), v (i = k)
        Bw3 = B @ w3[o]
        K = c * B - (
            float(w3.sum()) * np.outer(v, v) - np.outer(v, Bw3) - np.outer(Bw3, v)
            + (B * w3[o]) @ B
        )
        gradient = B @ (c * x[o] - w1[o])  # B gamma
        ridge = 1e-13 * max(float(np.abs(np.diagonal(K)).max()), np.finfo(np.float64).tiny)
        try:
            beta = np.linalg.solve(K + ridge * np.eye(m - 1), -gradient)
        except np.linalg.LinAlgError:
            return result(x), step - 1, False
        delta = np.empty(m)
        delta[o] = beta
        delta[k] = -beta.sum()
        decrease = -float(gradient @ beta)  # -<grad F, s>: the predicted decrease times 2
        if not decrease > 0.0:
            return result(x), step - 1, decrease == 0.0
        # a step ten times as long as the distance to the nearest input (the objective's
        # kinks), or one that changes the weights by more than 1 in sum of absolute values (the
        # Gram's distances of large combinations cancel), is beyond the quadratic model's
        # reach (on collinear inputs the Hessian vanishes): Weiszfeld's iterations go on
        # instead; shorter ones go at most half way to that input
        length = np.sqrt(max(float(delta @ Gl @ delta), 0.0))
        if length > 10.0 * r[k] or float(np.abs(delta).sum()) > 1.0:
            return result(x), step - 1, False
        t = min(1.0, 0.5 * r[k] / length) if length > 0.0 else 1.0
        while True:
            trial = x + t * delta
            r_trial = radii(trial)
            F_trial = float(al @ r_trial)
            if F_trial < F:
                break
            t *= 0.5
            if t < 1e-10:
                return result(x), step, decrease <= rounding * F
        x, r, F = trial, r_trial, F_trial
        if t * length <= stop:
            return result(x), step, True
    return result(x), budget, False


def _input_if_optimal(
    G: torch.Tensor,
    D: torch.Tensor,
    a: torch.Tensor,
    alpha: torch.Tensor,
    tiny: float,
    unit: float = 0.0,
) -> torch.Tensor:
    """The weights of the input nearest to the Weiszfeld point z (and of the inputs that
    coincide with it: within ``tiny``, or a squared distance within ``unit`` times their
    squared norms, the Gram pass's rounding, :func:`._gram.rounding_unit`: identical float32
    rows came out up to 1.8e-4 apart in squared distance, squared norms about 1.7e3) when that
    input is the geometric median, else ``alpha``.

    Weiszfeld's iterations approach a minimiser that is an input only sublinearly: attacks that
    send one vector from f rows (ALIE, inner-product manipulation) make it the geometric median
    once those rows outweigh the pull of the others, and the iterations then stop short of it
    (objective 1e-5 above the minimum in a random search at n = 72, f = 35 under ALIE). The
    input x_k, of weight m_k = sum of a_i over the inputs equal to it, is the minimiser exactly
    when ``||sum_{i != k} a_i (x_i - x_k) / ||x_i - x_k|| || <= m_k`` (the subgradient condition
    of Kuhn's and Vardi and Zhang's analyses of Weiszfeld's algorithm); on the Gram matrix that
    norm squared is ``w^T M w`` with ``w_i = a_i / ||x_i - x_k||`` and ``M_ij = <x_i - x_k,
    x_j - x_k> = G_ij - G_ik - G_jk + G_kk``, i.e. one product by G: O(n^2), once. Only a
    strict margin snaps (the minimiser is then unique), so equally good points (1-D inputs of
    an even count) never swap under a translation. (Compiled: :func:`_input_weights`, the same
    operations; these torch calls took 0.1 ms at 25 rows.)"""
    live = a > 0
    dist = affine_distances(G, alpha)
    k = int(torch.where(live, dist, torch.full_like(dist, float("inf"))).argmin())
    same = live & (D[k] <= tiny * tiny + unit * (G.diagonal() + G[k, k]))
    other = live & ~same
    if not bool(other.any()):
        return alpha
    w = torch.where(other, a / D[k].sqrt(), torch.zeros_like(a))
    total = float(w.sum())  # w^T M w without M: w^T G w - 2 sum(w) w^T G_k + G_kk sum(w)^2
    square = w @ (G @ w) - 2.0 * total * (w @ G[:, k]) + G[k, k] * total * total
    pull = float(square.clamp(min=0.0).sqrt())
    mass = float(a[same].sum())
    if pull >= mass * (1.0 - 1e-9):  # at the limit the minimiser need not be unique (points on
        return alpha  # a line, an even count): the iterations' point is kept there
    return torch.where(same, a, torch.zeros_like(a)) / mass


if njit is not None:

    @njit(cache=True, nogil=True, inline="always")
    def _gram_product(G, alpha, Ga):  # pragma: no cover (compiled)
        """Ga = G alpha; returns alpha^T G alpha (``||z||^2`` in the Gram's centring), the
        sums in index order."""
        n = G.shape[0]
        quad = 0.0
        for i in range(n):
            s = 0.0
            for j in range(n):
                s += G[i, j] * alpha[j]
            Ga[i] = s
            quad += alpha[i] * s
        return quad

    @njit(cache=True, nogil=True)
    def _input_weights(G, D, a, alpha, tiny, unit):  # pragma: no cover (compiled)
        """:func:`_input_if_optimal` on numpy arrays (G, D C-contiguous float64): the same
        choice of the input, the same sums in float64 (``w^T G w`` row by row), a new array
        of weights or ``alpha`` itself."""
        n = G.shape[0]
        Ga = np.empty(n)
        quad = _gram_product(G, alpha, Ga)
        k = -1
        best = np.inf
        for i in range(n):
            if a[i] > 0.0:
                sq = G[i, i] - 2.0 * Ga[i] + quad
                dist = np.sqrt(sq) if sq > 0.0 else 0.0
                if dist < best:
                    best = dist
                    k = i
        if k < 0:
            return alpha
        w = np.zeros(n)
        mass = 0.0
        total = 0.0
        for i in range(n):
            if a[i] > 0.0:
                if D[k, i] <= tiny * tiny + unit * (G[i, i] + G[k, k]):
                    mass += a[i]
                else:
                    w[i] = a[i] / np.sqrt(D[k, i])
                    total += w[i]
        if total == 0.0:
            return alpha
        square = 0.0
        towards = 0.0
        for i in range(n):
            if w[i] != 0.0:
                s = 0.0
                for j in range(n):
                    s += G[i, j] * w[j]
                square += w[i] * s
                towards += w[i] * G[i, k]
        square = square - 2.0 * total * towards + G[k, k] * total * total
        pull = np.sqrt(square) if square > 0.0 else 0.0
        if pull >= mass * (1.0 - 1e-9):
            return alpha
        out = np.zeros(n)
        for i in range(n):
            if a[i] > 0.0 and D[k, i] <= tiny * tiny + unit * (G[i, i] + G[k, k]):
                out[i] = a[i] / mass
        return out

    @njit(cache=True, nogil=True)
    def _weiszfeld(G, a, alpha, smoothing, stop, max_iter, from_inputs):
        # pragma: no cover (compiled)
        """The loop of :func:`geometric_median` on the centred Gram matrix G (bad rows zeroed,
        their ``a`` zero): ``||x_i - z||^2 = G_ii - 2 (G alpha)_i + alpha^T G alpha``, ``beta_i
        = a_i / max(smoothing, ||x_i - z||)``, ``alpha <- beta / sum(beta)``, until
        ``sqrt(step^T G step) <= stop`` or ``max_iter`` iterations; returns the last alpha,
        the iterations run and whether the step fell below ``stop``.

        ``from_inputs`` (the default ``nu``): where z coincides with inputs (within
        ``smoothing``, weight eta), Vardi and Zhang's step instead ("The multivariate L1-median
        and associated data depth", PNAS 2000): T = the Weiszfeld point of the other inputs,
        r = ||sum_{others} beta_i (x_i - z)|| = sum(beta) ||T - z||, z <- (1 - g) T + g z with
        g = min(1, eta / r). The smoothed step let such an input's weight a_i / smoothing hold
        z there for good: 1e-5 above the minimum, 0.6 % of the typical distance away from the
        minimiser, at n = 88, d = 42 under ALIE (f = 1), in a random search; this step leaves an
        input that is not the minimiser and stays at one that is."""
        n = G.shape[0]
        alpha = alpha.copy()
        Ga = np.empty(n)
        beta = np.empty(n)
        step = np.empty(n)
        new = np.empty(n)
        for used in range(1, max_iter + 1):
            quad = _gram_product(G, alpha, Ga)
            total = 0.0
            eta = 0.0
            for i in range(n):
                sq = G[i, i] - 2.0 * Ga[i] + quad
                dist = np.sqrt(sq) if sq > 0.0 else 0.0
                if from_inputs and dist <= smoothing and a[i] > 0.0:
                    beta[i] = 0.0
                    eta += a[i]
                else:
                    beta[i] = a[i] / (dist if dist > smoothing else smoothing)
                total += beta[i]
            if total == 0.0:
                return alpha, used, True  # every input with a weight coincides with z
            for i in range(n):
                new[i] = beta[i] / total
            if eta > 0.0:
                moved = 0.0  # (T - z)^T G (T - z)
                for i in range(n):
                    s = 0.0
                    for j in range(n):
                        s += G[i, j] * (new[j] - alpha[j])
                    moved += (new[i] - alpha[i]) * s
                r = total * np.sqrt(moved if moved > 0.0 else 0.0)
                keep = min(1.0, eta / r) if r > 0.0 else 1.0
                for i in range(n):
                    new[i] = (1.0 - keep) * new[i] + keep * alpha[i]
            for i in range(n):
                step[i] = new[i] - alpha[i]
                alpha[i] = new[i]
            moved = 0.0
            for i in range(n):
                s = 0.0
                for j in range(n):
                    s += G[i, j] * step[j]
                moved += step[i] * s
            if np.sqrt(moved if moved > 0.0 else 0.0) <= stop:
                return alpha, used, True
        return alpha, max_iter, False


@register("skewed_geometric_median", min_n=lambda f: 2 * f + 1, requirement="n >= 2f + 1")
def skewed_geometric_median(
    inputs: Inputs,
    f: int,
    *,
    skew: torch.Tensor | list | None = None,
    tol: float = 1e-8,
    max_iter: int = 1000,
    nu: float | None = None,
) -> Combination:
    r"""Skewed geometric median ``argmin_z sum_i ||S (z - x_i)||`` for an invertible skewing
    matrix ``S``.

    ``S`` (``skew``) is a ``(d,)`` vector (a diagonal matrix) or a ``(d, d)`` matrix; ``None`` is
    the identity (the geometric median). Since ``||S(z - x_i)|| = ||Sz - Sx_i||``, the minimiser is
    ``S^{-1} GM(S x_1, ..., S x_n)``, and as the geometric median of the ``S x_i`` is a convex
    combination ``sum_i alpha_i S x_i``, the output is ``sum_i alpha_i x_i`` with the same
    weights: the Weiszfeld iterations run on the skewed inputs (:func:`geometric_median`, same
    ``tol``, ``max_iter``, ``nu``). Reference: El Mhamdi, Farhadkhani, Guerraoui, Hoang, "On the
    Strategyproofness of the Geometric Median", AISTATS 2023 (arXiv 2106.02394), which skews the
    geometric median to restore asymptotic strategyproofness for voters with anisotropic
    preferences. [The paper's exact choice of S for given preferences is not checked here;
    the rule takes any invertible S.] Requirement: n >= 2f + 1. Cost: O(n d) (diagonal) or
    O(n d^2) (matrix) for ``S X``, then the geometric median's.
    """
    X = inputs.materialize()
    d = X.shape[1]
    if skew is None:
        return geometric_median(inputs, f, tol=tol, max_iter=max_iter, nu=nu)
    S = torch.as_tensor(skew, dtype=torch.float64)
    if not bool(torch.isfinite(S).all()):
        raise ValueError("skewed_geometric_median: skew must be finite")
    if S.dim() == 1 and S.numel() == d:
        if bool((S == 0).any()):
            raise ValueError("skewed_geometric_median: a diagonal skew needs no zero entry")
        Y = X.to(torch.float64) * S
    elif S.dim() == 2 and S.shape == (d, d):
        if int(torch.linalg.matrix_rank(S)) < d:
            raise ValueError("skewed_geometric_median: skew must be an invertible matrix")
        Y = X.to(torch.float64) @ S.T
    else:
        raise ValueError(
            f"skewed_geometric_median: skew must have shape ({d},) or ({d}, {d}), "
            f"got {tuple(S.shape)}"
        )
    inner = geometric_median(Inputs.from_matrix(Y), f, tol=tol, max_iter=max_iter, nu=nu)
    return Combination(inputs=inputs, alpha=inner.alpha)
