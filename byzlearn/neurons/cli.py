"""``byzlearn neurons``: train a small MLP and analyse the fault tolerance of a saved network.

Model files hold **weights only** and are read without unpickling code: a PyTorch state dict
(``torch.save(model.state_dict(), path)``, read with ``torch.load(path, weights_only=True)``) or
a safetensors file (optional ``safetensors`` package). The architecture is given by options:
``--arch mlp`` (default: the network ``byzlearn neurons train`` saves, with ``--hidden``,
``--activation`` and ``--K``) or ``--arch models.<name>`` (the reference models of
:mod:`byzlearn.models`); the input size and the number of classes come from ``--data`` (or
``--classes`` / ``--input-shape``). A whole pickled ``nn.Module`` is read only with
``--unsafe-pickle``, which runs code from the file.

Every bad input (a missing, empty, truncated or corrupt file, a state dict that does not fit the
architecture, an unknown architecture, a bad option value) ends the command with exit code 2 and
one line ``Error: ...`` on stderr, never a traceback.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import torch
import typer
from rich.console import Console
from rich.table import Table
from torch import nn
from typer.core import TyperCommand

from byzlearn.neurons.modelfile import (
    ModelFileError,
    architectures,
    build_architecture,
    load_pickled_module,
    load_state_dict_file,
    load_weights,
    save_state_dict_file,
)
from byzlearn.neurons.network import HiddenLayerError
from byzlearn.neurons.train import (
    ACTIVATIONS,
    LOSSES,
    crash_report,
    load_digits_data,
    synthetic_data,
    train_mlp,
)

# mypy sees one definition (typer >= 0.16, which vendors click); at run time an older typer falls
# back to click itself. Two imports of one name under try/except would be a redefinition for mypy.
if TYPE_CHECKING:
    from typer._click.exceptions import UsageError as _UsageError
else:
    try:  # typer >= 0.16 vendors click
        from typer._click.exceptions import UsageError as _UsageError
    except ImportError:  # pragma: no cover - older typer on top of click
        from click.exceptions import UsageError as _UsageError

app = typer.Typer(
    help="Fault tolerance of neural networks: FEP bounds, fault injection, certification.",
    no_args_is_help=True,
    add_completion=False,
)

_DATASETS = ("digits", "synthetic")


def _fail(message: str) -> NoReturn:
    """End the command: one line on stderr, exit code 2 (a usage error), no traceback."""
    typer.echo(f"Error: {' '.join(str(message).split())}", err=True)
    raise typer.Exit(2)


class _OneLineErrors(TyperCommand):
    """A command whose option-parsing errors (bad types, ranges, unknown or missing options)
    print one line and exit with code 2, instead of the usage panel."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except _UsageError as e:
            _fail(e.format_message())


def _load_data(name: str, seed: int) -> tuple[torch.Tensor, ...]:
    if name == "digits":
        return load_digits_data(seed=seed)
    if name == "synthetic":
        return synthetic_data(seed=seed)
    _fail(f"--data: unknown dataset {name!r}; choose from {', '.join(_DATASETS)}")


# Test inputs analyze uses when --n-samples is not given (fewer when the test set is smaller).
_SAMPLES = 200


def _parse_ints(text: str, option: str, example: str, sep: str) -> list[int]:
    try:  # every part a number: '-3' or '32--16' (empty parts) are refused, not read as 3
        values = [int(v) for v in text.split(sep)]
    except ValueError:
        _fail(f"{option}: bad value {text!r}; use e.g. {example}")
    if not values or any(v < 1 for v in values):
        _fail(f"{option}: bad value {text!r}: positive integers, e.g. {example}")
    return values


def _parse_crash_layer(text: str, num_hidden: int) -> list[int] | None:
    if text.strip().lower() == "all":
        return None
    try:
        layers = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        _fail(f"--crash-layer: bad value {text!r}; use 'all' or 0-based indices, e.g. 0 or 0,1")
    if not layers or any(not 0 <= v < num_hidden for v in layers):
        _fail(
            f"--crash-layer: bad value {text!r}: hidden layers are 0 to {num_hidden - 1} (or 'all')"
        )
    return layers


def _ends_with_softmax(model: nn.Module) -> bool:
    mods = [m for m in model.modules() if not list(m.children())]
    return bool(mods) and isinstance(mods[-1], nn.Softmax)


def _fmt(v: float) -> str:
    return "inf" if not math.isfinite(v) else f"{v:.4g}"


@app.command(cls=_OneLineErrors)
def train(
    out: Annotated[
        Path,
        typer.Argument(
            help="where to save the weights (MODEL.pt: a state dict; MODEL.safetensors: "
            "safetensors, needs the optional package)"
        ),
    ],
    data: Annotated[str, typer.Option(help="digits (sklearn, bundled) or synthetic")] = "digits",
    hidden: Annotated[str, typer.Option(help="hidden widths, e.g. '32' or '32-16'")] = "32",
    activation: Annotated[
        str, typer.Option(help=", ".join(ACTIVATIONS))
    ] = "sigmoid",
    epochs: Annotated[int, typer.Option(min=1)] = 30,
    p_train: Annotated[float, typer.Option(help="crash-dropout probability (no rescaling)")] = 0.0,
    crash_layer: Annotated[
        str,
        typer.Option(
            help="hidden layers (0-based, comma-separated) trained with crash-dropout, or 'all'"
        ),
    ] = "all",
    loss: Annotated[
        str, typer.Option(help="cross_entropy, or mse (the paper's loss, on one-hot targets)")
    ] = "cross_entropy",
    var_reg: Annotated[float, typer.Option(help="lambda of the b3-variance regulariser")] = 0.0,
    reg_p: Annotated[float, typer.Option(help="p used inside the regulariser")] = 0.01,
    seed: Annotated[int, typer.Option()] = 0,
    overwrite: Annotated[
        bool, typer.Option(help="replace OUT when it exists (refused otherwise)")
    ] = False,
) -> None:
    """Train a small MLP classifier and save its weights (a state dict) to OUT."""
    torch.manual_seed(seed)
    widths = _parse_ints(hidden, "--hidden", "32-16", "-")
    if activation not in ACTIVATIONS:
        _fail(f"--activation: unknown {activation!r}; choose from {', '.join(ACTIVATIONS)}")
    if not 0 <= p_train < 1:
        _fail(f"--p-train: must be in [0, 1), got {p_train}")
    if loss not in LOSSES:
        _fail(f"--loss: unknown {loss!r}; choose from {', '.join(LOSSES)}")
    if not (math.isfinite(var_reg) and var_reg >= 0):
        _fail(f"--var-reg: must be a finite number >= 0, got {var_reg}")
    if not 0 <= reg_p <= 1:
        _fail(f"--reg-p: must be in [0, 1], got {reg_p}")
    layers = _parse_crash_layer(crash_layer, len(widths))
    if out.exists() and out.is_dir():
        _fail(f"OUT: {out} is a directory; give a file name such as model.pt")
    if out.exists() and not overwrite:  # a model trained with other options, maybe
        _fail(f"OUT: {out} exists; pass --overwrite to replace it, or give another name")
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
            crash_layer=layers,
            loss=loss,
        )
    except ValueError as e:
        _fail(str(e))
    except (RuntimeError, MemoryError) as e:  # e.g. widths too large for this machine's memory
        _fail(f"training failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        save_state_dict_file(model, out)
    except ModelFileError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"OUT: cannot write {out}: {e.strerror or e}")
    report_layer = layers[0] if layers is not None and len(layers) == 1 else 0
    rep = crash_report(model, Xte, yte, p=0.05, layer=report_layer, reps=100, seed=seed)
    typer.echo(
        f"saved {out}: test accuracy {rep['accuracy']:.4f}, under crashes p=0.05 "
        f"(layer {report_layer}) {rep['crash_accuracy']:.4f}, Var(delta) {rep['mc_var']:.4g}"
    )
    typer.echo(
        f"analyse it with: byzlearn neurons analyze {out} --data {data} --hidden {hidden} "
        f"--activation {activation}"
    )


def _read_model_file(path: Path, unsafe_pickle: bool) -> nn.Module | dict[str, torch.Tensor]:
    """The weights in ``path`` (or, with ``--unsafe-pickle``, the unpickled module); every
    problem ends the command with one line (exit code 2)."""
    try:
        if unsafe_pickle:
            module = load_pickled_module(path)
            typer.echo(
                f"warning: --unsafe-pickle: {path} was unpickled, which runs code from the file",
                err=True,
            )
            return module
        return load_state_dict_file(path)
    except ModelFileError as e:
        _fail(f"MODEL: {e}")


def _fit_architecture(
    state: dict[str, torch.Tensor],
    path: Path,
    *,
    arch: str,
    in_features: int,
    classes: int,
    hidden: list[int],
    activation: str,
    K: float | None,
    input_shape: tuple[int, ...] | None,
) -> nn.Module:
    """The network ``--arch`` with the weights ``state`` (checked to fit exactly)."""
    try:
        model = build_architecture(
            arch,
            in_features=in_features,
            classes=classes,
            hidden=hidden,
            activation=activation,
            K=K,
            input_shape=input_shape,
        )
    except ValueError as e:
        _fail(f"--arch: {e}")
    try:
        load_weights(model, state, path)
    except ModelFileError as e:
        _fail(f"MODEL: {e}")
    return model


@app.command(cls=_OneLineErrors)
def analyze(
    model_path: Annotated[
        Path,
        typer.Argument(
            metavar="MODEL",
            help="weights: a state dict (.pt) or a .safetensors file; the architecture is "
            "given by --arch and its options",
        ),
    ],
    arch: Annotated[
        str,
        typer.Option(
            help="architecture of MODEL: mlp (what 'neurons train' saves: --hidden, "
            "--activation, --K) or models.<name> (byzlearn.models: logistic, mlp, cnn, resnet)"
        ),
    ] = "mlp",
    hidden: Annotated[
        str, typer.Option(help="hidden widths of --arch mlp or models.mlp, e.g. 32 or 32-16")
    ] = "32",
    activation: Annotated[
        str, typer.Option(help="activation of --arch mlp: " + ", ".join(ACTIVATIONS))
    ] = "sigmoid",
    K: Annotated[
        float | None, typer.Option("--K", help="K of the scaled_sigmoid activation")
    ] = None,
    classes: Annotated[
        int | None, typer.Option(min=1, help="number of outputs (default: from --data)")
    ] = None,
    unsafe_pickle: Annotated[
        bool,
        typer.Option(
            "--unsafe-pickle",
            help="UNSAFE: MODEL is a whole nn.Module saved with torch.save(model); unpickling "
            "it (torch.load weights_only=False) RUNS CODE FROM THE FILE. Only for files you "
            "trust; --arch and its options are then ignored",
        ),
    ] = False,
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
    n_samples: Annotated[
        int | None,
        typer.Option(min=1, help=f"number of test inputs used (default: up to {_SAMPLES})"),
    ] = None,
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
        _fail(f"--p: must be in [0, 1], got {p}")
    if not (epsilon > 0 and math.isfinite(epsilon)):
        _fail(f"--epsilon: must be a finite number > 0, got {epsilon}")
    if not 0 < delta < 1:
        _fail(f"--delta: must be in (0, 1), got {delta}")
    if output not in ("probs", "logits"):
        _fail(f"--output: must be 'probs' or 'logits', got {output!r}")
    if C is not None and not (math.isfinite(C) and C > 0):
        _fail(f"--C: must be a finite number > 0, got {C}")
    if arch not in architectures():
        _fail(f"--arch: unknown architecture {arch!r}; choose from {', '.join(architectures())}")
    if activation not in ACTIVATIONS:
        _fail(f"--activation: unknown {activation!r}; choose from {', '.join(ACTIVATIONS)}")
    if K is not None and not (math.isfinite(K) and K > 0):
        _fail(f"--K: must be a finite number > 0, got {K}")
    if layer < 0:
        _fail(f"--layer: must be a hidden layer index >= 0, got {layer}")
    widths = _parse_ints(hidden, "--hidden", "32-16", "-")
    shape = None
    if input_shape:
        shape = tuple(_parse_ints(input_shape, "--input-shape", "1,8,8", ","))
    if out.exists() and not out.is_dir():
        _fail(f"--out: {out} is a file, not a directory")
    loaded = _read_model_file(model_path, unsafe_pickle)
    torch.manual_seed(seed)
    _, ytr, Xte, yte = _load_data(data, seed)
    in_features = Xte.shape[1]
    if shape is not None and math.prod(shape) != in_features:
        _fail(
            f"--input-shape: {input_shape} holds {math.prod(shape)} values, {data} inputs "
            f"have {in_features}"
        )
    n_classes = classes if classes is not None else int(max(ytr.max(), yte.max())) + 1
    if isinstance(loaded, nn.Module):
        model = loaded
    else:
        model = _fit_architecture(
            loaded,
            model_path,
            arch=arch,
            in_features=in_features,
            classes=n_classes,
            hidden=widths,
            activation=activation,
            K=K,
            input_shape=shape,
        )
    if output == "probs" and not _ends_with_softmax(model):
        model = nn.Sequential(model, nn.Softmax(dim=-1))
    if n_samples is not None and n_samples > len(Xte):  # said, not silently capped
        typer.echo(
            f"note: --n-samples {n_samples}: the test set holds {len(Xte)}; using them all",
            err=True,
        )
    x = Xte[: _SAMPLES if n_samples is None else n_samples]
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
    except HiddenLayerError as e:
        _fail(f"--layer: {e}")
    except (ValueError, NotImplementedError, TypeError) as e:
        _fail(f"{model_path} cannot be analysed: {e}")
    except RuntimeError as e:  # e.g. the model does not accept the inputs of --data
        _fail(f"{model_path} cannot be run on the {data} inputs: {e}")
    except OSError as e:
        _fail(f"--out: cannot write the figure under {out}: {e.strerror or e}")
    _print(res)
    if json_path is not None:
        try:
            json_path.write_text(json.dumps(res, indent=2, default=float))
        except OSError as e:
            _fail(f"--json: cannot write {json_path}: {e.strerror or e}")
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
