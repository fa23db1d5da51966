"""Fault-tolerance-aware training of small MLPs, and the before/after measurement under crashes.

Two techniques of El Mhamdi, Guerraoui, Kucharavy & Volodin, *The Probabilistic Fault Tolerance of
Neural Networks in the Continuous Limit* (arXiv 1902.01686):

* **crash-dropout**: during training each unit of the chosen hidden layer(s) is zeroed with
  probability ``p_train`` **without** rescaling
  (:class:`byzlearn.neurons.activations.CrashDropout`), i.e. the network is trained under the
  very failure model it will face. The paper trains with crashes in one layer (the layer that
  fails at inference) and with the MSE loss on one-hot targets; ``crash_layer=`` and
  ``loss="mse"`` give that setup (defaults: every hidden layer and cross-entropy, the behaviour
  of earlier versions);
* **the VarDelta regulariser**: λ·mean over the batch of Σ_k Var_b3[Δ_k], the first-order variance
  p·Σ_i ((∂ŷ_k/∂y_i)·y_i)² of :func:`byzlearn.neurons.probabilistic.b3` at the failing layer.

:func:`crash_report` measures accuracy, accuracy under crashes and the Monte-Carlo variance of the
output error, to compare a plain and a fault-tolerance-aware model.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence

import torch
from torch import nn

from byzlearn.neurons._checks import check_int, check_real
from byzlearn.neurons.activations import CrashDropout, ScaledSigmoid
from byzlearn.neurons.network import extract_network
from byzlearn.neurons.probabilistic import _mc_chunks, b3

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "crash_report",
    "load_digits_data",
    "make_mlp",
    "strip_crash_dropout",
    "synthetic_data",
    "train_mlp",
]

LOSSES = ("cross_entropy", "mse")
"""Training losses of :func:`train_mlp`: cross-entropy on the logits, or the paper's MSE between
the (linear) outputs and one-hot targets."""

_ACTS = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
}
ACTIVATIONS = (*_ACTS, "scaled_sigmoid")
"""Hidden-layer activations of :func:`make_mlp` (``scaled_sigmoid``: sigmoid(4Kx), K given)."""


def load_digits_data(
    test_fraction: float = 0.25, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8×8 digits (1797 images, no download), pixels scaled to [0, 1].

    Returns (X_train, y_train, X_test, y_test) with a seeded random split.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    X = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.long)
    return _split(X, y, test_fraction, seed)


def synthetic_data(
    n: int = 600, d: int = 16, classes: int = 4, test_fraction: float = 0.25, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian blobs in [0, 1]^d (clipped), ``classes`` classes: a fast stand-in for tests."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(classes, d, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    X = (centers[y] + 0.15 * torch.randn(n, d, generator=g)).clamp(0, 1)
    return _split(X, y, test_fraction, seed)


def _split(
    X: torch.Tensor, y: torch.Tensor, test_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(X.shape[0], generator=g)
    n_test = round(test_fraction * X.shape[0])
    te, tr = perm[:n_test], perm[n_test:]
    return X[tr], y[tr], X[te], y[te]


def _crash_layers(crash_layer: int | Sequence[int] | None, num_hidden: int) -> set[int]:
    """The 0-based hidden layers that get a :class:`CrashDropout` (``None``: all of them)."""
    if crash_layer is None:
        return set(range(num_hidden))
    if isinstance(crash_layer, int):
        items: list[object] = [crash_layer]
    elif isinstance(crash_layer, Sequence) and not isinstance(crash_layer, str):
        items = list(crash_layer)
    else:
        raise ValueError(
            f"crash_layer must be a hidden layer index, a sequence of them or None, "
            f"got {crash_layer!r}"
        )
    if not items:
        raise ValueError("crash_layer must name at least one hidden layer (or be None: all)")
    layers: set[int] = set()
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < num_hidden:
            raise ValueError(
                f"crash_layer: hidden layer index must be an int in [0, {num_hidden - 1}], "
                f"got {v!r}"
            )
        layers.add(v)
    return layers


def make_mlp(
    sizes: Sequence[int],
    activation: str | nn.Module = "sigmoid",
    K: float | None = None,
    p_train: float = 0.0,
    crash_layer: int | Sequence[int] | None = None,
) -> nn.Sequential:
    """Linear/activation stack with ``sizes = [in, h_1, ..., h_L, out]`` and a linear output.

    ``activation``: sigmoid, tanh, relu, softplus, ``scaled_sigmoid`` (sigmoid(4Kx), K given),
    or a module (a :class:`~byzlearn.neurons.activations.DeclaredActivation` with its K and
    range; one copy per hidden layer).
    ``p_train > 0`` inserts a :class:`CrashDropout` (identity in ``eval()``) after the activation
    of the hidden layers ``crash_layer`` (0-based: an index or a sequence of indices; default
    ``None``: every hidden layer).
    """
    if len(sizes) < 3:
        raise ValueError(f"sizes needs at least [in, hidden, out], got {list(sizes)}")
    sizes = [check_int(v, f"sizes[{i}]", 1) for i, v in enumerate(sizes)]
    p_train = check_real(p_train, "p_train", 0.0, 1.0, hi_open=True)
    crashed = _crash_layers(crash_layer, len(sizes) - 2)
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes[:-1])):
        mods.append(nn.Linear(int(a), int(b)))
        if isinstance(activation, nn.Module):
            mods.append(copy.deepcopy(activation))
        elif activation == "scaled_sigmoid":
            mods.append(ScaledSigmoid(1.0 if K is None else K))
        elif activation in _ACTS:
            mods.append(_ACTS[activation]())
        else:
            raise ValueError(f"unknown activation {activation!r}; choose from {list(ACTIVATIONS)}")
        if p_train > 0 and i in crashed:
            mods.append(CrashDropout(p_train))
    mods.append(nn.Linear(int(sizes[-2]), int(sizes[-1])))
    return nn.Sequential(*mods)


def strip_crash_dropout(model: nn.Sequential) -> nn.Sequential:
    """The same network without its :class:`CrashDropout` modules (parameters shared).

    ``CrashDropout`` is the identity in ``eval()``, so both compute the same function; the
    stripped model's ``state_dict`` keys are those of ``make_mlp(sizes, activation)`` without
    crash-dropout, whatever layers were trained with crashes (what ``byzlearn neurons train``
    saves and ``byzlearn neurons analyze --arch mlp`` rebuilds).
    """
    kept = [m for m in model if not isinstance(m, CrashDropout)]
    out = nn.Sequential(*kept)
    out.train(model.training)
    return out


def _check_labels(X: torch.Tensor, y: torch.Tensor) -> None:
    """X is a non-empty (n, features) tensor and y holds n integer class labels >= 0."""
    if not isinstance(X, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError("X and y must be torch.Tensors")
    if X.dim() != 2 or X.shape[0] == 0:
        raise ValueError(f"X must have shape (n, features) with n >= 1, got {tuple(X.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"y must hold integer class labels, got dtype {y.dtype}")
    if y.dim() != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(
            f"y must have one label per row of X ({X.shape[0]}), got shape {tuple(y.shape)}"
        )
    if int(y.min()) < 0:
        raise ValueError(f"y must hold class labels >= 0, got {int(y.min())}")


def train_mlp(
    X: torch.Tensor,
    y: torch.Tensor,
    hidden: Sequence[int] = (32,),
    activation: str = "sigmoid",
    epochs: int = 60,
    lr: float = 1e-2,
    batch_size: int = 128,
    p_train: float = 0.0,
    var_reg: float = 0.0,
    reg_p: float = 0.01,
    reg_layer: int = 0,
    seed: int = 0,
    crash_layer: int | Sequence[int] | None = None,
    loss: str = "cross_entropy",
) -> nn.Sequential:
    """Train an MLP classifier (Adam) and return it in ``eval()`` mode.

    ``loss``: ``"cross_entropy"`` (default) on the logits, or ``"mse"``, the paper's loss:
    mean over the batch and the C outputs of (ŷ_k − 1[k = y])², the linear outputs regressed on
    one-hot targets (arXiv 1902.01686, MNIST experiments).

    ``p_train``: crash-dropout probability (units zeroed, no rescaling) in the hidden layers
    ``crash_layer`` (0-based index or sequence; default ``None``: every hidden layer). The paper
    trains with crashes in the layer that fails at inference, e.g. ``crash_layer=0``.

    ``var_reg`` = λ of the VarDelta regulariser λ·mean_x Σ_k p·Σ_i ((∂ŷ_k/∂y_i)·y_i)² at hidden
    layer ``reg_layer`` with p = ``reg_p`` (arXiv 1902.01686, ``model.py``).
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")
    var_reg = check_real(var_reg, "var_reg", 0.0)
    p_train = check_real(p_train, "p_train", 0.0, 1.0, hi_open=True)
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose from {list(LOSSES)}")
    _check_labels(X, y)
    torch.manual_seed(seed)
    classes = int(y.max()) + 1
    model = make_mlp(
        [X.shape[1], *hidden, classes], activation, p_train=p_train, crash_layer=crash_layer
    )
    net = extract_network(model)  # shares the parameters
    net.check_hidden(reg_layer)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(X.shape[0], generator=g)
        for start in range(0, X.shape[0], batch_size):
            idx = perm[start : start + batch_size]
            xb, yb = X[idx], y[idx]
            out = model(xb)
            if loss == "mse":
                target = nn.functional.one_hot(yb, classes).to(out.dtype)
                value = nn.functional.mse_loss(out, target)
            else:
                value = nn.functional.cross_entropy(out, yb)
            if var_reg > 0:
                value = value + var_reg * b3(net, xb, reg_p, reg_layer).var.sum(-1).mean()
            opt.zero_grad()
            value.backward()
            opt.step()
    model.eval()
    return model


def crash_report(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    p: float,
    layer: int = 0,
    reps: int = 200,
    seed: int = 0,
) -> dict[str, float]:
    """Accuracy and error statistics of ``model`` when neurons of ``layer`` crash w.p. p.

    Keys: ``accuracy`` (fault-free), ``crash_accuracy`` (mean over ``reps`` masks), ``mc_var``
    (measured Var Δ summed over outputs, averaged over inputs), ``b3_var`` (its b3 estimate),
    ``mean_abs_error`` (measured E‖Δ‖∞ averaged over inputs), ``prob_var`` (measured variance
    of the softmax probabilities, summed over classes, averaged over inputs). Δ is measured on the
    model's outputs (logits for a classifier).
    """
    model.eval()
    net = extract_network(model, data=X)
    with torch.no_grad():
        logits = net.forward(X)
        d = _mc_chunks(net, X, p, net.check_hidden(layer), reps, seed)
        crash_logits = logits.unsqueeze(0) + d
        crash_pred = crash_logits.argmax(-1)
        probs = torch.softmax(crash_logits, -1)
        return {
            "accuracy": float((logits.argmax(-1) == y).float().mean()),
            "crash_accuracy": float((crash_pred == y).float().mean()),
            "mc_var": float(d.var(0).sum(-1).mean()),
            "b3_var": float(b3(net, X, p, layer).var.sum(-1).mean()),
            "mean_abs_error": float(d.abs().amax(-1).mean()),
            "prob_var": float(probs.var(0).sum(-1).mean()),
        }
