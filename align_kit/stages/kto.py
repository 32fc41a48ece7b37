"""KTO (Ethayarajh et al. 2024) from an SFT checkpoint: unpaired rows (prompt, completion, label), or preference
pairs split into a desirable and an undesirable example each -> TRL's KTOTrainer.

It shares the DPO stage's options (``kto: {reference: ...}``), checks and training path (``stages/dpo.py``);
only the trainer config and the data differ.
"""

from __future__ import annotations

from trl import KTOConfig

from align_kit.stages.dpo import OPTIONS, VALIDATORS, trainer_extras
from align_kit.stages.dpo import run_kto as run

__all__ = ["OPTIONS", "TRAINER_CONFIG", "VALIDATORS", "run", "trainer_extras"]
TRAINER_CONFIG = KTOConfig
