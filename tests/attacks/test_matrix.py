"""The (attack x rule) table and the qualitative facts it must show."""

from __future__ import annotations

import math

import pytest

import byzlearn.attacks as atk
from byzlearn.attacks.matrix import (
    BASELINE,
    RULES,
    attack_matrix,
    format_matrix,
    honest_draw,
    norm_std,
)

from .reference import PAIRS, damage, dense_scan, family

OMNISCIENT = ["alie_opt", "ipm_opt", "leeway", "min_max_opt", "gaussian", "large_norm"]


def test_structure_and_formatting():
    r = attack_matrix(["none", "ipm", "nonfinite"], ["average", "median"], n=7, f=2, d=20)
    assert r["rows"] == ["none", "ipm", "nonfinite"] and r["columns"] == ["average", "median"]
    assert set(r["values"]) == set(r["rows"])
    assert all(set(v) == {"average", "median"} for v in r["values"].values())
    assert r["honest_std"] > 0 and r["errors"] == {}
    md = format_matrix(r, markdown=True).splitlines()
    assert len(md) == 2 + 3 and md[0].startswith("| attack")
    assert len(format_matrix(r).splitlines()) == 4
    # the average skips non-finite values (the aggregators' policy): no damage
    assert r["values"]["nonfinite"]["average"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="n - f >= 2"):
        attack_matrix(n=5, f=4)
    with pytest.raises(ValueError, match="krum needs"):
        attack_matrix(["ipm"], ["krum"], n=7, f=3)


def test_an_unknown_attack_is_refused_before_any_work(monkeypatch):
    import byzlearn.attacks.matrix as matrix

    def no_draw(*args, **kwargs):  # the honest vectors are drawn only once the names are known
        raise AssertionError("drew the honest vectors")

    monkeypatch.setattr(matrix, "honest_draw", no_draw)
    with pytest.raises(KeyError, match="unknown attack 'ipmm'"):
        attack_matrix(["none", "ipm", "ipmm"], ["median"], n=7, f=2, d=20)


def test_a_seed_beyond_torch_generators_is_one_line():
    """seed + 10 000 seeds a draw: 2^64 - 1 was torch's 'Overflow when unpacking long long'."""
    from byzlearn.attacks.matrix import MAX_SEED

    with pytest.raises(ValueError, match=f"attack_matrix: seed must be <= {MAX_SEED}"):
        attack_matrix(["none"], ["median"], n=7, f=2, d=20, seed=2**64 - 1)
    assert attack_matrix(["none"], ["median"], n=7, f=2, d=20, seed=MAX_SEED)["seed"] == MAX_SEED


def test_cell_definition():
    # reproduce one cell by hand
    import torch

    import byzlearn.aggregators as agg
    from byzlearn.attacks.matrix import honest_draw

    r = attack_matrix(["sign_flip"], ["median"], n=9, f=2, d=30, seed=3)
    H = honest_draw(7, 30, seed=3)
    byz = -H.mean(0).expand(2, -1)
    out = agg.get("median")(torch.cat([H, byz]), f=2)
    dev = H - H.mean(0)
    s = math.sqrt(float((dev * dev).sum()) / 6)
    assert norm_std(H) == pytest.approx(s)
    assert r["values"]["sign_flip"]["median"] == pytest.approx(float((out - H.mean(0)).norm()) / s)


def test_averaging_is_broken_by_every_omniscient_attack():
    r = attack_matrix([BASELINE, *OMNISCIENT], ["average"], d=1000)
    base = r["values"][BASELINE]["average"]
    assert base < 0.2
    for a in OMNISCIENT:
        assert r["values"][a]["average"] > 10, a


def test_leeway_moves_krum_far_more_than_bulyan():
    r = attack_matrix(
        ["leeway"],
        ["krum", "bulyan"],
        n=23,
        f=5,
        d=1000,
        attack_options={"leeway": {"evaluations": 20}},
    )
    v = r["values"]["leeway"]
    assert v["krum"] > 1.0 > 10 * v["bulyan"]


def test_ipm_small_epsilon_defeats_krum_in_the_table():
    r = attack_matrix([BASELINE, "ipm"], ["krum"], d=1000)
    # Krum outputs -0.1 mu: distance 1.1 ||mu|| = 1.1 s when ||mu|| = sqrt(d) (signal 1)
    assert r["values"]["ipm"]["krum"] > 1.05


def _check_optimised_cells(r: dict, rules: list[str]) -> None:
    """The fixed and optimised cells of the table against references written in the test: the
    fixed cell is the damage of the papers' fixed vector, the optimised cell reaches 98% of a
    dense scan of 2 x 60 factors of its family (tests/attacks/reference.py)."""
    f = r["f"]
    H = honest_draw(r["n"] - f, r["d"], signal=r["signal"], seed=r["seed"]).numpy()
    s = r["honest_std"]
    for fixed, opt in PAIRS:
        base, direction, t_fixed = family(opt, H, f)
        for rule in rules:
            fixed_cell = damage(rule, H, base + t_fixed * direction, f) / s
            assert r["values"][fixed][rule] == pytest.approx(fixed_cell, rel=1e-6, abs=1e-9)
            dense = dense_scan(rule, H, f, base, direction, t_fixed) / s
            assert r["values"][opt][rule] >= 0.98 * dense, (opt, rule, r["values"][opt], dense)


def test_optimised_cells_against_a_dense_scan():
    rules = ["median", "krum", "geometric_median", "nnm+krum"]
    r = attack_matrix([a for p in PAIRS for a in p], rules, d=300)
    _check_optimised_cells(r, rules)


@pytest.mark.slow
def test_full_default_matrix():
    r = attack_matrix()
    assert r["rows"] == [BASELINE, *atk.names()] and r["columns"] == list(RULES)
    assert r["errors"] == {}
    v = r["values"]
    for a in OMNISCIENT:
        assert v[a]["average"] > 10
    assert v["leeway"]["krum"] > 5 * v["leeway"]["bulyan"]
    assert v["ipm"]["krum"] > 1.05
    _check_optimised_cells(r, ["average", "median", "trimmed_mean", "krum"])
