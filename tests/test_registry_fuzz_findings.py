"""Registry: what a random search over names and aliases found (each registered name must be
found by a lookup of itself; a registration that could never be found is refused)."""

from __future__ import annotations

import pytest

from byzlearn.registry import Registry


@pytest.mark.parametrize("name", [" krum", "krum ", "\tkrum", " "])
def test_a_name_with_surrounding_whitespace_is_refused(name: str) -> None:
    """Lookups strip it: ``" krum"`` was registered but never found, and a lookup of it gave
    the entry registered as ``"krum"``."""
    rules = Registry("rule")
    with pytest.raises(ValueError, match="no leading or trailing whitespace"):
        rules.add(name, 1)
    with pytest.raises(ValueError, match="no leading or trailing whitespace"):
        rules.add("other", 2, aliases=(name,))
    assert rules.names() == [] and rules.aliases() == {}  # nothing half-registered


def test_an_empty_or_non_string_alias_is_refused() -> None:
    rules = Registry("rule")
    for alias in ("", None, 3):
        with pytest.raises(TypeError, match="name must be a non-empty string"):
            rules.add("krum", 1, aliases=(alias,))  # type: ignore[arg-type]
    assert "krum" not in rules


def test_aliases_given_as_one_string_are_refused() -> None:
    """``aliases="mk"`` registered the aliases ``m`` and ``k``, one per character."""
    rules = Registry("rule")
    with pytest.raises(TypeError, match="aliases must be a tuple of names, got 'mk'"):
        rules.add("multi_krum", 1, aliases="mk")  # type: ignore[arg-type]
    rules.add("multi_krum", 1, aliases=("mk",))
    assert rules.get("mk") == 1 and "m" not in rules


def test_every_registered_name_and_alias_is_found_by_itself() -> None:
    shapes = Registry("shape", normalise=lambda s: s.lower().replace("-", "_"))
    shapes.add("Big-Square", 4, aliases=("BS", "b_s2"))
    for name in ("Big-Square", "big_square", " BS ", "b-s2"):
        assert shapes.get(name) == 4
    assert shapes.names() == ["big_square"]
