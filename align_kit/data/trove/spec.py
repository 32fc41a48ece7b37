"""The pipeline YAML of ``align-kit data run``: typed, validated before any task starts.

Unknown keys fail with a suggestion and wrong types or ranges name the key, the value found and what is
expected, as recipes do (:func:`align_kit.config.build`). This module needs no datatrove: ``--check`` runs
without it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from align_kit.config import build, parse_yaml
from align_kit.data.clean import QualityThresholds
from align_kit.data.dedup import MinHashConfig
from align_kit.data.pii import PLACEHOLDERS
from align_kit.errors import ConfigError, closest


@dataclass
class InputSpec:
    paths: list[str]
    """Files or folders (every file inside, sorted), local or fsspec URLs (s3://, hf://, ...)."""
    format: Literal["auto", "jsonl", "parquet", "text"] = "auto"
    """``auto``: by suffix (.jsonl/.jsonl.gz/.json.gz, .parquet, .txt/.txt.gz)."""
    text_field: str = "text"
    id_field: str = "id"
    """Record field holding the id; absent ids become ``<file name>:<line>``."""
    split: Literal["line", "blank"] = "line"
    """Text files: one document per line, or documents separated by blank lines."""
    on_bad_row: Literal["error", "skip"] = "error"
    """``skip``: bad rows go to ``dropped/`` with their reason and are counted, instead of stopping the run."""


@dataclass
class OutputSpec:
    folder: str
    format: Literal["jsonl", "parquet"] = "jsonl"


@dataclass
class EvalSetSpec:
    path: str | None = None
    harness: str | None = None
    """Instead of a path: an lm-evaluation-harness task (or tag) whose test documents are the set
    (align_kit.harness; e.g. flan_cot_creak)."""
    field: str | None = None
    flan: bool = False
    """A header-less FLAN .tsv (question, answer, rationale)."""


@dataclass
class DecontamSpec:
    eval: list[EvalSetSpec]
    n: int = 13
    zh_n: int = 25
    min_units: int = 8
    zh_min_units: int = 15
    drop: bool = True
    """false: report every hit (``hits/``, ``report.json``) and keep the documents."""


@dataclass
class PIISpec:
    kinds: list[str] = field(default_factory=lambda: list(PLACEHOLDERS))


@dataclass
class TokenizeSpec:
    tokenizer: str
    """A tokenizer folder (or Hub name) for ``AutoTokenizer.from_pretrained``."""
    add_bos: bool = True
    add_eos: bool = True


@dataclass
class ExactSpec:
    pass


@dataclass
class SlurmSpec:
    partition: str
    time: str = "4:00:00"
    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 2
    qos: str = "normal"
    env_command: str | None = None
    venv_path: str | None = None
    sbatch_args: dict = field(default_factory=dict)


@dataclass
class RaySpec:
    cpus_per_task: int = 1
    mem_per_cpu_gb: float = 2.0
    address: str | None = None
    """An existing cluster (``ray://...`` or ``auto``); unset starts a local one with ``workers`` CPUs."""


@dataclass
class PipelineSpec:
    input: InputSpec
    output: OutputSpec
    steps: list
    executor: Literal["local", "slurm", "ray"] = "local"
    tasks: int = 1
    """Shards of the input: task r reads files r, r + tasks, ... (a file is never split)."""
    workers: int = 1
    """Tasks running at once (local: processes; Slurm: array concurrency; Ray: tasks in flight)."""
    slurm: SlurmSpec | None = None
    ray: RaySpec | None = None
    source: str = ""


STEP_TYPES = {"quality": QualityThresholds, "pii": PIISpec, "exact_dedup": ExactSpec,
              "minhash_dedup": MinHashConfig, "decontaminate": DecontamSpec, "tokenize": TokenizeSpec}
DEDUP = ("exact_dedup", "minhash_dedup")


def _positive(value, where: str, least: int = 1) -> None:
    if value < least:
        raise ConfigError(f"{where}: expected an integer >= {least}, found {value!r}")


def _fraction(value, where: str, low_open: bool = False) -> None:
    if not (0.0 < value <= 1.0 if low_open else 0.0 <= value <= 1.0):
        raise ConfigError(f"{where}: expected a number in {'(0, 1]' if low_open else '[0, 1]'}, found {value!r}")


def _check_step(kind: str, cfg, where: str) -> None:
    if kind == "quality":
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if isinstance(value, dict):
                for n, frac in value.items():
                    _positive(n, f"{where}.{f.name} (n-gram size)")
                    _fraction(frac, f"{where}.{f.name}[{n}]")
            elif f.name.endswith("_frac") or f.name in ("cjk_share", "max_symbol_word_ratio"):
                _fraction(value, f"{where}.{f.name}")
            elif value < 0:
                raise ConfigError(f"{where}.{f.name}: expected a number >= 0, found {value!r}")
    elif kind == "minhash_dedup":
        for name in ("shingle_size", "zh_shingle_size", "bands", "rows"):
            _positive(getattr(cfg, name), f"{where}.{name}")
        _fraction(cfg.threshold, f"{where}.threshold", low_open=True)
        if cfg.verify not in ("exact", "minhash"):
            raise ConfigError(f"{where}.verify: expected one of exact, minhash, found {cfg.verify!r}")
    elif kind == "decontaminate":
        for name in ("n", "zh_n", "min_units", "zh_min_units"):
            _positive(getattr(cfg, name), f"{where}.{name}")
        if not cfg.eval:
            raise ConfigError(f"{where}.eval: expected at least one evaluation set, found none")
        for j, e in enumerate(cfg.eval):
            if (e.path is None) == (e.harness is None):
                raise ConfigError(f"{where}.eval[{j}]: give exactly one of path (a file) or harness (a task name)")
            if e.harness is not None:
                from align_kit.harness import HarnessArgs, check_tasks

                check_tasks(HarnessArgs(tasks=[e.harness]), f"{where}.eval[{j}].harness")
    elif kind == "pii":
        for k in cfg.kinds:
            if k not in PLACEHOLDERS:
                raise ConfigError(f"{where}.kinds: expected kinds from {', '.join(PLACEHOLDERS)}, found {k!r}")


def parse_step(raw, i: int) -> tuple[str, object]:
    where = f"steps[{i}]"
    if isinstance(raw, str):
        raw = {raw: {}}
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ConfigError(f"{where}: expected one step name ({', '.join(STEP_TYPES)}) with its settings, "
                          f"found {raw!r}")
    (kind, settings), = raw.items()
    if kind not in STEP_TYPES:
        hint = closest(str(kind), list(STEP_TYPES))
        raise ConfigError(f"{where}: unknown step '{kind}'" + (f" (did you mean '{hint}'?)" if hint else "")
                          + f"; steps: {', '.join(STEP_TYPES)}")
    where = f"{where}.{kind}"
    cls = STEP_TYPES[kind]
    settings = settings or {}
    if kind == "minhash_dedup" and isinstance(settings, dict):
        # MinHashConfig checks its ranges in __post_init__ without the key's path: check them here first
        for name in ("shingle_size", "zh_shingle_size", "bands", "rows"):
            if isinstance(settings.get(name), int):
                _positive(settings[name], f"{where}.{name}")
        if isinstance(settings.get("threshold"), (int, float)):
            _fraction(settings["threshold"], f"{where}.threshold", low_open=True)
    try:
        cfg = build(cls, settings, where)
    except ConfigError as exc:
        # MinHashConfig checks its own ranges in __post_init__, without the key's path
        raise ConfigError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None
    _check_step(kind, cfg, where)
    return kind, cfg


def _check_order(kinds: list[str]) -> None:
    for kind in set(kinds):
        if kinds.count(kind) > 1:
            raise ConfigError(f"steps: '{kind}' appears {kinds.count(kind)} times; expected at most once")
    dedup = [i for i, k in enumerate(kinds) if k in DEDUP]
    if len(dedup) == 2 and (dedup[1] != dedup[0] + 1 or kinds[dedup[0]] != "exact_dedup"):
        raise ConfigError(f"steps: expected exact_dedup directly before minhash_dedup, found order {kinds}")
    if "tokenize" in kinds and kinds[-1] != "tokenize":
        raise ConfigError(f"steps: expected tokenize as the last step, found order {kinds}")


def parse_spec(raw, source: str = "pipeline") -> PipelineSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with input, output and steps, found {raw!r}")
    raw = {**raw, "source": source}
    if isinstance(raw.get("input"), dict) and isinstance(raw["input"].get("paths"), str):
        raw["input"] = {**raw["input"], "paths": [raw["input"]["paths"]]}
    steps_raw = raw.get("steps")
    if not isinstance(steps_raw, list) or not steps_raw:
        raise ConfigError(f"{source}: steps: expected a non-empty list of steps, found {steps_raw!r}")
    spec = build(PipelineSpec, {**raw, "steps": []}, "recipe")
    if not spec.input.paths:
        raise ConfigError("input.paths: expected at least one file or folder, found none")
    spec.steps = [parse_step(s, i) for i, s in enumerate(steps_raw)]
    _check_order([k for k, _ in spec.steps])
    _positive(spec.tasks, "tasks")
    _positive(spec.workers, "workers")
    if spec.executor == "slurm" and spec.slurm is None:
        raise ConfigError("slurm: expected a slurm section (at least partition) with executor: slurm, found none")
    for name in ("cpus_per_task", "mem_per_cpu_gb"):
        for section in (spec.slurm, spec.ray):
            if section is not None and getattr(section, name) <= 0:
                raise ConfigError(f"{'slurm' if section is spec.slurm else 'ray'}.{name}: expected a positive "
                                  f"number, found {getattr(section, name)!r}")
    return spec


def read_yaml(path: str | Path):
    """The pipeline file's YAML (recipe scalars: ``no`` stays a string), unvalidated."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such pipeline file")
    try:
        return parse_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from None


def load_spec(path: str | Path) -> PipelineSpec:
    return parse_spec(read_yaml(path), str(path))


def fingerprint(spec: PipelineSpec) -> dict:
    """What decides an output folder's contents: input, steps, output format and the number of tasks (it
    decides the shards). Executor and workers only decide where and how fast, so a run may change them."""
    steps = [{k: dataclasses.asdict(c) if dataclasses.is_dataclass(c) else c} for k, c in spec.steps]
    body = {"input": dataclasses.asdict(spec.input), "output_format": spec.output.format, "tasks": spec.tasks,
            "steps": steps}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"fingerprint": digest, **body}
