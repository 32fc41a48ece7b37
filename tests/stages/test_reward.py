"""Reward stage on CPU: the output is a plain sequence classifier, eval.json holds accuracy/margin/calibration,
scoring API and CLI agree with a plain forward, LoRA is merged, margins and truncation are explicit, and two
processes under accelerate finish."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import launch_two_processes

from align_kit.config import recipe_from_dict
from align_kit.stages import run_stage
from align_kit.stages.reward import tokenize_pairs

ROOT = Path(__file__).resolve().parents[2]


def tiny_recipe(out: Path, **over) -> dict:
    raw = {"stage": "reward", "output_dir": str(out), "seed": 3,
           "model": {"name_or_path": "builtin:tiny-llama"},
           "data": {"train": [{"name": "quickstart-preferences", "split": "train", "max_rows": 96}],
                    "eval": [{"name": "quickstart-preferences", "split": "test", "max_rows": 24}]},
           "trainer": {"learning_rate": 3e-3, "per_device_train_batch_size": 16, "max_length": 64,
                       "max_steps": 4, "logging_steps": 1, "save_steps": 2, "report_to": "none"}}
    raw.update(over)
    return raw


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    return run_stage(recipe_from_dict(tiny_recipe(tmp_path_factory.mktemp("rm") / "run")))


def test_output_is_a_plain_sequence_classifier_that_trained(full_run):
    from transformers import AutoModelForSequenceClassification

    from align_kit.quickstart.model import build_model, build_tokenizer

    model = AutoModelForSequenceClassification.from_pretrained(full_run / "model")
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None
    init = build_model(build_tokenizer(), head="classifier")
    assert not torch.allclose(model.score.weight, init.score.weight)  # the head moved from its seeded init
    assert not (full_run / "model" / "adapter_config.json").exists()
    logs = [json.loads(line) for line in open(full_run / "log_history.jsonl")]
    assert [r["step"] for r in logs if "loss" in r] == [1, 2, 3, 4]


def test_eval_json_holds_accuracy_margin_and_calibration(full_run):
    ev = json.loads((full_run / "eval.json").read_text())
    assert ev["pairs"] == 24
    assert 0.0 <= ev["accuracy"] <= 1.0 and 0.0 <= ev["ece"] <= 1.0
    # every pair enters the reliability curve twice (both orders), so the bins hold 48 points
    assert sum(b["count"] for b in ev["reliability"]) == 48
    # the gap between predicted and observed, weighted by bin size, is the ECE
    ece = sum(b["count"] / 48 * abs(b["predicted"] - b["observed"]) for b in ev["reliability"])
    assert ece == pytest.approx(ev["ece"], abs=2e-3)
    assert 0.0 <= ev["length_baseline_accuracy"] <= 1.0


def test_score_api_and_cli_match_a_plain_forward(full_run, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from align_kit.cli import main
    from align_kit.scoring import score

    prompt, responses = "Uppercase: abc", ["ABC", "ABD"]
    got = score(full_run / "model", prompt, responses)
    tok = AutoTokenizer.from_pretrained(full_run / "model")
    model = AutoModelForSequenceClassification.from_pretrained(full_run / "model").eval()
    for response, value in zip(responses, got):
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
                                      tokenize=True, return_dict=True, return_tensors="pt")
        with torch.no_grad():
            expected = model(**ids).logits[0, 0].item()
        assert value == pytest.approx(expected, abs=1e-5)
    assert got[0] != got[1]
    assert main(["score", str(full_run), "--prompt", prompt, "--response", "ABC", "--response", "ABD"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [round(r["score"], 4) for r in lines] == [round(v, 4) for v in got]


def test_margin_column_and_left_truncation():
    from align_kit.families import FAMILIES, TEMPLATES, apply_family
    from align_kit.quickstart.model import build_tokenizer

    tok = build_tokenizer()
    apply_family(tok, TEMPLATES["llama3"], FAMILIES["llama"])
    pair = {"prompt": [{"role": "user", "content": "Reverse: abcde"}], "chosen": [{"role": "assistant", "content": "edcba"}],
            "rejected": [{"role": "assistant", "content": "edcb"}], "margin": 2.5}
    plain = {k: v for k, v in pair.items() if k != "margin"}
    rows, stats = tokenize_pairs([pair, plain], tok, max_length=None, truncation="left", use_margin=True)
    assert [r["margin"] for r in rows] == [2.5, 0.0]  # a row without margin gets 0: no mixed batches
    full = rows[0]["chosen_ids"]
    rows, stats = tokenize_pairs([pair], tok, max_length=12, truncation="left", use_margin=False)
    assert rows[0]["chosen_ids"] == full[-12:] and "margin" not in rows[0]
    assert stats == {"pairs": 1, "truncated": 1, "dropped": 0}
    rows, stats = tokenize_pairs([pair], tok, max_length=12, truncation="drop", use_margin=False)
    assert rows == [] and stats["dropped"] == 1


def test_lora_reward_model_is_merged_into_a_plain_checkpoint(tmp_path):
    from transformers import AutoModelForSequenceClassification

    raw = tiny_recipe(tmp_path / "lora", peft={"r": 4, "alpha": 8, "dropout": 0.0})
    raw["trainer"].update(max_steps=2, save_steps=10)
    out = run_stage(recipe_from_dict(raw))
    assert (out / "adapter" / "adapter_config.json").exists()
    assert not (out / "model" / "adapter_config.json").exists()
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert model.config.num_labels == 1 and not hasattr(model, "peft_config")
    assert json.loads((out / "eval.json").read_text())["pairs"] == 24


def test_two_processes_under_accelerate(tmp_path):
    """``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m align_kit train`` (gloo)."""
    raw = tiny_recipe(tmp_path / "ddp")
    raw["trainer"].update(max_steps=2, save_steps=10, per_device_train_batch_size=8)
    recipe = tmp_path / "reward.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    launch_two_processes("-m", "align_kit", "train", str(recipe))
    assert (tmp_path / "ddp" / "model" / "model.safetensors").exists()
    assert json.loads((tmp_path / "ddp" / "eval.json").read_text())["pairs"] == 24
    logs = [json.loads(line) for line in open(tmp_path / "ddp" / "log_history.jsonl")]
    assert max(r["step"] for r in logs) == 2


def test_qlora_reward_model_is_merged_into_the_unquantised_base(tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForSequenceClassification

    from align_kit.quickstart.model import build_model, build_tokenizer

    base = tmp_path / "base"
    tok = build_tokenizer()
    build_model(tok).save_pretrained(base)
    tok.save_pretrained(base)
    raw = tiny_recipe(tmp_path / "qlora", model={"name_or_path": str(base)}, peft={"r": 4, "alpha": 8, "dropout": 0.0},
                      quantization={"bits": 4})
    raw["trainer"].update(max_steps=2, save_steps=10)
    out = run_stage(recipe_from_dict(raw))
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert not getattr(model, "is_loaded_in_4bit", False) and model.score.weight.dtype == torch.float32
    assert json.loads((out / "eval.json").read_text())["pairs"] == 24


def test_score_head_init_follows_the_recipe_seed_not_earlier_work(tmp_path):
    """A reward model started from a saved causal LM gets a fresh score head; its initial values come from the
    recipe's seed, so the stage gives the same model alone or after other work in the process (a pipeline)."""
    from safetensors.torch import load_file

    from align_kit.quickstart.model import build_model, build_tokenizer

    tok = build_tokenizer()
    build_model(tok).save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    over = {"model": {"name_or_path": str(tmp_path / "lm")}}
    runs = []
    for i, noise in enumerate([0, 1000]):
        torch.rand(noise)  # what an earlier stage would have drawn from the global generator
        raw = tiny_recipe(tmp_path / f"run{i}", **over)
        raw["trainer"] = {**raw["trainer"], "max_steps": 1, "save_steps": 10}
        runs.append(load_file(str(run_stage(recipe_from_dict(raw)) / "model" / "model.safetensors")))
    other = tiny_recipe(tmp_path / "seed4", **over, seed=4)
    other["trainer"] = {**other["trainer"], "max_steps": 1, "save_steps": 10}
    runs.append(load_file(str(run_stage(recipe_from_dict(other)) / "model" / "model.safetensors")))
    assert torch.equal(runs[0]["score.weight"], runs[1]["score.weight"])
    assert not torch.equal(runs[0]["score.weight"], runs[2]["score.weight"])
