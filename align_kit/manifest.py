"""Run manifest: what is needed to reproduce a run, written next to its outputs as ``manifest.json``.

It records the resolved recipe, versions of Python and the key packages, the project's git revision
(and whether the tree had uncommitted changes), sha256 of every data file, seeds, hardware and the
command line. Nothing secret goes in: values under secret-looking keys, Hub tokens (``hf_...``) and the
values of secret-looking environment variables are replaced by ``<redacted>`` wherever they appear.
A manifest describes the machine, so ``align-kit push`` never uploads it (see :mod:`align_kit.hub`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path

from align_kit.errors import DataError

MANIFEST_NAME = "manifest.json"
REDACTED = "<redacted>"
KEY_PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "evaluate",
                "huggingface_hub", "datasketch", "align_kit")

# A key is secret when its last word is one of these (``hub_token``, ``HF_TOKEN``, ``api_key``,
# ``db_password``); tokenizer special tokens (``pad_token``...) share the suffix but are not secrets.
_SECRET_KEY = re.compile(r"(^|[_\-.])(token|secret|password|passwd|api[_\-]?key|apikey|access[_\-]?key|"
                         r"private[_\-]?key|credentials?|auth)$", re.IGNORECASE)
_SPECIAL_TOKENS = {"pad_token", "eos_token", "bos_token", "unk_token", "sep_token", "cls_token", "mask_token"}
# Hub user access tokens: ``hf_`` and at least 20 alphanumerics (real ones are 34).
_HUB_TOKEN = re.compile(r"hf_[A-Za-z0-9]{20,}")


def is_secret_key(key: object) -> bool:
    """Whether a mapping key names a secret.

    >>> [is_secret_key(k) for k in ("hub_token", "HF_TOKEN", "api_key", "password", "pad_token", "max_tokens")]
    [True, True, True, True, False, False]
    """
    name = str(key).strip()
    return name.lower() not in _SPECIAL_TOKENS and bool(_SECRET_KEY.search(name))


def _secret_env_values() -> list[str]:
    """Values of secret-looking environment variables, longest first (so substrings go last)."""
    values = {v for k, v in os.environ.items() if is_secret_key(k) and len(v) >= 8}
    return sorted(values, key=len, reverse=True)


def redact(value: object, _env: list[str] | None = None) -> object:
    """A JSON-ready copy of ``value`` with secrets replaced by ``<redacted>``.

    >>> redact({"hub_token": "abc", "lr": 1e-4, "note": "key hf_" + "a" * 24 + " end", "pad_token": "<pad>"})
    {'hub_token': '<redacted>', 'lr': 0.0001, 'note': 'key <redacted> end', 'pad_token': '<pad>'}
    """
    env = _secret_env_values() if _env is None else _env
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): (REDACTED if is_secret_key(k) and v not in (None, "") else redact(v, env))
                for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [redact(v, env) for v in value]
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    text = _HUB_TOKEN.sub(REDACTED, str(value))
    for secret in env:
        text = text.replace(secret, REDACTED)
    return text


def redact_argv(argv: list[str]) -> list[str]:
    """The command line with the value after a secret-looking flag (``--token X``, ``--token=X``) hidden.

    >>> redact_argv(["align-kit", "push", "run", "--token", "abc", "--api-key=xyz", "--dry-run"])
    ['align-kit', 'push', 'run', '--token', '<redacted>', '--api-key=<redacted>', '--dry-run']
    """
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        flag, eq, _ = arg.partition("=")
        if arg.startswith("-") and is_secret_key(flag.lstrip("-").replace("-", "_")):
            out.append(f"{flag}={REDACTED}" if eq else arg)
            hide_next = not eq
            continue
        out.append(arg)
    return out


def package_versions(names: Iterable[str] = KEY_PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution, ``None`` when it is not installed."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_revision(path: str | Path | None = None) -> dict | None:
    """``{"commit", "dirty"}`` of the git checkout holding ``path`` (default: the align_kit project), or None."""
    where = Path(path) if path is not None else Path(__file__).resolve().parents[1]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    # An installed wheel has no checkout of its own; a virtualenv inside some other repository would
    # otherwise report that repository's commit as align_kit's.
    if not top or (path is None and Path(top).resolve() != where.resolve()):
        return None
    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks so large corpora do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_data(path: str | Path) -> dict:
    """``{"path", "bytes", "sha256"}`` for a data file; a directory hashes its files' names and hashes."""
    p = Path(path)
    if p.is_file():
        return {"path": str(p), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
    if p.is_dir():
        digest, size = hashlib.sha256(), 0
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            digest.update(f"{f.relative_to(p).as_posix()}\0{sha256_file(f)}\n".encode())
            size += f.stat().st_size
        return {"path": str(p), "bytes": size, "sha256": digest.hexdigest(), "directory": True}
    raise DataError(str(p), None, None, "no such file or directory", "an existing data file to hash")


def hardware() -> dict:
    """CPU count, physical RAM and GPU names (only when torch is importable and sees CUDA devices)."""
    info: dict = {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count()}
    try:
        info["ram_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        info["ram_bytes"] = None  # not exposed on this OS
    gpus: list[str] = []
    try:
        import torch

        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    info["gpus"] = gpus
    return info


def _as_files(data_files: Iterable | Mapping | None) -> dict[str, str]:
    if data_files is None:
        return {}
    if isinstance(data_files, (str, Path)):
        data_files = [data_files]
    if isinstance(data_files, Mapping):
        return {str(k): str(v) for k, v in data_files.items()}
    return {str(p): str(p) for p in data_files}


def build_manifest(recipe: object, data_files: Iterable | Mapping | None = None, seed: int | Mapping | None = None,
                   extra: Mapping | None = None, argv: list[str] | None = None) -> dict:
    """The manifest as a dict, already redacted (see :func:`write_manifest`)."""
    manifest = {
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command_line": redact_argv(list(sys.argv if argv is None else argv)),
        "recipe": recipe,
        "seeds": dict(seed) if isinstance(seed, Mapping) else {"seed": seed},
        "data_files": {name: hash_data(path) for name, path in _as_files(data_files).items()},
        "versions": package_versions(),
        "git": git_revision(),
        "hardware": hardware(),
    }
    if extra:
        manifest["extra"] = dict(extra)
    return redact(manifest)  # type: ignore[return-value]


def write_manifest(output_dir: str | Path, recipe_dict: object, data_files: Iterable | Mapping | None = None,
                   seed: int | Mapping | None = None, extra: Mapping | None = None) -> Path:
    """Write ``output_dir/manifest.json`` atomically (temp file + ``os.replace``) and return its path.

    ``data_files`` is a list of paths or a ``{name: path}`` mapping; ``seed`` an int or ``{name: seed}``.
    A reader never sees half a manifest, even when the run is killed while writing it.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(build_manifest(recipe_dict, data_files, seed, extra), indent=2, sort_keys=False,
                      default=str) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".tmp", dir=out)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, out / MANIFEST_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out / MANIFEST_NAME


def read_manifest(path: str | Path) -> dict:
    """A manifest written by :func:`write_manifest`; ``path`` is the file or the run directory."""
    p = Path(path)
    p = p / MANIFEST_NAME if p.is_dir() else p
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(str(p), None, None, "no such file", "a run manifest (manifest.json)") from None
    except json.JSONDecodeError as exc:
        raise DataError(str(p), exc.lineno, None, f"invalid JSON ({exc.msg})", "a run manifest") from None
