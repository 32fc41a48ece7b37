"""Settings that would train nothing or mean nothing, and inputs that used to end in a traceback: each stops
with one line naming the key, the value and what is expected, exit 2, under ``--check`` and under a real run
(which stops before any model loads)."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml

from align_kit.cli import main


def _sft(out) -> dict:
    return {"stage": "sft", "output_dir": str(out), "model": {"name_or_path": "builtin:tiny-llama"},
            "data": {"train": [{"name": "quickstart-tasks", "max_rows": 40}], "eval_fraction": 0.1},
            "trainer": {"max_steps": 1, "save_strategy": "no", "per_device_train_batch_size": 2}}


def _reward(out) -> dict:
    return {"stage": "reward", "output_dir": str(out), "model": {"name_or_path": "builtin:tiny-llama"},
            "data": {"train": [{"name": "quickstart-preferences", "max_rows": 40}]},
            "trainer": {"max_steps": 1, "save_strategy": "no"}}


def _ppo(out) -> dict:
    return {"stage": "ppo", "output_dir": str(out), "model": {"name_or_path": "builtin:tiny-llama"},
            "data": {"train": [{"name": "quickstart-tasks", "max_rows": 40}]},
            "ppo": {"rewards": [{"function": "align_kit.quickstart.tasks:verify"}]},
            "trainer": {"steps": 1, "batch_size": 4, "mini_batch_size": 4}}


def _set(raw: dict, dotted: str, value) -> dict:
    raw = copy.deepcopy(raw)
    node = raw
    *path, last = dotted.split(".")
    for part in path:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    node[last] = value
    return raw


# (case, recipe maker, key, value, substrings of the one line)
CASES = [
    ("peft_alpha_0", _sft, "peft", {"alpha": 0}, ["peft.alpha", "found 0", "positive number"]),
    ("peft_r_0", _sft, "peft", {"r": 0}, ["peft.r", "found 0", "rank of at least 1"]),
    ("peft_dropout", _sft, "peft", {"dropout": 1.5}, ["peft.dropout", "found 1.5", "[0, 1)"]),
    ("peft_targets", _sft, "peft", {"target_modules": ["q_proj", "qproj"]},
     ["peft.target_modules", "['qproj'] match no module", "q_proj"]),
    ("calibration_bins_0", _reward, "reward", {"calibration_bins": 0},
     ["reward.calibration_bins", "found 0", "at least 1 bin"]),
    ("max_rows_neg", _sft, "data.train.0.max_rows", -5, ["data.train[0].max_rows", "found -5", "positive number of rows"]),
    ("max_steps_neg", _sft, "trainer.max_steps", -5, ["trainer.max_steps", "found -5", "or -1"]),
    ("logging_steps_neg", _sft, "trainer.logging_steps", -1, ["trainer.logging_steps", "found -1", "positive"]),
    ("lone_weight_0", _sft, "data.train.0.weight", 0, ["data.train[0].weight", "found 0.0", "positive, finite"]),
    ("eval_fraction_1", _sft, "data.eval_fraction", 1.0, ["data.eval_fraction", "found 1.0", "[0, 1)"]),
    ("verifier_tokens_0", _sft, "sft", {"verifier_max_new_tokens": 0},
     ["sft.verifier_max_new_tokens", "found 0", "at least 1"]),
    ("options_block", _sft, "options", {"verifier": "x:y"}, ["options: not a recipe key", "'sft:'"]),
    ("source_key", _sft, "source", "elsewhere.yaml", ["source: not a recipe key", "set to the recipe file's path"]),
    ("ppo_kl_coef_neg", _ppo, "trainer.kl_coef", -1, ["trainer.kl_coef", "found -1", "expected a number >= 0"]),
    ("ppo_vf_coef_neg", _ppo, "trainer.vf_coef", -1, ["trainer.vf_coef", "found -1", "expected a number >= 0"]),
]


def _one_line_exit_2(argv, capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _both(path, capsys, needles) -> None:
    for argv in (["train", str(path), "--check"], ["train", str(path)]):
        line = _one_line_exit_2(argv, capsys)
        for needle in needles:
            assert needle in line, (argv, line)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_setting_out_of_range_is_one_line_exit_2(case, tmp_path, capsys):
    _, make, key, value, needles = case
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_set(make(tmp_path / "out"), key, value)))
    _both(path, capsys, needles)
    assert not (tmp_path / "out").exists()  # stopped before the run started


def test_duplicate_keys_anywhere(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    text = yaml.safe_dump(_sft(tmp_path / "out"), sort_keys=False)
    nested = text.replace("  max_steps: 1\n", "  max_steps: 1\n  max_steps: 100\n")
    assert nested != text
    path.write_text(nested)
    _both(path, capsys, ["r.yaml: line", "key 'max_steps' appears twice", "expected each key once"])
    path.write_text(text + "seed: 1\nseed: 2\n")
    _both(path, capsys, ["key 'seed' appears twice"])
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("stages:\n  - {name: a, recipe: r.yaml}\noutput_dir: x\noutput_dir: y\n")
    line = _one_line_exit_2(["pipeline", str(pipeline)], capsys)
    assert "p.yaml: line 4: key 'output_dir' appears twice" in line


def test_output_dir_an_existing_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("not a folder")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_sft(tmp_path / "taken")))
    _both(path, capsys, ["output_dir: expected a folder", "found an existing file", "taken"])


def test_utf16_recipe(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_sft(tmp_path / "out")), encoding="utf-16")
    _both(path, capsys, ["r.yaml: expected a UTF-8 recipe file, found UTF-16 text", "re-save it as UTF-8"])


def test_target_modules_checked_again_when_the_model_loads():
    """A model --check cannot see (a Hub id, remote code) is checked by lora_config once loaded."""
    from align_kit.config import PeftArgs
    from align_kit.errors import ConfigError
    from align_kit.models import lora_config
    from align_kit.quickstart.model import build_model, build_tokenizer

    with torch.device("meta"):
        model = build_model(build_tokenizer())
    assert lora_config(PeftArgs(target_modules=["q_proj", "v_proj"]), model).target_modules == {"q_proj", "v_proj"}
    with pytest.raises(ConfigError, match=r"\['attn'\] match no module"):
        lora_config(PeftArgs(target_modules=["q_proj", "attn"]), model)
    with pytest.raises(ConfigError, match="the pattern 'nothing.*' matches no module"):
        lora_config(PeftArgs(target_modules="nothing.*"), model)
