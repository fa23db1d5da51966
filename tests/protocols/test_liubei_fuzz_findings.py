"""Findings of a random search over LiuBei (``protocols/liubei.py``): the workers' pulls,
timeouts and filters against a reference of the paper's steps."""

from __future__ import annotations

from typing import Any

from byzlearn.experiments import Trainer, parse_config
from byzlearn.experiments.runner import run
from byzlearn.protocols.replicated import byzantine_servers

SMALL: dict[str, Any] = {
    "dataset": {"name": "digits"},
    "model": {"name": "logistic"},
    "eval_every": 100,
    "checkpoint_every": 0,
}


def test_a_worker_that_got_no_model_at_step_one_is_not_locked_out() -> None:
    """Worker 3's pulls at step 1 are lost (omissions; its server is silent), so it accepted
    no model then. Its distance filter had no gradient norm, hence a radius of zero: it
    rejected every model of every later step, and never sent a gradient again."""
    config = {
        **SMALL,
        "n": 4,
        "f": 0,
        "steps": 4,
        "seed": 0,
        "network": {"omission": 0.5},
        "protocol": {"name": "liubei", "servers": 4, "server_attack": {"name": "silent"}},
    }
    trainer = Trainer(parse_config(config))
    workers = trainer.protocol.handler  # type: ignore[attr-defined]
    trainer.step()
    assert workers.answered.get(3, 0) == 0  # no model at step 1
    for _ in range(3):
        trainer.step()
    assert workers.answered[3] == 4  # it accepts the models of later steps


def test_a_pulled_server_that_does_not_answer_times_out_too() -> None:
    """Servers 2 and 3 of 7 are silent: the worker assigned to server 2 timed out and pulled
    server 3, which did not answer either, and waited for it for the rest of the step (one
    honest gradient lost every step). A pull that gets no answer now times out like the
    first read: the worker pulls the next server."""
    protocol = {"name": "liubei", "servers": 7, "f_servers": 2, "server_attack": {"name": "silent"}}
    config = parse_config({**SMALL, "n": 7, "f": 0, "steps": 3, "seed": 5, "protocol": protocol})
    assert byzantine_servers(config.protocol, 5) == [2, 3]  # type: ignore[arg-type]
    steps = run(config).records[1:]
    assert [r["reads_accepted"] for r in steps] == [7, 7, 7]  # every worker read a model
    assert [r["received"] for r in steps] == [7, 7, 7]
    # two workers time out on a silent server, one of them twice (on both)
    assert [r["reads_timeouts"] for r in steps] == [3, 3, 3]
    assert all(r["reads_pulls"] == r["reads_timeouts"] for r in steps)


def test_a_worker_gives_up_at_most_once_a_step() -> None:
    """A crashed worker's pulls are all lost; the repeated timeouts pull every server once,
    then it gives up, once (counted at every later timeout in an early version of the fix
    above)."""
    config = {
        **SMALL,
        "n": 9,
        "f": 1,
        "steps": 5,
        "seed": 5,
        "attack": {"name": "nonfinite"},
        "rule": {"name": "average"},
        "optimizer": {"momentum": 0.9, "momentum_at": "server"},
        "network": {"crashes": {8: 1}, "link_delay": 0.6},
        "protocol": {"name": "liubei", "servers": 6, "byzantine_servers": 0, "gradient_quorum": 6},
    }
    steps = run(parse_config(config)).records[1:]
    assert any(r["reads_gave_up"] > 0 for r in steps)  # the average diverged: all rejected
    assert all(r["reads_gave_up"] <= 8 for r in steps)  # at most once per honest worker


def test_the_record_says_how_many_models_the_gather_used() -> None:
    """``gather_models`` (docs/replicated.md, Metrics: byzsgd and liubei) was missing from
    LiuBei's records. With 2 silent servers of 4 (more than f_servers = 1) a correct server
    gets one other model of the two it needs and keeps its own (0 used)."""
    base = {**SMALL, "n": 7, "f": 2, "steps": 2}
    protocol = {"name": "liubei", "gather_every": 2, "server_attack": {"name": "silent"}}
    steps = run(parse_config({**base, "protocol": protocol})).records[1:]
    assert "gather_models" not in steps[0] and steps[1]["gather_models"] == 2
    short = run(parse_config({**base, "protocol": {**protocol, "byzantine_servers": 2}}))
    assert short.records[2]["gather_models"] == 0
