"""Pieces the Trainer-based stages share: the training call with resume, callbacks, row accounting.

The run folder itself (checkpoints and what makes one complete, ``model/``, the files beside it) is
``align_kit.rundir``; the names below are re-exported for the stages, defined there only.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from align_kit.rundir import (  # noqa: F401  (the stages' names for the run folder)
    COMPLETE,
    complete_checkpoints,
    is_finished,
    is_main_process,
    is_sharded,
    last_checkpoint,
    model_dir,
    save_final,
    write_json,
)
from align_kit.trainer_defaults import trainer_defaults  # noqa: F401  (stages call common.trainer_defaults)

log = logging.getLogger("align_kit")


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


def stage_callbacks(recipe) -> list:
    """Callbacks every Trainer-based stage passes: atomic checkpoints and the NaN/inf guard."""
    from align_kit.guards import callbacks

    return callbacks()


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
