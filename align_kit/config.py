"""Recipes: one YAML file -> typed dataclasses, validated before any model is loaded.

A recipe has ``stage``, ``model``, ``data``, optional ``peft`` and ``quantization``, a ``trainer:`` block
passed to the stage's TRL config class, and an optional block named after the stage for align_kit's own
stage options (``dpo: {reference: adapter}``). Unknown keys are errors naming the closest valid key;
``trainer:`` keys are checked against the TRL config class's fields.
Paths may use ``${VAR}`` / ``${VAR:-default}`` environment expansion and are relative to the working
directory. Overrides use dotted keys: ``trainer.learning_rate=1e-4 peft.r=16``.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from align_kit.envvars import expand_env  # noqa: F401  (config.expand_env: the recipe loader's)
from align_kit.errors import ConfigError, closest
from align_kit.harness import EvaluationArgs

# ----------------------------------------------------------------------------- recipe sections


@dataclass
class ModelArgs:
    name_or_path: str
    """Local checkpoint folder, Hub id, or ``builtin:tiny-llama`` (the quickstart model built in process)."""
    family: str = "auto"
    """llama | qwen | mistral | glm, or auto (from config.model_type)."""
    template: str = "auto"
    """Chat template variant (llama2, llama3, chatml, mistral_v1, mistral_v3, chatglm3, glm4) or auto."""
    override_template: bool = False
    """Replace a tokenizer's own chat template even when it has generation markers."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """auto = bfloat16 on a GPU that supports it, else float32."""
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2", "flex_attention"] = "auto"
    """auto = flash_attention_2 when installed and on CUDA, else sdpa."""
    trust_remote_code: bool = False
    """Run Python code shipped with a Hub repository (ChatGLM3). Off unless you trust that repository."""
    allow_pickle: bool = False
    """Allow pickle-based weights (.bin/.pt), which can execute code when loaded. Safetensors otherwise."""
    revision: str | None = None
    """Hub revision (commit, tag or branch) to pin."""
    new_tokens: list[str] = field(default_factory=list)
    """Tokens to add to the vocabulary (pretrain vocabulary extension); embeddings are resized."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, ~30% more compute."""
    liger_kernels: bool = False
    """Use Liger fused kernels where the liger-kernel package is installed."""


@dataclass
class DataSource:
    name: str | None = None
    """A dataset registered by a card in data_cards/ (its YAML front matter gives source and format)."""
    path: str | None = None
    """A local file (json, jsonl, jsonl.gz, csv, tsv, parquet, txt) or a Hub dataset id (hub: prefix)."""
    split: str = "train"
    """Split of a carded or Hub dataset."""
    format: str = "auto"
    """alpaca | flan | sharegpt | messages | hh_rlhf | preference | paired | unpaired | text | auto."""
    columns: dict[str, str] = field(default_factory=dict)
    """Rename columns of the source to the format's names, e.g. {instruction: prompt}."""
    weight: float = 1.0
    """Mixing weight relative to the other sources (rows are sampled in proportion)."""
    max_rows: int | None = None
    """Take at most this many rows (after conversion)."""
    text_split: Literal["line", "blank"] = "line"
    """For .txt: one document per line, or documents separated by blank lines."""
    text_field: str = "text"
    """For pretraining jsonl/parquet: the column holding the text."""


@dataclass
class DataArgs:
    train: list[DataSource]
    """Training sources (mixed by weight)."""
    eval: list[DataSource] = field(default_factory=list)
    """Held-out sources; when empty, ``eval_fraction`` of the training rows is held out."""
    eval_fraction: float = 0.05
    """Share of training rows held out for evaluation when no eval source is given (0 disables)."""
    on_bad_row: Literal["error", "skip"] = "error"
    """error: stop at the first bad row, naming file, row and field. skip: drop and count by reason."""
    long_rows: Literal["truncate_prompt", "drop"] = "truncate_prompt"
    """SFT rows longer than trainer.max_length: truncate_prompt cuts the start of the conversation and keeps
    the last reply whole with its end-of-turn token (a row whose last reply does not fit is dropped); drop
    drops every such row. Either way the rows are counted in the log and the manifest."""
    seed: int = 0
    """Seed of the held-out split and the mixture sampling."""


@dataclass
class PeftArgs:
    method: Literal["lora"] = "lora"
    r: int = 16
    """LoRA rank."""
    alpha: int = 32
    """LoRA scaling numerator: the update is scaled by alpha / r."""
    dropout: float = 0.05
    target_modules: list[str] | str = "auto"
    """Module names to adapt, or auto (the family's attention + MLP projections)."""
    modules_to_save: list[str] = field(default_factory=list)
    """Modules trained in full beside the adapters (e.g. embed_tokens, lm_head after adding tokens)."""


@dataclass
class QuantArgs:
    bits: Literal[4, 8] = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    """Quantise the quantisation constants too (QLoRA): ~0.4 bit/parameter saved."""
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


@dataclass
class Recipe:
    stage: str
    model: ModelArgs
    data: DataArgs | None = None
    peft: PeftArgs | None = None
    quantization: QuantArgs | None = None
    trainer: dict[str, Any] = field(default_factory=dict)
    """Passed to the stage's trainer config class (TRL's SFTConfig, DPOConfig, ...)."""
    evaluation: EvaluationArgs | None = None
    """Benchmarks run on the start and trained models (``harness:`` lm-evaluation-harness tasks)."""
    options: Any = None
    """The stage's own options (the block named after the stage), a dataclass of the stage module."""
    output_dir: str = "runs/output"
    seed: int = 42
    resume_anyway: bool = False
    """Resume or reuse the run in output_dir even though it was made with other settings (align_kit.identity);
    the changed keys are recorded in run_identity.json and the manifest."""
    source: str | None = None
    """The file the recipe came from (set by the loader)."""

    # The trainer config the loader built and validated (align_kit.recipe_check); not a recipe field
    built_trainer_config = None

    def trainer_config(self, **extra):
        """The stage's trainer config (TRL's SFTConfig, DPOConfig, ..., or PPOConfig) with output_dir, seed,
        align_kit's defaults and the stage's own settings filled in: the one the loader validated, or with
        ``extra`` keys a new one built the same way."""
        if not extra and self.built_trainer_config is not None:
            import copy

            # a copy: a Trainer may set attributes on its args, and a recipe can be run more than once
            return copy.copy(self.built_trainer_config)
        from align_kit.recipe_check import build_trainer_config

        return build_trainer_config(self, **extra)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("source", None)
        out[self.stage] = out.pop("options")
        return out


# ----------------------------------------------------------------------------- strict dataclass loading


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_value(value, tp, where: str):
    """Check/convert ``value`` against annotation ``tp``; returns the converted value."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        if len(candidates) == 1:  # Optional[X]: X's own, more precise error
            return _check_value(value, candidates[0], where)
        for arg in candidates:
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return _check_value(value, arg, where)
            try:
                return _check_value(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {' or '.join(_type_name(a) for a in args)}, found {value!r}")
    if origin is Literal:
        options = typing.get_args(tp)
        if value not in options:
            hint = closest(str(value), [str(o) for o in options])
            raise ConfigError(f"{where}: expected one of {', '.join(map(str, options))}, found {value!r}"
                              + (f" (did you mean '{hint}'?)" if hint else ""))
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, found {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_check_value(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, found {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, found {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, found {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, found {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, found {value!r}")
        return value
    return value  # an annotation we do not check (enums, callables): the config class validates it


def build(cls, data, where: str = "recipe"):
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types are errors.

    >>> build(PeftArgs, {"r": 8}).r
    8
    >>> build(PeftArgs, {"alpah": 8}, "peft")
    Traceback (most recent call last):
    align_kit.errors.ConfigError: peft: unknown key 'alpah' (did you mean 'alpha'?); valid keys: method, r, alpha, dropout, target_modules, modules_to_save
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} fields, found {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            hint = closest(str(key), fields)
            raise ConfigError(f"{where}: unknown key '{key}'" + (f" (did you mean '{hint}'?)" if hint else "")
                              + f"; valid keys: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{where}.{name}" if where != "recipe" else name
        if name in data:
            kwargs[name] = _check_value(data[name], hints[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: required key is missing")
    return cls(**kwargs)


# ----------------------------------------------------------------------------- YAML, env, overrides


class RecipeLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 scalars: only true/false are booleans (``save_strategy: no`` stays the
    string "no", not False) and ``1e-4`` is a float. Safe: no Python objects are ever constructed."""


RecipeLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\d[\d_]*)?\.?\d+(?:[eE][-+]?\d+)?|[-+]?\d[\d_]*\.\d*(?:[eE][-+]?\d+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def _construct_mapping_once(loader, node, deep=False):
    """A mapping whose key appears twice is an error (PyYAML keeps the last one silently)."""
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key, line = loader.construct_object(key_node, deep=True), key_node.start_mark.line + 1
        try:
            if key in seen:
                raise ConfigError(f"line {line}: key '{key}' appears twice in one mapping (first on line "
                                  f"{seen[key]}); expected each key once")
            seen[key] = line
        except TypeError:  # an unhashable key: the base constructor reports it
            continue
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


RecipeLoader.construct_mapping = _construct_mapping_once


def parse_yaml(text: str):
    r"""Parse recipe YAML.

    >>> parse_yaml("a: no\nb: 1e-4\nc: true\nd: 3\ne: 1.5")
    {'a': 'no', 'b': 0.0001, 'c': True, 'd': 3, 'e': 1.5}
    >>> parse_yaml("trainer:\n  lr: 1\n  lr: 2")
    Traceback (most recent call last):
    align_kit.errors.ConfigError: line 3: key 'lr' appears twice in one mapping (first on line 2); expected each key once
    """
    return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 - RecipeLoader derives from SafeLoader

def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=value`` overrides (values parsed as YAML).

    >>> apply_overrides({"trainer": {}}, ["trainer.learning_rate=1e-4", "peft.r=16"])
    {'trainer': {'learning_rate': 0.0001}, 'peft': {'r': 16}}
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected dotted.key=value, e.g. trainer.learning_rate=1e-4")
        key, text = item.split("=", 1)
        try:
            value = parse_yaml(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': expected a YAML value after '=', found {text!r} "
                              f"({' '.join(str(exc).split())[:120]})") from None
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a mapping in the recipe")
        node[parts[-1]] = value
    return raw


def read_yaml_file(path: Path, what: str = "recipe"):
    """A YAML file parsed with :func:`parse_yaml`; unreadable, non-UTF-8 or invalid files give one line."""
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found" + (" (it is a directory)" if path.is_dir() else ""))
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or raw[:2].count(b"\0") == 1:
        raise ConfigError(f"{path}: expected a UTF-8 {what} file, found UTF-16 text; re-save it as UTF-8 "
                          f"(e.g. iconv -f UTF-16 -t UTF-8)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: expected UTF-8 text, found bytes that are not UTF-8 at offset "
                          f"{exc.start}; re-save the {what} as UTF-8") from None
    try:
        return parse_yaml(text)  # a SafeLoader: no Python objects from YAML
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def load_recipe(path: str | Path, overrides: list[str] | None = None, inputs: bool = True) -> Recipe:
    """Read, override, expand and validate a recipe file (see :func:`recipe_from_dict`). Nothing heavy is loaded."""
    path = Path(path)
    raw = read_yaml_file(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with stage, model, data, trainer; found {type(raw).__name__}")
    try:
        return recipe_from_dict(apply_overrides(raw, overrides or []), source=str(path), inputs=inputs)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def recipe_from_dict(raw: dict, source: str | None = None, inputs: bool = True) -> Recipe:
    """Validate a recipe given as a dict (the Python API's entry point): completely, as a run would
    (align_kit.recipe_check); ``inputs=False`` leaves out the files, folders and modules it names."""
    from align_kit.registry import STAGES, get_stage

    raw = expand_env(dict(raw))
    stage_name = raw.get("stage")
    if stage_name is None:
        raise ConfigError(f"stage: required key is missing; one of {', '.join(STAGES)}")
    stage = get_stage(stage_name)
    options_raw = raw.pop(stage_name, None)
    for other in STAGES:
        if other != stage_name and other in raw:
            raise ConfigError(f"block '{other}:' belongs to stage '{other}', but this recipe's stage is '{stage_name}'")
    for key, why in (("options", f"the stage's options go in a block named after it ('{stage_name}:')"),
                     ("source", "it is set to the recipe file's path by the loader")):
        if key in raw:
            raise ConfigError(f"{key}: not a recipe key ({why}); found {key}: {raw[key]!r}")
    recipe = build(Recipe, raw)
    recipe.source = source
    if stage.OPTIONS is not None:
        recipe.options = build(stage.OPTIONS, options_raw or {}, stage_name)
    elif options_raw:
        raise ConfigError(f"stage '{stage_name}' takes no '{stage_name}:' block")
    validate_trainer(recipe.trainer, stage.TRAINER_CONFIG)
    from align_kit.recipe_check import check_recipe

    check_recipe(recipe, stage, inputs=inputs)
    return recipe


# Keys align_kit sets itself; a recipe setting them would be ignored or conflict.
RESERVED_TRAINER_KEYS = {"output_dir": "use the top-level output_dir", "seed": "use the top-level seed"}


def validate_trainer(trainer: dict, cls) -> None:
    """Check ``trainer:`` keys and value types against the config class (ranges: align_kit.ranges)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in trainer.items():
        if key in RESERVED_TRAINER_KEYS:
            raise ConfigError(f"trainer.{key}: {RESERVED_TRAINER_KEYS[key]}")
        if key not in fields:
            hint = closest(key, fields)
            raise ConfigError(f"trainer.{key}: not a field of {cls.__module__.split('.')[0]}.{cls.__name__}"
                              + (f" (did you mean '{hint}'?)" if hint else ""))
        if value is not None:
            _check_value(value, _loosen(hints.get(key, Any)), f"trainer.{key}")


def _loosen(tp):
    """TRL annotates some fields as ``float`` that take ints, and enums as str; accept both."""
    if tp is float:
        return float | int
    if isinstance(tp, type) and issubclass(tp, str) and tp is not str:
        return str
    return tp
