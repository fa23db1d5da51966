"""Figures: bound vs measured error across the crash probability p and across failures per layer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["plot_analysis"]


def plot_analysis(
    p_sweep: Mapping[str, Sequence[float]],
    f_sweep: Mapping[str, Sequence[float]],
    path: str | Path,
    title: str = "",
) -> Path:
    """Write a two-panel PNG and return its path.

    ``p_sweep``: ``{"p": [...], "b3": [...], "b4": [...], "mc": [...], "rigorous": [...]}``
    (std of the output error Δ and the rigorous RMS bound, per p).
    ``f_sweep``: ``{"f": [...], "fep_tight": [...], "fep_paper": [...], "worst": [...],
    "random": [...]}`` (worst-case bounds, the adversarial search and random crashes, per number
    of crashed neurons in one layer).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    styles = {
        "rigorous": ("rigorous RMS bound", "k--"),
        "b3": ("b3 (Taylor) std", "C0-o"),
        "b4": ("b4 (leave-one-out) std", "C1-s"),
        "mc": ("measured std (Monte-Carlo)", "C2-^"),
    }
    for key, (label, style) in styles.items():
        if key in p_sweep:
            a.plot(p_sweep["p"], p_sweep[key], style, label=label, ms=4)
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xlabel("crash probability p")
    a.set_ylabel("output error")
    a.set_title("random crashes (one layer)")
    a.legend(fontsize=8)
    fstyles = {
        "fep_paper": ("FEP bound (paper)", "k--"),
        "fep_tight": ("FEP bound (tight)", "k-"),
        "worst": ("measured worst case (search)", "C3-o"),
        "random": ("measured random (mean)", "C2-^"),
    }
    for key, (label, style) in fstyles.items():
        if key in f_sweep:
            b.plot(f_sweep["f"], f_sweep[key], style, label=label, ms=4)
    b.set_yscale("log")
    b.set_xlabel("crashed neurons in the layer")
    b.set_ylabel("max output error")
    b.set_title("worst-case crashes")
    b.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
