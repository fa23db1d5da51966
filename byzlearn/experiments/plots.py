"""Figures: accuracy curves and heatmaps (matplotlib, non-interactive backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["accuracy_curves", "heatmap"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    """Save ``fig`` as a PNG at ``path`` atomically (never through a link there) and close it."""
    from byzlearn.experiments.store import write_atomically

    path = Path(path)
    try:
        write_atomically(path, lambda fh: fig.savefig(fh, format="png", dpi=120))
    finally:
        _pyplot().close(fig)
    return path


def accuracy_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    title: str = "",
    chance: float | None = None,
    ylabel: str = "test accuracy",
) -> Path:
    """One line per label: ``curves[label] = (rounds, values)``; saved to ``path``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, (x, y) in curves.items():
        ax.plot(list(x), list(y), label=label, linewidth=1.6)
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _save(fig, path)


def heatmap(
    values: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    path: str | Path,
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    label: str = "",
) -> Path:
    """A ``(len(rows), len(cols))`` heatmap in [0, 1] with the values written in the cells
    (NaN cells, e.g. configurations a rule cannot run, are left blank)."""
    plt = _pyplot()
    values = np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=(3.2 + 0.9 * max(2, len(cols)), 1.4 + 0.45 * max(2, len(rows))))
    im = ax.imshow(np.ma.masked_invalid(values), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if np.isfinite(values[i, j]):
                color = "black" if values[i, j] > 0.6 else "white"
                ax.text(
                    j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=8, color=color
                )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=label)
    fig.tight_layout()
    return _save(fig, path)
