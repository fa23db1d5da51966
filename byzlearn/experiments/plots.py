"""Figures: accuracy curves and heatmaps (matplotlib, non-interactive backend).

Every text (labels, titles, tick names) is drawn as given: a ``$`` is a dollar sign, not the
start of a formula (a rule or attack name with one would otherwise fail to render, or lose
characters), a label starting with ``_`` is still in the legend, and a character no font can
draw (a lone surrogate) is drawn as ``?``. A text over 70 characters is drawn with its middle
cut out (``…``), so that the plot keeps its place in the figure.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["accuracy_curves", "heatmap"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def _figure(figsize: tuple[float, float]) -> Iterator[tuple[Any, Any]]:
    """A new figure and its axes, with texts drawn as given (no mathtext), closed on the way
    out, also when drawing or saving it fails (no figure is left open in the process)."""
    plt = _pyplot()
    with plt.rc_context({"text.parse_math": False}):  # tick labels are made at save time too
        fig, ax = plt.subplots(figsize=figsize)
        try:
            yield fig, ax
        finally:
            plt.close(fig)


_LONGEST = 70  # characters of a label drawn; a longer one keeps its two ends


def _text(value: object) -> str:
    """``value`` as text every font can be asked for (a lone surrogate becomes ``?``), at most
    :data:`_LONGEST` characters (a longer one would push the plot out of its figure)."""
    text = str(value).encode("utf-8", "replace").decode("utf-8")
    if len(text) > _LONGEST:
        half = (_LONGEST - 1) // 2
        text = f"{text[:half]}…{text[-half:]}"
    return text


def _save(fig: Any, path: str | Path) -> Path:
    """Save ``fig`` as a PNG at ``path`` atomically (never through a link there)."""
    from byzlearn.experiments.store import write_atomically

    path = Path(path)
    write_atomically(path, lambda fh: fig.savefig(fh, format="png", dpi=120))
    return path


def _series(label: str, x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """A curve's rounds and values as float arrays of one length (None is a gap)."""
    try:
        xs = np.asarray(list(x), dtype=float)
        ys = np.asarray(list(y), dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"curve {label!r}: rounds and values must be numbers") from None
    if xs.ndim != 1 or ys.ndim != 1:
        raise ValueError(f"curve {label!r}: rounds and values must be flat sequences of numbers")
    if xs.shape != ys.shape:
        raise ValueError(
            f"curve {label!r}: {xs.size} rounds but {ys.size} values (one value per round)"
        )
    return xs, ys


def accuracy_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    title: str = "",
    chance: float | None = None,
    ylabel: str = "test accuracy",
) -> Path:
    """One line per label: ``curves[label] = (rounds, values)``; saved to ``path``. Rounds and
    values of unequal lengths, or not numbers, are a ``ValueError`` naming the label."""
    series = {label: _series(label, x, y) for label, (x, y) in curves.items()}
    with _figure((6.4, 4.0)) as (fig, ax):
        lines, labels = [], []
        for label, (x, y) in series.items():
            lines += ax.plot(x, y, linewidth=1.6)
            labels.append(_text(label))
        if chance is not None:
            lines.append(ax.axhline(chance, color="grey", linestyle=":", linewidth=1))
            labels.append("chance")
        ax.set_xlabel("round")
        ax.set_ylabel(_text(ylabel))
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
        if title:
            ax.set_title(_text(title), fontsize=10)
        if lines:  # labels given to the legend as they are ("_x" is not hidden)
            ax.legend(lines, labels, fontsize=8, loc="best")
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
    (NaN cells, e.g. configurations a rule cannot run, are left blank). Values of another
    shape are a ``ValueError``."""
    try:
        values = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ValueError("heatmap: the values must be numbers") from None
    if values.shape != (len(rows), len(cols)):
        raise ValueError(
            f"heatmap: values of shape {values.shape} for {len(rows)} row(s) and "
            f"{len(cols)} column(s); give one value per row and column"
        )
    row_names, col_names = [_text(r) for r in rows], [_text(c) for c in cols]
    names = max((len(r) for r in row_names), default=0)  # long row names widen the figure
    width = 3.2 + 0.9 * max(2, len(cols)) + 0.08 * max(0, names - 10)
    with _figure((width, 1.4 + 0.45 * max(2, len(rows)))) as (fig, ax):
        masked = np.ma.masked_invalid(values)
        im = ax.imshow(masked, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(cols)), col_names)
        ax.set_yticks(range(len(rows)), row_names)
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                if np.isfinite(values[i, j]):
                    color = "black" if values[i, j] > 0.6 else "white"
                    ax.text(
                        j,
                        i,
                        f"{values[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color=color,
                    )
        ax.set_xlabel(_text(xlabel))
        ax.set_ylabel(_text(ylabel))
        if title:
            ax.set_title(_text(title), fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=_text(label))
        fig.tight_layout()
        return _save(fig, path)
