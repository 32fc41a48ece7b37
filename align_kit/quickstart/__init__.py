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


def seed_overrides(pipeline: str | Path, seed: int, data_dir: str | Path) -> dict[str, list[str]]:
    """Draw the quickstart data from ``seed`` into ``data_dir`` and return, per stage of ``pipeline``, the
    overrides that train on it: each ``quickstart-*`` card source becomes the drawn file, and the stage's
    ``seed`` becomes its recipe's seed + ``seed``. Seed 0 is the shipped data (and recipe seeds).
    """
    from align_kit.config import parse_yaml
    from align_kit.errors import ConfigError
    from align_kit.pipeline import load_pipeline
    from align_kit.quickstart import tasks

    data_dir = Path(data_dir).resolve()
    tasks.write_files(data_dir, seed=seed)
    spec, base = load_pipeline(pipeline)
    out: dict[str, list[str]] = {}
    for stage in spec.stages:
        raw = parse_yaml((base / stage.recipe).read_text(encoding="utf-8"))
        items = [f"seed={int(raw.get('seed', 42)) + seed}"]
        for key in ("train", "eval"):
            sources = []
            for src in (raw.get("data") or {}).get(key) or []:
                if src.get("name") in CARD_FILES:
                    stem, fmt = CARD_FILES[src["name"]]
                    split = src.get("split", key)
                    if split not in ("train", "test"):
                        raise ConfigError(f"{stage.recipe}: data.{key}: quickstart split {split!r}: expected train or test")
                    src = {**{k: v for k, v in src.items() if k not in ("name", "split")},
                           "path": str(data_dir / f"{stem}_{split}.jsonl"), "format": fmt}
                sources.append(src)
            if sources:
                items.append(f"data.{key}={json.dumps(sources)}")
        out[stage.name] = items
    return out
