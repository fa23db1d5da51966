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
    _panel(
        a,
        p_sweep,
        "p",
        {
            "rigorous": ("rigorous RMS bound", "k--"),
            "b3": ("b3 (Taylor) std", "C0-o"),
            "b4": ("b4 (leave-one-out) std", "C1-s"),
            "mc": ("measured std (Monte-Carlo)", "C2-^"),
        },
        ("crash probability p", "output error", "random crashes (one layer)"),
    )
    a.set_xscale("log")
    _panel(
        b,
        f_sweep,
        "f",
        {
            "fep_paper": ("FEP bound (paper)", "k--"),
            "fep_tight": ("FEP bound (tight)", "k-"),
            "worst": ("measured worst case (search)", "C3-o"),
            "random": ("measured random (mean)", "C2-^"),
        },
        ("crashed neurons in the layer", "max output error", "worst-case crashes"),
    )
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _panel(
    ax,
    sweep: Mapping[str, Sequence[float]],
    x_key: str,
    styles: Mapping[str, tuple[str, str]],
    labels: tuple[str, str, str],
) -> None:
    """Plot the curves of ``sweep`` present in ``styles`` against ``sweep[x_key]`` (log y)."""
    for key, (label, style) in styles.items():
        if key in sweep:
            ax.plot(sweep[x_key], sweep[key], style, label=label, ms=4)
    ax.set_yscale("log")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(labels[2])
    ax.legend(fontsize=8)
