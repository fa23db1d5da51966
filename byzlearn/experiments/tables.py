"""Markdown tables of run summaries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["fmt", "markdown_table"]


def fmt(value: Any, digits: int = 3) -> str:
    """A cell: floats (numpy's too) rounded, None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}f}"
    return str(value)


def _number(value: Any) -> bool:
    """Whether ``value`` is a number (a numpy one too) or None: a cell of a right-aligned column."""
    return value is None or isinstance(value, (int, float, np.integer, np.floating, np.bool_))


def _cell(text: str) -> str:
    """``text`` as it can stand in one cell: a ``|`` escaped (``\\|``), line breaks as spaces
    (either would end the cell or the row: a value from a config, e.g. a path or an option
    string, would shift the columns of its row)."""
    return " ".join(text.replace("|", "\\|").splitlines())


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned; ``|`` in a cell escaped, line
    breaks as spaces). A row of another length than ``headers`` is a ``ValueError``."""
    if not headers:
        raise ValueError("markdown_table: give at least one header")
    for i, row in enumerate(rows):
        if len(row) != len(headers):
            raise ValueError(
                f"markdown_table: row {i} has {len(row)} cell(s) for {len(headers)} header(s)"
            )
    headers = [_cell(str(h)) for h in headers]
    cells = [[_cell(fmt(v)) for v in row] for row in rows]
    numeric = [all(_number(row[i]) for row in rows) and bool(rows) for i in range(len(headers))]
    widths = [max([3, len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "| " + " | ".join(parts) + " |"

    sep = (
        "| "
        + " | ".join(
            ("-" * (w - 1) + ":") if num else "-" * w
            for w, num in zip(widths, numeric, strict=True)
        )
        + " |"
    )
    return "\n".join([line(headers), sep, *(line(r) for r in cells)]) + "\n"
