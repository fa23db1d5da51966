"""Reports over a directory of runs: Markdown tables, accuracy curves, worst-case heatmaps.

:func:`build_report` reads every finished run under a directory (a sweep's ``runs/`` or any
tree of run directories) and writes into ``DIR/report/``:

- ``runs.md``: one row per run (the fields that vary across runs, final and best accuracy,
  Byzantine inputs kept per round, seconds);
- ``curves_<group>.png``: test accuracy against rounds, one line per rule (mean over seeds), one
  figure per combination of the other varying fields (attack, f, heterogeneity, ...);
- ``worst.md`` and ``worst_rule_f[_<panel>].png``: for each rule and f, the *worst case over
  attacks* of the seed-averaged accuracy, one heatmap per combination of the other varying
  fields (e.g. per heterogeneity level); ``worst_heterogeneity_f_<rule>[_<panel>].png``:
  heterogeneity x f, one per rule (when heterogeneity varies).

The fields that vary are those of :func:`describe`, plus any config field (dotted, e.g.
``batch_size``, ``rule.options.m``) that tells apart runs described alike but for the seed:
only seeds of one config are ever averaged. File names are the slugs of the fields' values,
made unique (a name cut at 150 characters, or one another group's slug already took, ends with
a hash of its text): no figure overwrites another.

Every file is written atomically (a temporary file created afresh, then moved over the name:
a link at a file's name is replaced, never written through), one report at a time in a folder
(its ``lock``, as a run directory's: a second report is refused in one line naming the live one;
the temporary files of a killed one are removed by the next); a ``report`` folder that is a
symbolic link, or a run directory or run file that is one, is refused in one line (a link among
the parents, e.g. ``runs`` on a scratch disk, is followed). So is a damaged finished run
(:func:`collect`): a summary of another config than its ``config.yaml``, a second finished run
of one config, a summary value or test accuracy that is not a number (accuracies in [0, 1]),
metrics whose rounds do not increase.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from byzlearn.experiments.config import Config, config_hash
from byzlearn.experiments.plots import accuracy_curves, heatmap
from byzlearn.experiments.store import (
    RunDir,
    RunDirError,
    find_named,
    iter_runs,
    lock_directory,
    temporary_names,
    write_text_atomically,
)
from byzlearn.experiments.tables import markdown_table

__all__ = ["RunRecord", "build_report", "collect", "describe"]


@dataclass
class RunRecord:
    """A finished run as the report sees it."""

    path: Path
    config: Config
    summary: dict[str, Any]
    curve: tuple[list[int], list[float]]


def method(config: Config) -> str:
    """What aggregates: the rule of the parameter server (``nnm+krum``), the label a protocol
    gives itself (``byzsgd-async/mda``, ``decentralized/nna@random_regular8``), else the
    protocol with its dampening (``kardam/exp``, ``async_sgd/none``)."""
    protocol = config.protocol
    if protocol.name == "parameter_server":
        return config.rule.full_name
    label = getattr(protocol, "method_label", None)
    if label is not None:  # the protocol names its own method (byzsgd/mda, decentralized/nna@ring)
        return str(label(config.rule.full_name))
    dampening = getattr(protocol, "dampening", None)
    return f"{protocol.name}/{dampening}" if dampening else protocol.name


def describe(config: Config) -> dict[str, Any]:
    """The fields a report groups by: rule (the aggregation method, :func:`method`), attack, f,
    heterogeneity, momentum, seed, ..."""
    attack = config.attack.name
    if attack != "none" and config.attack.options:
        opts = ",".join(f"{k}={v}" for k, v in sorted(config.attack.options.items()))
        attack = f"{attack}({opts})"
    if config.poisoning.kind != "none":
        attack = config.poisoning.kind
    opt = config.optimizer
    return {
        "dataset": config.dataset.name,
        "model": config.model.name,
        "rule": method(config),
        "attack": attack,
        "n": config.n,
        "f": config.f,
        "heterogeneity": config.partition.label(),
        "momentum": f"{opt.momentum:g}@{opt.momentum_at}" if opt.momentum else "0",
        "lr": opt.lr,
        "steps": config.steps,
        "seed": config.seed,
    }


def collect(root: str | Path) -> list[RunRecord]:
    """Every finished run under ``root``, checked: a run directory or run file that is a
    symbolic link, a summary of another config than the run's ``config.yaml`` (their hashes
    differ), two finished runs of one config (a mean over seeds would count it twice), a
    summary number or test accuracy that is not one (accuracies in [0, 1]) and metrics whose
    rounds do not increase are each a :class:`ValueError` naming the file."""
    out = []
    first_of: dict[str, Path] = {}
    for rd in iter_runs(root):
        if rd.path.is_symlink():  # found through a link: refused as a sweep refuses it
            raise RunDirError(
                f"{rd.path}: the run directory is a symbolic link; byzlearn reads no run "
                "through links: put the directory itself there"
            )
        rd.refuse_links()  # never read a run's files through links (they could point anywhere)
        summary = rd.summary()
        if summary is None:
            continue
        _check_summary(rd.summary_path, summary)
        config = rd.read_config()
        mine = config_hash(config)
        if summary.get("hash") is not None and summary["hash"] != mine:
            raise ValueError(
                f"{rd.path}: summary.json is of another config than config.yaml (their hashes "
                "differ), so what its numbers measure is unknown; run the config again in a "
                "new directory or move this one out of the way"
            )
        if first_of.setdefault(mine, rd.path) != rd.path:
            raise ValueError(
                f"{rd.path}: a second finished run of the config of {first_of[mine]} (a mean "
                "over seeds would count it twice); move one of them out of the way"
            )
        out.append(RunRecord(rd.path, config, summary, _curve(rd)))
    return out


_ACCURACIES = ("final_accuracy", "best_accuracy")
_AMOUNTS = ("kept_byzantine_mean", "seconds")


def _is_number(value: Any, low: float, high: float) -> bool:
    """Whether ``value`` is an ``int`` or ``float`` (not a bool) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return low <= value <= high  # False for NaN


def _check_summary(path: Path, summary: dict[str, Any]) -> None:
    """The numbers of a summary the report shows are numbers (or null): accuracies in [0, 1],
    Byzantine inputs kept and seconds finite and >= 0, ``diverged`` true or false; else a
    :class:`ValueError` naming the file and the field."""
    for key in (*_ACCURACIES, *_AMOUNTS):
        value = summary.get(key)
        accuracy = key in _ACCURACIES
        if value is None or _is_number(value, 0.0, 1.0 if accuracy else sys.float_info.max):
            continue
        allowed = "a number from 0 to 1" if accuracy else "a finite number >= 0"
        raise ValueError(f"{path}: {key} is {value!r}, not {allowed} or null (the file is damaged)")
    diverged = summary.get("diverged")
    if diverged is not None and type(diverged) is not bool:
        raise ValueError(
            f"{path}: diverged is {diverged!r}, not true or false (the file is damaged)"
        )


def _curve(rd: RunDir) -> tuple[list[int], list[float]]:
    """``(rounds, test accuracies)`` of a run's metrics (records without an accuracy left out);
    rounds that do not increase or an accuracy that is not a number from 0 to 1 are a
    :class:`ValueError` naming the file."""
    rounds: list[int] = []
    values: list[float] = []
    previous = -1
    for record in rd.metrics():
        t = record["round"]  # a whole number >= 0 (read_metrics checks it)
        if t <= previous:
            raise ValueError(
                f"{rd.metrics_path}: round {t} comes after round {previous} (the file is "
                "damaged: rounds must increase)"
            )
        previous = t
        acc = record.get("test_accuracy")
        if acc is None:
            continue
        if not _is_number(acc, 0.0, 1.0):
            raise ValueError(
                f"{rd.metrics_path}: a test_accuracy that is not a number from 0 to 1 "
                f"({acc!r} at round {t})"
            )
        rounds.append(t)
        values.append(float(acc))
    return rounds, values


def _varying(descs: list[dict[str, Any]]) -> list[str]:
    keys = list(descs[0]) if descs else []
    return [k for k in keys if len({str(d[k]) for d in descs}) > 1]


def _mean(values: Iterable[float | None]) -> float:
    """The mean of the finite numbers among ``values`` (NaN when there are none); a value that
    is not a number (a damaged summary) is an error naming it."""
    vals = []
    for v in values:
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"a run summary holds {v!r} where a number belongs")
        if math.isfinite(v):
            vals.append(v)
    return sum(vals) / len(vals) if vals else float("nan")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_") or "all"


class _FileNames:
    """The file names of one report: ``stem + slug(text)``, at most 150 characters before the
    extension, and never the name of another text (``a/b`` and ``a(b)`` share a slug; long
    texts share their beginning): a name cut short or already taken ends with a hash of its
    text instead, so no figure overwrites another."""

    LIMIT = 150

    def __init__(self) -> None:
        self.taken: dict[str, str] = {}

    def __call__(self, stem: str, text: str) -> str:
        key = stem + "\0" + text
        name = stem + _slug(text)
        if len(name) > self.LIMIT or self.taken.get(name, key) != key:
            digest = hashlib.sha256(key.encode()).hexdigest()[:10]
            name = f"{name[: self.LIMIT - 11]}-{digest}"
        self.taken[name] = key
        return name


# fields of a config that cannot change its results (see config_hash)
_NOT_RESULTS = {"name", "threads", "checkpoint_every"}


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """The leaves of a config dump as dotted keys; a list is one leaf (its JSON text)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, child in value.items():
            out.update(_leaves(child, f"{prefix}{key}."))
        return out
    if isinstance(value, list):
        value = json.dumps(value)
    return {prefix[:-1]: value}


def _distinguish(configs: list[Config], descs: list[dict[str, Any]]) -> None:
    """Add to ``descs`` (in place) the dotted config fields that tell apart runs whose
    descriptions are equal but for the seed (a sweep over ``batch_size``, ``rule.options.m``,
    ``num_byzantine``, ...): without them the report would average different configs as if
    they were seeds of one."""
    leaves = [_leaves(c.model_dump(mode="json", exclude=_NOT_RESULTS | {"seed"})) for c in configs]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(descs):
        seedless = {k: v for k, v in d.items() if k != "seed"}
        groups[json.dumps(seedless, sort_keys=True, default=str)].append(i)
    order = list(dict.fromkeys(k for leaf in leaves for k in leaf))
    extra = [
        key
        for key in order
        if any(
            len({json.dumps(leaves[i].get(key)) for i in members}) > 1
            for members in groups.values()
        )
    ]
    for d, leaf in zip(descs, leaves, strict=True):
        for key in extra:
            d[key] = leaf.get(key)


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))


def _mean_curve(curves: list[tuple[list[int], list[float]]]) -> tuple[list[int], list[float]]:
    """Pointwise mean over the rounds every curve has (a diverged run ends early: it is
    extended with its last value)."""
    rounds = sorted({r for c in curves for r in c[0]})
    out = []
    for r in rounds:
        vals = []
        for xs, ys in curves:
            if not xs:
                continue
            i = int(np.searchsorted(xs, r, side="right")) - 1
            vals.append(ys[max(i, 0)])
        out.append(float(np.mean(vals)))
    return rounds, out


def _curve_label(rule: str, runs: list[RunRecord]) -> str:
    """The rule, and how many of its runs diverged (their curves end there: the mean carries
    their last value on)."""
    diverged = sum(1 for r in runs if r.summary.get("diverged"))
    if not diverged:
        return rule
    return f"{rule} (diverged: {diverged} of {len(runs)} runs)"


def _worst(
    runs: list[tuple[dict[str, Any], RunRecord]], row: str, col: str, metric: str
) -> tuple[list[Any], list[Any], np.ndarray]:
    """``min over attacks (mean over seeds)`` of ``metric`` for each (row, col) cell."""
    cells: dict[tuple[Any, Any], dict[str, list[float | None]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for d, r in runs:
        cells[(d[row], d[col])][d["attack"]].append(r.summary.get(metric))
    rows = sorted({k[0] for k in cells}, key=_sort_key)
    cols = sorted({k[1] for k in cells}, key=_sort_key)
    values = np.full((len(rows), len(cols)), np.nan)
    for (a, b), per_attack in cells.items():
        means = [m for m in (_mean(v) for v in per_attack.values()) if not math.isnan(m)]
        # the attacks with a number (NaN when none has one; min() of a NaN depends on order)
        values[rows.index(a), cols.index(b)] = min(means) if means else math.nan
    return rows, cols, values


def build_report(
    root: str | Path, out: str | Path | None = None, *, metric: str = "final_accuracy"
) -> Path:
    """Write the tables and figures of the runs under ``root`` into ``out`` (default
    ``root/report``); return ``out``."""
    root = Path(root)
    out = Path(out) if out is not None else root / "report"
    if out.is_symlink():  # a received sweep directory could point it anywhere
        raise ValueError(
            f"{out}: is a symbolic link; the report is never written through links: remove the "
            "link (the report is written afresh) or pass another folder"
        )
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: is a file, not the report folder; move it out of the way")
    for summary in find_named(root, "summary.json"):  # damaged runs are named, not left out
        if not (summary.parent / "config.yaml").is_file():
            raise ValueError(
                f"{summary.parent}: a finished run without its config.yaml (what it ran is "
                "unknown); restore the file or move the folder out of the way"
            )
    runs = collect(root)
    if not runs:
        raise FileNotFoundError(f"no finished runs under {root}")
    # one report at a time in the folder (a run directory's lock: another live one is a
    # RunLockedError naming it); the temporary files of a killed one are removed
    with lock_directory(out, _TEMPORARY):
        _write_report(runs, out, metric)
    return out


# the temporary files of the report's tables and figures (write_atomically's names)
_TEMPORARY = temporary_names(r"[^/]+\.(md|png)")


def _write_report(runs: list[RunRecord], out: Path, metric: str) -> None:
    """Write the tables and figures of ``runs`` into the locked folder ``out``."""
    descs = [describe(r.config) for r in runs]
    _distinguish([r.config for r in runs], descs)
    names = _FileNames()
    varying = _varying(descs) or ["rule"]
    pairs = list(zip(descs, runs, strict=True))

    # ---- one row per run
    cols = [*varying, "final acc", "best acc", "Byz kept/round", "seconds"]
    rows = [
        [
            *(d[k] for k in varying),
            r.summary.get("final_accuracy"),
            r.summary.get("best_accuracy"),
            r.summary.get("kept_byzantine_mean"),
            r.summary.get("seconds"),
        ]
        for d, r in sorted(pairs, key=lambda p: [str(p[0][k]) for k in varying])
    ]
    write_text_atomically(out / "runs.md", markdown_table(cols, rows))

    # ---- curves: one figure per combination of the varying fields other than rule and seed
    group_keys = [k for k in varying if k not in ("rule", "seed")]
    groups: dict[tuple, dict[str, list[RunRecord]]] = defaultdict(lambda: defaultdict(list))
    for d, r in pairs:
        groups[tuple(d[k] for k in group_keys)][d["rule"]].append(r)
    chance = None
    for key, per_rule in groups.items():
        title = ", ".join(f"{k}={v}" for k, v in zip(group_keys, key, strict=True))
        name = names("curves_", "_".join(f"{k}={v}" for k, v in zip(group_keys, key, strict=True)))
        curves = {
            _curve_label(rule, runs): _mean_curve([r.curve for r in runs])
            for rule, runs in sorted(per_rule.items())
        }
        accuracy_curves(curves, out / f"{name}.png", title=title, chance=chance)

    # ---- worst case over attacks
    text = [f"# Worst case over attacks ({metric}, mean over seeds)\n"]
    _worst_panels(pairs, varying, "rule", "worst_rule_f", metric, text, out, names)
    if "heterogeneity" in varying:
        for rule in sorted({d["rule"] for d, _ in pairs}):
            mine = [(d, r) for d, r in pairs if d["rule"] == rule]
            stem = f"worst_heterogeneity_f_{rule}"
            _worst_panels(mine, varying, "heterogeneity", stem, metric, text, out, names, rule)
    write_text_atomically(out / "worst.md", "\n".join(text))


def _worst_panels(
    pairs: list[tuple[dict[str, Any], RunRecord]],
    varying: list[str],
    row: str,
    stem: str,
    metric: str,
    text: list[str],
    out: Path,
    names: _FileNames,
    prefix: str = "",
) -> None:
    """``row`` x f heatmaps of the worst case over attacks, one per combination of the other
    varying fields (e.g. one rule x f panel per heterogeneity level), and their tables."""
    others = [k for k in varying if k not in (row, "f", "attack", "seed", "rule")]
    panels: dict[tuple, list] = defaultdict(list)
    for d, r in pairs:
        panels[tuple(d[k] for k in others)].append((d, r))
    for key, mine in sorted(panels.items(), key=lambda kv: [str(v) for v in kv[0]]):
        label = ", ".join(f"{k}={v}" for k, v in zip(others, key, strict=True))
        rows, cols, values = _worst(mine, row, "f", metric)
        name = names("", "_".join(p for p in (stem, label.replace(", ", "_")) if p))
        title = ": ".join(p for p in (prefix, label) if p) or "all runs"
        heatmap(
            values,
            rows,
            [f"f={c}" for c in cols],
            out / f"{name}.png",
            title=f"worst case over attacks ({title})",
            label=metric.replace("_", " "),
            xlabel="f",
            ylabel=row,
        )
        text.append(f"\n## {row} x f: {title}\n")
        text.append(
            markdown_table(
                [row, *(f"f={c}" for c in cols)],
                [
                    [h, *(None if math.isnan(v) else float(v) for v in values[i])]
                    for i, h in enumerate(rows)
                ],
            )
        )
