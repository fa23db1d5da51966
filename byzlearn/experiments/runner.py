"""Run one experiment: the training loop, metrics as they come, checkpoints and resume.

>>> from byzlearn.experiments import run, parse_config
>>> result = run(parse_config({"dataset": {"name": "synthetic"}, "model": {"name": "logistic"},
...                            "n": 5, "f": 1, "rule": {"name": "median"}, "steps": 5}))
>>> result.summary["final_accuracy"] > 0
True

Metrics records (one per protocol step; ``round = 0`` holds the initial evaluation): the
protocol's fields (``round``, ``lr``, ``received``, ``time``; for the parameter server
``agg_seconds``, ``kept``, ``aggregate_norm``, ``skipped``; for the asynchronous protocols
``sender``, ``accepted``, ``reason``, ``staleness``), the observers' fields (``train_loss``,
``kept_byzantine``, ``dist_honest_mean``, message counters), ``seconds`` (wall time of the step)
and, every ``eval_every`` steps and at the last one, ``test_accuracy`` and ``test_loss``. A
skipped step (too few replies, inputs too damaged to aggregate) leaves the model as is and the
run goes on; a run whose model or honest loss stops being finite is marked ``diverged`` and
stops there (its last record is evaluated).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from byzlearn.data import ArrayDataset
from byzlearn.experiments.config import (
    Config,
    ConfigError,
    check_round_memory,
    config_hash,
    parse_config,
)
from byzlearn.experiments.store import CheckpointError, MetricsWriter, RunDir, json_safe
from byzlearn.experiments.trainer import Trainer
from byzlearn.finite import all_finite

__all__ = ["RunResult", "run", "summarise"]

Callback = Callable[[dict[str, Any]], None]


@dataclass
class RunResult:
    """What :func:`run` returns: the per-round records, the summary and where they were written.

    ``status`` says what :func:`run` did: ``"started"`` (from round 0), ``"resumed"`` (from the
    checkpoint of round ``resumed_from``) or ``"loaded"`` (a finished run, not retrained).
    """

    config: Config
    records: list[dict[str, Any]]
    summary: dict[str, Any]
    theta: torch.Tensor | None = None
    directory: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    status: str = "started"
    resumed_from: int | None = None

    def curve(self, key: str = "test_accuracy") -> tuple[list[int], list[float]]:
        """``(rounds, values)`` of the records that hold ``key``."""
        pts = [(r["round"], r[key]) for r in self.records if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]


_TIME_KEYS = ("seconds", "agg_seconds")


def summarise(config: Config, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Final and best test accuracy, Byzantine inputs kept per round, seconds, divergence."""
    acc = [r["test_accuracy"] for r in records if r.get("test_accuracy") is not None]
    kept = [r["kept_byzantine"] for r in records if r.get("kept_byzantine") is not None]
    rounds = [r for r in records if r.get("round", 0) > 0]
    return {
        "hash": config_hash(config),
        "name": config.name,
        "protocol": config.protocol.name,
        "rounds": len(rounds),
        "skipped": sum(1 for r in rounds if r.get("skipped")),
        "final_accuracy": acc[-1] if acc else None,
        "best_accuracy": max(acc) if acc else None,
        "kept_byzantine_mean": sum(kept) / len(kept) if kept else None,
        "seconds": sum(r.get("seconds", 0.0) for r in rounds),
        "agg_seconds": sum(r.get("agg_seconds", 0.0) for r in rounds),
        "simulated_time": rounds[-1].get("time") if rounds else None,
        "diverged": any(r.get("diverged") for r in records),
    }


def _finite(value: float | None) -> bool:
    return value is None or math.isfinite(value)


def _evaluate(trainer: Trainer, record: dict[str, Any]) -> None:
    """``test_accuracy`` and ``test_loss``: of the model, or the mean over the protocol's
    models (correct servers, honest peers) with their min and max and each model's accuracy."""
    results = trainer.evaluate_models()
    if len(results) == 1:
        record["test_accuracy"], record["test_loss"] = next(iter(results.values()))
        return
    accs = [a for a, _ in results.values()]
    losses = [v for _, v in results.values()]
    record["test_accuracy"] = sum(accs) / len(accs)
    record["test_loss"] = sum(losses) / len(losses)
    record["test_accuracy_min"] = min(accs)
    record["test_accuracy_max"] = max(accs)
    record["accuracies"] = {k: a for k, (a, _) in results.items()}


_AFRESH = "rerun with --no-resume to start this run afresh"


def _checkpoint(rd: RunDir, config: Config) -> dict[str, Any] | None:
    """The directory's checkpoint, checked to belong to ``config`` and to hold a round of it
    (an ``int`` in ``[0, steps]``), before anything is written; None without one."""
    state = rd.load_checkpoint()
    if state is None:
        return None
    if state.get("hash") != config_hash(config):
        raise CheckpointError(
            f"{rd.checkpoint_path}: checkpoint of another config; nothing was written. Use "
            "another directory"
        )
    r = state["round"]
    if type(r) is not int or not 0 <= r <= config.steps:
        raise CheckpointError(
            f"{rd.checkpoint_path}: its round {r!r} is not a step of this run (a whole number "
            f"from 0 to {config.steps}); {_AFRESH}"
        )
    return state


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    """``value`` in a message: its type and a short repr (``str 'x'``, ``None``)."""
    return "None" if value is None else f"{type(value).__name__} {value!r:.40}"


def _structure_problem(saved: Any, fresh: Any, where: str = "") -> str | None:
    """The first place where the checkpoint's trainer state ``saved`` does not have the form of
    a new trainer's state ``fresh`` (None: none): a tensor of another shape or dtype, or a
    value of another kind (a tensor, a mapping, a list, a number) where the new state holds
    one; a place the new state leaves empty (``None``) takes anything. Only the places both
    states have are compared (queues of messages grow and shrink). What loads without a
    complaint would otherwise fail in the first round, deep inside the protocol."""
    place = where or "state"
    if isinstance(fresh, torch.Tensor):
        if not isinstance(saved, torch.Tensor):
            return f"{place} is {_kind(saved)}, not a tensor"
        if saved.shape != fresh.shape:
            return f"{place} has shape {list(saved.shape)}, not {list(fresh.shape)}"
        if saved.dtype != fresh.dtype:
            return f"{place} is {saved.dtype}, not {fresh.dtype}"
        return None
    pairs: list[tuple[str, Any, Any]] = []
    if isinstance(fresh, dict):
        if not isinstance(saved, dict):
            return f"{place} is {_kind(saved)}, not a mapping"
        pairs = [(f"{where}/{k}", saved[k], fresh[k]) for k in saved if k in fresh]
    elif isinstance(fresh, (list, tuple)):
        if not isinstance(saved, (list, tuple)):
            return f"{place} is {_kind(saved)}, not a list"
        common = zip(saved, fresh, strict=False)  # the places both lists have
        pairs = [(f"{where}/{i}", a, b) for i, (a, b) in enumerate(common)]
    elif _is_number(fresh) and not _is_number(saved):
        return f"{place} is {_kind(saved)}, not a number"
    for child, a, b in pairs:
        problem = _structure_problem(a, b, child)
        if problem is not None:
            return problem
    return None


def _restore(trainer: Trainer, rd: RunDir, state: dict[str, Any]) -> None:
    """Load the checkpoint ``state`` into the new ``trainer``, checked to fit it: the form of
    its state (:func:`_structure_problem`), and the round the restored trainer is at (that of
    the checkpoint)."""
    problem = _structure_problem(state["trainer"], trainer.state_dict())
    if problem is None:
        try:
            trainer.load_state_dict(state["trainer"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as err:
            problem = f"{type(err).__name__}: {err}"
    if problem is None and trainer.round != state["round"]:
        problem = f"its round is {state['round']} but its state is at round {trainer.round}"
    if problem is not None:
        raise CheckpointError(f"{rd.checkpoint_path}: does not fit this run ({problem}); {_AFRESH}")


def _start_engine(trainer: Trainer) -> None:
    """Start the trainer's engine before the run writes anything: Ray actors the cluster
    cannot hold (``engine.actors``, ``engine.resources``), or that fail to start, are one line
    then, not a traceback at the first round after the run directory was written."""
    try:
        trainer.engine.start()
    except (ValueError, RuntimeError) as err:
        raise ConfigError(str(err)) from None


def _first_round_resumed(trainer: Trainer, rd: RunDir) -> dict[str, Any]:
    """The first round after a resume: a state that loaded but has a part of the wrong form
    where the new state held nothing to compare it with (a checkpoint from elsewhere) fails
    here, deep inside the protocol; that is one line naming the checkpoint (nothing of the
    round is written)."""
    t = trainer.round + 1
    try:
        return trainer.step()
    except (KeyError, TypeError, AttributeError, IndexError) as err:
        raise CheckpointError(
            f"{rd.checkpoint_path}: round {t}, the first after resuming from it, "
            f"failed ({type(err).__name__}: {err}): the checkpoint may not fit this run; "
            f"{_AFRESH}"
        ) from None


def _resume(trainer: Trainer, rd: RunDir, state: dict[str, Any]) -> list[dict[str, Any]]:
    """Restore the checkpoint ``state`` and cut the metrics back to it, after checking that they
    agree (:meth:`RunDir.cut_metrics_to`; a refusal writes nothing); return the kept records."""
    _restore(trainer, rd, state)
    return rd.cut_metrics_to(state["round"])


def run(
    config: Config | dict[str, Any] | None = None,
    directory: str | Path | None = None,
    *,
    model: nn.Module | None = None,
    dataset: ArrayDataset | None = None,
    resume: bool = True,
    callback: Callback | None = None,
) -> RunResult:
    """Train one run of ``config`` and return its metrics.

    With ``directory``, the resolved config, metrics (as they come), checkpoints (every
    ``config.checkpoint_every`` rounds), the summary and the final model are written there; a
    run killed before finishing resumes from its last checkpoint when run again (``resume``),
    and a finished run is loaded, not retrained (``resume=False`` starts afresh). A directory
    holding results of *another* config is refused before anything is written
    (:class:`~byzlearn.experiments.store.RunCollisionError`), a directory another process runs
    in too (:class:`~byzlearn.experiments.store.RunLockedError`). ``callback(record)`` is
    called after every round (e.g. a progress bar). ``model`` (any ``nn.Module``) and
    ``dataset`` replace the config's.
    """
    config = parse_config(config) if not isinstance(config, Config) else config
    if directory is None:
        return _threads(config, lambda: _train(config, None, model, dataset, None, callback))
    rd = RunDir(directory)
    rd.claim(config)  # another config's results are never touched: refused before any write
    with rd.lock():
        if resume and rd.finished:
            summary = rd.summary() or {}
            theta = rd.load_model()  # weights_only; a damaged file is one line naming it
            return RunResult(config, rd.metrics(), summary, theta, rd.path, status="loaded")
        state = _checkpoint(rd, config) if resume else None
        return _threads(config, lambda: _train(config, rd, model, dataset, state, callback))


def _threads(config: Config, work: Callable[[], RunResult]) -> RunResult:
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return work()
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    config: Config,
    rd: RunDir | None,
    model: nn.Module | None,
    dataset: ArrayDataset | None,
    state: dict[str, Any] | None,
    callback: Callback | None,
) -> RunResult:
    try:  # the data must suit the config (e.g. a sample per worker): one line, before any write
        if model is None and dataset is None:  # the config's own: a round must fit the memory
            check_round_memory(config)
        trainer = Trainer(config, model=model, dataset=dataset)
    except ValueError as err:
        raise ConfigError(f"invalid config: {err}") from None
    records: list[dict[str, Any]] = []
    writer: MetricsWriter | None = None
    status, resumed_from = "started", None
    if rd is not None:
        if state is not None:  # checked to agree before anything is written
            records = _resume(trainer, rd, state)
            status, resumed_from = "resumed", int(state["round"])
        _start_engine(trainer)
        rd.write_config(config)
        rd.summary_path.unlink(missing_ok=True)  # an unfinished run of this config
        if state is None:
            rd.metrics_path.unlink(missing_ok=True)
            rd.checkpoint_path.unlink(missing_ok=True)
        writer = MetricsWriter(rd.metrics_path)
    try:
        if trainer.round == 0:
            first = {"round": 0}
            _evaluate(trainer, first)
            records.append(json_safe(first))
            if writer:
                writer.write(first)
        while trainer.round < config.steps:
            start = time.perf_counter()
            if status == "resumed" and trainer.round == resumed_from and rd is not None:
                record = _first_round_resumed(trainer, rd)
            else:
                record = trainer.step()
            t = record["round"]
            diverged = not (all_finite(trainer.theta) and _finite(record.get("train_loss")))
            if diverged:
                record["diverged"] = True
            if diverged or t % config.eval_every == 0 or t == config.steps:
                _evaluate(trainer, record)
            record["seconds"] = time.perf_counter() - start
            # kept as written (non-finite values as None), so that a resumed run's records,
            # read back from its file, equal an uninterrupted run's
            records.append(json_safe(record))
            if writer:
                writer.write(record)
            if callback is not None:
                callback(record)
            if diverged:
                break
            every = config.checkpoint_every
            if rd is not None and every and t % every == 0 and t < config.steps:
                rd.save_checkpoint(
                    {"round": t, "hash": config_hash(config), "trainer": trainer.state_dict()}
                )
    finally:
        if writer:
            writer.close()
    summary = {**summarise(config, records), **trainer.summary()}
    if rd is not None:
        rd.save_model(trainer.theta)
        rd.write_summary(summary)
        rd.checkpoint_path.unlink(missing_ok=True)
    return RunResult(
        config,
        records,
        summary,
        trainer.theta,
        rd.path if rd else None,
        status=status,
        resumed_from=resumed_from,
    )
