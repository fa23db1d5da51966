"""The ``neurons`` CLI sub-app (mounted as ``byzlearn neurons``), tested on its own Typer app."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from byzlearn.neurons.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "model.pt"
    res = runner.invoke(
        app, ["train", str(path), "--data", "synthetic", "--hidden", "12-8", "--epochs", "5"]
    )
    assert res.exit_code == 0, res.output
    assert "saved" in res.output and path.is_file()
    return path


@pytest.mark.slow
def test_analyze_prints_bounds_and_writes_figure(model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "fig"
    js = tmp_path / "a.json"
    res = runner.invoke(
        app,
        [
            "analyze",
            str(model_file),
            "--data",
            "synthetic",
            "--p",
            "0.01",
            "--epsilon",
            "0.1",
            "--n-samples",
            "40",
            "--reps",
            "100",
            "--max-f",
            "2",
            "--out",
            str(out),
            "--json",
            str(js),
        ],
    )
    assert res.exit_code == 0, res.output
    for text in (
        "crash FEP",
        "b4 (leave-one-out",
        "measured (Monte-Carlo)",
        "certificate (b4)",
        "certificate (rigorous)",
        "neurons_analysis.png",
    ):
        assert text in res.output
    assert (out / "neurons_analysis.png").stat().st_size > 1000
    data = json.loads(js.read_text())
    for row in data["per_layer"]:
        assert row["crash_worst"] <= row["crash_fep"] + 1e-6
        assert row["byzantine_worst"] <= row["byzantine_fep"] + 1e-6
    assert all(
        w <= b + 1e-6
        for w, b in zip(data["f_sweep"]["worst"], data["f_sweep"]["fep_tight"], strict=True)
    )
    assert data["network"][-1]["activation"] == "Softmax"


def test_analyze_logits_layer1(model_file: Path, tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        [
            "analyze",
            str(model_file),
            "--data",
            "synthetic",
            "--output",
            "logits",
            "--layer",
            "1",
            "--n-samples",
            "20",
            "--reps",
            "50",
            "--max-f",
            "1",
            "--out",
            str(tmp_path),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "hidden layer 1" in res.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--p", "2"], "--p"),
        (["--epsilon", "0"], "--epsilon"),
        (["--delta", "1"], "--delta"),
        (["--data", "mnist"], "unknown dataset"),
        (["--layer", "5"], "hidden layer index"),
        (["--output", "argmax"], "--output"),
    ],
)
def test_analyze_bad_arguments(model_file: Path, args: list[str], message: str) -> None:
    res = runner.invoke(app, ["analyze", str(model_file), "--data", "synthetic", *args])
    assert res.exit_code != 0
    assert message in res.output


def test_analyze_bad_model_files(tmp_path: Path) -> None:
    res = runner.invoke(app, ["analyze", str(tmp_path / "missing.pt")])
    assert res.exit_code != 0 and "no such file" in res.output
    sd = tmp_path / "sd.pt"
    torch.save(nn.Linear(2, 2).state_dict(), sd)
    res = runner.invoke(app, ["analyze", str(sd)])
    assert res.exit_code != 0 and "not a full nn.Module" in res.output
    conv = tmp_path / "conv.pt"
    torch.save(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 10)), conv)
    res = runner.invoke(app, ["analyze", str(conv)])
    assert res.exit_code != 0 and "Conv2d" in res.output
    res = runner.invoke(app, ["train", str(tmp_path / "m.pt"), "--hidden", "a-b"])
    assert res.exit_code != 0 and "--hidden" in res.output


def test_analyze_convolutional_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    conv = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.Sigmoid(), nn.Flatten(), nn.Linear(32, 4)
    )
    path = tmp_path / "conv.pt"
    torch.save(conv, path)
    args = [
        "analyze",
        str(path),
        "--data",
        "synthetic",
        "--n-samples",
        "10",
        "--reps",
        "20",
        "--max-f",
        "1",
        "--out",
        str(tmp_path),
    ]
    res = runner.invoke(app, args)
    assert res.exit_code != 0 and "input_shape" in res.output
    res = runner.invoke(app, [*args, "--input-shape", "1,4,4"])
    assert res.exit_code == 0, res.output
    assert "crash FEP" in res.output
    res = runner.invoke(app, [*args, "--input-shape", "1x4x4"])
    assert res.exit_code != 0 and "--input-shape" in res.output
