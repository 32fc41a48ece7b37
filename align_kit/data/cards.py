"""Data cards: ``data_cards/<name>.md``; the YAML front matter is the dataset registry recipes refer to.

Front matter keys: ``name``, ``license``, ``format``, ``task`` (sft, preference, pretrain), ``source``
(``hub`` id + ``revision``, or ``path``, or ``package`` folder inside align_kit), ``splits`` (split ->
file, or Hub split name), ``eval_only_splits`` (never used for training), ``columns`` (renames).
The prose says provenance, intended use and known issues.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

from align_kit.errors import ConfigError, closest

REQUIRED = ("name", "license", "format", "source", "splits")


def cards_dir() -> Path:
    """``$ALIGN_KIT_CARDS`` or the repository's ``data_cards/`` beside the package."""
    return Path(os.environ.get("ALIGN_KIT_CARDS", Path(__file__).resolve().parents[2] / "data_cards"))


@dataclass
class Card:
    name: str
    license: str
    format: str
    task: str = ""
    source: dict = field(default_factory=dict)
    splits: dict = field(default_factory=dict)
    eval_only_splits: list = field(default_factory=list)
    columns: dict = field(default_factory=dict)
    path: Path | None = None
    meta: dict = field(default_factory=dict)

    def split_location(self, split: str, for_training: bool) -> str:
        """File path or ``hub:<id>:<split>`` of a split; refuses eval-only splits for training."""
        if split not in self.splits:
            hint = closest(split, self.splits)
            raise ConfigError(f"dataset '{self.name}' has no split '{split}'" + (f" (did you mean '{hint}'?)" if hint else "")
                              + f"; splits: {', '.join(self.splits)}")
        if for_training and split in self.eval_only_splits:
            raise ConfigError(f"dataset '{self.name}': split '{split}' is evaluation-only (its card says so) and "
                              "cannot be used for training; use it under data.eval")
        loc = str(self.splits[split])
        if "hub" in self.source:
            return f"hub:{self.source['hub']}:{loc}"
        if "package" in self.source:
            return str(Path(__file__).resolve().parents[1] / self.source["package"] / loc)
        from align_kit.envvars import expand_env

        base = expand_env(str(self.source.get("path", "")))
        return str(Path(base) / loc) if base else loc


def parse_card(path: Path) -> Card:
    text = path.read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        raise ConfigError(f"{path}: a data card starts with YAML front matter between '---' lines")
    _, front, _body = text.split("---\n", 2)
    meta = yaml.safe_load(front) or {}
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise ConfigError(f"{path}: front matter lacks {', '.join(missing)}")
    known = {k: meta[k] for k in (*REQUIRED, "task", "eval_only_splits", "columns") if k in meta}
    return Card(**known, path=path, meta=meta)


@cache
def registry(folder: str | None = None) -> dict[str, Card]:
    root = Path(folder) if folder else cards_dir()
    cards = {}
    for path in sorted(root.glob("*.md")):
        if path.name.lower() == "readme.md":
            continue
        card = parse_card(path)
        if card.name in cards:
            raise ConfigError(f"{path}: dataset name '{card.name}' is also used by {cards[card.name].path}")
        cards[card.name] = card
    return cards


def get_card(name: str) -> Card:
    cards = registry()
    if name not in cards:
        hint = closest(name, cards)
        raise ConfigError(f"data: no data card for dataset '{name}'" + (f" (did you mean '{hint}'?)" if hint else "")
                          + f"; add data_cards/{name}.md (known: {', '.join(sorted(cards))})")
    return cards[name]
