"""KTO (Ethayarajh et al. 2024) from an SFT checkpoint: unpaired rows (prompt, completion, label), or preference
pairs split into a desirable and an undesirable example each -> TRL's KTOTrainer.

KTO takes the DPO stage's options (``kto: {reference: ...}``), reference handling and training path from
``stages/dpo.py``; what is KTO's own lives here: its trainer config, its loss names and its data.
"""

from __future__ import annotations

from pathlib import Path

from trl import KTOConfig

from align_kit.stages.dpo import OPTIONS, check_options, reference_mode, train_and_evaluate, trainer_extras
from align_kit.stages.reward import use_finished_stage

__all__ = ["KTO_LOSS_TYPES", "OPTIONS", "TRAINER_CONFIG", "VALIDATORS", "run", "trainer_extras"]
TRAINER_CONFIG = KTOConfig
# The loss_type choices of TRL 1.16's KTOConfig (a test reads them from TRL to keep this true).
KTO_LOSS_TYPES = ("kto", "apo_zero_unpaired")


def _check(recipe) -> None:
    check_options(recipe, KTO_LOSS_TYPES)


VALIDATORS = (_check,)


def run(recipe) -> Path:
    """KTO on unpaired rows; paired rows are split into a desirable and an undesirable example each. Held-out
    evaluation needs pairs, so it runs only when the eval rows are paired."""
    from trl import KTOTrainer

    from align_kit.data.preference import to_unpaired
    from align_kit.data.sources import load_data
    from align_kit.models import load_tokenizer

    mode = reference_mode(recipe)
    use_finished_stage(recipe)
    tokenizer = load_tokenizer(recipe.model)
    data = load_data(recipe.data, "unpaired")
    train = data.train if not data.train or "label" in data.train[0] else to_unpaired(data.train)
    train = [{k: r[k] for k in ("prompt", "completion", "label")} for r in train]
    eval_pairs = [r for r in data.eval if "chosen" in r]
    return train_and_evaluate(recipe, KTOTrainer, train, eval_pairs, data, tokenizer, mode)
