"""align_kit's defaults for a stage's trainer config where the recipe's ``trainer:`` is silent.

Used by the recipe loader (``Recipe.trainer_config``), so it lives below the stages: it reads the recipe
and the hardware, nothing else.
"""

from __future__ import annotations


def trainer_defaults(recipe) -> dict:
    """align_kit's defaults where the recipe's ``trainer:`` is silent (TRL's assume a bf16-capable GPU and
    turn on gradient checkpointing; on other hardware that costs speed for nothing)."""
    import torch

    t = recipe.trainer
    cuda = torch.cuda.is_available()
    d = {
        "bf16": t.get("bf16", cuda and torch.cuda.is_bf16_supported()),
        "gradient_checkpointing": recipe.model.gradient_checkpointing,
        "use_cpu": t.get("use_cpu", not cuda),
        "report_to": t.get("report_to", "none"),
        "save_only_model": t.get("save_only_model", False),
        # The Trainer's default replaces a NaN/inf loss in the logs by the running mean, which would hide the
        # fault from guards.NumericalGuard: log the real value.
        "logging_nan_inf_filter": t.get("logging_nan_inf_filter", False),
    }
    if recipe.stage == "dpo":
        # TRL's default (keep_start) cuts a long pair at its end, so the replies lose their end-of-turn
        # token, and drops pairs whose prompt fills max_length uncounted; keep_end cuts the prompt instead
        # (data.long_rows: drop then drops long pairs itself, counted: account_trl_rows)
        d["truncation_mode"] = t.get("truncation_mode", "keep_end")
    if d["gradient_checkpointing"]:
        d["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    if recipe.stage == "reward" and not cuda and not {"per_device_train_batch_size", "gradient_accumulation_steps"} & set(t):
        # RewardConfig's step of 8 pairs as 4 micro-batches of 2 pairs, each padded to its own longest sequence:
        # the same gradient (TRL's reward loss is a mean over pairs and the Trainer divides each micro-batch's
        # by 4), a quarter of the activations and less padding. On the benchmark this took the peak from 1.7 GB
        # (above TRL's defaults with their checkpointing and bf16) to 0.9 GB, without recomputation.
        d["per_device_train_batch_size"], d["gradient_accumulation_steps"] = 2, 4
    return d


