"""Pieces every stage uses: output folders, checkpoint discovery, final save and evaluation record."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

log = logging.getLogger("align_kit")
_CKPT = re.compile(r"^checkpoint-(\d+)$")
COMPLETE = "align_kit_complete"  # marker written last: a checkpoint without it was cut short


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


def account_trl_rows(trainer, rows_in: int, how: str) -> dict:
    """Count what TRL's preference trainers drop or cut (DPO, KTO tokenise and truncate the rows themselves),
    and with ``data.long_rows: drop`` drop the rows longer than ``max_length`` here, counted.

    Returns ``{"rows", "dropped_by_trl", "dropped", "truncated_prompt" | "truncated_reply_end"}``."""
    ds, max_length = trainer.train_dataset, trainer.args.max_length
    counts = {"rows": rows_in, "dropped_by_trl": rows_in - len(ds), "dropped": 0}
    if max_length is not None and "prompt_ids" in ds.column_names:
        replies = [c for c in ("chosen_ids", "rejected_ids", "completion_ids") if c in ds.column_names]
        longest = [max(len(x) for x in xs) for xs in zip(*(ds[c] for c in replies))]
        long = [len(p) + r > max_length for p, r in zip(ds["prompt_ids"], longest)]
        if how == "drop":
            trainer.train_dataset = ds.select([i for i, too_long in enumerate(long) if not too_long])
            counts["dropped"] = sum(long)
        else:  # keep_end (align_kit's DPO default) cuts the prompt; keep_start the end of the replies
            side = "prompt" if getattr(trainer.args, "truncation_mode", "keep_start") == "keep_end" else "reply_end"
            counts[f"truncated_{side}"] = sum(long)
    if counts["dropped_by_trl"] or counts["dropped"] or any(k.startswith("truncated") and v for k, v in counts.items()):
        log.warning("train rows longer than max_length=%s: %s", max_length, counts)
    return counts


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in step order; incomplete ones (killed mid-write) are reported and skipped.

    A checkpoint is complete when it holds the ``COMPLETE`` marker, which ``guards.AtomicCheckpoints``
    writes after the Trainer finished every file of it (and only when its weights are finite).
    """
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = []
    for path in out.iterdir():
        m = _CKPT.match(path.name)
        if not m or not path.is_dir():
            if path.name.startswith("checkpoint-") and path.name.endswith(".tmp"):
                log.warning("skipping %s: incomplete (killed while writing?)", path.name)
            continue
        if not (path / COMPLETE).exists():
            log.warning("skipping %s: incomplete (killed while writing?): no %s marker", path.name, COMPLETE)
            continue
        found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found)]


def stage_callbacks(recipe) -> list:
    """Callbacks every Trainer-based stage passes: atomic checkpoints and the NaN/inf guard."""
    from align_kit.guards import callbacks

    return callbacks(COMPLETE)


def last_checkpoint(output_dir: str | Path) -> Path | None:
    ckpts = complete_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


def train(trainer, output_dir: str | Path, resume: Path | None = None) -> None:
    """``trainer.train``, resuming from the last complete checkpoint in ``output_dir`` (or ``resume``).

    A run killed after its final checkpoint but before ``model/`` was written holds a checkpoint at the last
    step. HF Trainer (5.23) resumed from it trains one step more than ``max_steps`` (its loop tests the step
    count only after a step), so the result would differ from the uninterrupted run; load it instead.
    """
    check_processes_joined(trainer.accelerator)
    # TRL writes a stub model card ("fine-tuned version of [None]") into the run folder at every checkpoint;
    # the run's record is report.md, and `align-kit export` writes the real card
    trainer.create_model_card = lambda *args, **kwargs: None
    ckpt = resume if resume is not None else last_checkpoint(output_dir)
    quiet = _tied_keys_filter(trainer.model) if ckpt is not None else None
    trainer_log = logging.getLogger("transformers.trainer")
    if quiet is not None:
        trainer_log.addFilter(quiet)
    try:
        _train(trainer, ckpt)
    finally:
        if quiet is not None:
            trainer_log.removeFilter(quiet)


def _train(trainer, ckpt: Path | None) -> None:
    import pickle

    state_file = Path(ckpt) / "trainer_state.json" if ckpt else None
    if state_file is not None and state_file.exists():
        state = json.loads(state_file.read_text())
        log.info("resuming from %s (step %s)", Path(ckpt).name, state.get("global_step"))
        # the run's own target when it sets max_steps (a resume_anyway run may have raised it), else the
        # checkpoint's (computed from the epochs when the run was started)
        target = trainer.args.max_steps if trainer.args.max_steps > 0 else state.get("max_steps", 0)
        if target > 0 and state.get("global_step", 0) >= target:
            from transformers import TrainerState

            log.info("%s holds the final step (%d): loading it, nothing left to train", Path(ckpt).name,
                     state["global_step"])
            trainer._load_from_checkpoint(str(ckpt))
            trainer.state = TrainerState.load_from_json(str(state_file))
            return
    try:
        trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    except pickle.UnpicklingError as exc:
        # transformers 5.25 reads optimizer.pt, scheduler.pt, rng_state*.pth (and .bin weights) with
        # torch.load(weights_only=True): a file holding anything else is refused before it is built
        from align_kit.guards import refuse_unsafe

        raise refuse_unsafe(ckpt, exc) from None


def _tied_keys_filter(model) -> logging.Filter | None:
    """A filter for transformers' "missing keys ['lm_head.weight']" warning on resume when those keys are tied
    to the input embeddings: a checkpoint stores a tied tensor once, and loading the embeddings restores both.

    Any other missing key still warns."""
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None or inp is None or out.weight is not inp.weight:
        return None
    tied = {n for n, p in model.named_parameters(remove_duplicate=False) if p is out.weight}
    prefix = "There were missing keys in the checkpoint model loaded: "

    class TiedKeys(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            msg = record.getMessage()
            if not msg.startswith(prefix):
                return True
            keys = {k.strip(" '\"") for k in msg[len(prefix):].strip(" .[]").split(",")}
            return not keys <= tied

    return TiedKeys()


def model_dir(output_dir: str | Path) -> Path:
    """Folder of a finished stage that loads with plain transformers."""
    return Path(output_dir) / "model"


def is_finished(output_dir: str | Path) -> bool:
    return (Path(output_dir) / "model" / COMPLETE).exists()


def save_final(model, tokenizer, output_dir: str | Path, merge_lora: bool = True, accelerator=None) -> Path:
    """Save the final model to ``output_dir/model`` atomically (write to a temp folder, then rename).

    A LoRA model is saved twice: the adapter in ``adapter/`` and merged weights in ``model/`` so the result
    loads with plain transformers; a quantised base cannot be merged exactly, so ``model/`` then holds the
    adapter (loads with transformers + peft).

    Call it on every process. Under FSDP or DeepSpeed each rank holds a shard of the weights, so the full
    state dict is gathered first (a collective: every rank must take part), then rank 0 writes it. A LoRA
    model trained sharded keeps its adapter in ``model/``: merging needs the whole base in one process, which
    ``align-kit export`` does afterwards.
    """
    out = Path(output_dir)
    final, tmp = out / "model", out / "model.tmp"
    state_dict = None
    if accelerator is not None:
        if is_sharded(accelerator):
            state_dict = accelerator.get_state_dict(model)
        model = accelerator.unwrap_model(model)
    if not is_main_process():
        return final  # one writer; the others hold identical weights under DDP
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    is_peft = hasattr(model, "peft_config")
    quantized = bool(getattr(getattr(model, "config", None), "quantization_config", None)) or getattr(
        model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    if is_peft:
        model.save_pretrained(out / "adapter", safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(out / "adapter")
    if is_peft and merge_lora and not quantized and state_dict is None:
        import copy

        merged = copy.deepcopy(model).merge_and_unload()
        merged.save_pretrained(tmp, safe_serialization=True)
    else:
        if is_peft and merge_lora and state_dict is not None:
            log.info("sharded LoRA run: model/ holds the adapter; merge it with `align-kit export`")
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    (tmp / COMPLETE).write_text("ok\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def check_processes_joined(accelerator) -> None:
    """Stop when a launcher started several processes that accelerate left unconnected, and say so when an
    FSDP or DeepSpeed config runs as plain data parallelism.

    ``accelerate launch --num_processes 2`` with a GPU config on a machine without GPUs starts two processes
    whose accelerator reports ``DistributedType.NO``: each would train the whole run alone and write the same
    output folder. With ``ACCELERATE_USE_CPU=1`` they join over gloo, but accelerate runs FSDP and DeepSpeed
    configs as DDP on CPU (measured with accelerate 1.15: ``MULTI_CPU``, unsharded parameters).
    """
    from accelerate.utils import get_int_from_env

    from align_kit.errors import ConfigError

    # the process count a launcher announced: torchrun / accelerate launch / deepspeed, or MPI launchers
    world = get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"], 1)
    if world > 1 and accelerator.num_processes != world:
        raise ConfigError(
            f"launched as {world} processes but accelerate joined {accelerator.num_processes} (distributed type "
            f"{accelerator.distributed_type.value}), so each would run this stage alone into the same folder. "
            "Without a GPU, set ACCELERATE_USE_CPU=1 (the processes then join over gloo; FSDP and DeepSpeed "
            "configs run as DDP) or launch one process; with GPUs, check that the launcher sets LOCAL_RANK and "
            "that every process sees a GPU.")
    asked = [name for name, var in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED"))
             if os.environ.get(var, "").lower() in ("1", "true")]
    if asked and not is_sharded(accelerator):
        log.warning("the accelerate config asks for %s, but accelerate runs this launch as %s: parameters are "
                    "replicated, not sharded (accelerate shards only on GPUs)", asked[0],
                    accelerator.distributed_type.value)


def is_sharded(accelerator) -> bool:
    """True when the weights are split across ranks (FSDP, DeepSpeed), so saving them is collective."""
    if accelerator is None:
        return False
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
