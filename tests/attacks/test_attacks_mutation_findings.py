"""Tests closing gaps found by mutation testing of the attacks.

Each test fails on a plausible bug (a mutant) that every earlier test let through, and checks
the attack against an independent reference (the paper's formula in numpy, or an exact
property).
"""

from __future__ import annotations

import pytest
import torch

import byzlearn.attacks as atk
from byzlearn.attacks.gradient import alie_z


def test_large_norm_with_all_zero_honest_vectors_uses_unit_reference_norm() -> None:
    """``max_i ||g_i|| = 0``: the reference norm is 1, so ``||b|| = scale`` (not a zero vector,
    which every rule would accept as harmless)."""
    honest = torch.zeros(4, 6, dtype=torch.float64)
    out = atk.get("large_norm")(
        honest, 3, scale=7.0, identical=False, generator=torch.Generator().manual_seed(1)
    )
    norms = torch.linalg.vector_norm(out, dim=1)
    assert torch.allclose(norms, torch.full((3,), 7.0, dtype=torch.float64))
    assert not torch.equal(out[0], out[1])  # distinct directions


@pytest.mark.parametrize(("n", "f"), [(1, 0), (2, 0)])
def test_alie_z_refuses_s_equal_to_n_with_its_own_message(n: int, f: int) -> None:
    """``s = floor(n/2 + 1) - f = n`` gives ``Phi^{-1}(0)``: no finite z, the library's one-line
    message (not statistics' ``inv_cdf`` error)."""
    with pytest.raises(ValueError, match="z cannot be derived"):
        alie_z(n, f)


def test_min_max_opt_tries_the_min_max_factor_in_its_search_and_its_exact_vector() -> None:
    """The docstring's promise: the min-max gamma is one of the searched factors (besides
    min_max's own vector, evaluated once more): two evaluated Byzantine vectors equal
    min_max's, up to rounding."""
    honest = torch.randn(7, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    honest = honest + 2.0
    target = atk.get("min_max")(honest, 2)[0]
    tried: list[torch.Tensor] = []

    def rule(X: torch.Tensor, f: int) -> torch.Tensor:
        tried.append(X[-1].clone())
        return X.mean(0)

    atk.get("min_max_opt")(honest, 2, rule=rule)
    close = [b for b in tried if torch.allclose(b, target, rtol=1e-12, atol=0.0)]
    assert len(close) >= 2


def _honest() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return 1.0 + torch.randn(8, 4, generator=g, dtype=torch.float64)


def _spike_rule(target: torch.Tensor):
    """A rule moved (by 1 on every coordinate) only by a Byzantine vector equal to ``target``
    (to 1e-9): the damage is maximal at that one factor, zero at every other."""

    def rule(X: torch.Tensor, f: int) -> torch.Tensor:
        out = X[: X.shape[0] - f].mean(0)
        hit = torch.allclose(X[-1], target, rtol=1e-9, atol=1e-12)
        return out + 1.0 if hit else out

    return rule


@pytest.mark.parametrize(
    ("fixed", "optimised", "options"),
    [("ipm", "ipm_opt", {"epsilon": 0.37}), ("alie", "alie_opt", {"z": 0.83})],
)
def test_optimised_attack_tries_its_fixed_factor(fixed: str, optimised: str, options) -> None:
    """The fixed attack's own factor (``-epsilon``, ``-z``) is among the candidates: where only
    that factor does damage, the optimised attack sends the fixed attack's vector."""
    honest = _honest()
    target = atk.get(fixed)(honest, 2, **options)[0]
    out = atk.get(optimised)(honest, 2, rule=_spike_rule(target), **options)
    torch.testing.assert_close(out[0], target, rtol=1e-9, atol=1e-12)


def test_alie_opt_default_tries_the_papers_z() -> None:
    honest = _honest()
    target = atk.get("alie")(honest, 2)[0]  # z_max(10, 2)
    out = atk.get("alie_opt")(honest, 2, rule=_spike_rule(target))
    torch.testing.assert_close(out[0], target, rtol=1e-9, atol=1e-12)


def test_min_max_opt_sends_min_max_vector_to_the_bit_on_a_tie() -> None:
    """A rule the Byzantine vector cannot move: every factor ties, and the tie goes to
    min_max's own vector (bit for bit), as ``optimise`` documents."""
    honest = _honest()

    def blind(X: torch.Tensor, f: int) -> torch.Tensor:
        return X[: X.shape[0] - f].mean(0)

    exact = atk.get("min_max")(honest, 2)
    out = atk.get("min_max_opt")(honest, 2, rule=blind)
    assert torch.equal(out, exact)


def test_leeway_counts_a_repeated_target_coordinate_once() -> None:
    """``coordinates=[0, 0, 1]`` is the target set {0, 1}: same vector as ``[0, 1]``. The rule
    here does damage 1 on coordinate 0 for shifts in (0.3, 3) and 1.2 on coordinate 1 for
    shifts in (5, 50): the best factor is in the second band (counting coordinate 0 twice
    would pick the first)."""
    honest = _honest()
    mu = honest.mean(0)

    def rule(X: torch.Tensor, f: int) -> torch.Tensor:
        out = X[: X.shape[0] - f].mean(0).clone()
        delta = float(abs(X[-1, 0] - mu[0]))
        if 0.3 < delta < 3.0:
            out[0] += 1.0
        if 5.0 < delta < 50.0:
            out[1] += 1.2
        return out

    once = atk.get("leeway")(honest, 2, rule=rule, coordinates=[0, 1])
    twice = atk.get("leeway")(honest, 2, rule=rule, coordinates=[0, 0, 1])
    assert torch.equal(once, twice)
    assert 5.0 < abs(float(once[0, 0] - mu[0])) < 50.0


def test_equivocation_split_gives_contiguous_equal_blocks() -> None:
    """``split``: receiver r of R gets ``floor(r k / R)``: 6 receivers, 2 candidates: 3 + 3;
    7 receivers, 3 candidates: blocks 0,0,0 / 1,1 / 2,2."""
    eq = atk.Equivocation("split")
    assert [eq.choose(r, 2, num_receivers=6) for r in range(6)] == [0, 0, 0, 1, 1, 1]
    assert [eq.choose(r, 3, num_receivers=7) for r in range(7)] == [0, 0, 0, 1, 1, 2, 2]


def test_strategic_keeps_the_best_response_found_from_a_far_start() -> None:
    """The rule gives the participants their preferred vector only for reports far from it
    (more than 3 spreads away): the search from ``p`` itself cannot get there, the far starts
    (10 spreads away) do, and their answer is kept."""
    honest = _honest()
    mu = honest.mean(0)
    preferred = mu + 1.0
    spread = float(torch.sqrt(((honest - mu) ** 2).sum() / (honest.shape[0] - 1)))

    def rule(X: torch.Tensor, f: int) -> torch.Tensor:
        far = float(torch.linalg.vector_norm(X[-1] - preferred)) > 3.0 * spread
        return preferred.clone() if far else X[: X.shape[0] - f].mean(0)

    out = atk.get("strategic")(
        honest,
        1,
        rule=rule,
        preferred=preferred,
        restarts=2,
        evaluations=40,
        generator=torch.Generator().manual_seed(0),
    )
    assert float(torch.linalg.vector_norm(out[0] - preferred)) > 3.0 * spread


def test_factor_search_never_exceeds_its_evaluation_budget() -> None:
    """``maximise_factor`` makes at most ``evaluations`` objective calls, even when more
    factors are included than the budget allows."""
    from byzlearn.attacks._search import maximise_factor

    calls: list[float] = []

    def objective(t: float) -> float:
        calls.append(t)
        return -abs(t - 3.0)

    include = [0.1 * i for i in range(1, 21)]
    _, _, used = maximise_factor(objective, evaluations=8, include=include)
    assert len(calls) == used <= 8
