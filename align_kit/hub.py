"""``align-kit push``: upload an exported model folder to the Hub (the card is :mod:`align_kit.modelcard`).

What ``push`` uploads is an allow-list of model files, decided here and nowhere else:

- weights: ``*.safetensors`` (merged model or LoRA adapter) and ``model.safetensors.index.json``;
- config: ``config.json``, ``generation_config.json``, ``adapter_config.json``;
- tokenizer: ``tokenizer.json``, ``tokenizer.model``, ``tokenizer_config.json``, ``special_tokens_map.json``,
  ``added_tokens.json``, ``vocab.json``, ``merges.txt``, ``chat_template.jinja``/``.json``,
  ``additional_chat_templates/*.jinja``;
- the card: ``README.md`` and ``data_cards/*.md``;
- files named with ``include`` (e.g. a LICENSE), which must lie inside the folder.

Everything else stays local and is listed as skipped with a reason: checkpoints, optimizer and scheduler
states, trainer state, logs, reports and ``manifest.json`` (it records the machine: hostname-free, but still
paths, hardware and the command line). A file that resolves outside the folder (a symlink, a ``..`` path)
stops the push with an error, and so does any file holding a Hub token.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from align_kit.errors import ConfigError

ALLOWED_FILES = frozenset({
    "config.json", "generation_config.json", "adapter_config.json", "model.safetensors.index.json",
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json", "README.md"})
ALLOWED_PATTERNS = ("*.safetensors", "data_cards/*.md", "additional_chat_templates/*.jinja")
# Why a file is left out, checked in order; the first match is reported in --dry-run.
SKIP_REASONS = (
    ("checkpoint-*/*", "training checkpoint"), ("*optimizer*", "optimizer state"), ("*scheduler*", "scheduler state"),
    ("*rng_state*", "RNG state"), ("trainer_state.json", "trainer state"), ("training_args.bin", "training arguments"),
    ("manifest.json", "run manifest (machine details)"), ("*.log", "log"), ("*.jsonl", "log or data"),
    ("*.png", "report plot"), ("report*.md", "report"), ("runs/*", "tensorboard log"),
)
_HUB_TOKEN = re.compile(rb"hf_[A-Za-z0-9]{20,}")


@dataclass
class UploadPlan:
    """Files to upload as ``(path_in_repo, local_path)`` and files left out as ``(path, reason)``."""

    root: Path
    files: list[tuple[str, Path]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def is_allowed(rel: str) -> bool:
    """Whether a path inside an output folder belongs to the uploaded model.

    >>> [is_allowed(p) for p in ("model.safetensors", "data_cards/alpaca.md", "checkpoint-5/model.safetensors",
    ...                          "manifest.json", "optimizer.pt", "README.md")]
    [True, True, False, False, False, True]
    """
    if rel in ALLOWED_FILES:
        return True
    return any(fnmatch.fnmatchcase(rel, pat) and rel.count("/") == pat.count("/") for pat in ALLOWED_PATTERNS)


def skip_reason(rel: str) -> str:
    """Why a path is not uploaded.

    >>> skip_reason("checkpoint-10/optimizer.pt"), skip_reason("manifest.json"), skip_reason("notes.txt")
    ('training checkpoint', 'run manifest (machine details)', 'not in the upload allow-list')
    """
    for pattern, reason in SKIP_REASONS:
        if fnmatch.fnmatchcase(rel, pattern) or fnmatch.fnmatchcase(PurePosixPath(rel).name, pattern):
            return reason
    return "not in the upload allow-list"


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root)


def _checked_include(root: Path, rel: str) -> tuple[str, Path]:
    """An extra file named by the user: relative, no ``..``, resolving to a regular file inside ``root``."""
    pure = PurePosixPath(rel.replace(os.sep, "/"))
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise ConfigError(f"--include {rel!r}: expected a path inside the output folder without '..'")
    local = root / Path(*pure.parts)
    if not _inside(local, root):
        raise ConfigError(f"--include {rel!r} resolves outside the output folder {root}: refusing to upload it")
    if not local.resolve().is_file():
        raise ConfigError(f"--include {rel!r}: no such file in {root}")
    return pure.as_posix(), local


def plan_upload(out_dir: str | Path, include: Iterable[str] = ()) -> UploadPlan:
    """Walk an output folder and split it into the allow-listed files and the rest (with reasons).

    Raises :class:`ConfigError` when an allow-listed file or folder resolves outside ``out_dir``.
    """
    root = Path(out_dir).resolve()
    if not root.is_dir():
        raise ConfigError(f"{out_dir}: no such output folder")
    plan = UploadPlan(root)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for name in sorted(dirnames + filenames):
            local = here / name
            rel = local.relative_to(root).as_posix()
            if local.is_dir() and not local.is_symlink():
                continue  # os.walk descends into it
            candidates = [rel]
            if local.is_dir():  # a symlinked folder: judge the files it would contribute
                if not _inside(local, root) and any(p.startswith(rel + "/") for p in ALLOWED_PATTERNS):
                    raise ConfigError(f"{rel} is a link to {local.resolve()}, outside the output folder: "
                                      "refusing to upload it")
                candidates = [f"{rel}/{f.name}" for f in sorted(local.iterdir()) if f.is_file()]
            for item in candidates:
                path = root / item
                if not is_allowed(item):
                    plan.skipped.append((item, skip_reason(item)))
                elif not _inside(path, root):
                    raise ConfigError(f"{item} is a link to {path.resolve()}, outside the output folder: "
                                      "refusing to upload it")
                else:
                    plan.files.append((item, path))
    for rel in include:
        item, path = _checked_include(root, rel)
        if item not in {f for f, _ in plan.files}:
            plan.files.append((item, path))
            plan.skipped = [(f, r) for f, r in plan.skipped if f != item]
    plan.files.sort()
    return plan


def _scan_for_tokens(plan: UploadPlan, token: str | None) -> None:
    """Refuse to publish a file holding the active token or anything shaped like a Hub token.

    A safetensors file is only scanned in its JSON header (the part that can carry metadata strings): its
    tensor bytes are numbers and scanning gigabytes of them would only find chance matches.
    """
    needle = token.encode() if token else None
    for rel, path in plan.files:
        with open(path, "rb") as handle:
            if rel.endswith(".safetensors"):
                size = int.from_bytes(handle.read(8), "little")
                body = handle.read(min(size, 100 << 20))
            else:
                body = handle.read()
        if (needle and needle in body) or _HUB_TOKEN.search(body):
            raise ConfigError(f"{rel} contains what looks like a Hugging Face access token: refusing to upload. "
                              "Remove it from the file and push again.")


def push(run_dir: str | Path, repo_id: str, private: bool = True, dry_run: bool = False, token: str | None = None,
         include: Iterable[str] = (), commit_message: str = "Upload model trained with align_kit") -> dict:
    """Upload an exported model folder to the Hub (see the module docstring for what is uploaded).

    The token comes from ``token``, else ``HF_TOKEN`` or the login saved by ``hf auth login``; align_kit never
    prints it or writes it anywhere. ``HF_ENDPOINT`` selects another Hub (tests use a local one).
    Returns ``{"repo_id", "private", "files": [[path, bytes]], "skipped": [[path, reason]], "uploaded", ...}``.
    """
    from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ConfigError(f"repo id {repo_id!r}: {exc}") from None
    plan = plan_upload(run_dir, include)
    names = {f for f, _ in plan.files}
    if not any(f.endswith(".safetensors") for f in names) or not names & {"config.json", "adapter_config.json"}:
        raise ConfigError(f"{run_dir}: no safetensors weights with a config.json: run `align-kit export` first")
    active = token or get_token()
    _scan_for_tokens(plan, active)
    result = {"repo_id": repo_id, "private": private, "uploaded": False,
              "files": [[f, p.stat().st_size] for f, p in plan.files], "skipped": [list(s) for s in plan.skipped]}
    if dry_run:
        return result
    if constants.is_offline_mode():
        raise ConfigError("HF_HUB_OFFLINE is set: unset it to push (a dry run works offline)")
    if not active:
        raise ConfigError("no Hugging Face token: run `hf auth login` or set HF_TOKEN")
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=active)
    operations = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(p)) for f, p in plan.files]
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        # create_repo keeps an existing repository as it is: never publish "private by default" into a public one
        if private and api.model_info(repo_id).private is False:
            raise ConfigError(f"{repo_id} already exists and is public; pass --public to push to it anyway")
        commit = api.create_commit(repo_id, operations, commit_message=commit_message)
    except (HfHubHTTPError, ValueError) as exc:
        raise ConfigError(f"upload to {repo_id} failed: {exc}") from None
    result.update(uploaded=True, url=str(url), commit=commit.oid)
    return result
