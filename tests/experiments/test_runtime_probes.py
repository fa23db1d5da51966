"""Regression tests for the probes of the runtime issue: each used to abort, mislead or lose
messages; each now holds through a whole run driven from a config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from byzlearn.experiments import Trainer, parse_config, run
from tests.resume import kill_run, without_times

SYNTHETIC: dict[str, Any] = {
    "dataset": {
        "name": "synthetic",
        "options": {"num_samples": 800, "num_features": 12, "num_classes": 3, "separation": 1.5},
    },
    "model": {"name": "logistic"},
    "steps": 30,
    "eval_every": 10,
    "checkpoint_every": 0,
    "batch_size": 16,
}


def _config(**kw: Any):
    return parse_config({**SYNTHETIC, **kw})


def test_a_crash_that_leaves_too_few_replies_does_not_abort_the_run() -> None:
    # krum, n = 9, f = 3: after the crash 8 replies, krum needs 2f + 3 = 9
    result = run(_config(n=9, f=3, rule={"name": "krum"}, network={"crashes": {0: 4}}))
    records = [r for r in result.records if r["round"] > 0]
    assert len(records) == 30 and not result.summary["diverged"]
    assert all(r["received"] == 8 and r["f_used"] == 2 for r in records[3:])  # policy: shrink
    assert result.summary["final_accuracy"] > 0.8
    skipping = run(
        _config(
            n=9,
            f=3,
            rule={"name": "krum"},
            network={"crashes": {0: 4}},
            protocol={"name": "parameter_server", "on_missing": "skip"},
        )
    )
    assert skipping.summary["skipped"] == 27 and not skipping.summary["diverged"]
    assert skipping.summary["rounds"] == 30


def test_skipped_rounds_are_not_divergence() -> None:
    # median, n = 5, f = 1, half of every reply's coordinates lost: some rounds cannot aggregate
    result = run(_config(n=5, f=1, rule={"name": "median"}, network={"coordinate_drop": 0.5}))
    records = [r for r in result.records if r["round"] > 0]
    assert len(records) == 30 and not result.summary["diverged"]
    skipped = [r for r in records if r.get("skipped")]
    assert skipped and result.summary["skipped"] == len(skipped)
    assert all("finite values" in r["skip_reason"] for r in skipped)


def test_late_replies_are_counted_and_the_clock_stands_at_the_deadline() -> None:
    trainer = Trainer(
        _config(
            n=10,
            f=0,
            num_byzantine=0,
            rule={"name": "average"},
            network={"stragglers": 3, "slowdown": 4.0},
            protocol={"name": "parameter_server", "deadline": 2.0, "on_missing": "skip"},
        )
    )
    first = trainer.step()
    assert first["received"] == 7 and first["time"] == pytest.approx(2.0)
    assert first["messages_late"] == 3 and first["in_flight"] == 3
    second = trainer.step()  # round 1's late replies, arrived meanwhile, are discarded: counted
    assert second["messages_discarded"] == 3 and second["time"] == pytest.approx(4.0)
    stats = trainer.engine.stats
    assert stats["sent"] == stats["delivered"] + stats["discarded"] + stats["in_flight"]


def test_a_node_cannot_reply_under_another_nodes_id(monkeypatch) -> None:
    from byzlearn.protocols import ByzantineWorkers

    real = ByzantineWorkers.handle

    def lying(self, inbox, observed=()):
        replies = real(self, inbox, observed)
        for r in replies:
            r.sender = 0 if 0 not in self.ids else 1  # an honest worker's id
        return replies

    monkeypatch.setattr(ByzantineWorkers, "handle", lying)
    trainer = Trainer(
        _config(n=7, f=2, byzantine="last", attack={"name": "ipm"}, rule={"name": "median"})
    )
    record = trainer.step()
    assert record["received"] == 5 and record["impostors"] == 2
    assert sorted(trainer.server.workers)[:5] == list(range(5))


def test_declared_f_and_actual_byzantine_count_are_separate() -> None:
    trainer = Trainer(
        _config(n=11, f=2, num_byzantine=4, attack={"name": "ipm"}, rule={"name": "krum"})
    )
    assert len(trainer.byzantine) == 4 and trainer.server.f == 2
    assert trainer.protocol.workers.coalition is not None
    assert len(trainer.protocol.workers.coalition.ids) == 4
    record = trainer.step()
    assert record["received"] == 11


def test_node_ids_come_from_the_protocol_and_engines_from_the_registry() -> None:
    trainer = Trainer(_config(n=4, f=0, num_byzantine=0))
    assert trainer.worker_ids == [0, 1, 2, 3] and trainer.server.node.id == 4
    assert trainer.engine.role_of(4) == "server"
    from byzlearn.engines import ENGINES

    assert ENGINES.names() == ["local", "ray"]  # ray: the optional extra, imported when used
    with pytest.raises(ValueError, match="already registered"):
        ENGINES.add("local", lambda *a, **k: None)


@pytest.mark.parametrize("name", ["krum", "dnc"])  # bucketing+dnc: two parts that draw
def test_randomised_rules_are_deterministic_and_resume_exactly(tmp_path: Path, name: str) -> None:
    config = _config(
        n=10,
        f=1,
        rule={"name": name, "pre": ["bucketing"]},
        attack={"name": "ipm"},
        steps=12,
        eval_every=4,
        checkpoint_every=5,
    )
    a, b = run(config), run(config)
    assert without_times(a.records) == without_times(b.records)
    kill_run(config, tmp_path / "run", at=8)
    resumed = run(config, tmp_path / "run")
    assert without_times(resumed.records) == without_times(a.records)
    assert all(r.get("kept") for r in a.records[1:])


def test_a_killed_run_with_messages_in_flight_resumes_exactly(tmp_path: Path) -> None:
    config = _config(
        n=10,
        f=2,
        rule={"name": "median"},
        attack={"name": "alie"},
        steps=12,
        eval_every=4,
        checkpoint_every=5,
        network={"stragglers": 3, "slowdown": 3.0, "compute_time": {"dist": "exponential"}},
        protocol={"name": "parameter_server", "q": 7},
    )
    full = run(config)
    kill_run(config, tmp_path / "run", at=9)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert any(state["trainer"]["engine"]["mail"].values())  # replies were in flight
    resumed = run(config, tmp_path / "run")
    assert without_times(resumed.records) == without_times(full.records)
