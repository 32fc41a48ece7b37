"""Stages. ``STAGES`` is the only registry: stage name -> module.

Each stage module defines ``TRAINER_CONFIG`` (the config class the recipe's ``trainer:`` block fills),
``OPTIONS`` (a dataclass for the block named after the stage, or None) and ``run(recipe) -> Path``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from align_kit.errors import ConfigError
from align_kit.families import closest

STAGES = {
    "pretrain": "align_kit.stages.pretrain",
    "sft": "align_kit.stages.sft",
    "reward": "align_kit.stages.reward",
    "dpo": "align_kit.stages.dpo",
    "kto": "align_kit.stages.dpo",
    "ppo": "align_kit.stages.ppo",
}


def get_stage(name: str) -> ModuleType:
    if name not in STAGES:
        hint = closest(str(name), STAGES)
        raise ConfigError(f"stage: unknown stage '{name}'" + (f" (did you mean '{hint}'?)" if hint else "")
                          + f"; valid: {', '.join(STAGES)}")
    module = importlib.import_module(STAGES[name])
    return getattr(module, "KTO", module) if name == "kto" else module


def run_stage(recipe) -> Path:
    """Run a validated recipe's stage; returns the output folder.

    Every random generator is seeded with the recipe's seed first. The trainers seed themselves only once they
    are built, after the model is: without this, what a stage initialises on loading (a reward model's score
    head, LoRA adapters) would depend on what ran before it in the process, and a stage run alone would not
    reproduce the same stage run inside a pipeline."""
    from transformers import set_seed

    from align_kit.identity import check_and_record

    check_and_record(recipe)  # before anything loads: a folder holding another run stops here
    set_seed(recipe.seed)
    out = get_stage(recipe.stage).run(recipe)
    from align_kit.harness_stage import run_for_stage

    run_for_stage(recipe, out)  # the recipe's evaluation.harness tasks, before and after (harness.json)
    return out
