"""SFT: instruction data -> conversations -> chat template with trained-token mask -> TRL SFTTrainer.

align_kit owns the data and template work (so ``align-kit data inspect`` shows exactly what is trained);
TRL owns the training loop, packing (best-fit decreasing, padding-free with per-sample position ids, so
packed samples never attend to each other) and truncation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from trl import SFTConfig

from align_kit.stages import common

log = logging.getLogger("align_kit")
TRAINER_CONFIG = SFTConfig


@dataclass
class Options:
    verifier: str | None = None
    """module:function judging (prompt, response) -> bool; greedy accuracy on the eval prompts is reported."""
    verifier_max_new_tokens: int = 16
    merge_lora: bool = True
    """Also save LoRA-merged weights in model/ (the adapter always goes to adapter/)."""
    lm_head: Literal["auto", "chunked", "full"] = "auto"
    """How the loss meets the vocabulary. ``chunked``: TRL's chunked LM head (logits in blocks, recomputed
    in backward; also logs entropy and token accuracy): least memory. ``full``: logits over the full vocabulary
    at the trained positions only (prompt and padding positions never reach the LM head; the same loss as the
    model's own): fastest where those logits fit. ``auto``: full on CPU, chunked on GPUs (large vocabularies).
    Measured on an H100, 1.1B Llama, 32k vocabulary: the same steady-state step time, +2.3 GB peak for full;
    a 25-step run 1.16x faster with full (the chunked head's first steps pay for compiling its kernel)."""
    check_template: bool = True
    """Before training, render a battery of conversations with the training template and with the model's own
    (or the official / vendor reference) and refuse to train when the token ids differ: a model trained on a
    prompt format it is not served in. ``false`` trains anyway (for a deliberately new format)."""


OPTIONS = Options


def _trainer_class(lm_head: str = "auto"):
    """TRL's SFTTrainer, with TRL's chunked head or ``trained_positions_loss`` as ``lm_head`` (``Options``) asks.

    TRL always routes the loss through its chunked LM head to log per-step entropy and token accuracy; on
    CPU (no Triton kernel) that head recomputes logits in 512 MiB blocks and took ~70% of each step
    (benchmarks/RESULTS.md: 0.65x the hand-written loop with it, 1.06x without; the loss is identical).
    Elsewhere the loss is ``trained_positions_loss``; TRL's per-step entropy and token accuracy are not logged.
    """
    import torch
    from transformers import Trainer
    from trl import SFTTrainer

    class AlignKitSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            on_gpu = torch.cuda.is_available() and not self.args.use_cpu
            if lm_head == "chunked" or (lm_head == "auto" and on_gpu):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if return_outputs or "labels" not in inputs or self.label_smoother is not None:
                return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)
            loss = trained_positions_loss(model, inputs, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss: the count spans all ranks
            return loss

    return AlignKitSFTTrainer


def trained_positions_loss(model, inputs: dict, num_items_in_batch=None):
    """The causal-LM loss with the LM head run only where a token is trained.

    The model's own loss projects every position (prompt, padding, each sample's first token) onto the
    vocabulary and then ignores most of them; at hidden 256 and a 32k vocabulary that head is most of a step
    on CPU. Here a pre-hook on the output embeddings keeps the hidden states whose next label is trained, so
    the head and the cross-entropy see [trained tokens, vocab] instead of [batch x length, vocab]. Whatever the
    model does to its logits after the head (soft-capping, scaling) still applies. The value is the model's
    own loss: summed over the same targets, divided by ``num_items_in_batch`` (else by their count);
    ``tests/stages/test_sft.py`` compares loss and gradients with the model's own.
    """
    import torch
    import torch.nn.functional as F

    labels = inputs["labels"]
    targets = labels[..., 1:]
    trained = targets != -100
    keep = torch.cat([trained, trained.new_zeros(*trained.shape[:-1], 1)], dim=-1)  # position t predicts label t + 1
    unwrapped = model.module if hasattr(model, "module") else model
    head = unwrapped.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda _module, args: (args[0][keep], *args[1:]))
    try:
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
    finally:
        handle.remove()
    loss = F.cross_entropy(logits.float(), targets[trained], reduction="sum")
    divisor = num_items_in_batch if num_items_in_batch is not None else trained.sum().clamp(min=1)
    return loss / torch.as_tensor(divisor, device=loss.device)


def tokenize_rows(rows: list[dict], tokenizer, where: str) -> tuple[list[dict], dict]:
    """Rows of ``{"messages"}`` -> ``{"input_ids", "assistant_masks"}``; returns rows and length stats."""
    from align_kit.data.tokenize import tokenize_conversation
    from align_kit.families import get_template, stop_token_ids

    stops = stop_token_ids(tokenizer, get_template(tokenizer.align_kit_template))
    out = []
    for i, row in enumerate(rows, start=1):
        tok = tokenize_conversation(tokenizer, row["messages"], stops, (where, i), tools=row.get("tools"))
        out.append({"input_ids": tok.input_ids, "assistant_masks": tok.assistant_masks})
    return out, {"rows": len(out), "tokens": sum(len(r["input_ids"]) for r in out)}


def fit_rows(rows: list[dict], max_length: int | None, how: str, split: str) -> tuple[list[dict], dict]:
    """Rows fitted to ``max_length`` (``data.long_rows``, see ``data.tokenize.fit_length``) and their counts:
    ``{"rows", "kept", "truncated_prompt", "dropped": {reason: n}}``, logged when any row was long."""
    from collections import Counter

    from align_kit.data.tokenize import Tokenized, fit_length

    out, outcomes = [], Counter()
    for row in rows:
        tok, what = fit_length(Tokenized(row["input_ids"], row["assistant_masks"]), max_length, how)
        outcomes[what] += 1
        if tok is not None:
            out.append({"input_ids": tok.input_ids, "assistant_masks": tok.assistant_masks})
    dropped = {k: v for k, v in outcomes.items() if k not in ("kept", "truncated_prompt")}
    counts = {"rows": len(rows), "kept": len(out), "truncated_prompt": outcomes["truncated_prompt"],
              "dropped": dropped}
    if len(out) < len(rows) or outcomes["truncated_prompt"]:
        log.warning("%s: %d of %d rows are longer than max_length=%d: %d truncated from the prompt side "
                    "(last reply kept whole), %d dropped%s", split, len(rows) - outcomes["kept"], len(rows),
                    max_length, outcomes["truncated_prompt"], len(rows) - len(out),
                    f" ({', '.join(f'{k}: {v}' for k, v in dropped.items())})" if dropped else "")
    if rows and not out:
        from align_kit.errors import ConfigError

        raise ConfigError(f"data: every {split} row is longer than trainer.max_length={max_length} "
                          f"(data.long_rows: {how}); raise max_length or shorten the data")
    return out, counts


def run(recipe) -> Path:
    from datasets import Dataset

    from align_kit.data.packing import PackedCollator, pack_samples
    from align_kit.data.sources import load_data
    from align_kit.models import apply_lora, load_model, load_tokenizer
    from align_kit.rundir import finish_run, start_run
    from align_kit.template_check import require_served_format

    out = Path(recipe.output_dir)
    tokenizer = load_tokenizer(recipe.model)
    require_served_format(tokenizer, recipe.model.name_or_path, recipe.options.check_template, "sft.check_template")
    data = load_data(recipe.data, "instruction")
    train_rows, train_stats = tokenize_rows(data.train, tokenizer, "train")
    eval_rows, _ = tokenize_rows(data.eval, tokenizer, "eval")
    args = recipe.trainer_config()  # built and validated when the recipe was loaded
    train_rows, train_fit = fit_rows(train_rows, args.max_length, recipe.data.long_rows, "train")
    eval_rows, eval_fit = fit_rows(eval_rows, args.max_length, recipe.data.long_rows, "eval")
    pack = recipe.trainer.get("packing", True)
    train_ds = Dataset.from_list(pack_samples(train_rows, args.max_length, pack))
    eval_ds = Dataset.from_list(pack_samples(eval_rows, args.max_length, pack)) if eval_rows else None

    model = load_model(recipe.model, tokenizer, quant=recipe.quantization)
    model = apply_lora(model, recipe.peft, quantized=recipe.quantization is not None)
    run_info = start_run(recipe, data, extra={"truncated_rows": train_fit["truncated_prompt"],
                                              "long_rows": {"train": train_fit, "eval": eval_fit}, **train_stats})
    trainer = _trainer_class(recipe.options.lm_head)(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tokenizer, callbacks=common.stage_callbacks(recipe),
                         data_collator=PackedCollator(tokenizer.pad_token_id, args.pad_to_multiple_of))
    # TRL truncates to max_length and drops rows without a trained token; after fit_rows neither should
    # happen, and if it ever does the count goes to the log and the manifest rather than passing silently
    run_info.extra["trl_dropped_rows"] = {
        "train": len(train_ds) - len(trainer.train_dataset),
        "eval": (len(eval_ds) - len(trainer.eval_dataset)) if eval_ds is not None else 0}
    if any(run_info.extra["trl_dropped_rows"].values()):
        log.warning("TRL dropped packed rows without a trained token: %s", run_info.extra["trl_dropped_rows"])
    evals = {"before": _evaluate(trainer, recipe, data.eval, tokenizer)}
    common.train(trainer, out)
    evals["after"] = _evaluate(trainer, recipe, data.eval, tokenizer)
    if recipe.options.verifier:  # what generated the verifier's answers
        from align_kit.evaluation.engine import evaluation_engine

        evals["generated_by"] = evaluation_engine(recipe)
    common.save_final(trainer.model, tokenizer, out, merge_lora=recipe.options.merge_lora,
                      accelerator=trainer.accelerator)
    finish_run(run_info, trainer.state.log_history, evals)
    return out


def trainer_extras(recipe) -> dict:
    """Rows arrive packed by align_kit (see data/packing.py), so TRL's own packing and padding-free are off."""
    return {"packing": False, "padding_free": False}


def _evaluate(trainer, recipe, eval_conversations: list[dict], tokenizer) -> dict:
    """Eval loss, and verifier accuracy of greedy answers when the recipe names a verifier."""
    result = {}
    if trainer.eval_dataset is not None:
        result["eval_loss"] = trainer.evaluate()["eval_loss"]
    if recipe.options.verifier and eval_conversations:
        from align_kit.evaluation import task_accuracy
        from align_kit.evaluation.engine import evaluation_engine, stage_engine
        from align_kit.generation import load_callable

        prompts = [row["messages"][:-1] for row in eval_conversations]
        max_new = recipe.options.verifier_max_new_tokens
        # with a vLLM engine only the main process answers (its engine; the others write nothing)
        if evaluation_engine(recipe) == "hf" or trainer.is_world_process_zero():
            with stage_engine(recipe, trainer.model, tokenizer, prompts, max_new, trainer.accelerator) as engine:
                result["verifier_accuracy"] = task_accuracy(trainer.model, tokenizer, prompts,
                                                            load_callable(recipe.options.verifier), max_new,
                                                            engine=engine)["accuracy"]
    if result and trainer.is_world_process_zero():
        log.info("eval: %s", {k: round(v, 4) for k, v in result.items()})
    return result
