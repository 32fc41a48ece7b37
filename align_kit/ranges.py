"""Ranges and meanings of recipe settings: a value that would train nothing, or report something meaningless,
is refused before anything loads with one line naming the key, the value and what is expected."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from align_kit.errors import ConfigError

# (where, test, what is expected): settings that would train nothing or mean nothing outside their range
_POSITIVE_INT = (lambda v: v >= 1, "an integer of at least 1")
_RANGES = {
    "peft.r": (lambda v: v >= 1, "a rank of at least 1"),
    "peft.alpha": (lambda v: v > 0, "a positive number (the update is scaled by alpha / r: 0 trains nothing)"),
    "peft.dropout": (lambda v: 0 <= v < 1, "a probability in [0, 1)"),
    "data.eval_fraction": (lambda v: 0 <= v < 1, "a share in [0, 1): 0 holds nothing out, 1 would train on nothing"),
    "data.source.max_rows": (lambda v: v is None or v >= 1, "a positive number of rows (or no max_rows)"),
    "data.source.weight": (lambda v: v > 0 and v != float("inf"), "a positive, finite mixing weight"),
    "trainer.max_steps": (lambda v: v == -1 or v > 0, "a positive number of steps, or -1 to use num_train_epochs"),
    "trainer.logging_steps": (lambda v: v > 0, "a positive number of steps (or a ratio in (0, 1))"),
    "trainer.save_steps": (lambda v: v > 0, "a positive number of steps (or a ratio in (0, 1))"),
    "trainer.eval_steps": (lambda v: v is None or v > 0, "a positive number of steps (or a ratio in (0, 1))"),
    "trainer.warmup_steps": (lambda v: v >= 0, "zero or more steps"),
    "sft.verifier_max_new_tokens": _POSITIVE_INT,
    "dpo.verifier_max_new_tokens": _POSITIVE_INT,
    "kto.verifier_max_new_tokens": _POSITIVE_INT,
    "reward.calibration_bins": (lambda v: v >= 1, "at least 1 bin (0 bins would report a perfect ECE of 0.0)"),
}


def check_ranges(recipe) -> None:
    """Each setting in :data:`_RANGES` inside its range, or one line naming key, value and what is expected.

    >>> from align_kit.config import Recipe, build
    >>> check_ranges(build(Recipe, {"stage": "sft", "model": {"name_or_path": "x"}, "peft": {"alpha": 0}}))
    Traceback (most recent call last):
    align_kit.errors.ConfigError: peft.alpha: expected a positive number (the update is scaled by alpha / r: 0 trains nothing), found 0
    """
    values: list[tuple[str, str, object]] = []
    if recipe.peft is not None:
        values += [(f"peft.{k}", f"peft.{k}", getattr(recipe.peft, k)) for k in ("r", "alpha", "dropout")]
    if recipe.data is not None:
        values.append(("data.eval_fraction", "data.eval_fraction", recipe.data.eval_fraction))
        for split in ("train", "eval"):
            for i, src in enumerate(getattr(recipe.data, split)):
                values += [(f"data.source.{k}", f"data.{split}[{i}].{k}", getattr(src, k)) for k in ("max_rows", "weight")]
    values += [(f"trainer.{k}", f"trainer.{k}", v) for k, v in recipe.trainer.items()
               if f"trainer.{k}" in _RANGES and isinstance(v, (int, float)) and not isinstance(v, bool)]
    if recipe.options is not None:
        values += [(f"{recipe.stage}.{f.name}", f"{recipe.stage}.{f.name}", getattr(recipe.options, f.name))
                   for f in dataclasses.fields(recipe.options) if f"{recipe.stage}.{f.name}" in _RANGES]
    for rule, key, value in values:
        test, expected = _RANGES[rule]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not test(value):
            raise ConfigError(f"{key}: expected {expected}, found {value}")
    out = Path(recipe.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir: expected a folder (or a path that does not exist yet), found an existing "
                          f"file {out}")
