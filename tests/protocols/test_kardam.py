"""Asynchronous SGD and Kardam: dampening, the Lipschitz and frequency filters, the server's
bookkeeping, and training on digits with Byzantine workers and random delays."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from byzlearn.engines import LocalEngine, Message
from byzlearn.experiments import parse_config, run
from byzlearn.protocols import AsyncServer, KardamFilter, dampening
from tests.resume import kill_run, without_times


def test_dampening_forms() -> None:
    assert dampening("exp", 3, alpha=0.2) == pytest.approx(math.exp(-0.6))
    assert dampening("inverse", 3) == pytest.approx(0.25)
    assert dampening("none", 30) == 1.0
    assert dampening("exp", 0) == 1.0
    with pytest.raises(ValueError, match="unknown dampening"):
        dampening("linear", 1)
    with pytest.raises(ValueError, match="staleness"):
        dampening("exp", -1)


def test_kardam_needs_n_at_least_3f_plus_1() -> None:
    with pytest.raises(ValueError, match="n >= 3f \\+ 1"):
        KardamFilter(9, 3)
    KardamFilter(10, 3)
    with pytest.raises(ValueError, match="summary"):
        KardamFilter(10, 3, summary="mean")


def _fill(flt: KardamFilter, summaries: dict[int, list[float]]) -> None:
    for worker, values in summaries.items():
        for v in values:
            flt.coefficients.setdefault(worker, __import__("collections").deque(maxlen=25))
            flt.coefficients[worker].append(v)


def test_threshold_is_an_honest_order_statistic_byzantine_values_cannot_raise_it() -> None:
    flt = KardamFilter(10, 3, summary="max")
    _fill(flt, {w: [float(w + 1)] for w in range(6)})
    assert math.isnan(flt.threshold())  # warming up: fewer than n - f workers heard
    _fill(flt, {6: [7.0]})
    # m = 7: the min(ceil(0.7 * 7), 7 - 3) = 4th smallest
    assert flt.threshold() == 4.0
    _fill(flt, {7: [1e30], 8: [1e31], 9: [1e32]})
    assert flt.threshold() == 7.0  # m = 10: the 7th smallest, an honest worker's value


@given(
    honest=st.lists(st.floats(0.01, 100.0), min_size=7, max_size=7),
    byzantine=st.lists(st.floats(0.0, 1e300), min_size=3, max_size=3),
)
def test_threshold_never_exceeds_the_largest_honest_summary(honest, byzantine) -> None:
    flt = KardamFilter(10, 3, summary="max")
    _fill(flt, {w: [v] for w, v in enumerate(honest + byzantine)})
    assert flt.threshold() <= max(honest)


def test_a_worker_is_summarised_by_a_quantile_of_its_last_coefficients() -> None:
    flt = KardamFilter(4, 1, summary=0.85, history=20)
    _fill(flt, {0: [float(v) for v in range(1, 21)]})  # ceil(0.85 * 20) = 17th smallest
    assert flt._summarise(flt.coefficients[0]) == 17.0
    _fill(flt, {0: [100.0] * 25})  # only the last 20 are kept
    assert flt._summarise(flt.coefficients[0]) == 100.0


def test_references_are_2f_plus_1_accepted_gradients_gap_versions_back() -> None:
    flt = KardamFilter(4, 1, gap=3)  # 2f + 1 = 3 references
    for v in range(8):
        flt.accept(0, torch.full((2,), float(v)), torch.full((2,), float(v)), v)
    assert [float(g[0]) for g, _ in flt.reference(7)] == [2.0, 3.0, 4.0]  # versions <= 7 - 3
    assert [float(g[0]) for g, _ in flt.reference(1)] == [0.0, 2.0, 3.0]  # the oldest, not v=1
    g, x = torch.tensor([4.0, 0.0]), torch.tensor([5.0, 5.0])
    ks = sorted(
        float((g - g_ref).norm() / (x - x_ref).norm()) for g_ref, x_ref in flt.reference(7)
    )
    assert flt.coefficient(g, x, 7) == pytest.approx(ks[1])  # the median of the three


def test_one_byzantine_reference_cannot_vouch_for_another() -> None:
    """A Byzantine gradient b accepted once: another copy of b, measured against 2f + 1 = 3
    references of which only one is b, still gets the coefficient of an outlier."""
    flt = KardamFilter(4, 1, gap=1)
    honest = torch.ones(2)
    b = torch.tensor([-10.0, -10.0])
    for v, g in enumerate([honest, honest, b]):
        flt.accept(v, g, torch.full((2,), float(v)), v)
    k_byz = flt.coefficient(b, torch.full((2,), 3.0), 3)
    k_honest = flt.coefficient(honest, torch.full((2,), 3.0), 3)
    assert k_byz > 5 * k_honest


def test_no_reference_then_warmup_then_lipschitz_and_frequency_decisions() -> None:
    flt = KardamFilter(4, 1, gap=1, summary="max", history=5)
    x0, x1 = torch.zeros(2), torch.ones(2)
    v = flt.check(0, torch.ones(2), x0, 0)
    assert (v.accepted, v.reason) == (False, "no_reference")
    flt.accept(0, torch.zeros(2), x0, 0)  # as the bootstrap does
    for w in range(3):  # coefficients of 3 = n - f workers: sqrt(2) / sqrt(2) = 1
        v = flt.check(w, torch.ones(2), x1, 1)
    assert v.reason == "accepted" and v.k == pytest.approx(1.0) and v.threshold == 1.0
    flt.accept(2, torch.ones(2), x1, 1)
    v = flt.check(3, torch.full((2,), 50.0), 2 * x1, 2)  # far beyond the workers' coefficients
    assert v.reason == "lipschitz" and v.k > v.threshold
    v = flt.check(2, torch.ones(2), 2 * x1, 2)  # window 3, at most 1 per worker: 2 just went
    assert v.reason == "frequency"


def test_liveness_rule_accepts_after_consecutive_rejections() -> None:
    flt = KardamFilter(4, 1, liveness=2)
    verdicts = [flt.check(0, torch.ones(2), torch.zeros(2), 0) for _ in range(4)]
    assert [v.reason for v in verdicts] == [
        "no_reference",
        "no_reference",
        "liveness",
        "no_reference",
    ]


def test_filter_state_survives_a_weights_only_checkpoint(tmp_path: Path) -> None:
    flt = KardamFilter(4, 1, gap=1)
    flt.accept(0, torch.zeros(3), torch.zeros(3), 0)
    flt.check(1, torch.ones(3), torch.ones(3), 1)
    torch.save(flt.state_dict(), tmp_path / "f.pt")
    other = KardamFilter(4, 1, gap=1)
    other.load_state_dict(torch.load(tmp_path / "f.pt", weights_only=True))
    assert other.state_dict()["coefficients"] == flt.state_dict()["coefficients"]
    assert (
        other.check(2, torch.ones(3), torch.ones(3), 1).k
        == flt.check(2, torch.ones(3), torch.ones(3), 1).k
    )


class Ones:
    """Workers answering every model with a gradient of ones; one lies about its version."""

    def handle(self, inbox: Sequence[Message], observed=()) -> list[Message]:
        out = [m.reply(torch.ones(2), kind="gradient", loss=0.5) for m in inbox]
        for r in out:
            if r.sender == 1:
                r.version = 0  # a lie: the server keeps its own record
        return out


def test_async_server_applies_dampened_gradients_and_tracks_staleness_itself() -> None:
    engine = LocalEngine()
    ids = engine.add_group("worker", 2, Ones())
    engine.network.slowdown = {ids[1]: 1.5}
    server = AsyncServer(
        engine.add_node("server"), torch.zeros(2), ids, lr=lambda t: 1.0, dampening="inverse"
    )
    first = server.step()  # worker 0 at t = 1, staleness 0
    assert first["sender"] == ids[0] and first["staleness"] == 0 and first["accepted"]
    second = server.step()  # worker 1 at t = 1.5, computed on version 0, server at version 1
    assert second["sender"] == ids[1] and second["staleness"] == 1
    torch.testing.assert_close(server.theta, -torch.ones(2) * (1.0 + 0.5))
    third = server.step()  # worker 0 again, on version 1: server at 2
    assert third["sender"] == ids[0] and third["staleness"] == 1
    assert [r["round"] for r in (first, second, third)] == [1, 2, 3]


def test_async_step_with_no_gradient_is_skipped() -> None:
    from byzlearn.attacks import Crash
    from byzlearn.engines import NetworkModel

    engine = LocalEngine(network=NetworkModel(faults={0: Crash(0)}))
    ids = engine.add_group("worker", 1, Ones())
    server = AsyncServer(engine.add_node("server"), torch.zeros(2), ids, deadline=3.0)
    rec = server.step()
    assert rec["skipped"] and rec["received"] == 0 and rec["time"] == pytest.approx(3.0)


DIGITS: dict[str, Any] = {
    "dataset": {"name": "digits"},
    "model": {"name": "mlp", "options": {"hidden": [64]}},
    "n": 10,
    "f": 3,
    "optimizer": {"lr": 0.1},
    "steps": 1500,
    "eval_every": 500,
    "checkpoint_every": 0,
    "network": {
        "compute_time": {"dist": "exponential", "mean": 1.0},
        "link_delay": {"dist": "exponential", "mean": 0.1},
    },
}
ATTACKS = {
    "minus_10_mean": {"name": "ipm", "options": {"epsilon": 10.0}},
    "large": {"name": "large_norm"},
}


def _rates(summary: dict[str, Any]) -> tuple[float, float]:
    honest = summary["rejected_honest"] / (summary["rejected_honest"] + summary["accepted_honest"])
    byz = summary["rejected_byzantine"] / (
        summary["rejected_byzantine"] + summary["accepted_byzantine"]
    )
    return honest, byz


@pytest.mark.slow
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_kardam_learns_where_async_sgd_fails(attack: str) -> None:
    kardam = run(
        parse_config({**DIGITS, "protocol": {"name": "kardam"}, "attack": ATTACKS[attack]})
    )
    s = kardam.summary
    honest_rejected, byzantine_rejected = _rates(s)
    assert s["final_accuracy"] >= 0.85
    assert byzantine_rejected >= 0.90 and honest_rejected < 0.20
    plain = run(
        parse_config(
            {
                **DIGITS,
                "protocol": {"name": "async_sgd", "dampening": "exp"},
                "attack": ATTACKS[attack],
            }
        )
    )
    assert plain.summary["final_accuracy"] < 0.5
    assert plain.summary["accepted_byzantine"] > 0 and plain.summary["rejected_byzantine"] == 0


def test_a_killed_kardam_run_resumes_exactly(tmp_path: Path) -> None:
    config = parse_config(
        {
            **DIGITS,
            "protocol": {"name": "kardam"},
            "attack": ATTACKS["minus_10_mean"],
            "steps": 120,
            "eval_every": 40,
            "checkpoint_every": 50,
        }
    )
    full = run(config)
    kill_run(config, tmp_path / "run", at=90)
    resumed = run(config, tmp_path / "run")
    assert without_times(resumed.records) == without_times(full.records)
    assert resumed.summary["per_worker"] == full.summary["per_worker"]


@pytest.mark.parametrize("n,f", [(4, 0), (10, 3)])
def test_bootstrap_survives_coordinates_lost_on_the_links(n: int, f: int) -> None:
    """Kardam's first update (the median of 2f + 1 gradients) over lossy links: a coordinate
    lost from any of them lacks the values the median needs; it stays where it is instead of
    aborting the run (found by a CLI fuzz: n = 4, f = 0, coordinate_drop 0.01)."""
    config = {
        "dataset": {"name": "digits"},
        "model": {"name": "logistic"},
        "n": n,
        "f": f,
        "steps": 3,
        "eval_every": 1,
        "protocol": {"name": "kardam"},
        "network": {"coordinate_drop": 0.05},
    }
    result = run(parse_config(config))
    first = next(r for r in result.records if r.get("bootstrap"))
    assert first["unmoved"] > 0 and len(result.records) == 4
