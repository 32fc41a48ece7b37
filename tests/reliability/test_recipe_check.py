"""`align-kit train RECIPE --check` rejects what a run would, and a real run rejects the same recipes before any
model, tokenizer or data loads (align_kit.recipe_check): broken recipes of every stage, each refused with one
line naming the key, the value and what was expected, under --check and under a real run whose loaders are
replaced by counters that must stay at zero."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from align_kit.cli import main

PROMPT_ROWS = [{"prompt": "Count the letters in 'abc'.", "answer": "3"}] * 4


def _base(stage: str, tmp) -> dict:
    """A valid recipe of each stage (ppo, grpo and rloo start from a stage folder holding model/config.json)."""
    out = str(tmp / "out")
    builtin = {"name_or_path": "builtin:tiny-llama"}
    small = {"max_steps": 1, "save_strategy": "no"}
    if stage == "pretrain":
        return {"stage": "pretrain", "output_dir": out, "model": builtin, "pretrain": {"block_size": 64},
                "data": {"train": [{"path": str(tmp / "text.txt")}]}, "trainer": small}
    if stage == "sft":
        return {"stage": "sft", "output_dir": out, "model": builtin, "trainer": small,
                "data": {"train": [{"name": "quickstart-tasks", "max_rows": 40}], "eval_fraction": 0.1}}
    if stage in ("reward", "dpo", "kto"):
        return {"stage": stage, "output_dir": out, "model": builtin, "trainer": small,
                "data": {"train": [{"name": "quickstart-preferences", "max_rows": 40}]}}
    ppo = {"stage": "ppo", "output_dir": out, "model": {"name_or_path": str(tmp / "sft")},
           "data": {"train": [{"name": "quickstart-tasks", "max_rows": 40}]},
           "ppo": {"reward_model": str(tmp / "reward")},
           "trainer": {"steps": 1, "batch_size": 4, "mini_batch_size": 4}}
    if stage in ("grpo", "rloo"):
        ppo["ppo"] = {"rewards": [{"function": "align_kit.quickstart.tasks:verify"}]}
        ppo["trainer"] = {"advantage_estimator": stage, "num_generations": 2, "batch_size": 2, "mini_batch_size": 4,
                          "steps": 1}
    return ppo


def _set(raw: dict, dotted: str, value) -> dict:
    raw = copy.deepcopy(raw)
    node = raw
    *path, last = dotted.split(".")
    for part in path:
        node = node.setdefault(part, {})
    if value is _DROP:
        node.pop(last, None)
    else:
        node[last] = value
    return raw


_DROP = object()

# (id, stage, [(dotted key, value), ...], substrings of the one error line: key, value, what is expected).
# "{tmp}" in a value is the test's folder.
CASES = [
    # ---- PPO / GRPO / RLOO: what the run used to refuse only after the tokenizer and data had loaded
    ("ppo_batch_arithmetic", "ppo", [("trainer.batch_size", 10), ("trainer.mini_batch_size", 4)],
     ["trainer.batch_size", "10 x 1 = 10 rows per process", "expected a multiple of", "4 x 1 = 4"]),
    ("ppo_ptx_negative", "ppo", [("trainer.ptx_coef", -1)],
     ["trainer.ptx_coef", "found -1", "expected a number >= 0"]),
    ("ppo_ptx_without_demonstrations", "ppo",
     [("trainer.ptx_coef", 1.0), ("ppo.prompts_from", "prompts"),
      ("data.train", [{"path": "{tmp}/prompts.jsonl", "format": "prompts"}])],
     ["trainer.ptx_coef", "prompts_from: prompts", "expected 0", "found 1.0"]),
    ("ppo_gamma_2", "ppo", [("trainer.gamma", 2)], ["trainer.gamma", "found 2", "a discount in [0, 1]"]),
    ("ppo_temperature_0", "ppo", [("trainer.temperature", 0)],
     ["trainer.temperature", "found 0", "a positive temperature"]),
    ("ppo_memory_mode_shared", "ppo", [("trainer.memory_mode", "shared")],
     ["trainer.memory_mode", "'shared'", "expected one of separate, lora"]),
    ("ppo_policy_folder_missing", "ppo", [("model.name_or_path", "{tmp}/no_sft")],
     ["model.name_or_path", "no_sft", "expected the SFT stage's output folder"]),
    ("ppo_reward_model_missing", "ppo", [("ppo.reward_model", "{tmp}/no_reward")],
     ["ppo.reward_model", "no_reward", "expected the reward stage's output folder"]),
    ("grpo_reward_function_not_importable", "grpo", [("ppo.rewards", [{"function": "no_such_module_q:f"}])],
     ["ppo.rewards[0].function", "'no_such_module_q:f'", "expected module:function"]),
    ("grpo_one_generation", "grpo", [("trainer.num_generations", 1), ("trainer.batch_size", 4)],
     ["trainer.num_generations", "'grpo' takes its baseline within a prompt's group", "expected >= 2", "found 1"]),
    ("rloo_top_p_0", "rloo", [("trainer.top_p", 0)], ["trainer.top_p", "found 0", "(0, 1]"]),
    ("rloo_verifier_not_importable", "rloo", [("ppo.verifier", "no_such_module_q:check")],
     ["ppo.verifier", "'no_such_module_q:check'", "expected module:function"]),
    # ---- SFT
    ("sft_eval_fraction_1.5", "sft", [("data.eval_fraction", 1.5)],
     ["data.eval_fraction", "found 1.5", "a share in [0, 1)"]),
    ("sft_eval_fraction_-0.2", "sft", [("data.eval_fraction", -0.2)],
     ["data.eval_fraction", "found -0.2", "a share in [0, 1)"]),
    ("sft_model_path_missing", "sft", [("model.name_or_path", "{tmp}/no_model")],
     ["model.name_or_path", "no_model", "does not exist", "expected a checkpoint folder"]),
    ("sft_model_ships_code", "sft", [("model.name_or_path", "{tmp}/remote")],
     ["model.name_or_path", "ships its own Python code", "found model.trust_remote_code: false", "expected true"]),
    ("sft_cached_hub_model_ships_code", "sft", [("model.name_or_path", "someone/coded-model")],
     ["model.name_or_path", "'someone/coded-model' ships its own Python code", "modeling_coded.py",
      "found model.trust_remote_code: false", "expected true"]),
    ("sft_hub_model_not_cached_offline", "sft", [("model.name_or_path", "someone/uncached-model")],
     ["model.name_or_path", "'someone/uncached-model'", "expected a local checkpoint folder or a Hub id in the local "
      "Hugging Face cache", "HF_HUB_OFFLINE is set", "run once online", "set model.name_or_path to a local folder"]),
    ("dpo_hub_model_cached_at_another_revision", "dpo",
     [("model.name_or_path", "someone/plain-model"), ("model.revision", "v2")],
     ["model.name_or_path", "'someone/plain-model' at revision 'v2'", "HF_HUB_OFFLINE is set"]),
    ("sft_model_type_without_family", "sft", [("model.name_or_path", "{tmp}/bert")],
     ["model.family", "model_type 'bert' is not a known family", "set model.family to one of"]),
    ("sft_data_file_missing", "sft", [("data.train", [{"path": "{tmp}/missing.jsonl"}])],
     ["data.train[0].path", "missing.jsonl", "expected an existing data file"]),
    ("sft_unknown_card", "sft", [("data.train", [{"name": "quickstart-taks"}])],
     ["data.train[0].name", "'quickstart-taks'", "did you mean 'quickstart-tasks'"]),
    ("sft_unknown_split", "sft", [("data.train", [{"name": "quickstart-tasks", "split": "validation"}])],
     ["data.train[0].split", "'validation'", "splits: train, test"]),
    ("sft_format_of_another_stage", "sft", [("data.train", [{"name": "quickstart-tasks", "format": "hh_rlhf"}])],
     ["data.train[0].format", "'hh_rlhf'", "expected auto or one of alpaca"]),
    ("sft_verifier_not_importable", "sft", [("sft", {"verifier": "no_such_module_q:verify"})],
     ["sft.verifier", "'no_such_module_q:verify'", "expected module:function"]),
    ("sft_unknown_scheduler", "sft", [("trainer.lr_scheduler_type", "cosin")],
     ["trainer.lr_scheduler_type", "'cosin'", "please select one of", "cosine"]),
    ("sft_eval_strategy_without_eval_rows", "sft", [("trainer.eval_strategy", "steps"), ("data.eval_fraction", 0)],
     ["trainer.eval_strategy", "'steps'", "expected no when nothing is held out"]),
    ("sft_infinite_learning_rate", "sft", [("trainer.learning_rate", float("inf"))],
     ["trainer.learning_rate", "found inf", "a finite number"]),
    # ---- reward, DPO, KTO
    ("reward_eval_strategy", "reward", [("trainer.eval_strategy", "epoch")],
     ["trainer.eval_strategy", "'epoch'", "expected no"]),
    ("reward_max_grad_norm_negative", "reward", [("trainer.max_grad_norm", -1.0)],
     ["trainer.max_grad_norm", "found -1.0", "a number >= 0"]),
    ("reward_unpaired_format", "reward", [("data.train", [{"name": "quickstart-preferences", "format": "unpaired"}])],
     ["data.train[0].format", "'unpaired'", "expected auto or one of hh_rlhf"]),
    ("dpo_beta_0", "dpo", [("trainer.beta", 0)], ["trainer.beta", "found 0", "a positive number"]),
    ("dpo_label_smoothing", "dpo", [("trainer.label_smoothing", 0.7)],
     ["trainer.label_smoothing", "found 0.7", "[0, 0.5)"]),
    ("kto_desirable_weight_0", "kto", [("trainer.desirable_weight", 0)],
     ["trainer.desirable_weight", "found 0", "a positive number"]),
    ("kto_unknown_template", "kto", [("model.template", "llama9")],
     ["model.template", "'llama9'", "valid: chatglm3"]),
    # ---- pretrain
    ("pretrain_block_size_over_positions", "pretrain", [("pretrain.block_size", 4096)],
     ["pretrain.block_size", "found 4096", "expected at most the model's max_position_embeddings=256"]),
    ("pretrain_adam_beta2_1", "pretrain", [("trainer.adam_beta2", 1.0)],
     ["trainer.adam_beta2", "found 1.0", "a probability in [0, 1)"]),
    ("pretrain_tokens_file_missing", "pretrain", [("pretrain.extend_vocab", {"tokens_file": "{tmp}/no_tokens.txt"})],
     ["pretrain.extend_vocab.tokens_file", "no_tokens.txt", "expected a file with one token per line"]),
    ("pretrain_negative_seed", "pretrain", [("seed", -1)], ["seed", "found -1", "a seed in [0, 2^32)"]),
]


def _fill(value, tmp):
    if isinstance(value, str):
        return value.replace("{tmp}", str(tmp))
    if isinstance(value, list):
        return [_fill(v, tmp) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, tmp) for k, v in value.items()}
    return value


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """The files the valid recipes name: stage folders for ppo, a text file for pretrain, prompt rows, a
    model folder whose config.json names its own code (auto_map), and a Hub repository in the local Hugging
    Face cache that does the same (its config.json only: nothing is downloaded)."""
    import huggingface_hub.constants

    cache = tmp_path / "hub_cache"
    repo = cache / "models--someone--coded-model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "config.json").write_text(json.dumps(
        {"model_type": "coded", "auto_map": {"AutoConfig": "configuration_coded.CodedConfig",
                                             "AutoModelForCausalLM": "modeling_coded.CodedForCausalLM"}}))
    plain = cache / "models--someone--plain-model"  # a Hub checkpoint cached by an earlier online run
    (plain / "refs").mkdir(parents=True)
    (plain / "refs" / "main").write_text("1" * 40)
    (plain / "snapshots" / ("1" * 40)).mkdir(parents=True)
    (plain / "snapshots" / ("1" * 40) / "config.json").write_text(json.dumps({"model_type": "llama"}))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as CI and the tests' conftest set it
    for name in ("sft", "reward"):
        (tmp_path / name / "model").mkdir(parents=True)
        (tmp_path / name / "model" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "remote").mkdir()
    (tmp_path / "remote" / "config.json").write_text(json.dumps(
        {"model_type": "chatglm", "auto_map": {"AutoModel": "modeling_chatglm.ChatGLMModel"}}))
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "text.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 50)
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PROMPT_ROWS))
    return tmp_path


class Loaded(Exception):
    """Raised by the replaced loaders: something was loaded."""


@pytest.fixture
def loads(monkeypatch):
    """Replace every way a run loads a model, a tokenizer or data with a counter that raises."""
    import transformers

    import align_kit.data.sources
    import align_kit.models
    import align_kit.ppo.modelset

    calls: list[str] = []

    def counter(name):
        def load(*args, **kwargs):
            calls.append(name)
            raise Loaded(name)
        return load

    for owner, name in [(align_kit.models, "load_tokenizer"), (align_kit.models, "load_model"),
                        (align_kit.data.sources, "load_data"), (align_kit.ppo.modelset, "build_models")]:
        monkeypatch.setattr(owner, name, counter(name))
    for cls in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM,
                transformers.AutoModelForSequenceClassification):
        monkeypatch.setattr(cls, "from_pretrained", counter(f"{cls.__name__}.from_pretrained"))
    return calls


def _write(raw: dict, tmp) -> str:
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _error_line(argv, capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_the_cases_cover_every_stage_and_at_least_twenty_recipes():
    assert len(CASES) >= 20 and len({c[0] for c in CASES}) == len(CASES)
    assert {stage for _, stage, _, _ in CASES} == {"pretrain", "sft", "reward", "dpo", "kto", "ppo", "grpo", "rloo"}


def test_every_base_recipe_passes_the_check(inputs, capsys):
    """The negative control of the cases below: each stage's base recipe is valid, so each case's error is the
    one setting it changes."""
    for stage in ("pretrain", "sft", "reward", "dpo", "kto", "ppo", "grpo", "rloo"):
        path = _write(_base(stage, inputs), inputs)
        assert main(["train", path, "--check"]) == 0, capsys.readouterr().err
        assert "valid" in capsys.readouterr().out


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_check_and_run_refuse_the_same_recipe_before_anything_loads(case, inputs, loads, capsys):
    _, stage, changes, needles = case
    raw = _base(stage, inputs)
    for key, value in changes:
        raw = _set(raw, key, _fill(value, inputs))
    path = _write(raw, inputs)
    checked = _error_line(["train", path, "--check"], capsys)
    for needle in needles:
        assert needle in checked, (needle, checked)
    ran = _error_line(["train", path], capsys)
    assert ran == checked
    assert loads == []  # neither run loaded a model, a tokenizer or data
    assert not (inputs / "out").exists()  # nor started the run folder


def test_a_valid_run_does_reach_the_loaders(inputs, loads, capsys):
    """The counters see a load when there is one: a valid recipe's run goes on to load its tokenizer."""
    path = _write(_base("sft", inputs), inputs)
    with pytest.raises(Loaded):
        main(["train", path])
    assert loads == ["load_tokenizer"]


def test_a_hub_model_id_passes_offline_when_cached_and_online_without_a_network_call(inputs, capsys, monkeypatch):
    """The negative controls of the uncached-id cases: offline, a Hub id whose config.json is in the local cache
    passes, and so does a local folder; online, an id in no cache passes --check (the load downloads it) and
    the check makes no network call (every socket connection fails here)."""
    import socket

    import huggingface_hub.constants

    def no_network(*args, **kwargs):
        raise AssertionError("--check tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    for name in ("someone/plain-model", str(inputs / "sft" / "model")):
        path = _write(_set(_base("sft", inputs), "model.name_or_path", name), inputs)
        assert main(["train", path, "--check"]) == 0, capsys.readouterr().err
    path = _write(_set(_base("sft", inputs), "model.name_or_path", "someone/uncached-model"), inputs)
    assert "someone/uncached-model" in _error_line(["train", path, "--check"], capsys)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert main(["train", path, "--check"]) == 0, capsys.readouterr().err


def test_check_may_come_after_the_overrides(inputs, capsys):
    path = _write(_base("ppo", inputs), inputs)
    line = _error_line(["train", path, "trainer.gamma=2", "--check"], capsys)
    assert "trainer.gamma: expected a discount in [0, 1], found 2" in line
    assert main(["train", path, "trainer.gamma=0.99", "--check"]) == 0
    assert main(["train", path, "trainer.gamma=0.99", "--check", "trainer.lam=0.9"]) == 0
    assert "override 'trainer.gamma=[': expected a YAML value" in _error_line(
        ["train", path, "trainer.gamma=[", "--check"], capsys)


def test_the_run_takes_the_trainer_config_the_loader_validated(inputs):
    """One config object: built (with what the stage sets itself) and validated at load, then used by the run."""
    from align_kit.config import recipe_from_dict

    sft = recipe_from_dict(_set(_base("sft", inputs), "trainer.packing", True))
    assert sft.trainer_config() == sft.built_trainer_config  # the validated one (a copy: a Trainer may change it)
    assert (sft.trainer_config().packing, sft.trainer_config().padding_free) == (False, False)  # align_kit packs
    dpo = recipe_from_dict(_set(_base("dpo", inputs), "dpo", {"reference": "precomputed"}))
    assert dpo.trainer_config().precompute_ref_log_probs is True
    ppo = recipe_from_dict(_base("grpo", inputs))
    assert ppo.trainer_config() == ppo.built_trainer_config and ppo.trainer_config().updates_per_epoch == 1
