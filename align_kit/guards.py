"""Run guards for the Trainer-based stages (pretrain, SFT, reward, DPO/KTO): atomic checkpoints and
numerical faults. align_kit's own RL loop has the same guarantees in ``ppo/checkpoint.py`` and ``ppo/loop.py``;
what makes a checkpoint complete is defined once, in ``align_kit.rundir``.

Why a callback: HF Trainer writes ``checkpoint-N/`` in place (``Trainer._save_checkpoint``: weights, then
optimizer, scheduler and RNG states, then ``trainer_state.json``) and fires ``on_save`` only after all of
that, so the marker written in ``on_save`` (``rundir.mark_complete``) is the last file of a checkpoint. The
Trainer's own rotation (``save_total_limit``) runs inside ``_save_checkpoint``, i.e. *before* ``on_save``:
with ``save_total_limit: 1`` a kill in between would leave no usable checkpoint. So
:class:`AtomicCheckpoints` takes rotation over and deletes old checkpoints only after the new one is marked
complete (and its weights are finite).
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

from transformers import TrainerCallback

from align_kit import rundir
from align_kit.errors import AlignKitError

log = logging.getLogger("align_kit")


class UnsafeCheckpointError(AlignKitError):
    """A checkpoint file holds objects other than tensors and plain containers: it is not loaded."""


def refuse_unsafe(path, exc: Exception) -> UnsafeCheckpointError:
    """The one-line error for a checkpoint file that ``torch.load(weights_only=True)`` refused to build."""
    # torch's message advises loading with weights_only=False or allow-listing the object; name the object only
    import re

    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return UnsafeCheckpointError(
        f"{path}: refused to load: it holds {found.group(1) if found else 'an object'}, not only tensors and "
        "plain containers (read by torch.load(weights_only=True)). align_kit never writes such a file, so it "
        "was altered or comes from elsewhere; delete that checkpoint folder to resume from an earlier one")


class TrainingDivergedError(AlignKitError):
    """Training stopped because the loss, gradient norm or weights became NaN or infinite."""


def non_finite(logs: dict, keys=("loss", "grad_norm", "eval_loss")) -> list[str]:
    """Names of logged values that are NaN or infinite.

    >>> non_finite({"loss": float("nan"), "grad_norm": 1.5, "learning_rate": 1e-3})
    ['loss']
    >>> non_finite({"loss": 0.7, "grad_norm": float("inf")})
    ['grad_norm']
    """
    bad = []
    for key in keys:
        value = logs.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
            bad.append(key)
    return bad


def weights_finite(model) -> bool:
    """True when every trainable parameter is finite (one reduction per tensor, run once per save)."""
    import torch

    with torch.no_grad():
        return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)


def _wait_for_everyone() -> None:
    """Under DDP every rank writes its own RNG state: the marker must wait for all of them."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class AtomicCheckpoints(TrainerCallback):
    """Mark each checkpoint complete after the Trainer wrote it, then rotate old ones (see module doc)."""

    def __init__(self):
        self.keep: int | None = None

    def on_init_end(self, args, state, control, **kwargs):
        self._take_rotation(args)

    def on_train_begin(self, args, state, control, **kwargs):
        self._take_rotation(args)

    def _take_rotation(self, args) -> None:
        if args.save_total_limit and self.keep is None:
            self.keep = int(args.save_total_limit)
            args.save_total_limit = None  # the Trainer would rotate before the new checkpoint is marked

    def on_save(self, args, state, control, model=None, **kwargs):
        folder = rundir.checkpoint_path(args.output_dir, state.global_step)
        _wait_for_everyone()
        if model is not None and not weights_finite(model):
            if state.is_world_process_zero:
                shutil.rmtree(folder, ignore_errors=True)
            raise TrainingDivergedError(
                f"training stopped at step {state.global_step}: the model weights hold NaN or infinite values "
                f"(learning rate too high, or fp16 overflow?). {folder.name} was not kept. "
                f"{_last_good(folder.parent)}")
        if state.is_world_process_zero and folder.is_dir():
            rundir.mark_complete(folder, f"step {state.global_step}")
            best = Path(state.best_model_checkpoint).name if state.best_model_checkpoint else None
            rundir.rotate(folder.parent, self.keep, protect=best)
        return control


class NumericalGuard(TrainerCallback):
    """Stop with a clear error as soon as a logged loss or gradient norm is NaN or infinite.

    ``on_log`` runs before the step's checkpoint is written, so no checkpoint follows the fault; a NaN that
    arises between logging steps is caught by :class:`AtomicCheckpoints`, which refuses to mark non-finite
    weights complete.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        bad = non_finite(logs or {})
        if bad:
            values = ", ".join(f"{k}={logs[k]}" for k in bad)
            raise TrainingDivergedError(
                f"training stopped at step {state.global_step}: {values} (expected finite values; lower "
                f"trainer.learning_rate, set trainer.max_grad_norm, or check the data). "
                f"{_last_good(Path(args.output_dir))}")
        return control


def _last_good(out: Path) -> str:
    last = rundir.last_checkpoint(out)
    if last is None:
        return "No checkpoint was written before the fault."
    return f"The last good checkpoint, {last.name}, is kept; training resumes from it when rerun."


def callbacks() -> list[TrainerCallback]:
    return [AtomicCheckpoints(), NumericalGuard()]
