"""Min-max / min-sum against the authors' bisection (re-written in numpy) and the constraint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import byzlearn.attacks as atk


def perturbation(G: np.ndarray, kind: str) -> np.ndarray:
    mu = G.mean(0)
    if kind == "unit_vec":
        return mu / np.linalg.norm(mu)
    if kind == "sign":
        return np.sign(mu)
    return G.std(0, ddof=1)


def bisection(G: np.ndarray, kind: str, objective: str, lamda: float = 1000.0) -> np.ndarray:
    """Shejwalkar & Houmansadr's search (our_attack_dist / our_attack_score), with a larger
    starting lamda so that it is not capped at 2 * 10."""
    mu = G.mean(0)
    p = perturbation(G, kind)
    D = ((G[:, None, :] - G[None, :, :]) ** 2).sum(-1)
    bound = D.max() if objective == "max" else D.sum(1).min()
    lamda_fail, lamda_succ = lamda, 0.0
    while abs(lamda_succ - lamda) > 1e-9:
        dist = ((G - (mu - lamda * p)) ** 2).sum(1)
        value = dist.max() if objective == "max" else dist.sum()
        if value <= bound:
            lamda_succ = lamda
            lamda = lamda + lamda_fail / 2
        else:
            lamda = lamda - lamda_fail / 2
        lamda_fail /= 2
    return mu - lamda_succ * p


@pytest.mark.parametrize("kind", ["unit_vec", "sign", "std"])
@pytest.mark.parametrize("seed", range(3))
def test_against_bisection(kind, seed):
    rng = np.random.default_rng(seed)
    G = rng.normal(0.3, 1.0, size=(int(rng.integers(3, 12)), int(rng.integers(2, 30))))
    for name, objective in (("min_max", "max"), ("min_sum", "sum")):
        out = atk.get(name)(torch.from_numpy(G), 3, perturbation=kind).numpy()
        ref = bisection(G, kind, objective)
        for row in out:
            np.testing.assert_allclose(row, ref, rtol=1e-6, atol=1e-6)


def test_constraints_are_tight():
    rng = np.random.default_rng(5)
    G = rng.normal(1.0, 1.0, size=(10, 50))
    D = ((G[:, None, :] - G[None, :, :]) ** 2).sum(-1)
    b = atk.get("min_max")(torch.from_numpy(G), 2).numpy()[0]
    np.testing.assert_allclose(((G - b) ** 2).sum(1).max(), D.max(), rtol=1e-9)
    b = atk.get("min_sum")(torch.from_numpy(G), 2).numpy()[0]
    np.testing.assert_allclose(((G - b) ** 2).sum(), D.sum(1).min(), rtol=1e-9)
    # it moves against the mean
    assert b @ G.mean(0) < G.mean(0) @ G.mean(0)


def test_zero_perturbation_sends_the_mean():
    G = np.array([[1.0, -1.0], [-1.0, 1.0]])  # mean 0: unit_vec perturbation is 0
    out = atk.get("min_max")(torch.from_numpy(G), 2).numpy()
    np.testing.assert_allclose(out, 0.0)
    assert (
        atk.min_max_gamma(
            torch.from_numpy(G),
            torch.zeros(2, dtype=torch.float64),
            torch.zeros(2, dtype=torch.float64),
        )
        == 0.0
    )


def test_bad_perturbation():
    with pytest.raises(ValueError, match="perturbation must be one of"):
        atk.get("min_sum")(torch.ones(3, 2), 1, perturbation="unit")
