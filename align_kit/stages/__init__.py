"""Stages: one module each (``pretrain``, ``sft``, ``reward``, ``dpo``, ``kto``, ``ppo``), each with
``run(recipe) -> Path``. The registry is derived from this folder: ``align_kit.registry`` (``STAGES``,
``get_stage``), which the recipe loader uses without importing this package.
"""

from __future__ import annotations

from pathlib import Path

from align_kit.registry import STAGES, get_stage

__all__ = ["STAGES", "get_stage", "run_stage"]


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
