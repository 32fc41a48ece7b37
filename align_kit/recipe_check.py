"""Everything a run would refuse, checked when the recipe is loaded: ``align-kit train RECIPE --check`` and a
real run reject the same recipes, before any model, tokenizer or data loads.

:func:`check_recipe` is the loader's last step (``config.recipe_from_dict``). It

1. checks every numeric setting's range (:mod:`align_kit.ranges`);
2. builds the stage's trainer config (TRL's SFTConfig / RewardConfig / DPOConfig / KTOConfig, transformers'
   TrainingArguments, align_kit's PPOConfig) with the values the run will use, so its own validation runs now;
   the run takes this object (``Recipe.trainer_config()``) instead of building a second one;
3. runs the stage's validators and the compatibility rules (:mod:`align_kit.compat`);
4. checks the recipe's inputs on this machine: the model folder (and that it ships no code the recipe does not
   trust), the reward model, every data source (card, split, file, format for the stage), verifier and reward
   function modules, token files and shard folders. A Hub model id must be in the local Hugging Face cache when
   the Hub is off (``HF_HUB_OFFLINE``); online, whether the Hub has it is left to the load (no network here).

Each error is one line naming the key, the value found and what was expected.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

from align_kit.errors import AlignKitError, ConfigError


def check_recipe(recipe, stage, inputs: bool = True) -> None:
    """Validate a built recipe completely (see the module doc); ``inputs=False`` leaves out step 4, for a
    recipe whose inputs an earlier stage has yet to write (a pipeline's later stages, shipped chained recipes)."""
    from align_kit.compat import check_compatibility
    from align_kit.models import check_targets_early
    from align_kit.ranges import check_ranges

    check_ranges(recipe)
    _check_names(recipe.model)
    recipe.built_trainer_config = build_trainer_config(recipe)
    check_targets_early(recipe)
    for hook in getattr(stage, "VALIDATORS", ()):
        hook(recipe)
    check_compatibility(recipe)
    _check_evaluation(recipe)
    from align_kit.harness_stage import check_recipe as check_benchmarks

    check_benchmarks(recipe)  # evaluation.harness: tasks known, not on a reward model
    from align_kit.evaluation.engine import check_recipe as check_evaluation_engine

    check_evaluation_engine(recipe)  # evaluation.engine: a stage that generates, the rollout's in RL
    if inputs:
        check_inputs(recipe)


def build_trainer_config(recipe, **extra):
    """The stage's trainer config as the run uses it: output_dir and seed from the recipe, align_kit's defaults
    (``align_kit.trainer_defaults``), the recipe's ``trainer:`` block, then what the stage itself sets
    (its ``trainer_extras(recipe)``). A value the config class refuses is a ConfigError naming the key."""
    from align_kit.registry import get_stage
    from align_kit.trainer_defaults import trainer_defaults

    stage = get_stage(recipe.stage)
    cls = stage.TRAINER_CONFIG
    extras = getattr(stage, "trainer_extras", None)
    kwargs = {"output_dir": recipe.output_dir, "seed": recipe.seed, **trainer_defaults(recipe), **recipe.trainer,
              **(extras(recipe) if extras else {}), **extra}
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        with warnings.catch_warnings():
            # transformers 5.25 warns that gradient_checkpointing is deprecated whatever its value; align_kit sets
            # it from model.gradient_checkpointing, and the warning would be a second stderr line under --check
            warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)
            return cls(**{k: v for k, v in kwargs.items() if k in names})
    except AlignKitError:
        raise
    except (ValueError, TypeError) as exc:
        raise _refused(cls, recipe.trainer, exc) from None


def _refused(cls, trainer: dict, exc: Exception) -> ConfigError:
    """TRL's or transformers' own refusal as one line, under the trainer key it is about."""
    msg = " ".join(str(exc).split())
    key = next((k for k in trainer if k in msg), None)
    if key is None:  # "foo is not a valid SchedulerType": the message names the value, not the key
        key = next((k for k, v in trainer.items() if isinstance(v, str) and v and v in msg.split()[0]), None)
    owner = f"{cls.__module__.split('.')[0]}.{cls.__name__}"
    if key is None:
        return ConfigError(f"trainer: {owner} refuses these settings: {msg}")
    return ConfigError(f"trainer.{key}: {owner} refuses {trainer[key]!r}: {msg}")


def _check_names(model) -> None:
    from align_kit.families import get_family, get_template

    if model.family != "auto":
        _keyed("model.family", get_family, model.family)
    if model.template != "auto":
        _keyed("model.template", get_template, model.template)


def _keyed(key: str, fn, *args):
    """``fn(*args)``, its ConfigError prefixed with ``key`` unless it names it already."""
    try:
        return fn(*args)
    except ConfigError as exc:
        text = str(exc)
        raise ConfigError(text if text.startswith(key) else f"{key}: {text}") from None


def _check_evaluation(recipe) -> None:
    """A Trainer with an eval_strategy but no eval dataset stops when it is built, after the model loaded.
    The reward, DPO and KTO stages evaluate held-out pairs themselves and give the Trainer none."""
    strategy = str(recipe.trainer.get("eval_strategy", "no"))
    if strategy == "no" or recipe.stage == "ppo":
        return
    if recipe.stage in ("reward", "dpo", "kto"):
        raise ConfigError(f"trainer.eval_strategy: expected no (the {recipe.stage} stage evaluates its held-out "
                          f"pairs before and after training itself, into eval.json), found {strategy!r}")
    data = recipe.data
    if data is None or (not data.eval and data.eval_fraction == 0):
        raise ConfigError(f"trainer.eval_strategy: expected no when nothing is held out (data.eval empty, "
                          f"data.eval_fraction 0), found {strategy!r}")


# ----------------------------------------------------------------------------- inputs on this machine


CHAINED_STAGES = ("reward", "dpo", "kto", "ppo")  # model.name_or_path may be an earlier stage's output folder


def stage_model_folder(path: str) -> Path | None:
    """The checkpoint a stage's output folder holds (``<folder>/model``), the folder itself when it holds
    config.json, else None.

    >>> stage_model_folder("no/such/folder") is None
    True
    """
    folder = Path(path)
    if (folder / "config.json").is_file():
        return folder
    if (folder / "model" / "config.json").is_file():
        return folder / "model"
    return None


def check_inputs(recipe) -> None:
    from align_kit.models import BUILTIN, check_source

    model, opts = recipe.model, recipe.options
    if recipe.stage == "ppo":
        if stage_model_folder(model.name_or_path) is None:
            raise ConfigError(f"model.name_or_path: expected the SFT stage's output folder or a checkpoint folder "
                              f"(config.json in it or in its model/), found {model.name_or_path!r}")
        if opts.reward_model and stage_model_folder(opts.reward_model) is None:
            raise ConfigError(f"ppo.reward_model: expected the reward stage's output folder or a checkpoint folder "
                              f"(config.json in it or in its model/), found {opts.reward_model!r}")
    name = model.name_or_path
    if recipe.stage in CHAINED_STAGES and name != BUILTIN and stage_model_folder(name) is not None:
        name = str(stage_model_folder(name))
    check_source(dataclasses.replace(model, name_or_path=name))
    check_hub_cache("model.name_or_path", name, model.revision)
    if recipe.stage == "ppo" and opts.reward_model:
        check_source(dataclasses.replace(model, name_or_path=str(stage_model_folder(opts.reward_model))))
    _check_family(model, name)
    _check_block_size(recipe, name)
    _check_modules(recipe)
    _check_files(recipe)
    if recipe.data is not None:
        kind = data_kind(recipe)
        for split in ("train", "eval"):
            for i, src in enumerate(getattr(recipe.data, split)):
                check_source_input(src, f"data.{split}[{i}]", kind, recipe.stage, for_training=split == "train")


def check_hub_cache(key: str, name: str, revision: str | None = None) -> None:
    """With the Hub off (``HF_HUB_OFFLINE=1``), a model id that is neither a local folder nor in the local Hugging
    Face cache cannot load: say so now, naming the key, instead of when the tokenizer loads. The cache is read
    with ``try_to_load_from_cache`` (files on disk only; a checkpoint has config.json, a LoRA adapter
    adapter_config.json); online nothing is checked here, and the load downloads what is missing."""
    from huggingface_hub import constants, try_to_load_from_cache

    from align_kit.models import BUILTIN

    if name == BUILTIN or Path(name).expanduser().exists() or not constants.is_offline_mode():
        return
    for filename in ("config.json", "adapter_config.json"):
        try:
            if isinstance(try_to_load_from_cache(name, filename, revision=revision), str):
                return
        except Exception:  # not a valid repository id: it cannot be in the cache either
            break
    at = f" at revision {revision!r}" if revision else ""
    raise ConfigError(f"{key}: expected a local checkpoint folder or a Hub id in the local Hugging Face cache, found "
                      f"{name!r}{at}, which is neither, and HF_HUB_OFFLINE is set so it cannot be downloaded: run "
                      f"once online (without HF_HUB_OFFLINE) to cache it, or set {key} to a local folder")


def _check_modules(recipe) -> None:
    """Verifiers (sft, dpo, kto) import now; the ppo stage's validator imports its rewards and verifier."""
    spec = getattr(recipe.options, "verifier", None)
    if spec and recipe.stage in ("sft", "dpo", "kto"):
        import importlib

        module, _, name = spec.partition(":")
        try:
            fn = getattr(importlib.import_module(module), name) if module and name else None
        except Exception as exc:  # ImportError, AttributeError, or the module failing on import
            raise ConfigError(f"{recipe.stage}.verifier: expected module:function of an importable module, found "
                              f"{spec!r} ({type(exc).__name__}: {exc})") from None
        if not callable(fn):
            raise ConfigError(f"{recipe.stage}.verifier: expected module:function naming a function, found {spec!r}")


def _check_files(recipe) -> None:
    if recipe.stage != "pretrain":
        return
    o = recipe.options
    if o.shards is not None and not Path(o.shards).is_dir():
        raise ConfigError(f"pretrain.shards: expected a tokens/ folder written by `align-kit data run`, found "
                          f"{o.shards!r} (no such folder)")
    ext = o.extend_vocab
    if ext is not None and ext.tokens_file is not None and not Path(ext.tokens_file).is_file():
        raise ConfigError(f"pretrain.extend_vocab.tokens_file: expected a file with one token per line, found "
                          f"{ext.tokens_file!r} (no such file)")


def _config_json(name: str) -> dict:
    """A local checkpoint's config.json (no weights), or {}."""
    import json

    try:
        return json.loads((Path(name) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _check_family(model, name: str) -> None:
    """``model.family: auto`` takes the family from config.json's model_type: one align_kit has no template and
    stop tokens for stops the run when the tokenizer loads; here it stops before."""
    if model.family != "auto" or not Path(name).is_dir():
        return
    model_type = _config_json(name).get("model_type")
    if isinstance(model_type, str):
        from align_kit.families import family_for_model_type

        _keyed("model.family", family_for_model_type, model_type)


def _check_block_size(recipe, name: str) -> None:
    """pretrain.block_size within the model's max_position_embeddings, read from its config (no weights)."""
    if recipe.stage != "pretrain":
        return
    from align_kit.models import BUILTIN

    if name == BUILTIN:
        from align_kit.quickstart.model import TINY

        limit = TINY["max_position_embeddings"]
    else:
        limit = _config_json(name).get("max_position_embeddings")
    if isinstance(limit, int) and recipe.options.block_size > limit:
        raise ConfigError(f"pretrain.block_size: expected at most the model's max_position_embeddings={limit}, "
                          f"found {recipe.options.block_size}")


def data_kind(recipe) -> str:
    """The row schema a stage reads: instruction, preference, unpaired, text or prompt."""
    if recipe.stage == "ppo":
        return {"conversations": "instruction", "preferences": "preference",
                "prompts": "prompt"}[recipe.options.prompts_from]
    return {"pretrain": "text", "sft": "instruction", "reward": "preference", "dpo": "preference",
            "kto": "unpaired"}[recipe.stage]


def formats_for(kind: str) -> tuple[str, ...]:
    from align_kit.data.formats import INSTRUCTION_FORMATS
    from align_kit.data.preference import FORMATS
    from align_kit.data.prompts import PROMPT_FORMATS

    return {"instruction": INSTRUCTION_FORMATS, "preference": tuple(f for f in FORMATS if f != "unpaired"),
            "unpaired": FORMATS, "text": ("text",), "prompt": PROMPT_FORMATS}[kind]


def check_source_input(src, key: str, kind: str, stage: str, for_training: bool) -> None:
    """A data source resolves (card, split) to a readable file or a Hub dataset, in a format the stage reads."""
    from align_kit.data.io import file_kind
    from align_kit.data.sources import resolve
    from align_kit.errors import DataError, closest

    field = "name" if src.name is not None else "path"
    try:
        location, fmt, _ = resolve(src, for_training)
    except ConfigError as exc:
        text = str(exc).removeprefix("data: ").removeprefix("data source: ")
        sub = "split" if "split" in text and src.name is not None and "no data card" not in text else field
        raise ConfigError(f"{key}.{sub}: {text}") from None
    allowed = formats_for(kind)
    if fmt != "auto" and fmt not in allowed:
        hint = closest(str(fmt), allowed)
        raise ConfigError(f"{key}.format: expected auto or one of {', '.join(allowed)} (the {stage} stage reads {kind} rows), "
                          f"found {fmt!r}" + (f" (did you mean '{hint}'?)" if hint else ""))
    if location.startswith("hub:"):
        return
    shown = f"{src.path!r}" if src.name is None else f"{location!r} (dataset '{src.name}', split '{src.split}')"
    if not Path(location).exists():
        raise ConfigError(f"{key}.{field}: expected an existing data file, found {shown}: no such file")
    if Path(location).is_dir():
        raise ConfigError(f"{key}.{field}: expected a data file (name the file inside it), found a folder {shown}")
    try:
        file_kind(location)
    except DataError as exc:
        raise ConfigError(f"{key}.{field}: expected {exc.expected}, found {shown}") from None
