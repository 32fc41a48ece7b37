"""Every numeric setting a recipe can hold has a range rule in align_kit.ranges (or a stated reason for none),
and every rule belongs to a setting that exists: a TRL or align_kit field added or renamed fails here."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from align_kit.config import DataArgs, DataSource, PeftArgs, QuantArgs, Recipe
from align_kit.errors import ConfigError
from align_kit.harness import EvaluationArgs
from align_kit.ranges import RANGES, UNCHECKED, check_value
from align_kit.stages import STAGES, get_stage


def _numeric(tp) -> bool:
    """int or float (optionally with None), not bool, not a Literal of fixed choices."""
    if typing.get_origin(tp) in (typing.Literal, list, dict, tuple):
        return False
    args = typing.get_args(tp) or (tp,)
    return any(a in (int, float) for a in args) and not any(typing.get_origin(a) in (list, dict) for a in args)


def numeric_settings(cls, prefix: str) -> set[str]:
    """Dotted recipe keys of the numeric fields of dataclass ``cls`` (nested dataclasses and lists of them)."""
    out = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.name in ("source", "built_trainer_config"):
            continue
        tp, key = hints[f.name], f"{prefix}.{f.name}" if prefix else f.name
        inner = [a for a in (typing.get_args(tp) or (tp,)) if a is not type(None)]
        for a in inner:
            a = (typing.get_args(a) or (a,))[0] if typing.get_origin(a) is list else a
            if dataclasses.is_dataclass(a):
                out |= numeric_settings(a, key)
        if _numeric(tp):
            out.add(key)
    return out


def all_settings() -> set[str]:
    keys = {k for k in numeric_settings(Recipe, "") if "." not in k}  # top-level: seed
    keys |= numeric_settings(PeftArgs, "peft") | numeric_settings(QuantArgs, "quantization")
    keys |= numeric_settings(EvaluationArgs, "evaluation")
    keys |= {k for k in numeric_settings(DataArgs, "data") if k.count(".") == 1}
    keys |= numeric_settings(DataSource, "data.train") | numeric_settings(DataSource, "data.eval")
    for name in STAGES:
        stage = get_stage(name)
        # trainer: keys are the config class's own fields (a nested object such as parallelism_config is passed
        # whole to the class, which checks it)
        keys |= {f"trainer.{k[2:]}" for k in numeric_settings(stage.TRAINER_CONFIG, "t") if k.count(".") == 1}
        if stage.OPTIONS is not None:
            keys |= numeric_settings(stage.OPTIONS, name)
    return keys


def test_every_numeric_setting_has_a_range_and_every_range_a_setting():
    settings = all_settings()
    assert len(settings) > 100  # the walk found the trainer configs' fields, not nothing
    missing = sorted(k for k in settings if k not in RANGES and k not in UNCHECKED)
    assert not missing, f"numeric settings without a range rule (add one to align_kit.ranges.RANGES): {missing}"
    stale = sorted(k for k in [*RANGES, *UNCHECKED] if k not in settings)
    assert not stale, f"range rules for settings that do not exist: {stale}"


@pytest.mark.parametrize("key", sorted(RANGES))
def test_each_rule_refuses_something_and_names_it(key):
    """No rule accepts everything but the finiteness check: each refuses -1e9 or 1e9, in one line with key."""
    test, expected = RANGES[key]
    bad = next((v for v in (-1e9, 1e9, -1, 0) if not test(v)), None)
    if expected == "a finite number":
        bad = float("nan")
    assert bad is not None, key
    with pytest.raises(ConfigError) as exc:
        check_value(key, key, bad)
    assert str(exc.value).startswith(f"{key}: expected ") and str(exc.value).endswith(f"found {bad}")
