"""Recipes: strict keys with suggestions, TRL field checks, types, ranges, overrides, env expansion."""

from __future__ import annotations

import pytest
import yaml

from align_kit.config import load_recipe, recipe_from_dict
from align_kit.errors import ConfigError

BASE = {"stage": "sft", "model": {"name_or_path": "builtin:tiny-llama"},
        "data": {"train": [{"name": "quickstart-tasks"}]}, "trainer": {"learning_rate": 1e-3}}


def _with(**changes):
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return raw


def test_valid_recipe_builds_typed_sections():
    r = recipe_from_dict(_with(peft={"r": 8}))
    assert r.stage == "sft" and r.peft.r == 8 and r.peft.alpha == 32 and r.model.dtype == "auto"
    assert r.trainer_config().learning_rate == 1e-3


@pytest.mark.parametrize("raw, message", [
    (_with(modle={"name_or_path": "x"}), "unknown key 'modle' (did you mean 'model'?)"),
    (_with(peft={"alpah": 8}), "peft: unknown key 'alpah' (did you mean 'alpha'?)"),
    (_with(trainer__learnig_rate=1e-4), "trainer.learnig_rate: not a field of trl.SFTConfig (did you mean 'learning_rate'?)"),
    (_with(trainer__learning_rate=-1e-4), "trainer.learning_rate: expected a positive number, found -0.0001"),
    (_with(trainer__num_train_epochs="three"), "trainer.num_train_epochs: expected"),
    (_with(peft={"r": "big"}), "peft.r: expected an integer, found 'big'"),
    (_with(model__dtype="fp33"), "model.dtype: expected one of auto, float32, bfloat16, float16, found 'fp33'"),
    (_with(stage="sfft"), "unknown stage 'sfft' (did you mean 'sft'?)"),
    (_with(model={}), "model.name_or_path: required key is missing"),
    (_with(quantization={"bits": 4}), "with full fine-tuning cannot work"),
    (_with(trainer__output_dir="x"), "use the top-level output_dir"),
    (_with(model__attn_implementation="flash_attention_2"), "needs a CUDA GPU"),
    (_with(dpo={"beta": 0.1}), "block 'dpo:' belongs to stage 'dpo'"),
])
def test_bad_recipes_name_the_key(raw, message):
    with pytest.raises(ConfigError) as exc:
        recipe_from_dict(raw)
    assert message in str(exc.value)


def test_overrides_and_env(tmp_path, monkeypatch):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**BASE, "output_dir": "${RUNS:-runs}/x"}))
    monkeypatch.setenv("RUNS", "/data/runs")
    r = load_recipe(path, ["trainer.learning_rate=1e-4", "peft.r=16", "trainer.num_train_epochs=2"])
    assert r.trainer["learning_rate"] == 1e-4 and r.peft.r == 16 and r.output_dir == "/data/runs/x"
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_recipe(path, ["trainer.learning_rate"])
    with pytest.raises(ConfigError, match="unknown key 'pef'"):
        load_recipe(path, ["pef.r=16"])


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("stage: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_recipe(path)


def test_missing_recipe_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_recipe(tmp_path / "list.yaml")


def test_eval_only_split_cannot_train():
    from align_kit.data.cards import get_card

    card = get_card("quickstart-tasks")
    with pytest.raises(ConfigError, match="evaluation-only"):
        card.split_location("test", for_training=True)
    assert card.split_location("test", for_training=False).endswith("sft_test.jsonl")


@pytest.mark.parametrize("key,value,message", [
    ("eval_samples", -3, r"ppo.eval_samples: expected an integer >= 0 \(0 turns it off\), found -3"),
    ("eval_prompts", -1, r"ppo.eval_prompts: expected an integer >= 0 \(0 turns it off\), found -1"),
    ("max_prompt_length", 0, r"ppo.max_prompt_length: expected an integer of at least 1, found 0"),
    ("eval_max_new_tokens", 0, r"ppo.eval_max_new_tokens: expected an integer of at least 1, found 0"),
])
def test_ppo_options_out_of_range_are_refused(key, value, message):
    """A negative eval_prompts would have sliced off the last held-out prompt; a negative eval_samples
    would have turned the sampled evaluation off without a word."""
    raw = {"stage": "ppo", "output_dir": "runs/x", "model": {"name_or_path": "builtin:tiny-llama"},
           "data": {"train": [{"name": "quickstart-tasks"}]}, "ppo": {"reward_model": "runs/rm", key: value}}
    with pytest.raises(ConfigError, match=message):
        recipe_from_dict(raw)
