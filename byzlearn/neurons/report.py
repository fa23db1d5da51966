"""One-call analysis of a trained network: worst-case bounds, measurements, certification, figure.

Used by ``byzlearn neurons analyze``; returns plain Python data (JSON-serialisable).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from byzlearn.neurons.fep import fep_bound, max_failures
from byzlearn.neurons.inject import random_faults, worst_case_search
from byzlearn.neurons.network import extract_network
from byzlearn.neurons.plot import plot_analysis
from byzlearn.neurons.probabilistic import certify, compare_estimates, failure_frequency

__all__ = ["analyze", "default_p_grid"]


def default_p_grid(p: float) -> list[float]:
    """Seven log-spaced crash probabilities around ``p`` (within (0, 0.5])."""
    lo, hi = max(p / 10, 1e-4), min(p * 10, 0.5)
    return [float(v) for v in torch.logspace(math.log10(lo), math.log10(hi), 7)]


def analyze(
    model: nn.Module,
    x: torch.Tensor,
    p: float = 0.01,
    epsilon: float = 0.1,
    delta: float = 1e-3,
    layer: int = 0,
    C: float | None = None,
    reps: int = 500,
    max_f: int = 6,
    p_grid: Sequence[float] | None = None,
    out: str | Path | None = None,
    seed: int = 0,
    input_shape: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Analyse ``model`` on the inputs ``x`` and optionally write the figure under ``out``.

    ``input_shape`` (one input's shape, e.g. ``(1, 8, 8)``) is needed for models with
    convolutions (see :func:`extract_network`); ``x`` may be flat.

    Returns a dict with ``network`` (layer table), ``per_layer`` (FEP for one crashed/Byzantine
    neuron, the adversarial measurement, the largest tolerated failures for ε), ``max_synapses``,
    ``probabilistic`` (b3/b4/Monte-Carlo/rigorous at p), ``certificates`` (b4 and rigorous),
    ``measured_fail`` (Monte-Carlo P(‖Δ‖∞ ≥ ε): mean and worst over inputs, fraction of inputs
    with P ≤ δ), ``p_sweep``, ``f_sweep`` and ``figure`` (path or None).
    """
    model.eval()
    net = extract_network(model, C=C, data=x, input_shape=input_shape)
    layer = net.check_hidden(layer)
    L = net.num_hidden
    per_layer = []
    tol_crash = max_failures(net, epsilon, "crash")
    tol_byz = max_failures(net, epsilon, "byzantine")
    tol_syn = max_failures(net, epsilon, "crash", kind="synapses")
    for l in range(L):
        f = [0] * L
        f[l] = 1
        row: dict[str, Any] = {"layer": l, "N": net.hidden_sizes[l]}
        for mode in ("crash", "byzantine"):
            row[f"{mode}_fep"] = fep_bound(net, f, mode=mode)
            row[f"{mode}_fep_paper"] = fep_bound(net, f, mode=mode, method="paper")
            row[f"{mode}_worst"] = worst_case_search(net, x, f, mode=mode, seed=seed).error
        row["max_crash"] = tol_crash[l]
        row["max_byzantine"] = tol_byz[l]
        per_layer.append(row)
    probabilistic = compare_estimates(net, x, p, layer, reps, seed)
    certs = {}
    for method in ("b4", "rigorous"):
        c = certify(net, x, p, epsilon, delta, layer, method=method)
        certs[method] = {
            "summary": c.summary(),
            "worst_fail_prob": c.worst_fail_prob,
            "fraction_certified": c.fraction_certified,
            "repeats": c.repeats,
            "paper_repeats": c.paper_repeats,
        }
    freq = failure_frequency(net, x, p, epsilon, layer, reps, seed)
    measured_fail = {
        "mean": float(freq.mean()),
        "worst": float(freq.max()),
        "fraction_below_delta": float((freq <= delta).double().mean()),
    }
    grid = list(p_grid) if p_grid is not None else default_p_grid(p)
    p_sweep: dict[str, list[float]] = {"p": grid, "b3": [], "b4": [], "mc": [], "rigorous": []}
    for q in grid:
        r = compare_estimates(net, x, q, layer, max(200, reps // 2), seed)
        p_sweep["b3"].append(r["b3_std"])
        p_sweep["b4"].append(r["b4_std"])
        p_sweep["mc"].append(r["mc_std"])
        p_sweep["rigorous"].append(r["rigorous_rms"])
    fs = list(range(1, min(max_f, net.hidden_sizes[layer]) + 1))
    f_sweep: dict[str, list[float]] = {
        "f": [float(v) for v in fs],
        "fep_tight": [],
        "fep_paper": [],
        "worst": [],
        "random": [],
    }
    for n in fs:
        f = [0] * L
        f[layer] = n
        f_sweep["fep_tight"].append(fep_bound(net, f))
        f_sweep["fep_paper"].append(fep_bound(net, f, method="paper"))
        f_sweep["worst"].append(worst_case_search(net, x, f, restarts=1, seed=seed).error)
        f_sweep["random"].append(random_faults(net, x, f, reps=100, reduce="max", seed=seed).mean)
    figure = None
    if out is not None:
        figure = str(
            plot_analysis(
                p_sweep,
                f_sweep,
                Path(out) / "neurons_analysis.png",
                title=f"crashes in hidden layer {layer}",
            )
        )
    return {
        "network": net.describe(),
        "per_layer": per_layer,
        "max_synapses": tol_syn,
        "p": p,
        "epsilon": epsilon,
        "delta": delta,
        "layer": layer,
        "probabilistic": probabilistic,
        "certificates": certs,
        "measured_fail": measured_fail,
        "p_sweep": p_sweep,
        "f_sweep": f_sweep,
        "figure": figure,
    }
