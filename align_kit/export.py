"""Export a trained run as a plain Hugging Face model folder: LoRA merged into the base weights,
safetensors only, with the tokenizer and its chat template.

The result loads with ``AutoModelForCausalLM.from_pretrained(out)`` (or ``AutoModelForSequenceClassification``
for a reward model) without peft installed. Merging happens in float32 so that ``W + B @ A * scale`` is not
rounded twice; the merged weights are then cast to the base model's saved dtype (or ``dtype``). A QLoRA run
merges into the unquantized base weights: adding a float delta to 4-bit weights would not be exact.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from align_kit.errors import ConfigError

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")
# Pickle-based weight files: never part of an export (they run code when loaded).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def find_model_dir(run_dir: str | Path) -> Path:
    """The folder of a run that holds the final model or adapter: the run folder itself, or ``final/``."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ConfigError(f"{run}: no such run folder (expected a stage output with a model or LoRA adapter)")
    for candidate in (run, run / "final", run / "model"):
        if (candidate / ADAPTER_CONFIG).is_file() or (candidate / "config.json").is_file():
            return candidate
    raise ConfigError(f"{run}: no {ADAPTER_CONFIG} or config.json here or in final/ "
                      "(expected the output folder of a finished stage)")


def _model_class(task_type: str | None, architectures: list[str] | None):
    """Sequence classification for reward models (peft task ``SEQ_CLS``), causal LM for everything else."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if task_type == "SEQ_CLS" or any(a.endswith("ForSequenceClassification") for a in architectures or []):
        return AutoModelForSequenceClassification
    return AutoModelForCausalLM


def merge_lora(model):
    """Fold LoRA deltas into the base weights (``W += B @ A * alpha / r``) and drop the peft wrappers.

    A model without adapters is returned unchanged, so callers need not check.
    """
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model


def _load_tokenizer(model_dir: Path, base: str | None):
    from transformers import AutoTokenizer

    source = model_dir if any((model_dir / f).is_file() for f in TOKENIZER_FILES) else base
    if source is None:
        raise ConfigError(f"{model_dir}: no tokenizer files ({', '.join(TOKENIZER_FILES)}) and no base model")
    try:
        return AutoTokenizer.from_pretrained(str(source))
    except OSError as exc:
        raise ConfigError(f"cannot load the tokenizer from {source}: {exc}") from None


def load_merged(run_dir: str | Path, base_model: str | None = None):
    """``(model, tokenizer, info)`` for a run: an adapter is loaded onto its base in float32 and merged.

    ``base_model`` overrides the base path recorded in ``adapter_config.json`` (for a run trained on a
    machine where the base lived elsewhere).
    """
    from peft import PeftModel
    from transformers import AutoConfig

    model_dir = find_model_dir(run_dir)
    adapter_file = model_dir / ADAPTER_CONFIG
    adapter = json.loads(adapter_file.read_text()) if adapter_file.is_file() else None
    # A full model (no adapter) is its own base; an adapter names its base unless the caller overrides it.
    base = (base_model or adapter.get("base_model_name_or_path")) if adapter else str(model_dir)
    if not base:
        raise ConfigError(f"{adapter_file}: base_model_name_or_path is empty; pass --base-model")
    try:
        config = AutoConfig.from_pretrained(base)
    except OSError as exc:
        raise ConfigError(f"cannot load the base model config from {base!r}: {exc}") from None
    saved_dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    cls = _model_class((adapter or {}).get("task_type"), getattr(config, "architectures", None))
    kwargs = {"num_labels": 1} if adapter and adapter.get("task_type") == "SEQ_CLS" else {}
    tokenizer = _load_tokenizer(model_dir, base if adapter else None)
    model = cls.from_pretrained(base, dtype=torch.float32, **kwargs)
    if adapter:
        embeddings = model.get_input_embeddings().num_embeddings
        if len(tokenizer) > embeddings:  # the stage added tokens (e.g. a pad or chat token)
            model.resize_token_embeddings(len(tokenizer))
        model = merge_lora(PeftModel.from_pretrained(model, str(model_dir)))
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id  # sequence classification needs it to find the last token
    info = {"model_dir": str(model_dir), "base_model": base, "merged_lora": adapter is not None,
            "lora": {k: adapter.get(k) for k in ("r", "lora_alpha", "target_modules")} if adapter else None,
            "saved_dtype": str(saved_dtype).replace("torch.", "") if saved_dtype else None,
            "model_class": cls.__name__}
    return model, tokenizer, info


def _usual_modes(folder: Path) -> None:
    """Give the staged export the modes a plain ``mkdir`` / ``open`` would have (0755 / 0644 under umask 022):
    ``mkdtemp`` makes its folder 0700 and some writers make files 0600, which other users of a shared model
    folder (a serving process, a teammate) could not read."""
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def save_export(model, tokenizer, out_dir: str | Path, dtype: str | None = None, overwrite: bool = False,
                chat_template: str | None = None) -> Path:
    """Write ``model`` (safetensors) and ``tokenizer`` (with its chat template) to ``out_dir``.

    The folder is built beside the destination and renamed into place, so a failed export leaves no
    half-written model that would load with missing weights.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out}: folder exists and is not empty (pass --overwrite to replace it)")
    if dtype is not None:
        if dtype not in DTYPES:
            raise ConfigError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
        model = model.to(DTYPES[dtype])
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    if not getattr(tokenizer, "chat_template", None):
        log.warning("the tokenizer has no chat template: the export will not format conversations")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        # transformers 5 writes safetensors only; the check below keeps that true if a version changes it.
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        pickles = [p.name for p in staging.rglob("*") if p.suffix in PICKLE_SUFFIXES]
        if pickles or not list(staging.glob("*.safetensors")):
            raise ConfigError(f"export wrote {pickles or 'no safetensors'}: expected safetensors weights only")
        _usual_modes(staging)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def export_model(run_dir: str | Path, out_dir: str | Path, base_model: str | None = None,
                 dtype: str | None = None, overwrite: bool = False, chat_template: str | None = None) -> dict:
    """Merge a run's LoRA adapter (if any) and save a standalone safetensors model folder.

    Returns a summary: ``out`` (the folder), ``base_model``, ``merged_lora``, ``dtype`` and ``files``.
    Without ``dtype`` the weights keep the base model's saved dtype (float32 when it recorded none).
    """
    model, tokenizer, info = load_merged(run_dir, base_model)
    target = dtype or (info["saved_dtype"] if info["saved_dtype"] in DTYPES else None)
    out = save_export(model, tokenizer, out_dir, target, overwrite, chat_template)
    info.update(out=str(out), dtype=target or "float32", files=sorted(p.name for p in out.iterdir()))
    return info
