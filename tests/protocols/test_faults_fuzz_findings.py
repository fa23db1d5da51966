"""Findings of a random search across the protocols (parameter_server, async_sgd, kardam, byzsgd,
liubei, decentralized) under network faults (crashes, omissions, delays, lost coordinates,
stragglers): runs finish, the engine's accounting holds, runs are deterministic, resumed runs
equal uninterrupted ones, and the vectorised workers equal the per-worker loop."""

from __future__ import annotations

from typing import Any

from byzlearn.experiments import Trainer, parse_config

SMALL: dict[str, Any] = {
    "dataset": {"name": "digits"},
    "model": {"name": "mlp", "options": {"hidden": [8]}},
    "batch_size": 8,
    "eval_every": 100,
    "checkpoint_every": 0,
}


def _reads(config: dict[str, Any], vectorise: bool, steps: int) -> list[dict[str, Any]]:
    trainer = Trainer(parse_config({**config, "engine": {"name": "local", "vectorise": vectorise}}))
    out = []
    for _ in range(steps):
        record = trainer.step()
        out.append({k: v for k, v in record.items() if k.startswith("reads_")})
    return out


def test_a_filtered_read_uses_only_the_models_of_its_quorum() -> None:
    """ByzSGD's sync read: a worker waits for ``model_quorum`` models and reads its server's
    among them. The vectorised workers got every model that had arrived in one call and looked
    for their server's among all of them, also those that arrived after the quorum (later in
    simulated time): they read other models than the per-worker loop (here 4 accepted, 2
    rejected at step 1 against 6 accepted)."""
    config = {
        **SMALL,
        "seed": 249,
        "n": 7,
        "f": 1,
        "steps": 2,
        "attack": {"name": "gaussian"},
        "rule": {"name": "median"},
        "network": {"compute_time": {"dist": "lognormal", "mean": 0.5, "sigma": 1.0}},
        "protocol": {
            "name": "byzsgd",
            "variant": "sync",
            "servers": 6,
            "f_servers": 1,
            "server_attack": {"name": "nonfinite"},
        },
    }
    assert _reads(config, True, 2) == _reads(config, False, 2)


def _records(config: dict[str, Any], vectorise: bool, keys: tuple[str, ...]) -> list[Any]:
    trainer = Trainer(parse_config({**config, "engine": {"name": "local", "vectorise": vectorise}}))
    return [{k: trainer.step().get(k) for k in keys} for _ in range(config["steps"])]


def test_liubei_gradients_tie_the_same_way_vectorised_or_not() -> None:
    """LiuBei with equal compute times: the gradients of a step reach the servers at the same
    time, and a server aggregates the first ``gradient_quorum`` (ties broken by the order they
    were sent). The vectorised workers sent them in the order of the models' arrivals across
    workers, the per-worker loop in worker order (the engine's order of the calls): the servers
    aggregated other gradients (``kept`` differed at step 1)."""
    config = {
        **SMALL,
        "seed": 309,
        "n": 19,
        "f": 2,
        "steps": 2,
        "attack": {"name": "sign_flip"},
        "rule": {"name": "signguard"},
        "byzantine": "last",
        "protocol": {
            "name": "liubei",
            "servers": 4,
            "f_servers": 1,
            "byzantine_servers": 2,
            "server_attack": {"name": "gaussian"},
        },
    }
    keys = ("received", "kept", "reads_accepted", "reads_rejected")
    assert _records(config, True, keys) == _records(config, False, keys)
