"""Verdicts of the studies' analyses on made-up results (mutation-testing findings).

The end-to-end study tests train at the tiny scale, where any verdict is accepted: they cannot
notice a flipped comparison, a moved threshold or a wrong run read by an analysis. Here each
analysis gets runs with chosen final accuracies (no training), just inside and just outside
each of its thresholds, and must give the verdict the claim's rule says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from byzlearn.experiments.runner import RunResult
from byzlearn.studies import STUDIES
from byzlearn.studies.base import StudyRun


def _run(label: dict[str, Any], final: float, records: list[dict[str, Any]] | None = None):
    """A finished run of ``label`` whose final accuracy is ``final``."""
    records = records if records is not None else [{"round": 0, "test_accuracy": final}]
    result = RunResult(config=None, records=records, summary={"final_accuracy": final})  # type: ignore[arg-type]
    return StudyRun(dict(label), None, result)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- krum-2017
_KRUM_GOOD = {
    ("average", "none"): 0.90,
    ("krum", "none"): 0.85,
    ("multi_krum", "none"): 0.90,
    ("average", "gaussian"): 0.10,
    ("average", "omniscient"): 0.10,
    ("krum", "gaussian"): 0.85,
    ("krum", "omniscient"): 0.85,
    ("multi_krum", "gaussian"): 0.90,
    ("multi_krum", "omniscient"): 0.90,
}


def _krum(tmp_path: Path, **changes: float) -> str:
    finals = dict(_KRUM_GOOD)
    for key, value in changes.items():
        rule, attack = key.rsplit("_", 1)
        finals[(rule, attack)] = value
    runs = [
        _run({"rule": rule, "attack": attack, "seed": 0}, acc)
        for (rule, attack), acc in finals.items()
    ]
    return STUDIES.get("krum-2017").analyse("tiny", runs, {}, tmp_path).verdict


@pytest.mark.parametrize(
    ("changes", "verdict"),
    [
        ({}, "reproduced"),
        # averaging must lose >= 15 points under both attacks (0.90 - 0.15 = 0.75)
        ({"average_gaussian": 0.76}, "partly reproduced"),
        ({"average_omniscient": 0.76}, "partly reproduced"),
        ({"average_gaussian": 0.74, "average_omniscient": 0.74}, "reproduced"),
        # Krum must stay within 5 points of its unattacked run under both (0.85 - 0.05)
        ({"krum_gaussian": 0.79}, "partly reproduced"),
        ({"krum_omniscient": 0.79}, "partly reproduced"),
        ({"krum_gaussian": 0.81, "krum_omniscient": 0.81}, "reproduced"),
        # the cost: Krum no better than averaging unattacked, Multi-Krum within 0.005 of Krum
        ({"krum_none": 0.91, "krum_gaussian": 0.91, "krum_omniscient": 0.91}, "partly reproduced"),
        ({"multi_krum_none": 0.84}, "partly reproduced"),
        ({"multi_krum_none": 0.846}, "reproduced"),
        # none of the three
        (
            {
                "average_gaussian": 0.9,
                "average_omniscient": 0.9,
                "krum_gaussian": 0.1,
                "krum_omniscient": 0.1,
                "multi_krum_none": 0.5,
            },
            "not reproduced",
        ),
    ],
)
def test_krum_2017_verdict_follows_its_three_parts(
    tmp_path: Path, changes: dict[str, float], verdict: str
) -> None:
    assert _krum(tmp_path, **changes) == verdict


def test_krum_2017_table_reads_each_rule_and_attack(tmp_path: Path) -> None:
    """Each cell is the mean final accuracy over the seeds of its rule and attack."""
    finals = {key: 0.1 + 0.05 * i for i, key in enumerate(_KRUM_GOOD)}
    runs = [_run({"rule": r, "attack": a, "seed": 0}, acc) for (r, a), acc in finals.items()]
    runs += [_run({"rule": r, "attack": a, "seed": 1}, acc + 0.1) for (r, a), acc in finals.items()]
    table = STUDIES.get("krum-2017").analyse("tiny", runs, {}, tmp_path).table
    cells = {
        line.split("|")[1].strip(): [float(c) for c in line.split("|")[2:-1]]
        for line in table.splitlines()[2:]
    }
    attacks = ("none", "gaussian", "omniscient")
    for rule in ("average", "krum", "multi_krum"):
        expected = [finals[(rule, a)] + 0.05 for a in attacks]
        assert cells[rule] == pytest.approx(expected, abs=5e-4)


# ---------------------------------------------------------------------------- kardam-2018
def _kardam(tmp_path: Path, plain: float, kardam: float) -> str:
    runs = [
        _run({"setup": "async_sgd, no attack", "seed": 0}, 0.9),
        _run({"setup": "async_sgd", "seed": 0}, plain),
        _run({"setup": "kardam", "seed": 0}, kardam),
    ]
    return STUDIES.get("kardam-2018").analyse("tiny", runs, {}, tmp_path).verdict


@pytest.mark.parametrize(
    ("plain", "kardam", "verdict"),
    [
        (0.1, 0.9, "reproduced"),
        (0.49, 0.8, "reproduced"),  # plain < 0.5 and Kardam >= 0.8 (inclusive)
        (0.5, 0.9, "not reproduced"),
        (0.1, 0.79, "not reproduced"),
        (0.9, 0.1, "not reproduced"),  # the setups swapped
    ],
)
def test_kardam_2018_verdict(tmp_path: Path, plain: float, kardam: float, verdict: str) -> None:
    assert _kardam(tmp_path, plain, kardam) == verdict


# ---------------------------------------------------------------------------- servers-2020
_SETUPS = ("vanilla", "trusted server (MDA)", "byzsgd", "liubei", "single Byzantine server")


def _servers(tmp_path: Path, **finals: float) -> str:
    acc = {"vanilla": 0.9, "trusted server (MDA)": 0.9, "byzsgd": 0.88, "liubei": 0.88}
    acc["single Byzantine server"] = 0.1
    acc.update({k.replace("_", " "): v for k, v in finals.items()})
    runs = [_run({"setup": s, "seed": 0}, acc[s]) for s in _SETUPS]
    return STUDIES.get("servers-2020").analyse("tiny", runs, {}, tmp_path).verdict


@pytest.mark.parametrize(
    ("finals", "verdict"),
    [
        ({}, "reproduced"),
        ({"byzsgd": 0.84}, "not reproduced"),  # more than 5 points below the trusted server
        ({"liubei": 0.84}, "not reproduced"),
        ({"byzsgd": 0.86, "liubei": 0.86}, "reproduced"),
        ({"single Byzantine server": 0.3}, "not reproduced"),  # must be below 0.3
        ({"single Byzantine server": 0.29}, "reproduced"),
    ],
)
def test_servers_2020_verdict(tmp_path: Path, finals: dict[str, float], verdict: str) -> None:
    acc = {k.replace(" ", "_"): v for k, v in finals.items()}
    assert _servers(tmp_path, **acc) == verdict


# ---------------------------------------------------------------------------- leeway-2018
def _leeway(tmp_path: Path, krum: dict[int, float], bulyan: dict[int, float]) -> str:
    rows = [
        {"d": d, "draw": 0, "delta": 1.0, "krum": krum[d], "geometric_median": 1.0}
        | {"median": 0.1, "bulyan": bulyan[d]}
        for d in krum
    ]
    study = STUDIES.get("leeway-2018")
    return study.analyse("tiny", [], {"rows": rows}, tmp_path).verdict


@pytest.mark.parametrize(
    ("krum", "bulyan", "verdict"),
    [
        # d grows 100x, sqrt(d) 10x: Krum's deviation must grow at least half as fast (5x)
        ({100: 1.0, 10_000: 10.0}, {100: 0.5, 10_000: 0.5}, "reproduced"),
        ({100: 1.0, 10_000: 5.0}, {100: 0.5, 10_000: 0.5}, "reproduced"),
        ({100: 1.0, 10_000: 4.9}, {100: 0.5, 10_000: 0.5}, "not reproduced"),
        ({100: 10.0, 10_000: 1.0}, {100: 0.5, 10_000: 0.5}, "not reproduced"),
        # Bulyan must stay below one sigma at every d
        ({100: 1.0, 10_000: 10.0}, {100: 0.5, 10_000: 1.0}, "not reproduced"),
        ({100: 1.0, 10_000: 10.0}, {100: 1.0, 10_000: 0.5}, "not reproduced"),
    ],
)
def test_leeway_2018_verdict(
    tmp_path: Path, krum: dict[int, float], bulyan: dict[int, float], verdict: str
) -> None:
    assert _leeway(tmp_path, krum, bulyan) == verdict


# ---------------------------------------------------------------------------- strategyproof-2023
def _strategyproof(tmp_path: Path, gm: dict[int, float], skewed: dict[int, float]) -> str:
    """Relative gains ``(truthful - strategic) / truthful`` per n (truthful distance 2: the
    absolute gains are twice the relative ones)."""
    rows = []
    for n in gm:
        for rule, g in (
            ("geometric_median", gm[n]),
            ("skewed_geometric_median", skewed[n]),
            ("coordinate-wise median", 0.0),
        ):
            rows.append({"n": n, "rule": rule, "truthful": 2.0, "strategic": 2.0 * (1.0 - g)})
    rows.append({"n": 5, "rule": "geometric_median", "truthful": 0.0, "strategic": -5.0})
    study = STUDIES.get("strategyproof-2023")
    return study.analyse("tiny", [], {"rows": rows}, tmp_path).verdict


@pytest.mark.parametrize(
    ("gm", "skewed", "verdict"),
    [
        ({5: 0.1, 9: 0.05}, {5: 0.02, 9: 0.01}, "reproduced"),
        # not strategyproof: a gain above 1e-3 at the smallest n
        ({5: 0.0009, 9: 0.0001}, {5: 0.0, 9: 0.0}, "partly reproduced"),
        # ... read at the smallest n, not the largest
        ({5: 0.1, 9: 0.0005}, {5: 0.02, 9: 0.0001}, "reproduced"),
        # the gain must shrink from the smallest to the largest n
        ({5: 0.1, 9: 0.1}, {5: 0.02, 9: 0.01}, "partly reproduced"),
        # skewing must lower the mean gain
        ({5: 0.1, 9: 0.05}, {5: 0.1, 9: 0.05}, "partly reproduced"),
        ({5: 0.0, 9: 0.0}, {5: 0.1, 9: 0.1}, "not reproduced"),
    ],
)
def test_strategyproof_2023_verdict(
    tmp_path: Path, gm: dict[int, float], skewed: dict[int, float], verdict: str
) -> None:
    assert _strategyproof(tmp_path, gm, skewed) == verdict


# ---------------------------------------------------------------------------- heterogeneity-2023
def _heterogeneity(tmp_path: Path, plain: float, nnm: float) -> str:
    study = STUDIES.get("heterogeneity-2023")
    runs = []
    for part in study.PARTITIONS:
        runs.append(_run({"method": "average", "attack": "none", "partition": part}, 0.9))
        for attack in study.ATTACKS:
            for rule in study.RULES:
                for method, acc in ((rule, plain), (f"nnm+{rule}", nnm)):
                    label = {"method": method, "attack": attack, "partition": part}
                    # the worst case is the ALIE run; the others end equal at 0.9
                    runs.append(_run(label, acc if attack == "alie" else 0.9))
    return study.analyse("tiny", runs, {}, tmp_path).verdict


@pytest.mark.parametrize(
    ("plain", "nnm", "verdict"),
    [
        (0.4, 0.45, "reproduced"),
        (0.4, 0.425, "reproduced"),  # a mean gain above 0.02
        (0.4, 0.415, "not reproduced"),
        (0.45, 0.4, "not reproduced"),
    ],
)
def test_heterogeneity_2023_verdict(tmp_path: Path, plain: float, nnm: float, verdict: str) -> None:
    assert _heterogeneity(tmp_path, plain, nnm) == verdict


# ---------------------------------------------------------------------------- planned runs
@pytest.mark.parametrize("scale", ["tiny", "small", "paper"])
@pytest.mark.parametrize("name", ["krum-2017", "servers-2020", "kardam-2018", "momentum-2021"])
def test_planned_runs_are_distinct_and_parse(name: str, scale: str) -> None:
    from byzlearn.experiments.config import config_hash, parse_config

    planned = STUDIES.get(name).runs(scale)
    seeds = {"tiny": 1, "small": 1, "paper": 3}[scale]
    labels = [tuple(sorted(label.items())) for label, _ in planned]
    configs = [parse_config(data) for _, data in planned]
    assert len(set(labels)) == len(planned) and len(planned) % seeds == 0
    assert len({config_hash(c) for c in configs}) == len(planned)  # no run trained twice
    assert sorted({label["seed"] for label, _ in planned}) == list(range(seeds))
    for label, data in planned:
        assert data["seed"] == label["seed"]
        if label.get("attack") == "none" or label.get("setup") in ("vanilla",):
            assert data.get("num_byzantine", data.get("f")) == 0, label


def test_krum_2017_plans_every_rule_under_every_attack() -> None:
    planned = STUDIES.get("krum-2017").runs("paper")
    assert len(planned) == 3 * 3 * 3
    for label, data in planned:
        assert data["rule"]["name"] == label["rule"] and data["n"] == 15 and data["f"] == 4
        attack = {"none": "none", "gaussian": "gaussian", "omniscient": "ipm"}[label["attack"]]
        assert data["attack"]["name"] == attack
        assert data["num_byzantine"] == (0 if attack == "none" else 4)


# ---------------------------------------------------------------------------- momentum-2021
def _momentum(tmp_path: Path, server: list[float], worker: list[float]) -> str:
    """Max accuracies of the 8 (rule, attack) pairs at f = 5 (tiny), baseline 0.9."""
    study = STUDIES.get("momentum-2021")
    pairs = [(rule, attack) for rule in study.RULES for attack in study.ATTACKS]
    assert len(pairs) == len(server) == len(worker) == 8

    def best(label: dict[str, Any], acc: float) -> StudyRun:
        run = _run({**label, "seed": 0}, acc)
        assert run.result is not None
        run.result.summary["best_accuracy"] = acc
        return run

    runs = [best({"rule": "average", "attack": "none", "f": 0, "at": "server"}, 0.9)]
    for (rule, attack), s, w in zip(pairs, server, worker, strict=True):
        runs.append(best({"rule": rule, "attack": attack, "f": 5, "at": "server"}, s))
        runs.append(best({"rule": rule, "attack": attack, "f": 5, "at": "worker"}, w))
    return study.analyse("tiny", runs, {}, tmp_path).verdict


@pytest.mark.parametrize(
    ("server", "worker", "verdict"),
    [
        # hurt: server <= 0.9 - 0.2; recovered: worker >= server + 0.2; reproduced: share > 0.6
        ([0.5] * 8, [0.7] * 8, "reproduced"),
        ([0.5] * 8, [0.69] * 8, "not reproduced"),
        ([0.7] * 8, [0.9] * 8, "reproduced"),  # 0.7 <= 0.7: hurt
        ([0.71] * 8, [0.95] * 8, "not reproduced"),  # never hurt
        ([0.5] * 8, [0.8] * 5 + [0.5] * 3, "reproduced"),  # 5 of 8 > 0.6
        ([0.5] * 8, [0.8] * 4 + [0.5] * 4, "not reproduced"),  # 4 of 8
        ([0.5] * 4 + [0.8] * 4, [0.8] * 3 + [0.5] + [0.2] * 4, "reproduced"),  # 3 of 4 hurt
    ],
)
def test_momentum_2021_verdict(
    tmp_path: Path, server: list[float], worker: list[float], verdict: str
) -> None:
    assert _momentum(tmp_path, server, worker) == verdict


# ---------------------------------------------------------------------------- the report
def test_the_report_holds_every_part_of_the_analysis() -> None:
    from byzlearn.experiments.config import parse_config
    from byzlearn.studies.base import Analysis, _report

    study = STUDIES.get("kardam-2018")
    table, notes = "| a |\n| - |\n| 1 |", ["first note", "second note"]
    reason = "Because 0.5 < 0.8."
    analysis = Analysis(table, ["one.png", "two.png"], "partly reproduced", reason, notes)
    planned = [StudyRun({"seed": 0}, parse_config(data)) for _, data in study.runs("tiny")]
    text = _report(study, "tiny", analysis, 42.4, planned)
    assert text.startswith(f"# {study.title}\n") and f"Reference: {study.reference}" in text
    assert f"**The paper's claim.** {study.claim}" in text
    assert "**Verdict: partly reproduced.** Because 0.5 < 0.8." in text
    command = f"--scale tiny --out docs/studies/{study.name}` ({len(planned)} training runs; 42 s"
    assert command in text
    assert table in text and "Dataset of the training runs: digits." in text
    assert "![one.png](one.png)\n![two.png](two.png)" in text
    assert text.endswith("Notes:\n\n- first note\n- second note\n")


def test_cli_refuses_an_out_that_is_a_file_and_leaves_it(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from byzlearn.cli import app

    target = tmp_path / "notes.txt"
    target.write_text("precious")
    res = CliRunner().invoke(app, ["study", "krum-2017", "--scale", "tiny", "--out", str(target)])
    assert res.exit_code == 2 and "is a file, not a study directory" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert target.read_text() == "precious" and sorted(tmp_path.iterdir()) == [target]
