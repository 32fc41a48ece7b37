"""Every recipe under recipes/ validates against the code (keys, TRL fields, stages); every dataset it
names has a data card, and no evaluation-only split is used for training."""

from __future__ import annotations

from pathlib import Path

import pytest

from align_kit.config import load_recipe
from align_kit.data.cards import get_card, registry

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml")
                 if "accelerate" not in p.parts and not p.name.startswith("pipeline"))
PIPELINES = sorted((ROOT / "recipes").rglob("pipeline*.yaml"))


def test_recipe_count():
    # Update when adding recipes: a glob that silently found nothing would test nothing.
    assert len(RECIPES) >= 5, [str(p.relative_to(ROOT)) for p in RECIPES]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_recipe_validates_and_datasets_have_cards(path, monkeypatch):
    monkeypatch.setenv("ALIGN_KIT_SHARED", str(ROOT.parent / "shared"))
    recipe = load_recipe(path)
    if recipe.data is None:
        return
    for src in recipe.data.train:
        if src.name:
            card = get_card(src.name)
            assert src.split not in card.eval_only_splits, f"{path.name} trains on eval-only {src.name}[{src.split}]"
    for src in recipe.data.eval:
        if src.name:
            get_card(src.name)


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_pipelines_reference_valid_recipes(path):
    from align_kit.pipeline import load_pipeline

    spec, base = load_pipeline(path)
    for stage in spec.stages:
        load_recipe(base / stage.recipe)


def test_cards_have_provenance_prose():
    for name, card in registry().items():
        body = card.path.read_text(encoding="utf-8").split("---", 2)[2]
        assert len(body.split()) >= 30, f"data card {name} needs provenance, intended use and known issues"
