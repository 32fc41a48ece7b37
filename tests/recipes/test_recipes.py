"""Every recipe under recipes/ validates against the code (keys, TRL fields, stages); every dataset it
names has a data card, and no evaluation-only split is used for training; and each passes the complete check a
run makes (align_kit.recipe_check) once the earlier stages it builds on have written their folders."""

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
    recipe = load_recipe(path, inputs=False)  # the folders of earlier stages: test_recipe_passes_the_full_check
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
        load_recipe(base / stage.recipe, inputs=False)


def _stage_folder(folder: Path) -> None:
    """What a finished stage leaves for the next one to check: model/config.json (no weights are read)."""
    (folder / "model").mkdir(parents=True, exist_ok=True)
    (folder / "model" / "config.json").write_text('{"model_type": "llama", "max_position_embeddings": 4096}')


def _hub_cache_entry(cache: Path, repo_id: str) -> None:
    """What a first online run leaves in the Hugging Face cache for a Hub model: its config.json (no weights)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True, exist_ok=True)
    (repo / "snapshots" / ("0" * 40) / "config.json").write_text('{"model_type": "llama"}')


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_recipe_passes_the_full_check(path, shared, tmp_path, monkeypatch):
    """`align-kit train RECIPE --check` passes every shipped recipe, with the shared data in place, the output
    folders of the stages it builds on (runs/<family>/sft, .../reward) written, as after those runs, and its Hub
    model in the (offline) Hugging Face cache, as after a first online run."""
    from helpers import cache_hub_models

    from align_kit.cli import main

    monkeypatch.setenv("ALIGN_KIT_SHARED", str(shared))
    monkeypatch.chdir(tmp_path)  # runs/... in the recipes is relative to the working directory
    cache_hub_models(monkeypatch, tmp_path / "hub_cache")
    raw = load_recipe(path, inputs=False)
    for value in (raw.model.name_or_path, getattr(raw.options, "reward_model", None)):
        if value and value.startswith("runs/"):
            _stage_folder(tmp_path / value)
        elif value and value.count("/") == 1 and not value.startswith((".", "/", "$")):  # a Hub id
            cache_hub_models(monkeypatch, tmp_path / "hub_cache", value)
    if "{name: gsm8k," in path.read_text():  # no copy ships (data_cards/gsm8k.md): a stand-in where the card looks
        (tmp_path / "data" / "gsm8k").mkdir(parents=True)
        for split in ("train", "test"):
            (tmp_path / "data" / "gsm8k" / f"{split}.jsonl").write_text(
                '{"question": "Tom has 3 apples and buys 4. How many now?", "answer": "3 + 4 = 7\\n#### 7"}\n')
    assert main(["train", str(path), f"output_dir={tmp_path / 'out'}", "--check"]) == 0


def test_cards_have_provenance_prose():
    for name, card in registry().items():
        body = card.path.read_text(encoding="utf-8").split("---", 2)[2]
        assert len(body.split()) >= 30, f"data card {name} needs provenance, intended use and known issues"
