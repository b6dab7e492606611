"""Every recipe shipped under recipes/ validates (accelerate configs are not rmkit recipes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rmkit.config.kinds import load_config

RECIPES = sorted(
    p
    for p in (Path(__file__).resolve().parents[3] / "recipes").rglob("*.yaml")
    if "accelerate" not in p.parts
)


def test_there_are_recipes():
    assert RECIPES, "recipes/ is empty"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_recipe_validates(path):
    cfg = load_config(path)
    assert cfg.kind
