"""What a run folder tells evaluation: where its model is and the ``max_length`` it was trained with.

``align-kit eval`` takes a run folder wherever it takes a model folder (as ``align-kit score`` does): the
run's ``model/`` is evaluated, and sequences are cut to the run's training length unless ``--max-length``
says otherwise, so a reward model is not scored on tokens it never saw in training (or left-truncated
differently from how it was trained).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

# Where each stage keeps its training length, and the TRL config whose default applies when a recipe's
# trainer block leaves it out (by name: evaluation must not import the stages, which import evaluation).
_TRL_CONFIGS = {"sft": "SFTConfig", "reward": "RewardConfig", "dpo": "DPOConfig", "kto": "KTOConfig"}


def model_folder(path: str | Path) -> Path:
    """The folder holding the model: a run folder's ``model/`` when it has one, else ``path`` itself."""
    folder = Path(path)
    return folder / "model" if (folder / "model" / "config.json").exists() else folder


def run_recipe(path: str | Path) -> dict | None:
    """The resolved recipe recorded in a run folder's ``manifest.json`` (None for a bare model folder)."""
    folder = Path(path)
    for candidate in (folder, folder.parent):  # the run folder, or its model/
        manifest = candidate / "manifest.json"
        if manifest.is_file():
            return json.loads(manifest.read_text(encoding="utf-8")).get("recipe")
    return None


def training_max_length(recipe: dict | None) -> int | None:
    """The sequence length a recipe trained with: ``trainer.max_length`` (TRL's default when left out),
    ``pretrain.block_size`` for pretraining; None for stages without one (PPO and the RL stages).

    >>> training_max_length({"stage": "reward", "trainer": {"max_length": 256}})
    256
    >>> training_max_length({"stage": "pretrain", "trainer": {}, "pretrain": {"block_size": 128}})
    128
    """
    if not recipe:
        return None
    stage = recipe.get("stage")
    if stage == "pretrain":
        return (recipe.get("pretrain") or {}).get("block_size")
    trainer = recipe.get("trainer") or {}
    if "max_length" in trainer:
        return trainer["max_length"]
    if stage in _TRL_CONFIGS:
        import trl

        fields = {f.name: f.default for f in dataclasses.fields(getattr(trl, _TRL_CONFIGS[stage]))}
        return fields.get("max_length")
    return None


def max_length_for(path: str | Path, given: int | None, fallback: int | None) -> tuple[int | None, str]:
    """``(max_length, where it came from)``: ``--max-length`` when given, else the run's training length,
    else ``fallback``."""
    if given is not None:
        return given, "--max-length"
    trained = training_max_length(run_recipe(path))
    if trained is not None:
        return trained, "the run's training max_length"
    return fallback, "default"
