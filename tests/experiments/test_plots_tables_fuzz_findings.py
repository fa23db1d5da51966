"""Plots and tables: what a random search over result sets and names found."""

from __future__ import annotations

import numpy as np
import pytest

from byzlearn.experiments import plots
from byzlearn.experiments.plots import accuracy_curves, heatmap
from byzlearn.experiments.tables import markdown_table

PNG = b"\x89PNG\r\n\x1a\n"


def _open_figures() -> int:
    return len(plots._pyplot().get_fignums())


@pytest.mark.parametrize("name", ["cost $\\frac$", "a$b$c", "$", "\ud800", "_private", "x" * 300])
def test_any_name_is_drawn_as_given(tmp_path, name: str) -> None:
    """A ``$`` started a formula (``$\\frac$`` raised matplotlib's ParseSyntaxException, ``a$b$c``
    lost its dollars), a lone surrogate raised ft2font's TypeError, a label starting with ``_``
    was left out of the legend, and a 300-character one pushed the plot out of the figure."""
    path = accuracy_curves(
        {name: ([0, 1, 2], [0.1, 0.5, 0.7])}, tmp_path / "c.png", title=name, chance=0.1
    )
    assert path.read_bytes()[:8] == PNG
    path = heatmap(np.array([[0.5, np.nan]]), [name], [name, "f=1"], tmp_path / "h.png", title=name)
    assert path.read_bytes()[:8] == PNG
    assert _open_figures() == 0


def test_the_legend_holds_every_label_as_given(monkeypatch, tmp_path) -> None:
    seen: list[list[str]] = []
    save = plots._save

    def spy(fig, path):
        seen.append([t.get_text() for t in fig.axes[0].get_legend().get_texts()])
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    curves = {"_nnm": ([0, 1], [0.2, 0.3]), "a$b$c": ([0, 1], [0.4, 0.5]), "y" * 100: ([0], [1])}
    accuracy_curves(curves, tmp_path / "c.png", chance=0.1)
    assert seen == [["_nnm", "a$b$c", f"{'y' * 34}…{'y' * 34}", "chance"]]


def test_a_failed_figure_is_closed(monkeypatch, tmp_path) -> None:
    """A figure whose drawing or saving failed stayed open in the process (matplotlib warns
    from 20 on, and keeps their memory)."""

    def fail(fig, path):
        raise OSError("disk full")

    monkeypatch.setattr(plots, "_save", fail)
    before = _open_figures()
    for _ in range(3):
        with pytest.raises(OSError, match="disk full"):
            accuracy_curves({"krum": ([0], [0.5])}, tmp_path / "c.png")
        with pytest.raises(OSError, match="disk full"):
            heatmap(np.zeros((1, 1)), ["krum"], ["f=1"], tmp_path / "h.png")
    assert _open_figures() == before


@pytest.mark.parametrize(
    ("shape", "rows", "cols"), [((2, 2), 1, 2), ((1, 3), 1, 2), ((2,), 1, 2), ((1, 2, 2), 1, 2)]
)
def test_heatmap_values_of_another_shape_are_refused(tmp_path, shape, rows, cols) -> None:
    """(2, 2) values for one row label drew an unlabelled second row; a 1-D array raised
    matplotlib's 'Invalid shape (2,) for image data'."""
    with pytest.raises(ValueError, match=r"heatmap: values of shape .* give one value per row"):
        heatmap(np.zeros(shape), ["r"] * rows, ["c"] * cols, tmp_path / "h.png")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        ([1, 2, 3], [0.1, 0.2], "3 rounds but 2 values"),
        ([1, 2], [0.1, "x"], "must be numbers"),
        ([[1, 2]], [[0.1, 0.2]], "must be flat sequences of numbers"),
    ],
)
def test_a_curve_that_is_not_one_value_per_round_is_refused(tmp_path, x, y, match) -> None:
    """A string value was drawn as a category of a second y axis scale, without error."""
    with pytest.raises(ValueError, match=f"curve 'krum': .*{match}"):
        accuracy_curves({"krum": (x, y)}, tmp_path / "c.png")


def test_no_curves_and_gaps_draw_without_warnings(tmp_path, recwarn) -> None:
    accuracy_curves({}, tmp_path / "empty.png")
    accuracy_curves({"krum": ([0, 1, 2], [0.1, None, float("nan")])}, tmp_path / "gaps.png")
    assert not [w for w in recwarn if "legend" in str(w.message)]


def test_numpy_numbers_are_numbers_in_a_table() -> None:
    """``np.float32(0.123456)`` was written unrounded and its column left-aligned."""
    table = markdown_table(["rule", "acc", "f"], [["krum", np.float32(0.123456), np.int64(7)]])
    assert table.splitlines()[1] == "| ---- | ----: | --: |"
    assert table.splitlines()[2] == "| krum | 0.123 |   7 |"


@pytest.mark.parametrize(
    ("headers", "rows", "match"),
    [
        (["a", "b"], [[1]], "row 0 has 1 cell"),
        (["a"], [[1], [1, 2]], "row 1 has 2 cell"),
        ([], [], "give at least one header"),
    ],
)
def test_a_ragged_table_is_refused_in_one_line(headers, rows, match) -> None:
    """A short row raised IndexError, a long one zip()'s 'argument 2 is shorter'."""
    with pytest.raises(ValueError, match=f"markdown_table: {match}"):
        markdown_table(headers, rows)


# ---------------------------------------------------------------- the demo's arguments and files
def test_the_demo_refuses_a_rule_given_twice(tmp_path) -> None:
    """``--rules average,average`` ran once but reported '2 run(s)'; now one line, nothing
    written."""
    from byzlearn.experiments.config import ConfigError
    from byzlearn.experiments.demo import check_demo

    with pytest.raises(ConfigError, match="rules: average given twice; give each rule once"):
        check_demo(tmp_path / "demo", rules=["average", "krum", "average"], steps=2)
    assert not (tmp_path / "demo").exists()


def test_the_demo_names_a_directory_it_cannot_create(tmp_path) -> None:
    """It raised the bare OSError, which the command printed as a dataset error
    ('dataset.name=digits: [Errno 20] Not a directory')."""
    from byzlearn.experiments.demo import run_demo
    from byzlearn.experiments.store import RunDirError

    (tmp_path / "file").write_text("")
    with pytest.raises(RunDirError, match="file/demo: cannot create the directory"):
        run_demo(tmp_path / "file" / "demo", rules=["average"], steps=2)


def test_the_demo_table_is_never_written_through_a_link(tmp_path) -> None:
    """``table.md`` was written with ``write_text``, through a link there to outside the
    directory (the figure beside it was already written atomically)."""
    from byzlearn.experiments.demo import run_demo

    outside = tmp_path / "outside.md"
    outside.write_text("not the demo's")
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "table.md").symlink_to(outside)
    result = run_demo(demo, rules=["average"], steps=2)
    assert outside.read_text() == "not the demo's"
    assert not (demo / "table.md").is_symlink()
    assert (demo / "table.md").read_text().endswith(result.table)
    assert (demo / "accuracy.png").read_bytes()[:8] == PNG
    assert sorted(p.name for p in demo.iterdir()) == ["accuracy.png", "average", "table.md"]


def test_a_damaged_earlier_run_of_the_demo_is_one_line_before_training(tmp_path) -> None:
    """The table shows the finished runs of other rules already there; a damaged metrics file
    of one was found only after the new rule's run had trained (and the table was not
    written)."""
    from byzlearn.experiments.demo import run_demo
    from byzlearn.experiments.store import RunDirError

    demo = tmp_path / "demo"
    run_demo(demo, rules=["average"], steps=2)
    (demo / "average" / "metrics.jsonl").write_text('{"round": 0}\n{"round": \n')
    with pytest.raises(RunDirError, match=r"metrics\.jsonl"):
        run_demo(demo, rules=["median"], steps=2)
    assert not (demo / "median").exists()  # refused before the median's run started
