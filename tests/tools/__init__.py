"""Tests of the developer tools in ``tools/``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load_tool(name: str) -> ModuleType:
    """The script ``tools/<name>.py`` as the module ``<name>_tool`` (registered in
    ``sys.modules``: its dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(f"{name}_tool", ROOT / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(f"{name}_tool", module)
    spec.loader.exec_module(module)
    return module
