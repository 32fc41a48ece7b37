"""The quickstart: a tiny Llama-architecture model, a character tokenizer built in process, and a task
family whose answers a program checks, so each stage's effect is a number (verifier accuracy).

``align-kit quickstart`` trains on the shipped data (seed 0). ``--seed N`` draws the data anew from seed N
(``tasks.write_files``) into the run folder and trains every stage with the recipe's seed + N, so the
quickstart's effects can be checked over seeds (``benchmarks/quickstart_seeds.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

# data card name -> file stem of ``tasks.write_files`` (``<stem>_train.jsonl``, ``<stem>_test.jsonl``)
CARD_FILES = {"quickstart-tasks": ("sft", "messages"), "quickstart-preferences": ("pref", "preference")}


def recipe_seed_overrides(recipe: str | Path, seed: int, data_dir: str | Path) -> list[str]:
    """Overrides that train ``recipe`` on the data drawn from ``seed`` in ``data_dir`` (``tasks.write_files``):
    each ``quickstart-*`` card source becomes the drawn file, and ``seed`` becomes the recipe's seed + ``seed``."""
    from align_kit.config import parse_yaml
    from align_kit.errors import ConfigError

    data_dir = Path(data_dir).resolve()
    raw = parse_yaml(Path(recipe).read_text(encoding="utf-8"))
    items = [f"seed={int(raw.get('seed', 42)) + seed}"]
    for key in ("train", "eval"):
        sources = []
        for src in (raw.get("data") or {}).get(key) or []:
            if src.get("name") in CARD_FILES:
                stem, fmt = CARD_FILES[src["name"]]
                split = src.get("split", key)
                if split not in ("train", "test"):
                    raise ConfigError(f"{recipe}: data.{key}: quickstart split {split!r}: expected train or test")
                src = {**{k: v for k, v in src.items() if k not in ("name", "split")},
                       "path": str(data_dir / f"{stem}_{split}.jsonl"), "format": fmt}
            sources.append(src)
        if sources:
            items.append(f"data.{key}={json.dumps(sources)}")
    return items


def seed_overrides(pipeline: str | Path, seed: int, data_dir: str | Path) -> dict[str, list[str]]:
    """Draw the quickstart data from ``seed`` into ``data_dir`` and return, per stage of ``pipeline``, the
    ``recipe_seed_overrides`` that train on it. Seed 0 is the shipped data (and recipe seeds)."""
    from align_kit.pipeline import load_pipeline
    from align_kit.quickstart import tasks

    tasks.write_files(data_dir, seed=seed)
    spec, base = load_pipeline(pipeline)
    return {stage.name: recipe_seed_overrides(base / stage.recipe, seed, data_dir) for stage in spec.stages}
