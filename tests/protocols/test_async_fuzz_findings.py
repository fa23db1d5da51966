"""Findings of a random search over the asynchronous protocols (async SGD, Kardam) and the
replicated-server options, each checked against an independent reference."""

from __future__ import annotations

import math
from collections import Counter, deque
from pathlib import Path
from typing import Any

import pytest
import torch

from byzlearn.engines import Message
from byzlearn.experiments import ConfigError, Trainer, parse_config, run
from byzlearn.protocols import AsyncServer, KardamFilter
from tests.resume import kill_run, without_times

SMALL: dict[str, Any] = {
    "dataset": {"name": "digits"},
    "model": {"name": "logistic"},
    "n": 4,
    "f": 1,
    "steps": 40,
    "eval_every": 40,
    "checkpoint_every": 0,
}


def _reasons(config: dict[str, Any], steps: int) -> Counter[str | None]:
    trainer = Trainer(parse_config(config))
    return Counter(trainer.step().get("reason") for _ in range(steps))


@pytest.mark.parametrize("compute", [1.0, {"dist": "exponential", "mean": 1.0}])
def test_kardam_is_not_stalled_by_an_all_nan_byzantine_gradient(compute: Any) -> None:
    """An all-NaN Byzantine gradient among the first 2f + 1 left every coordinate of the
    bootstrap median unmoved, so every gradient met only a reference at its own model: Kardam
    rejected everything (``no_reference``) for the rest of the run."""
    config = {
        **SMALL,
        "attack": {"name": "nonfinite"},
        "protocol": {"name": "kardam"},
        "network": {"compute_time": compute},
    }
    reasons = _reasons(config, 40)
    assert reasons["accepted"] >= 10
    assert reasons["no_reference"] <= 5


def test_a_bootstrap_that_moved_nothing_is_redone_with_every_worker_heard() -> None:
    """n = 10, f = 3 all-NaN Byzantine workers with random compute times: the bootstrap takes
    every worker heard at the initial model, so a few tries suffice (not one per lucky draw of
    2f + 1 workers without a Byzantine one)."""
    config = {
        **SMALL,
        "n": 10,
        "f": 3,
        "attack": {"name": "nonfinite"},
        "protocol": {"name": "kardam"},
        "network": {"compute_time": {"dist": "exponential", "mean": 1.0}},
    }
    trainer = Trainer(parse_config(config))
    records = [trainer.step() for _ in range(20)]
    tries = [r for r in records if r.get("bootstrap")]
    assert 1 <= len(tries) <= 4 and tries[-1]["accepted"]
    assert all(not r["accepted"] and r["unmoved"] > 0 for r in tries[:-1])
    assert sum(r.get("reason") == "accepted" for r in records) >= 5


@pytest.mark.parametrize("deadline", [None, 3.0])
@pytest.mark.parametrize("protocol", ["async_sgd", "kardam"])
def test_lost_gradients_do_not_silence_the_workers_for_good(protocol: str, deadline: Any) -> None:
    """With 5 % of the honest replies lost, each loss silenced its worker forever (nothing sent
    it a model again): after about 180 gradients every worker was silent and every later step
    was skipped. The server now sends the current model again to a worker presumed lost."""
    options: dict[str, Any] = {"name": protocol}
    if deadline is not None:
        options["deadline"] = deadline
    config = {
        **SMALL,
        "n": 10,
        "f": 3,
        "num_byzantine": 0,
        "protocol": options,
        "network": {"omission": 0.05, "compute_time": {"dist": "exponential", "mean": 1.0}},
    }
    trainer = Trainer(parse_config(config))
    skipped = sum(bool(trainer.step().get("skipped")) for _ in range(400))
    assert skipped <= 10


def test_a_worker_slower_than_the_deadline_is_not_flooded_with_models() -> None:
    """Models are sent again only to a worker silent for twice the longest answer time seen
    (doubling with each unanswered one), not at every step a short deadline skips."""
    config = {
        **SMALL,
        "n": 10,
        "f": 3,
        "protocol": {"name": "async_sgd", "deadline": 0.1},
        "network": {"compute_time": 5.0},
    }
    trainer = Trainer(parse_config(config))
    for _ in range(300):
        trainer.step()
    assert trainer.engine.stats["in_flight"] <= 20


class Ones:
    """Workers answering every model with a gradient of ones."""

    def handle(self, inbox: Any, observed: Any = ()) -> list[Message]:
        return [m.reply(torch.ones(2), kind="gradient", loss=0.5) for m in inbox]


def test_a_reply_is_charged_the_staleness_of_the_model_it_answers() -> None:
    """A slow worker sent the model again (the server presumed its gradient lost) answers both
    models: each answer is charged the staleness of the model it was computed on, not of the
    last one sent."""
    from byzlearn.attacks import Crash
    from byzlearn.engines import LocalEngine, NetworkModel

    engine = LocalEngine(network=NetworkModel(faults={0: Crash(3)}))
    fast, slow = engine.add_group("worker", 2, Ones())
    engine.network.slowdown = {slow: 10.0}
    server = AsyncServer(
        engine.add_node("server"), torch.zeros(2), [fast, slow], lr=lambda t: 1.0, deadline=1.5
    )
    records = [server.step() for _ in range(16)]
    answers = [r for r in records if r.get("sender") == slow]
    assert [r["staleness"] for r in answers] == [3, 2]  # on versions 0 and 2, at 3 and 4
    assert sum(bool(r.get("skipped")) for r in records) >= 5


def test_a_run_killed_while_bootstrapping_or_resending_resumes_exactly(tmp_path: Path) -> None:
    config = parse_config(
        {
            **SMALL,
            "n": 10,
            "f": 3,
            "steps": 30,
            "eval_every": 5,
            "checkpoint_every": 1,
            "attack": {"name": "nonfinite"},
            "protocol": {"name": "kardam", "deadline": 2.0},
            "network": {"omission": 0.2, "compute_time": {"dist": "exponential", "mean": 1.0}},
        }
    )
    full = run(config)
    assert sum(bool(r.get("bootstrap")) for r in full.records) >= 2
    for at in (1, 17):
        kill_run(config, tmp_path / str(at), at=at)
        resumed = run(config, tmp_path / str(at))
        assert without_times(resumed.records) == without_times(full.records)


def _with(flt: KardamFilter, coefficients: dict[int, list[float]]) -> KardamFilter:
    for worker, values in coefficients.items():
        flt.coefficients[worker] = deque(values, maxlen=flt.history)
    return flt


def test_quantile_ranks_are_exact_when_q_times_m_is_an_integer() -> None:
    """``ceil(0.28 * 25)`` is 8 in floating point (0.28 * 25 = 7.000000000000001): the summary
    and the threshold took one rank too many."""
    flt = _with(KardamFilter(4, 1, summary=0.28), {0: [float(v) for v in range(1, 26)]})
    assert flt._summarise(flt.coefficients[0]) == 7.0
    flt = _with(
        KardamFilter(25, 0, quantile=0.28, summary="max"), {w: [w + 1.0] for w in range(25)}
    )
    assert flt.threshold() == 7.0


def test_summary_of_a_wrong_type_is_one_line() -> None:
    for value in (None, [], True):
        with pytest.raises(ConfigError) as err:
            parse_config({**SMALL, "protocol": {"name": "kardam", "summary": value}})
        assert str(err.value).count("\n") == 0
        assert "protocol.summary: must be 'max' or a quantile in (0, 1]" in str(err.value)


@pytest.mark.parametrize(
    "kw",
    [
        {"f": -1},
        {"history": 0},
        {"gap": 0},
        {"window": 0},
        {"per_window": 0},
        {"liveness": 0},
        {"quantile": 0.0},
        {"quantile": 1.5},
        {"quantile": math.nan},
        {"summary": True},
    ],
)
def test_kardam_filter_refuses_bad_arguments_in_one_line(kw: dict[str, Any]) -> None:
    args = {"n": 10, "f": kw.pop("f", 3)}
    with pytest.raises(ValueError, match="kardam"):
        KardamFilter(args["n"], args["f"], **kw)


@pytest.mark.parametrize("protocol", ["byzsgd", "liubei"])
@pytest.mark.parametrize(
    "attack,message",
    [
        ({"name": "gaussian", "options": {"std": -1.0}}, "gaussian: std must be > 0"),
        ({"name": "alie", "options": {"z": "x"}}, "alie: z must be a number"),
        ({"name": "mimic", "options": {"worker": 3}}, "mimic: worker must be in [0, h=3)"),
    ],
)
def test_a_bad_server_attack_value_is_refused_when_parsed(
    protocol: str, attack: dict[str, Any], message: str
) -> None:
    """A value the attack refuses made the Byzantine servers silently silent (a ValueError,
    read as "too little observed") or aborted the run at its first step (a TypeError)."""
    config = {**SMALL, "n": 10, "f": 3, "protocol": {"name": protocol, "server_attack": attack}}
    with pytest.raises(ConfigError) as err:
        parse_config(config)
    assert str(err.value).count("\n") == 0
    assert f"protocol.server_attack.options: {message}" in str(err.value)


def test_valid_server_attack_values_still_parse() -> None:
    for attack in (
        {"name": "gaussian", "options": {"std": 3.0}},
        {"name": "leeway", "options": {"coordinates": 100}},
        {"name": "mimic", "options": {"worker": 2}},
        {"name": "alie", "equivocate": True},
    ):
        parse_config(
            {**SMALL, "n": 10, "f": 3, "protocol": {"name": "liubei", "server_attack": attack}}
        )
    one = {"name": "byzsgd", "servers": 1, "f_servers": 0, "byzantine_servers": 1}
    parse_config({**SMALL, "protocol": {**one, "server_attack": {"name": "alie"}}})
