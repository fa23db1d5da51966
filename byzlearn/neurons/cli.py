"""``byzlearn neurons``: train a small MLP and analyse the fault tolerance of a saved network.

MODEL.pt is a **full module** saved with ``torch.save(model, path)`` (an ``nn.Sequential`` of
Linear + activation modules). It is loaded with ``torch.load(path, weights_only=False)``, which
unpickles arbitrary Python objects: only analyse files you trust.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from rich.console import Console
from rich.table import Table
from torch import nn

from byzlearn.neurons.train import (
    crash_report,
    load_digits_data,
    synthetic_data,
    train_mlp,
)

app = typer.Typer(
    help="Fault tolerance of neural networks: FEP bounds, fault injection, certification.",
    no_args_is_help=True,
    add_completion=False,
)

_DATASETS = ("digits", "synthetic")


def _load_data(name: str, seed: int) -> tuple[torch.Tensor, ...]:
    if name == "digits":
        return load_digits_data(seed=seed)
    if name == "synthetic":
        return synthetic_data(seed=seed)
    raise typer.BadParameter(
        f"unknown dataset {name!r}; choose from {list(_DATASETS)}", param_hint="--data"
    )


def _load_model(path: Path) -> nn.Module:
    if not path.is_file():
        raise typer.BadParameter(f"no such file: {path}", param_hint="MODEL")
    obj = torch.load(path, weights_only=False, map_location="cpu")  # trusted files only
    if not isinstance(obj, nn.Module):
        raise typer.BadParameter(
            f"{path} holds a {type(obj).__name__}, not a full nn.Module; save the model with "
            "torch.save(model, path)",
            param_hint="MODEL",
        )
    return obj


def _ends_with_softmax(model: nn.Module) -> bool:
    mods = [m for m in model.modules() if not list(m.children())]
    return bool(mods) and isinstance(mods[-1], nn.Softmax)


def _fmt(v: float) -> str:
    return "inf" if not math.isfinite(v) else f"{v:.4g}"


@app.command()
def train(
    out: Annotated[Path, typer.Argument(help="where to save the trained model (MODEL.pt)")],
    data: Annotated[str, typer.Option(help="digits (sklearn, bundled) or synthetic")] = "digits",
    hidden: Annotated[str, typer.Option(help="hidden widths, e.g. '32' or '32-16'")] = "32",
    activation: Annotated[
        str, typer.Option(help="sigmoid, tanh, relu, softplus, scaled_sigmoid")
    ] = "sigmoid",
    epochs: Annotated[int, typer.Option(min=1)] = 30,
    p_train: Annotated[float, typer.Option(help="crash-dropout probability (no rescaling)")] = 0.0,
    var_reg: Annotated[float, typer.Option(help="lambda of the b3-variance regulariser")] = 0.0,
    reg_p: Annotated[float, typer.Option(help="p used inside the regulariser")] = 0.01,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Train a small MLP classifier and save it (full module) to OUT."""
    torch.manual_seed(seed)
    try:
        widths = [int(v) for v in hidden.split("-") if v]
    except ValueError:
        raise typer.BadParameter(
            f"bad --hidden {hidden!r}: use e.g. 32-16", param_hint="--hidden"
        ) from None
    if not 0 <= p_train < 1:
        raise typer.BadParameter("must be in [0, 1)", param_hint="--p-train")
    Xtr, ytr, Xte, yte = _load_data(data, seed)
    try:
        model = train_mlp(
            Xtr,
            ytr,
            hidden=widths,
            activation=activation,
            epochs=epochs,
            p_train=p_train,
            var_reg=var_reg,
            reg_p=reg_p,
            seed=seed,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model, out)
    rep = crash_report(model, Xte, yte, p=0.05, reps=100, seed=seed)
    typer.echo(
        f"saved {out}: test accuracy {rep['accuracy']:.4f}, under crashes p=0.05 "
        f"(layer 0) {rep['crash_accuracy']:.4f}, Var(delta) {rep['mc_var']:.4g}"
    )


@app.command()
def analyze(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="torch.save'd nn.Module")],
    data: Annotated[
        str, typer.Option(help="digits or synthetic: inputs used for measurements")
    ] = "digits",
    p: Annotated[float, typer.Option(help="crash probability of each neuron of --layer")] = 0.01,
    epsilon: Annotated[float, typer.Option(help="output error tolerance")] = 0.1,
    delta: Annotated[
        float, typer.Option(help="allowed failure probability of the certificate")
    ] = 1e-3,
    layer: Annotated[
        int, typer.Option(help="hidden layer (0-based) for probabilistic crashes")
    ] = 0,
    C: Annotated[
        float | None,
        typer.Option(
            "--C",
            help="activation bound |phi| <= C for unbounded "
            "activations (default: max observed on the data)",
        ),
    ] = None,
    n_samples: Annotated[int, typer.Option(min=1, help="number of test inputs used")] = 200,
    reps: Annotated[int, typer.Option(min=2, help="Monte-Carlo repetitions")] = 500,
    max_f: Annotated[
        int, typer.Option(min=1, help="largest number of crashed neurons in the figure")
    ] = 6,
    out: Annotated[Path, typer.Option(help="directory of the figure neurons_analysis.png")] = Path(
        "."
    ),
    json_path: Annotated[
        Path | None, typer.Option("--json", help="also write all numbers as JSON")
    ] = None,
    output: Annotated[
        str,
        typer.Option(
            help="probs: analyse softmax probabilities (a Softmax is appended to the model); "
            "logits: the raw outputs"
        ),
    ] = "probs",
    input_shape: Annotated[
        str | None,
        typer.Option(help="shape of one input for convolutional models, e.g. 1,8,8 (digits)"),
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Print FEP bounds, measured errors and the (epsilon, delta) certification; write a figure."""
    from byzlearn.neurons.report import analyze as run_analysis

    if not 0 <= p <= 1:
        raise typer.BadParameter("must be in [0, 1]", param_hint="--p")
    if not epsilon > 0:
        raise typer.BadParameter("must be > 0", param_hint="--epsilon")
    if not 0 < delta < 1:
        raise typer.BadParameter("must be in (0, 1)", param_hint="--delta")
    if output not in ("probs", "logits"):
        raise typer.BadParameter("must be 'probs' or 'logits'", param_hint="--output")
    shape = None
    if input_shape:
        try:
            shape = tuple(int(v) for v in input_shape.split(","))
        except ValueError:
            raise typer.BadParameter(
                f"bad --input-shape {input_shape!r}: use e.g. 1,8,8", param_hint="--input-shape"
            ) from None
    torch.manual_seed(seed)
    model = _load_model(model_path)
    if output == "probs" and not _ends_with_softmax(model):
        model = nn.Sequential(model, nn.Softmax(dim=-1))
    _, _, Xte, _ = _load_data(data, seed)
    x = Xte[:n_samples]
    try:
        res = run_analysis(
            model,
            x,
            p=p,
            epsilon=epsilon,
            delta=delta,
            layer=layer,
            C=C,
            reps=reps,
            max_f=max_f,
            out=out,
            seed=seed,
            input_shape=shape,
        )
    except (ValueError, NotImplementedError, TypeError) as e:
        raise typer.BadParameter(str(e), param_hint="MODEL/--layer") from None
    _print(res)
    if json_path is not None:
        json_path.write_text(json.dumps(res, indent=2, default=float))
        typer.echo(f"numbers written to {json_path}")


def _print(res: dict[str, Any]) -> None:
    con = Console(width=120)
    t = Table(title="network")
    for col in ("layer", "name", "in", "out", "activation", "K", "interval", "max|w|"):
        t.add_column(col)
    for r in res["network"]:
        t.add_row(
            str(r["index"]),
            r["name"],
            str(r["in"]),
            str(r["out"]),
            r["activation"],
            _fmt(r["K"]),
            f"[{_fmt(r['lo'])}, {_fmt(r['hi'])}] ({r['interval']})",
            _fmt(r["w_max"]),
        )
    con.print(t)
    eps = res["epsilon"]
    t = Table(title=f"worst case, one failed neuron per layer (epsilon = {eps:g})")
    for col in (
        "hidden layer",
        "N",
        "crash FEP",
        "(paper)",
        "crash measured",
        "byz FEP",
        "byz measured",
        "max crashes",
        "max byz",
    ):
        t.add_column(col)
    for r in res["per_layer"]:
        t.add_row(
            str(r["layer"]),
            str(r["N"]),
            _fmt(r["crash_fep"]),
            _fmt(r["crash_fep_paper"]),
            _fmt(r["crash_worst"]),
            _fmt(r["byzantine_fep"]),
            _fmt(r["byzantine_worst"]),
            str(r["max_crash"]),
            str(r["max_byzantine"]),
        )
    con.print(t)
    con.print(
        f"largest tolerated crashed synapses per Linear (FEP <= {eps:g}): {res['max_synapses']}"
    )
    pr = res["probabilistic"]
    t = Table(
        title=f"random crashes, p = {res['p']:g} in hidden layer {res['layer']} (batch averages)"
    )
    for col in ("estimate", "|E delta|", "std delta"):
        t.add_column(col)
    for key, name in (
        ("b3", "b3 (Taylor, approx.)"),
        ("b4", "b4 (leave-one-out, approx.)"),
        ("mc", "measured (Monte-Carlo)"),
    ):
        t.add_row(name, _fmt(pr[f"{key}_mean"]), _fmt(pr[f"{key}_std"]))
    con.print(t)
    con.print(
        f"E||delta||_inf: measured {_fmt(pr['mc_abs'])}, rigorous bound "
        f"{_fmt(pr['rigorous_abs'])}; RMS measured {_fmt(pr['mc_rms'])}, bound "
        f"{_fmt(pr['rigorous_rms'])}"
    )
    mf = res["measured_fail"]
    con.print(
        f"measured P(error >= {eps:g}) with one evaluation: mean over inputs "
        f"{_fmt(mf['mean'])}, worst input {_fmt(mf['worst'])}; inputs with measured P <= "
        f"delta: {100 * mf['fraction_below_delta']:.1f}%"
    )
    for method, c in res["certificates"].items():
        con.print(f"certificate ({method}): {c['summary']}")
    if res["figure"]:
        con.print(f"figure written to {res['figure']}")


if __name__ == "__main__":
    app()
