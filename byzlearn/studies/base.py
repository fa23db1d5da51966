"""What a study is, and how one runs: a packaged, resumable set of runs (and computations that
need no training), an analysis, and a report with the paper's claim and a verdict.

A :class:`Study` names its paper and states the paper's claim in one sentence. For a scale
(``tiny`` for smoke tests, ``small``: the CPU-friendly default on digits, ``paper``) it lists its
training runs (:meth:`Study.runs`: a label and a config each) and may compute results that need
no training (:meth:`Study.compute`, kept in ``results.json`` so that a rerun does not redo
them). :func:`run_study` trains what is not finished (each run in its own directory under
``OUT/runs``, by config hash: a killed study resumes, finished runs are loaded), then the
study's :meth:`Study.analyse` turns everything into a table, figures and a verdict, written to
``OUT/report.md``.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from byzlearn.experiments._warm import compiling_ahead
from byzlearn.experiments.config import Config, config_hash, parse_config
from byzlearn.experiments.runner import RunResult, run
from byzlearn.experiments.store import lock_directory, temporary_names, write_text_atomically
from byzlearn.registry import Registry

__all__ = ["SCALES", "STUDIES", "Analysis", "Study", "StudyRun", "run_study"]

SCALES = ("tiny", "small", "paper")


@dataclass
class StudyRun:
    """One training run of a study: what it varies (``label``), its config and, once run, its
    records and summary."""

    label: dict[str, Any]
    config: Config
    result: RunResult | None = None

    @property
    def summary(self) -> dict[str, Any]:
        return {} if self.result is None else self.result.summary

    def curve(self, key: str = "test_accuracy") -> tuple[list[int], list[float]]:
        """``(rounds, values)`` of the records holding ``key``."""
        records = [] if self.result is None else self.result.records
        pts = [(r["round"], r[key]) for r in records if r.get(key) is not None]
        return [p[0] for p in pts], [float(p[1]) for p in pts]


@dataclass
class Analysis:
    """What a study's analysis gives the report: a Markdown table, figures (file names under the
    output directory), the verdict (``reproduced``, ``not reproduced``, ``partly reproduced``)
    with its reason in numbers, and notes."""

    table: str
    figures: list[str]
    verdict: str
    reason: str
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Study:
    """A packaged reproduction (see the module docstring). Subclasses write :meth:`runs`,
    :meth:`analyse` and, when part of the study needs no training, :meth:`compute`."""

    name: str
    title: str
    reference: str
    claim: str

    def runs(self, scale: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """``(label, config mapping)`` of every training run at ``scale``."""
        return []

    def compute(self, scale: str) -> dict[str, Any]:
        """Results that need no training (plain JSON data)."""
        return {}

    def analyse(
        self, scale: str, runs: list[StudyRun], computed: dict[str, Any], out: Path
    ) -> Analysis:
        raise NotImplementedError


#: Studies by name.
STUDIES: Registry[Study] = Registry("study")


def _machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} torch thread(s)"
    )


class StudyDirError(ValueError):
    """A study directory that holds another study's, or another scale's, results."""


# the files a study writes at the top of its directory (besides its figures, ``*.png``)
_WRITTEN = ("study.json", "results.json", "results.json.tmp", "report.md")
# their temporary files (and the figures'), which a killed study leaves: removed once locked
_TEMPORARY = temporary_names(
    "|".join(re.escape(name) for name in _WRITTEN if not name.endswith(".tmp")) + r"|[^/]+\.png"
)


def _claim(out: Path, name: str, scale: str) -> None:
    """Make ``out`` the directory of study ``name`` at ``scale`` (``study.json``), or refuse
    (nothing written) when it already belongs to another study or scale: its report and
    results would be overwritten. Its runs could be shared (each lives under the hash of its
    config), its report cannot. A symbolic link in place of a file the study writes (its
    record, results, report or a figure) is refused too: a folder received from someone else
    could point one at a file outside it."""
    if out.is_dir():
        for path in sorted(out.iterdir()):
            if path.is_symlink() and (path.name in _WRITTEN or path.suffix == ".png"):
                raise StudyDirError(
                    f"{path}: is a symbolic link; byzlearn never writes through links (it "
                    "would change a file outside the study directory): remove the link"
                )
    owner = out / "study.json"
    for path in (owner, out / "results.json"):  # results.json: folders made before study.json
        if not path.is_file():
            continue
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            raise StudyDirError(f"{path}: unreadable; choose another --out") from None
        if not isinstance(saved, dict):
            raise StudyDirError(f"{path}: not a study's record; choose another --out")
        theirs = (saved.get("study"), saved.get("scale"))
        if theirs != (name, scale):
            raise StudyDirError(
                f"{out} holds the study {theirs[0]!r} at scale {theirs[1]!r}; choose another "
                f"--out for {name!r} at scale {scale!r} (its report would overwrite that one)"
            )
    if not owner.is_file():
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomically(owner, json.dumps({"study": name, "scale": scale}))


def _computed(study: Study, scale: str, out: Path) -> dict[str, Any]:
    path = out / "results.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            saved = None
        # the folder's study and scale were checked by _claim before any run; results that
        # are not a mapping (a damaged file) are computed again
        if (
            isinstance(saved, dict)
            and saved.get("scale") == scale
            and isinstance(saved.get("results"), dict)
        ):
            return dict(saved["results"])
    start = time.perf_counter()
    results = study.compute(scale)
    results["_seconds"] = time.perf_counter() - start
    saved = {"study": study.name, "scale": scale, "results": results}
    write_text_atomically(path, json.dumps(saved))
    return results


def run_study(
    name: str,
    scale: str = "small",
    out: str | Path | None = None,
    *,
    jobs: int = 1,
    on_run: Callable[[int, int, StudyRun, bool], None] | None = None,
) -> tuple[Path, Analysis]:
    """Run the study ``name`` at ``scale`` into ``out`` (default ``studies/NAME``); return the
    report's path and the analysis. Finished runs are loaded, killed ones resume. One study
    works in ``out`` at a time: a folder another live process works in raises
    :class:`~byzlearn.experiments.store.RunLockedError` (one line naming it), before anything is
    written."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r} (known: {', '.join(SCALES)})")
    if isinstance(jobs, bool) or not isinstance(jobs, int):
        raise TypeError(f"jobs must be an int >= 1, got {jobs!r}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    study = STUDIES.get(name)
    out = Path(out) if out is not None else Path("studies") / name
    # one study process at a time in a folder (a run directory's lock): another live one is a
    # RunLockedError naming it, the lock of a killed one is taken over
    with lock_directory(out, _TEMPORARY):
        _claim(out, study.name, scale)
        return _run_claimed(study, scale, out, jobs, on_run)


def _run_claimed(
    study: Study,
    scale: str,
    out: Path,
    jobs: int,
    on_run: Callable[[int, int, StudyRun, bool], None] | None,
) -> tuple[Path, Analysis]:
    """:func:`run_study` in the folder ``out``, locked and claimed."""
    runs = list(study.runs(scale))
    # checking a config compiles its rule's kernels on a fresh install: a second process
    # compiles the later runs' meanwhile (byzlearn.experiments._warm)
    with compiling_ahead([data for _, data in runs]):
        planned = [StudyRun(label, parse_config(data)) for label, data in runs]
    if jobs > 1 and planned:  # train what is not finished, N at a time (the sweep's pool)
        from byzlearn.experiments.sweep import SweepPlan, run_sweep

        def started(i: int, config: Config, finished: bool) -> None:
            if on_run is not None:
                on_run(i, len(planned), planned[i], finished)

        plan = SweepPlan([p.config for p in planned], [], [p.label for p in planned])
        run_sweep(plan, out, jobs=jobs, on_start=started)
    for i, item in enumerate(planned):
        directory = out / "runs" / config_hash(item.config)[:16]
        finished = (directory / "summary.json").is_file()
        if on_run is not None and jobs == 1:
            on_run(i, len(planned), item, finished)
        item.result = run(item.config, directory)  # finished runs are loaded
    computed = _computed(study, scale, out)
    analysis = study.analyse(scale, planned, computed, out)
    # what producing the results took: the runs' own training time and the computations',
    # whether done now or loaded from an earlier invocation
    work = sum(float(p.summary.get("seconds") or 0.0) for p in planned)
    work += float(computed.get("_seconds", 0.0))
    report = out / "report.md"
    write_text_atomically(report, _report(study, scale, analysis, work, planned))
    return report, analysis


def _report(
    study: Study, scale: str, analysis: Analysis, seconds: float, planned: list[StudyRun]
) -> str:
    runs = len(planned)
    lines = [
        f"# {study.title}",
        "",
        f"Reference: {study.reference}",
        "",
        f"**The paper's claim.** {study.claim}",
        "",
        f"**Verdict: {analysis.verdict}.** {analysis.reason}",
        "",
        f"Produced by `byzlearn study {study.name} --scale {scale} --out "
        f"docs/studies/{study.name}` ({runs} training runs; {seconds:.0f} s of training and "
        f"computation on {_machine()}; a rerun loads finished runs instead of training them).",
        "",
        analysis.table,
        "",
    ]
    datasets = sorted({p.config.dataset.name for p in planned})
    if datasets:
        lines += [f"Dataset of the training runs: {', '.join(datasets)}.", ""]
    lines += [f"![{fig}]({fig})" for fig in analysis.figures]
    if analysis.notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in analysis.notes]
    return "\n".join(lines) + "\n"
