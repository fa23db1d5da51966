"""Every study runs at a tiny scale, resumes, and writes its report and figures."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from byzlearn.cli import app
from byzlearn.studies import SCALES, STUDIES, names, run_study
from tests.resume import KilledError


@pytest.mark.parametrize("name", names())
def test_study_runs_resumes_and_reports(tmp_path: Path, name: str) -> None:
    seen: list[bool] = []

    def kill_second(i: int, total: int, item, finished: bool) -> None:
        seen.append(finished)
        if i == 1:
            raise KilledError

    out = tmp_path / name
    training = len(STUDIES.get(name).runs("tiny")) > 1
    if training:
        with pytest.raises(KilledError):
            run_study(name, "tiny", out, on_run=kill_second)
    states: list[bool] = []
    report, analysis = run_study(name, "tiny", out, on_run=lambda i, t, item, f: states.append(f))
    if training:  # the finished run is loaded, not retrained
        assert states[0] is True and not any(states[1:])
    computed = out / "results.json"
    stamp = computed.stat().st_mtime_ns
    text = report.read_text()
    assert "The paper's claim." in text and f"**Verdict: {analysis.verdict}.**" in text
    assert analysis.verdict in ("reproduced", "not reproduced", "partly reproduced")
    for figure in analysis.figures:
        assert (out / figure).stat().st_size > 1000 and f"]({figure})" in text
    again: list[bool] = []
    run_study(name, "tiny", out, on_run=lambda i, t, item, f: again.append(f))
    assert all(again)  # everything loaded
    assert computed.stat().st_mtime_ns == stamp  # what needs no training is not recomputed


def test_cli_lists_and_refuses_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["study", "--list"])
    assert listed.exit_code == 0 and all(n in listed.output for n in names())
    bad = runner.invoke(app, ["study", "krum-1999"])
    assert bad.exit_code == 2 and "unknown study 'krum-1999'" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    scale = runner.invoke(app, ["study", "krum-2017", "--scale", "huge", "--out", str(tmp_path)])
    assert scale.exit_code == 2 and "--scale: expected one of" in scale.output
    assert SCALES == ("tiny", "small", "paper")


def test_jobs_train_in_parallel_with_the_same_results(tmp_path: Path) -> None:
    _, one = run_study("krum-2017", "tiny", tmp_path / "one")
    _, two = run_study("krum-2017", "tiny", tmp_path / "two", jobs=2)
    assert one.table == two.table and one.verdict == two.verdict


def test_paper_scale_trains_on_mnist_when_its_files_are_there(tmp_path: Path, monkeypatch) -> None:
    from byzlearn.studies.papers import paper_dataset

    monkeypatch.setenv("BYZLEARN_DATA", str(tmp_path))
    assert paper_dataset() == {"name": "digits"}
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"")
    assert paper_dataset() == {"name": "mnist", "root": str(tmp_path)}


def test_a_study_folder_is_never_taken_over_by_another_study_or_scale(tmp_path: Path) -> None:
    from byzlearn.studies.base import StudyDirError, _claim

    _claim(tmp_path, "krum-2017", "tiny")
    _claim(tmp_path, "krum-2017", "tiny")  # the same study again: its own folder
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for name, scale in (("leeway-2018", "tiny"), ("krum-2017", "small")):
        with pytest.raises(StudyDirError, match="holds the study 'krum-2017' at scale 'tiny'"):
            _claim(tmp_path, name, scale)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    older = tmp_path / "older"  # a folder from before study.json: its results.json decides
    older.mkdir()
    (older / "results.json").write_text('{"study": "krum-2017", "scale": "tiny", "results": {}}')
    with pytest.raises(StudyDirError):
        _claim(older, "leeway-2018", "tiny")
    res = CliRunner().invoke(app, ["study", "leeway-2018", "--scale", "tiny", "--out", str(older)])
    assert res.exit_code == 2 and "holds the study 'krum-2017'" in res.output


@pytest.mark.parametrize("name", ["study.json", "results.json", "report.md", "fep2017_bound.png"])
def test_a_link_in_place_of_a_file_the_study_writes_is_refused(tmp_path: Path, name: str) -> None:
    """A study folder received from someone else could point its files anywhere: the study
    would have written through the link (a dangling study.json, a report.md over a file)."""
    victim = tmp_path / "victim.md"
    victim.write_text("precious")
    out = tmp_path / "study"
    out.mkdir()
    (out / name).symlink_to(victim if name != "study.json" else tmp_path / "outside.json")
    res = CliRunner().invoke(app, ["study", "fep-2017", "--scale", "tiny", "--out", str(out)])
    assert res.exit_code == 2 and "is a symbolic link" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert victim.read_text() == "precious" and not (tmp_path / "outside.json").exists()
    assert [p.name for p in out.iterdir()] == [name]


def test_damaged_results_are_computed_again_and_jobs_must_be_an_int(tmp_path: Path) -> None:
    import json

    out = tmp_path / "fep"
    out.mkdir()
    saved = {"study": "fep-2017", "scale": "tiny", "results": [1, 2]}  # was a TypeError
    (out / "results.json").write_text(json.dumps(saved))
    report, _ = run_study("fep-2017", "tiny", out)
    assert report.is_file()
    assert isinstance(json.loads((out / "results.json").read_text())["results"], dict)
    for jobs in (True, 1.5):
        with pytest.raises(TypeError, match="jobs must be an int >= 1"):
            run_study("fep-2017", "tiny", out, jobs=jobs)  # type: ignore[arg-type]


def test_a_report_that_fails_to_be_written_leaves_the_previous_one(
    tmp_path: Path, monkeypatch
) -> None:
    from byzlearn.studies import base

    out = tmp_path / "fep"
    report, _ = run_study("fep-2017", "tiny", out)
    before = report.read_text()
    # a text that fails half-way through being written (a lone surrogate cannot be encoded):
    # written in place, the report was emptied first
    monkeypatch.setattr(base, "_report", lambda *a, **k: "# partial report \ud800")
    with pytest.raises(UnicodeEncodeError):
        run_study("fep-2017", "tiny", out)
    assert report.read_text() == before  # written whole or not at all
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
