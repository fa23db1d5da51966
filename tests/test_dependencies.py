"""Every third-party module the package imports is declared in ``pyproject.toml``.

CI installs the optional extras (Ray, Flower, safetensors) and the dev tools, whose own
dependencies (click, for one) can hide a module the package imports without declaring it: a
plain ``pip install byzlearn`` then fails at the first such import (2026-12-07: ``import
click`` in the CLI; typer 0.22 and later carry their own copy and install no click). These
tests read the sources, so they hold whatever this environment has installed:

- a module imported at the top level of a module that ``import byzlearn`` or the console
  script loads (directly or through other top-level imports) is a core dependency;
- any other import (inside a function, under ``try: ... except ImportError``, or in a module
  only an optional feature loads) is a core dependency, an extra's, or a documented
  dependency of a dependency, imported where its absence is handled.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "byzlearn"

# Import names that differ from their distribution's name.
DISTRIBUTION_OF = {"sklearn": "scikit-learn", "yaml": "pyyaml"}
# Modules that come with a declared dependency and are imported only where their absence is
# handled (a fallback, a guard): llvmlite with numba, threadpoolctl with scikit-learn, triton
# with torch's CUDA builds, click with typer releases before 0.22.
TRANSITIVE = {
    "llvmlite": "numba",
    "threadpoolctl": "scikit-learn",
    "triton": "torch",
    "click": "typer",
}
# What ``import byzlearn`` and the console script load.
ENTRY_MODULES = ("byzlearn", "byzlearn.cli")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    name: str  # the imported module, dotted (absolute)
    line: int
    top_level: bool  # run when the importing module is imported (not lazy, not guarded)


def _requirement_name(spec: str) -> str:
    return re.split(r"[\s<>=!~;\[]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _declared() -> tuple[set[str], set[str]]:
    """(core dependencies, the extras' dependencies) of pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_requirement_name(s) for s in project["dependencies"]}
    extras = {
        _requirement_name(s) for group in project["optional-dependencies"].values() for s in group
    }
    return core, extras - core


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _guards_import_error(node: ast.Try) -> bool:
    for handler in node.handlers:
        caught = handler.type
        names = caught.elts if isinstance(caught, ast.Tuple) else [caught]
        if caught is None or any(
            isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError", "Exception")
            for n in names
        ):
            return True
    return False


def _imports(path: Path, text: str | None = None) -> list[Import]:
    """The imports of one source file (``text``, else the file's), each marked top-level or
    not; ``from a import b`` gives ``a`` and ``a.b`` (``b`` may be a submodule)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def absolute(node: ast.ImportFrom) -> list[str]:
        if node.level == 0:
            base = node.module or ""
        else:  # relative: the package, less one level per dot after the first
            parts = package.split(".")
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join([*parts, node.module] if node.module else parts)
        return [base, *(f"{base}.{a.name}" for a in node.names)]

    def visit(nodes: list[ast.stmt], top_level: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.extend(Import(module, a.name, node.lineno, top_level) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                found.extend(Import(module, n, node.lineno, top_level) for n in absolute(node))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(node.body, False)
            elif isinstance(node, ast.ClassDef):
                visit(node.body, top_level)
            elif isinstance(node, ast.Try):
                guarded = _guards_import_error(node)
                visit(node.body, top_level and not guarded)
                for handler in node.handlers:
                    visit(handler.body, top_level and not guarded)
                visit(node.orelse, top_level)
                visit(node.finalbody, top_level)
            elif isinstance(node, ast.If):
                typing_only = "TYPE_CHECKING" in ast.unparse(node.test)
                visit(node.body, top_level and not typing_only)
                visit(node.orelse, top_level)
            elif isinstance(node, (ast.With, ast.For, ast.While)):
                visit(node.body, top_level)
                visit(getattr(node, "orelse", []), top_level)

    visit(ast.parse(path.read_text() if text is None else text).body, True)
    return found


def _third_party(name: str) -> str | None:
    """The distribution of an imported module; None for the standard library and byzlearn."""
    top = name.split(".")[0]
    if top in sys.stdlib_module_names or top in ("byzlearn", "__future__"):
        return None
    return DISTRIBUTION_OF.get(top, top).lower().replace("_", "-")


ALL_IMPORTS = [imp for path in sorted(PACKAGE.rglob("*.py")) for imp in _imports(path)]
MODULES = {_module_name(p) for p in PACKAGE.rglob("*.py")}


def _loaded_by_entry_points() -> set[str]:
    """The package's modules that ``import byzlearn`` and the console script load: the
    closure of the entry modules over top-level imports (a module's parent packages included,
    as Python imports them first)."""
    top_level: dict[str, set[str]] = {}
    for imp in ALL_IMPORTS:
        if imp.top_level and imp.name.split(".")[0] == "byzlearn":
            target = imp.name
            while target not in MODULES and "." in target:  # `from pkg import name`
                target = target.rpartition(".")[0]
            top_level.setdefault(imp.module, set()).add(target)
    loaded: set[str] = set()
    pending = list(ENTRY_MODULES)
    while pending:
        module = pending.pop()
        if module in loaded or module not in MODULES:
            continue
        loaded.add(module)
        parts = module.split(".")
        pending.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        pending.extend(top_level.get(module, ()))
    return loaded


def test_the_sources_are_read() -> None:
    """The scan sees the imports it must see (a scan that finds nothing passes everything)."""
    names = {(imp.module, imp.name.split(".")[0], imp.top_level) for imp in ALL_IMPORTS}
    assert ("byzlearn.cli", "typer", True) in names
    assert ("byzlearn.engines.ray_engine", "ray", True) in names
    assert ("byzlearn.aggregators.sharded", "ray", False) in names  # inside a method
    loaded = _loaded_by_entry_points()
    assert {"byzlearn.cli", "byzlearn.aggregators", "byzlearn.experiments.cli"} <= loaded
    assert "byzlearn.engines.ray_engine" not in loaded


def test_every_import_is_declared() -> None:
    core, extras = _declared()
    undeclared = []
    for imp in ALL_IMPORTS:
        dist = _third_party(imp.name)
        if dist is None or dist in core or dist in extras:
            continue
        carrier = TRANSITIVE.get(dist)
        if carrier in core and not imp.top_level:
            continue
        undeclared.append(f"{imp.module}:{imp.line} imports {imp.name} ({dist})")
    assert not undeclared, "not in pyproject.toml's dependencies: " + "; ".join(undeclared)


def test_a_plain_install_loads_the_package_and_the_cli() -> None:
    """Without the extras (and without what only they bring), ``import byzlearn`` and the
    ``byzlearn`` command start: their modules import core dependencies only, at top level."""
    core, _ = _declared()
    loaded = _loaded_by_entry_points()
    bad = [
        f"{imp.module}:{imp.line} imports {imp.name}"
        for imp in ALL_IMPORTS
        if imp.module in loaded
        and imp.top_level
        and (dist := _third_party(imp.name)) is not None
        and dist not in core
    ]
    assert not bad, "a plain install cannot load: " + "; ".join(bad)


@pytest.mark.parametrize(
    ("source", "top_level"),
    [
        ("import click\n", True),
        ("try:\n    import click\nexcept ImportError:\n    click = None\n", False),
        ("def f():\n    import click\n", False),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import click\n", False),
        ("class A:\n    import click\n", True),
    ],
)
def test_the_scan_tells_top_level_imports(source: str, top_level: bool) -> None:
    imports = [i for i in _imports(PACKAGE / "probe.py", source) if i.name == "click"]
    assert [i.top_level for i in imports] == [top_level]


def test_relative_imports_resolve() -> None:
    imports = _imports(PACKAGE / "engines" / "probe.py", "from ..aggregators import krum\n")
    assert [i.name for i in imports] == ["byzlearn.aggregators", "byzlearn.aggregators.krum"]
