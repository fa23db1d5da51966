"""The ``neurons`` CLI sub-app (mounted as ``byzlearn neurons``), tested on its own Typer app."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from byzlearn.neurons.cli import app

runner = CliRunner()


def assert_one_line_error(res, *needles: str) -> None:
    """A bad input: exit code 2, one line ``Error: ...`` naming the problem, no traceback."""
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit), repr(res.exception)  # not a crash
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert "Traceback" not in res.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "model.pt"
    res = runner.invoke(
        app, ["train", str(path), "--data", "synthetic", "--hidden", "12-8", "--epochs", "5"]
    )
    assert res.exit_code == 0, res.output
    assert "saved" in res.output and path.is_file()
    assert "--hidden 12-8" in res.output  # the command that analyses it
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
            "--hidden",
            "12-8",
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
            "--hidden",
            "12-8",
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
        (["--layer", "5"], "--layer: hidden layer index"),
        (["--layer", "-1"], "--layer"),
        (["--output", "argmax"], "--output"),
        (["--reps", "1"], "--reps"),
        (["--reps", "many"], "--reps"),
        (["--n-samples", "0"], "--n-samples"),
        (["--C", "-1"], "--C"),
        (["--bogus"], "--bogus"),
        (["--arch", "transformer"], "unknown architecture 'transformer'"),
        (["--arch", "models.cnn"], "--arch: cannot build models.cnn"),
        (["--activation", "gelu"], "--activation"),
        (["--activation", "scaled_sigmoid", "--K", "0"], "--K"),
        (["--hidden", "a-b"], "--hidden"),
        (["--hidden", "0"], "--hidden"),
        (["--input-shape", "1x4x4"], "--input-shape"),
        (["--input-shape", "1,4,5"], "--input-shape"),
    ],
)
def test_analyze_bad_arguments(model_file: Path, args: list[str], message: str) -> None:
    res = runner.invoke(
        app, ["analyze", str(model_file), "--hidden", "12-8", "--data", "synthetic", *args]
    )
    assert_one_line_error(res, message)


def test_analyze_convolutional_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    conv = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.Sigmoid(), nn.Flatten(), nn.Linear(32, 4)
    )
    path = tmp_path / "conv.pt"
    torch.save(conv, path)  # a whole pickled module: readable only with --unsafe-pickle
    args = [
        "analyze",
        str(path),
        "--unsafe-pickle",
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
    assert "runs code from the file" in res.output  # the opt-in says what it did
    res = runner.invoke(app, [*args, "--input-shape", "1x4x4"])
    assert res.exit_code == 2 and "--input-shape" in res.output


# --- model files: weights only, read without unpickling code -------------------------------
SYNTH = ["--data", "synthetic", "--n-samples", "10", "--reps", "20", "--max-f", "1"]


def _analyze(path: Path, *args: str, tmp: Path) -> Any:
    return runner.invoke(
        app, ["analyze", str(path), "--hidden", "12-8", *SYNTH, "--out", str(tmp), *args]
    )


class _Payload:
    """Unpickling this object creates ``marker``: a stand-in for code run by a pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


def _bad_file(kind: str, tmp: Path, good: Path) -> Path:
    """A bad MODEL file of the given kind (the name says what it is)."""
    path = tmp / f"{kind}.pt"
    raw = good.read_bytes()
    if kind == "missing":
        return path
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "truncated_legacy":
        torch.save(torch.load(good), path, _use_new_zipfile_serialization=False)
        legacy = path.read_bytes()
        path.write_bytes(legacy[: len(legacy) // 2])
    elif kind == "text":
        path.write_text("not a model\n")
    elif kind == "list":
        torch.save([torch.ones(2)], path)
    elif kind == "not_tensors":
        torch.save({"0.weight": 1.0}, path)
    elif kind == "empty_dict":
        torch.save({}, path)
    elif kind == "whole_module":
        torch.save(nn.Sequential(nn.Linear(16, 12), nn.Sigmoid(), nn.Linear(12, 4)), path)
    elif kind == "other_architecture":
        torch.save(nn.Linear(2, 2).state_dict(), path)
    elif kind == "nan_weights":
        state = torch.load(good)
        state["0.weight"][0, 0] = math.nan
        torch.save(state, path)
    elif kind == "integer_weights":
        state = torch.load(good)
        state["0.weight"] = state["0.weight"].long()
        torch.save(state, path)
    else:  # pragma: no cover
        raise AssertionError(kind)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "no such file"),
        ("directory", "is a directory"),
        ("empty", "is empty (0 bytes)"),
        ("random", "not a PyTorch weights file"),
        ("truncated", "truncated or corrupt"),
        ("truncated_legacy", "truncated"),
        ("text", "not a PyTorch weights file"),
        ("list", "holds a list, not a state dict"),
        ("not_tensors", "not a tensor"),
        ("empty_dict", "empty state dict"),
        ("whole_module", "pickled Python objects"),
        ("other_architecture", "does not match the architecture"),
        ("nan_weights", "non-finite"),
        ("integer_weights", "expected floating point"),
    ],
)
def test_analyze_bad_model_file_is_one_line(
    model_file: Path, tmp_path: Path, kind: str, message: str
) -> None:
    path = _bad_file(kind, tmp_path, model_file)
    res = _analyze(path, tmp=tmp_path)
    assert_one_line_error(res, "MODEL", path.name, message)


def test_mismatch_names_the_differing_shapes(model_file: Path, tmp_path: Path) -> None:
    res = _analyze(model_file, "--hidden", "12-9", tmp=tmp_path)  # trained as 12-8
    assert_one_line_error(res, "2.weight is [8, 12] in the file, [9, 12] in the architecture")
    res = _analyze(model_file, "--classes", "3", tmp=tmp_path)
    assert_one_line_error(res, "4.bias is [4] in the file, [3] in the architecture")


def test_safe_loading_never_runs_code_from_the_file(tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    torch.save({"0.weight": _Payload(marker)}, path)
    res = _analyze(path, tmp=tmp_path)
    assert_one_line_error(res, "pickled Python objects", "--unsafe-pickle")
    assert not marker.exists()
    # the explicit opt-in does unpickle (and so runs the file's code), as its name says
    res = _analyze(path, "--unsafe-pickle", tmp=tmp_path)
    assert marker.exists()
    assert_one_line_error(res, "holds a dict, not a pickled nn.Module")


def test_state_dict_under_a_checkpoint_key_and_reference_models(tmp_path: Path) -> None:
    from byzlearn.models import build_model

    torch.manual_seed(0)
    mlp = build_model("mlp", (16,), 4, hidden=(10,))
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": mlp.state_dict(), "epoch": 3}, path)
    res = runner.invoke(
        app, ["analyze", str(path), "--arch", "models.mlp", "--hidden", "10", *SYNTH,
              "--out", str(tmp_path)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "crash FEP" in res.output
    # an architecture the analysis cannot handle: one line naming the layer
    cnn = build_model("cnn", (1, 4, 4), 4, channels=(2, 2))
    torch.save(cnn.state_dict(), path)
    args = ["analyze", str(path), "--arch", "models.cnn", "--input-shape", "1,4,4", *SYNTH]
    res = runner.invoke(app, [*args, "--out", str(tmp_path)])
    # the reference CNN is built with its default channels (16, 32): the file does not fit
    assert_one_line_error(res, "does not match the architecture")
    torch.save(build_model("cnn", (1, 4, 4), 4).state_dict(), path)
    res = runner.invoke(app, [*args, "--out", str(tmp_path)])
    assert_one_line_error(res, "cannot be analysed", "(CNN)")


def test_safetensors_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    path = tmp_path / "m.safetensors"
    res = runner.invoke(
        app, ["train", str(path), "--data", "synthetic", "--hidden", "6", "--epochs", "2"]
    )
    assert res.exit_code == 0, res.output
    assert path.read_bytes()[8:9] == b"{"  # a safetensors header, not a pickle
    res = runner.invoke(
        app, ["analyze", str(path), "--hidden", "6", *SYNTH, "--out", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    # detected by its header whatever the suffix
    other = tmp_path / "m.bin"
    other.write_bytes(path.read_bytes())
    res = runner.invoke(
        app, ["analyze", str(other), "--hidden", "6", *SYNTH, "--out", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    for cut in (len(path.read_bytes()) - 7, 20, 4):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(path.read_bytes()[:cut])
        res = _analyze(bad, tmp=tmp_path)
        assert_one_line_error(res, bad.name, "not a valid safetensors file")


def test_safetensors_without_the_optional_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import safetensors -> ImportError
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + b" " * 14)
    assert_one_line_error(_analyze(path, tmp=tmp_path), "optional 'safetensors' package")
    res = runner.invoke(
        app, ["train", str(path), "--data", "synthetic", "--epochs", "1", "--overwrite"]
    )
    assert_one_line_error(res, "optional 'safetensors' package")


def test_saved_weights_load_with_weights_only(model_file: Path) -> None:
    state = torch.load(model_file, weights_only=True)
    assert set(state) == {f"{i}.{w}" for i in (0, 2, 4) for w in ("weight", "bias")}
    assert all(isinstance(v, torch.Tensor) for v in state.values())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hidden", "a-b"], "--hidden"),
        (["--crash-layer", "2"], "--crash-layer"),
        (["--crash-layer", "x"], "--crash-layer"),
        (["--loss", "hinge"], "--loss"),
        (["--p-train", "1"], "--p-train"),
        (["--activation", "gelu"], "--activation"),
        (["--epochs", "0"], "--epochs"),
        (["--var-reg", "-1"], "--var-reg"),
    ],
)
def test_train_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    res = runner.invoke(app, ["train", str(tmp_path / "m.pt"), "--hidden", "4-3", *args])
    assert_one_line_error(res, message)


def test_train_into_a_directory(tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", str(tmp_path), "--data", "synthetic", "--epochs", "1"])
    assert_one_line_error(res, "is a directory")


def test_train_crash_layer_and_mse(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    res = runner.invoke(
        app,
        ["train", str(path), "--data", "synthetic", "--hidden", "8-6", "--epochs", "2",
         "--p-train", "0.3", "--crash-layer", "1", "--loss", "mse"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "(layer 1)" in res.output  # the report measures crashes in the trained layer
    # crash-dropout is not part of the saved architecture: the plain MLP reads it
    res = runner.invoke(
        app, ["analyze", str(path), "--hidden", "8-6", *SYNTH, "--out", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output


def _installed_command() -> list[str]:
    script = Path(sys.executable).with_name("byzlearn")
    return [str(script)] if script.exists() else [sys.executable, "-m", "byzlearn.cli"]


@pytest.mark.parametrize(
    ("kind", "extra", "message"),
    [
        ("random", [], "not a PyTorch weights file"),
        ("whole_module", [], "pickled Python objects"),
        ("good", ["--arch", "nope"], "--arch: unknown architecture"),
        ("good", ["--reps", "zero"], "--reps"),
    ],
)
def test_installed_command_bad_inputs(
    model_file: Path, tmp_path: Path, kind: str, extra: list[str], message: str
) -> None:
    """The real ``byzlearn`` console script (the root app), in a subprocess."""
    path = model_file if kind == "good" else _bad_file(kind, tmp_path, model_file)
    proc = subprocess.run(
        [*_installed_command(), "neurons", "analyze", str(path), "--hidden", "12-8", *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    out = proc.stdout + proc.stderr
    lines = [line for line in out.splitlines() if line.strip()]
    assert proc.returncode == 2, out
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], out
    assert "Traceback" not in out


@pytest.mark.parametrize("hidden", ["-3", "32--16", "32-"])
def test_hidden_widths_with_empty_parts_are_refused(tmp_path: Path, hidden: str) -> None:
    res = runner.invoke(app, ["train", str(tmp_path / "m.pt"), f"--hidden={hidden}"])
    assert_one_line_error(res, "--hidden: bad value")
    assert not (tmp_path / "m.pt").exists()


def test_train_never_replaces_a_model_without_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    args = ["train", str(path), "--data", "synthetic", "--epochs", "1", "--hidden", "8"]
    assert runner.invoke(app, args).exit_code == 0
    before = path.read_bytes()
    res = runner.invoke(app, [*args[:-1], "16"])
    assert_one_line_error(res, "exists; pass --overwrite")
    assert path.read_bytes() == before
    assert runner.invoke(app, [*args[:-1], "16", "--overwrite"]).exit_code == 0
    assert path.read_bytes() != before


def test_an_infinite_epsilon_is_refused(model_file: Path, tmp_path: Path) -> None:
    assert_one_line_error(_analyze(model_file, "--epsilon", "inf", tmp=tmp_path), "--epsilon")


def test_more_samples_than_the_test_set_is_said(model_file: Path, tmp_path: Path) -> None:
    res = _analyze(model_file, "--n-samples", "100000", tmp=tmp_path)
    assert res.exit_code == 0, res.output
    assert "note: --n-samples 100000: the test set holds" in res.output
