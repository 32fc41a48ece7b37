"""A run folder's layout, in one place: every stage (the Trainer stages and the RL loop) finishes through here.

::

    output_dir/
      checkpoint-N/       N = optimiser steps (RL steps) done; complete when it holds COMPLETE
      model/              the final model, loads with plain transformers (LoRA merged), COMPLETE inside
      adapter/            the LoRA adapter, when the run trained one
      run_identity.json   the run's fingerprint (identity.py), checked on resume and reuse (read_identity)
      manifest.json       recipe, data hashes, versions, hardware, skipped rows, evaluation (manifest.py)
      log_history.jsonl   one JSON object per logged step
      eval.json           the stage's evaluation (``{}`` when it had nothing to evaluate)
      report.md           evaluation table and plots of the logged values that change (report.py: plots/, evals.json)

**A complete checkpoint** is ``checkpoint-N/`` holding the marker ``COMPLETE``, the last file written into it.
Two writers reach that state, both atomically:

- HF Trainer writes ``checkpoint-N/`` in place and fires ``on_save`` after its last file; the marker is written
  then (:func:`mark_complete`, called by ``guards.AtomicCheckpoints``), and never over non-finite weights.
- align_kit's own writers (the RL loop's checkpoints, ``model/``) fill ``checkpoint-N.tmp/``, mark it and
  rename it into place (:func:`publish`), so the folder name appears only with everything in it.

Whatever was cut short (a folder without the marker, a ``.tmp`` folder) is reported and skipped. RL checkpoints
written before the marker existed were published by the same rename, so one holding ``kl_controller.json``
and a ``trainer_state.json`` that does not name the marker (:func:`legacy_rl_checkpoint`) counts as
complete: existing run folders keep resuming. The RL loop's checkpoints now name it (``MARKER_KEY``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from align_kit.errors import ConfigError

log = logging.getLogger("align_kit")

COMPLETE = "align_kit_complete"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
MODEL, ADAPTER = "model", "adapter"
LOG, EVAL, REPORT = "log_history.jsonl", "eval.json", "report.md"
IDENTITY_NAME = "run_identity.json"  # the fingerprint (align_kit.identity) checked on resume and reuse
LEGACY_RL_LOG = "ppo_log.jsonl"  # the RL loop's log before it wrote LOG
MARKER_KEY = "completion_marker"  # in an RL checkpoint's trainer_state.json: complete only with the marker


# ---- checkpoints -------------------------------------------------------------------------------------------


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    """``output_dir/checkpoint-<step>``.

    >>> checkpoint_path("runs/sft", 40).as_posix()
    'runs/sft/checkpoint-40'
    """
    return Path(output_dir) / f"checkpoint-{step}"


def is_complete(folder: str | Path) -> bool:
    """True when ``folder`` holds the marker (or is an RL checkpoint published before the marker existed)."""
    folder = Path(folder)
    return (folder / COMPLETE).is_file() or legacy_rl_checkpoint(folder)


def legacy_rl_checkpoint(folder: Path) -> bool:
    """An RL checkpoint from before the marker: published whole by a rename, its trainer_state.json silent
    about the marker (one that names it and lacks it was cut short)."""
    state = folder / "trainer_state.json"
    if not ((folder / "kl_controller.json").is_file() and state.is_file()):
        return False
    try:
        return MARKER_KEY not in json.loads(state.read_text())
    except (OSError, json.JSONDecodeError):
        return False


def mark_complete(folder: str | Path, note: str = "ok") -> None:
    """Write the marker, the last file of a checkpoint (a temporary name renamed: it exists whole or not at all)."""
    folder = Path(folder)
    tmp = folder / f".{COMPLETE}.tmp"
    tmp.write_text(note + "\n")
    os.replace(tmp, folder / COMPLETE)


def staging(final: str | Path) -> Path:
    """An empty ``<final>.tmp/`` to fill before :func:`publish` (a leftover of a killed write is removed)."""
    tmp = Path(final).with_name(Path(final).name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish(tmp: str | Path, final: str | Path, note: str = "ok") -> Path:
    """Mark the filled ``tmp`` complete and rename it to ``final`` (a folder of that name is replaced whole)."""
    tmp, final = Path(tmp), Path(final)
    mark_complete(tmp, note)
    if final.exists():  # the same step saved again (a rerun): replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in step order; incomplete ones (killed mid-write) are reported and skipped."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = []
    for path in out.iterdir():
        match = CHECKPOINT.match(path.name)
        if not match or not path.is_dir():
            if path.name.startswith("checkpoint-") and path.name.endswith(".tmp"):
                log.warning("skipping %s: incomplete (killed while writing?)", path.name)
            continue
        if not is_complete(path):
            log.warning("skipping %s: incomplete (killed while writing?): no %s marker", path.name, COMPLETE)
            continue
        found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def last_checkpoint(output_dir: str | Path) -> Path | None:
    ckpts = complete_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


def has_checkpoints(output_dir: str | Path) -> bool:
    """True when ``output_dir`` holds a ``checkpoint-N`` folder, complete or not."""
    out = Path(output_dir)
    return out.is_dir() and any(CHECKPOINT.match(p.name) and p.is_dir() for p in out.iterdir())


def rotate(output_dir: str | Path, keep: int | None, protect: str | None = None) -> None:
    """Delete the oldest complete checkpoints beyond ``keep`` (never ``protect``, e.g. the best one).

    Called only after the newest one is complete, so a kill in between never leaves no usable checkpoint."""
    if not keep:
        return
    for old in complete_checkpoints(output_dir)[:-keep]:
        if old.name != protect:
            shutil.rmtree(old, ignore_errors=True)


# ---- the final model -------------------------------------------------------------------------------------


def model_dir(output_dir: str | Path) -> Path:
    """Folder of a finished stage that loads with plain transformers."""
    return Path(output_dir) / MODEL


def is_finished(output_dir: str | Path) -> bool:
    return (model_dir(output_dir) / COMPLETE).exists()


def save_final(model, tokenizer, output_dir: str | Path, merge_lora: bool = True, accelerator=None) -> Path:
    """Save the final model to ``output_dir/model`` atomically (filled as ``model.tmp``, marked, renamed).

    A LoRA model is saved twice: the adapter in ``adapter/`` and merged weights in ``model/`` so the result
    loads with plain transformers; a quantised base cannot be merged exactly, so ``model/`` then holds the
    adapter (loads with transformers + peft).

    Call it on every process. Under FSDP or DeepSpeed each rank holds a shard of the weights, so the full
    state dict is gathered first (a collective: every rank must take part), then rank 0 writes it. A LoRA
    model trained sharded keeps its adapter in ``model/``: merging needs the whole base in one process, which
    ``align-kit export`` does afterwards.
    """
    out = Path(output_dir)
    final = model_dir(out)
    state_dict = None
    if accelerator is not None:
        if is_sharded(accelerator):
            state_dict = accelerator.get_state_dict(model)
        model = accelerator.unwrap_model(model)
    if not is_main_process():
        return final  # one writer; the others hold identical weights under DDP
    tmp = staging(final)
    is_peft = hasattr(model, "peft_config")
    quantized = bool(getattr(getattr(model, "config", None), "quantization_config", None)) or getattr(
        model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    if is_peft:
        model.save_pretrained(out / ADAPTER, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(out / ADAPTER)
    if is_peft and merge_lora and not quantized and state_dict is None:
        import copy

        merged = copy.deepcopy(model).merge_and_unload()
        merged.save_pretrained(tmp, safe_serialization=True)
    else:
        if is_peft and merge_lora and state_dict is not None:
            log.info("sharded LoRA run: model/ holds the adapter; merge it with `align-kit export`")
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    return publish(tmp, final)


def is_sharded(accelerator) -> bool:
    """True when the weights are split across ranks (FSDP, DeepSpeed), so saving them is collective."""
    if accelerator is None:
        return False
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


# ---- files beside the model --------------------------------------------------------------------------------


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def append_log(output_dir: str | Path, record: dict) -> None:
    """Add one logged step to ``log_history.jsonl`` (a loop that logs as it goes: a killed run keeps its lines)."""
    from align_kit.data.io import jsonl_line

    with open(Path(output_dir) / LOG, "a", encoding="utf-8", newline="\n") as fh:
        fh.write(jsonl_line(record))


def read_log(output_dir: str | Path) -> list[dict]:
    """The run's logged steps (``[]`` before the first)."""
    from align_kit.report import read_log_history

    path = Path(output_dir) / LOG
    return read_log_history(path) if path.is_file() else []


def resume_log(output_dir: str | Path, step: int) -> None:
    """Keep the logged steps up to ``step`` (the checkpoint a run resumes from): the steps after it were lost
    with the kill and are logged again. A folder written before the RL loop logged to ``log_history.jsonl``
    has its ``ppo_log.jsonl`` taken over."""
    from align_kit.data.io import write_jsonl

    out = Path(output_dir)
    legacy = out / LEGACY_RL_LOG
    if legacy.is_file() and not (out / LOG).exists():
        os.replace(legacy, out / LOG)
    records = read_log(out)
    kept = [r for r in records if not isinstance(r.get("step"), (int, float)) or r["step"] <= step]
    if len(kept) != len(records):
        write_jsonl(out / LOG, kept)


def read_identity(out: Path) -> dict | None:
    """The run's recorded identity (``identity.check_and_record`` writes it), None when there is none."""
    path = Path(out) / IDENTITY_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable run identity ({exc}); move the run folder aside or delete the file "
                          "to start a new run") from None
    return record if isinstance(record, dict) and isinstance(record.get("parts"), dict) else None


@dataclass
class RunInfo:
    recipe: object
    out: Path
    data_files: list[str] = field(default_factory=list)
    skip_reports: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def start_run(recipe, data=None, extra: dict | None = None) -> RunInfo:
    """Create the run folder and write its manifest (the data's skipped and left-out rows counted in it)."""
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = RunInfo(recipe, out, list(getattr(data, "files", []) or []),
                   [r.to_dict() for r in getattr(data, "reports", [])], dict(extra or {}))
    for r in getattr(data, "reports", []):
        if r.rejected:
            log.warning("skipped rows: %s", r.summary())
    if getattr(data, "cuts", None):  # rows left out on purpose (max_rows, mixture weights): counted too
        info.extra.setdefault("rows_left_out", data.cuts)
    if is_main_process():
        write_run_manifest(info)
    return info


def write_run_manifest(info: RunInfo, evals: dict | None = None) -> None:
    from align_kit.manifest import write_manifest

    extra = {"skipped_rows": info.skip_reports, **info.extra}
    identity = read_identity(info.out)
    if identity is not None:  # the fingerprint, and every resume_anyway that continued this folder
        extra["run_identity"] = {"fingerprint": identity["fingerprint"], "overrides": identity["overrides"]}
    if evals:
        extra["evaluation"] = evals
    write_manifest(info.out, info.recipe.to_dict(), info.data_files, info.recipe.seed, extra=extra)


def finish_run(info: RunInfo, log_history: list[dict] | None, evals: dict) -> None:
    """Write ``eval.json``, ``log_history.jsonl``, the manifest with the evaluation, and ``report.md``.

    ``log_history`` None: the run logged as it went (:func:`append_log`); the file is read back."""
    if not is_main_process():
        return
    from align_kit.data.io import write_jsonl
    from align_kit.report import write_run_report

    write_json(info.out / EVAL, evals)
    if log_history is None:
        log_history = read_log(info.out)
    else:
        write_jsonl(info.out / LOG, log_history)
    write_run_manifest(info, evals)
    write_run_report(info.out, log_history, evals)
