"""Run identity: a fingerprint of everything that decides what a run produces, kept in ``run_identity.json``.

A run folder can be resumed (a checkpoint is there) or reused (``model/`` is complete). Both are right only
when the run would produce the same thing: the same resolved recipe, the same data bytes, the same base
model and the same align_kit. So :func:`check_and_record` compares the recipe at hand with the identity the
folder recorded and stops with a :class:`ConfigError` naming every changed key when they differ, unless the
recipe sets ``resume_anyway: true``; that override is recorded in ``run_identity.json`` and the manifest.

What is in the identity (``parts``, a flat ``{dotted key: value}`` mapping):

- the recipe as resolved (defaults filled in), without keys that change how a run is logged but not what it
  trains (:data:`COSMETIC`) and without ``output_dir`` (a run may be moved);
- local paths by content, not by name: ``model.name_or_path``, files and folders named in the stage's block
  (``ppo.reward_model``, ``pretrain.extend_vocab.tokens_file``) and ``data.<split>[i]`` files become a sha256
  of their files, so the same model under another folder is the same
  run and a retrained model under the same folder is not;
- ``align_kit.version``.

Large files (over 256 MiB, i.e. real model weights) are hashed by size and sixteen 1 MiB samples spread over
the file: a trained model differs from its base nearly everywhere, and a full hash of 15 GB of weights would
cost about a minute on every start.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import re
from pathlib import Path

from align_kit.errors import ConfigError
from align_kit.rundir import (
    IDENTITY_NAME,
    has_checkpoints,
    is_main_process,
    model_dir,
    read_identity,
    write_json,
)

log = logging.getLogger("align_kit")
OVERRIDE_KEY = "resume_anyway"
# Keys that change what a run logs or keeps, never the weights it trains.
COSMETIC = {"output_dir", OVERRIDE_KEY, "trainer.logging_steps", "trainer.logging_strategy",
            "trainer.logging_first_step", "trainer.logging_dir", "trainer.report_to", "trainer.run_name",
            "trainer.disable_tqdm", "trainer.save_total_limit", "trainer.log_level", "trainer.log_level_replica",
            "ppo.logging_steps", "ppo.save_total_limit", "ppo.sample_steps"}
MODEL_PATH_KEYS = re.compile(r"^(model\.name_or_path|[a-z]+\.reward_model)$")
_FULL_HASH_LIMIT = 256 << 20
_SAMPLES, _SAMPLE_SIZE = 16, 1 << 20


def flatten(value, prefix: str = "") -> dict:
    """A nested recipe dict as ``{dotted key: leaf}``; list items get ``[i]``.

    >>> flatten({"trainer": {"learning_rate": 0.001}, "data": {"train": [{"path": "a"}]}, "seed": 1})
    {'trainer.learning_rate': 0.001, 'data.train[0].path': 'a', 'seed': 1}
    >>> flatten({"peft": None, "trainer": {}})
    {'peft': None, 'trainer': {}}
    """
    if isinstance(value, dict) and value:
        out = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, (list, tuple)) and value and any(isinstance(v, (dict, list)) for v in value):
        out = {}
        for i, item in enumerate(value):
            out.update(flatten(item, f"{prefix}[{i}]"))
        return out
    return {prefix: list(value) if isinstance(value, tuple) else value}


def file_digest(path: Path) -> str:
    """sha256 of a file: of all its bytes up to 256 MiB, of its size and 16 spread 1 MiB samples above."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if size <= _FULL_HASH_LIMIT:
            while block := handle.read(1 << 20):
                digest.update(block)
            return digest.hexdigest()
        digest.update(f"sampled {size}\n".encode())
        for i in range(_SAMPLES):
            handle.seek((size - _SAMPLE_SIZE) * i // (_SAMPLES - 1))
            digest.update(handle.read(_SAMPLE_SIZE))
    return "sampled:" + digest.hexdigest()


def content_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file, or of a folder's file names and file digests (hidden files left out)."""
    if path.is_file():
        return "sha256:" + file_digest(path)
    digest = hashlib.sha256()
    for f in sorted(x for x in path.rglob("*") if x.is_file()):
        rel = f.relative_to(path).as_posix()
        if not any(part.startswith(".") for part in rel.split("/")):
            digest.update(f"{rel}\0{file_digest(f)}\n".encode())
    return "sha256:" + digest.hexdigest()


def _data_parts(recipe) -> dict:
    """``data.<split>[i].content``: the bytes each data source reads (Hub datasets by id and split)."""
    from align_kit.data.cards import get_card
    from align_kit.data.sources import resolve

    parts = {}
    for split in ("train", "eval"):
        for i, src in enumerate(getattr(recipe.data, split, None) or []):
            location, _, _ = resolve(src, for_training=split == "train")
            key = f"data.{split}[{i}].content"
            parts[key] = content_digest(Path(location)) if Path(location).exists() else location
            if src.name is not None:  # what the card says about the data (a Hub revision), not its prose
                card = get_card(src.name)
                parts[f"data.{split}[{i}].card"] = {"source": card.source, "splits": card.splits,
                                                    "columns": card.columns, "format": card.format}
    return parts


def identity_parts(recipe) -> dict:
    """The flat identity of a validated recipe (see the module doc)."""
    import align_kit

    parts = {}
    for key, value in flatten(recipe.to_dict()).items():
        if key in COSMETIC or key.split(".")[0] == "evaluation":  # benchmarks measure a run, never train it
            continue
        if re.fullmatch(r"data\.(train|eval)\[\d+\]\.path", key) and value and Path(value).exists():
            value = "<content below>"  # the path moves with the file; its bytes are what counts
        elif (MODEL_PATH_KEYS.match(key) or key.startswith(f"{recipe.stage}.")) and isinstance(value, str) \
                and value and Path(value).exists():  # stage options naming files (a vocabulary, a reward model)
            folder = Path(value)  # a stage's folder stands for its model/ (as the stages read it)
            value = content_digest(folder / "model" if (folder / "model" / "config.json").exists() else folder)
        parts[key] = value
    if recipe.data is not None:
        parts.update(_data_parts(recipe))
    parts["align_kit.version"] = align_kit.__version__
    return parts


def fingerprint(parts: dict) -> str:
    """sha256 of the identity parts (key order does not matter).

    >>> fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    True
    """
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def changed_keys(old: dict, new: dict) -> list[str]:
    """``key (old -> new)`` for every part that differs, added or went away.

    >>> changed_keys({"trainer.learning_rate": 0.003, "seed": 1}, {"trainer.learning_rate": 1e-05, "seed": 1})
    ['trainer.learning_rate (0.003 -> 1e-05)']
    """
    def show(value) -> str:
        text = "unset" if value is _MISSING else json.dumps(value, default=str)
        if text.startswith('"') and text.endswith('"'):
            text = text[1:-1]
        return text if len(text) <= 40 else text[:19] + "..." + text[-12:]

    return [f"{key} ({show(old.get(key, _MISSING))} -> {show(new.get(key, _MISSING))})"
            for key in sorted(set(old) | set(new)) if old.get(key, _MISSING) != new.get(key, _MISSING)]


_MISSING = object()


def has_run_state(out: Path) -> bool:
    """True when ``out`` holds something a run would resume from or reuse: a checkpoint or a final model."""
    return model_dir(out).is_dir() or has_checkpoints(out)


def compare(recipe, out: Path | None = None) -> tuple[dict, list[str] | None]:
    """(the recipe's identity parts, the changed keys against the run in ``out`` or None when nothing to
    compare). A folder with a checkpoint or model but no recorded identity reports ``["<no identity>"]``."""
    out = Path(out if out is not None else recipe.output_dir)
    parts = identity_parts(recipe)
    if not has_run_state(out):
        return parts, None
    old = read_identity(out)
    if old is None:
        return parts, [f"<no {IDENTITY_NAME}: written by an older align_kit or by hand>"]
    return parts, changed_keys(old["parts"], parts)


def mismatch_error(where: str, out: Path, changed: list[str]) -> ConfigError:
    return ConfigError(
        f"{where}{out} holds a run made with other settings, so resuming or reusing it would not give what this "
        f"recipe asks for; changed: {'; '.join(changed)}. Choose a new output_dir, or continue that run under the "
        f"new settings with {OVERRIDE_KEY}: true in the recipe (--resume-anyway on the command line; recorded "
        f"in {IDENTITY_NAME} and manifest.json)")


def check(recipe) -> None:
    """What :func:`check_and_record` would refuse, without writing anything (``align-kit train --check``)."""
    _, changed = compare(recipe)
    if changed and not getattr(recipe, OVERRIDE_KEY, False):
        raise mismatch_error("", Path(recipe.output_dir), changed)


def check_and_record(recipe) -> dict:
    """Stop when ``recipe.output_dir`` holds a run with another identity (unless ``resume_anyway``), then
    write this recipe's identity there. Returns the record (also put in the manifest by ``rundir``)."""
    out = Path(recipe.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir: {out} is an existing file; expected a folder (or a path that does not "
                          "exist yet)")
    parts, changed = compare(recipe, out)
    previous = read_identity(out) or {}
    overrides = list(previous.get("overrides", [])) if changed is not None else []
    if changed:
        if not getattr(recipe, OVERRIDE_KEY, False):
            raise mismatch_error("", out, changed)
        log.warning("%s: %s=true: continuing a run made with other settings; changed: %s", out, OVERRIDE_KEY,
                    "; ".join(changed))
        overrides.append({"utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                          "changed": changed, "previous_fingerprint": previous.get("fingerprint")})
    record = {"fingerprint": fingerprint(parts), "parts": parts, "overrides": overrides}
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / IDENTITY_NAME, record)
    return record
