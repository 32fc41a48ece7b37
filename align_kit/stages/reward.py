"""Reward model: preference pairs -> a sequence classifier (one scalar) trained with TRL's RewardTrainer.

Loss (Bradley-Terry): ``-log sigmoid(r_chosen - r_rejected - margin)``, where ``margin`` is the data's
optional ``margin`` column (0 without it), plus ``center_rewards_coefficient * mean((r_c + r_r)^2)`` when
``trainer.center_rewards_coefficient`` is set (keeps rewards near zero, Eisenstein et al. 2023).
align_kit tokenises the pairs itself (chat template, left truncation that keeps the responses) so no pair is
dropped silently; TRL owns the loop. The result in ``model/`` is a plain ``AutoModelForSequenceClassification``
(LoRA merged; a QLoRA adapter is merged into the unquantised base), and ``eval.json`` holds pairwise accuracy,
mean margin, ties (a tie counts 1/2: align_kit.evaluation.pairwise), ECE and the reliability curve, computed
from that saved folder by the function ``align-kit eval --task reward`` calls.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from trl import RewardConfig

from align_kit.errors import ConfigError
from align_kit.stages import common

log = logging.getLogger("align_kit")
TRAINER_CONFIG = RewardConfig


@dataclass
class Options:
    use_margin: bool = True
    """Subtract the data's ``margin`` column inside the loss when rows have one (Llama 2 style)."""
    truncation: str = "left"
    """Pairs longer than trainer.max_length: left = drop the oldest prompt tokens (keeps the replies), drop."""
    calibration_bins: int = 10
    """Bins of the reliability curve over the predicted preference probability."""


OPTIONS = Options


def _check(recipe) -> None:
    if recipe.options.truncation not in ("left", "drop"):
        raise ConfigError(f"reward.truncation: expected left or drop, found {recipe.options.truncation!r}")
    if recipe.data is None:
        raise ConfigError("data: the reward stage needs preference data (data.train)")


VALIDATORS = (_check,)


def pair_ids(tokenizer, pair: dict) -> tuple[list[int], list[int]]:
    """Token ids of prompt+chosen and prompt+rejected through the chat template (what TRL would build)."""
    ids = []
    for side in ("chosen", "rejected"):
        out = tokenizer.apply_chat_template(pair["prompt"] + pair[side], tokenize=True, return_dict=True)
        ids.append(list(out["input_ids"]))
    return ids[0], ids[1]


def tokenize_pairs(pairs: list[dict], tokenizer, max_length: int | None, truncation: str,
                   use_margin: bool) -> tuple[list[dict], dict]:
    """Rows of ``chosen_ids`` / ``rejected_ids`` (and ``margin``) with counts of truncated and dropped pairs.

    Left truncation keeps the last ``max_length`` tokens: the reward is read at the last token, so the replies
    must survive; the oldest context goes first.
    """
    with_margin = use_margin and any("margin" in p for p in pairs)
    rows, stats = [], {"pairs": len(pairs), "truncated": 0, "dropped": 0}
    for pair in pairs:
        c, r = pair_ids(tokenizer, pair)
        if max_length is not None and max(len(c), len(r)) > max_length:
            if truncation == "drop":
                stats["dropped"] += 1
                continue
            stats["truncated"] += 1
            c, r = c[-max_length:], r[-max_length:]
        row = {"chosen_ids": c, "rejected_ids": r}
        if with_margin:
            row["margin"] = float(pair.get("margin", 0.0))
        rows.append(row)
    if stats["truncated"] or stats["dropped"]:
        log.warning("reward data: %d of %d pairs longer than max_length=%s (%d left-truncated, %d dropped)",
                    stats["truncated"] + stats["dropped"], len(pairs), max_length, stats["truncated"],
                    stats["dropped"])
    return rows, stats


def use_finished_stage(recipe) -> None:
    """``model.name_or_path`` may name a finished stage's output folder (``runs/quickstart/sft``): use its
    ``model/``, the folder that loads with plain transformers (as the PPO stage does)."""
    folder = Path(recipe.model.name_or_path)
    if not (folder / "config.json").exists() and (common.model_dir(folder) / "config.json").exists():
        recipe.model.name_or_path = str(common.model_dir(folder))


def paired_rows(data) -> None:
    for split, rows in (("train", data.train), ("eval", data.eval)):
        if rows and "label" in rows[0]:
            raise ConfigError(f"data ({split}): unpaired rows (prompt, completion, label) cannot train a reward "
                              "model; give chosen/rejected pairs, or use stage: kto")


def run(recipe) -> Path:
    from datasets import Dataset
    from trl import RewardTrainer

    from align_kit.data.sources import load_data
    from align_kit.models import apply_lora, load_model, load_tokenizer
    from align_kit.rundir import finish_run, start_run

    out = Path(recipe.output_dir)
    use_finished_stage(recipe)
    tokenizer = load_tokenizer(recipe.model)
    data = load_data(recipe.data, "preference")
    paired_rows(data)
    args = recipe.trainer_config()
    train_rows, stats = tokenize_pairs(data.train, tokenizer, args.max_length, recipe.options.truncation,
                                       recipe.options.use_margin)
    quantized = recipe.quantization is not None
    model = load_model(recipe.model, tokenizer, quant=recipe.quantization, head="classifier")
    model = apply_lora(model, recipe.peft, quantized=quantized, task_type="SEQ_CLS")
    run_info = start_run(recipe, data, extra={f"train_{k}": v for k, v in stats.items()})
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(train_rows),
                            processing_class=tokenizer, callbacks=common.stage_callbacks(recipe))
    if quantized:
        head_to_compute_dtype(trainer.model, recipe.quantization)
    common.train(trainer, out)
    evals = {}
    final = save_plain(trainer.model, tokenizer, out, recipe, trainer.accelerator)  # every rank: see save_final
    if trainer.is_world_process_zero() and data.eval:  # the saved model, so the numbers are those shipped
        from align_kit.evaluation import reward_model_accuracy

        evals = reward_model_accuracy(final, data.eval, args.max_length, recipe.options.calibration_bins)
        del evals["chosen_scores"], evals["rejected_scores"]
        log.info("reward eval: accuracy %s (longer-answer baseline %s), mean margin %.3f, ECE %s",
                 evals.get("accuracy"), evals.get("length_baseline_accuracy"), evals.get("mean_margin", 0.0),
                 evals.get("ece"))
    trainer.accelerator.wait_for_everyone()
    finish_run(run_info, trainer.state.log_history, evals)
    return out


def head_to_compute_dtype(model, quant) -> None:
    """TRL casts every trainable parameter of a quantised model to bf16 (the QLoRA paper's adapter dtype).
    LoRA layers cast their input themselves, but the score head (a plain Linear trained in full) then meets
    hidden states in the base's compute dtype and the matmul fails unless that is bf16: give the head the
    compute dtype."""
    from align_kit.models import resolve_dtype

    dtype = resolve_dtype(quant.compute_dtype)
    for name, param in model.named_parameters():
        if param.requires_grad and "lora_" not in name:
            param.data = param.data.to(dtype)


def save_plain(model, tokenizer, out: Path, recipe, accelerator=None) -> Path:
    """``out/model`` as a plain sequence classifier; a QLoRA adapter is merged into the float32 base.
    Called on every rank (gathering sharded weights is collective); rank 0 writes."""
    final = common.save_final(model, tokenizer, out, merge_lora=True, accelerator=accelerator)
    if recipe.quantization is not None and recipe.peft is not None and common.is_main_process():
        from align_kit.export import load_merged, save_export
        from align_kit.rundir import mark_complete

        merged, tok, _ = load_merged(out / "adapter", recipe.model.name_or_path)
        save_export(merged, tok, final, overwrite=True)
        mark_complete(final)  # save_export replaced the folder whole: mark it again
    return final
