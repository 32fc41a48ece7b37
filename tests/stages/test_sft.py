"""SFT stage end to end on CPU: packing without cross-contamination, loss falls on real data from a real
checkpoint (full and LoRA), QLoRA, resume after a kill reproduces the uninterrupted weights, outputs
load with plain transformers, two processes under accelerate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from helpers import launch_two_processes
from safetensors.torch import load_file

from align_kit.config import recipe_from_dict
from align_kit.stages import run_stage

ROOT = Path(__file__).resolve().parents[2]


def tiny_recipe(out: Path, **trainer) -> dict:
    return {
        "stage": "sft", "output_dir": str(out), "seed": 7,
        "model": {"name_or_path": "builtin:tiny-llama"},
        "data": {"train": [{"name": "quickstart-tasks", "max_rows": 240}], "eval_fraction": 0.1},
        "trainer": {"learning_rate": 3e-3, "per_device_train_batch_size": 8, "max_length": 128,
                    "logging_steps": 1, "save_steps": 3, "max_steps": 6, "lr_scheduler_type": "constant", **trainer},
    }


def test_packed_sample_logits_equal_its_logits_alone():
    from align_kit.data.packing import PackedCollator, pack_samples
    from align_kit.quickstart.model import build_model, build_tokenizer

    tok = build_tokenizer()
    model = build_model(tok).eval()
    a = tok("Reverse: abc then more context here").input_ids
    b = tok("Uppercase: xyz").input_ids
    rows = pack_samples([{"input_ids": a, "assistant_masks": [1] * len(a)},
                         {"input_ids": b, "assistant_masks": [1] * len(b)}], max_length=64)
    assert len(rows) == 1 and rows[0]["seq_lengths"] == [len(a), len(b)]
    batch = PackedCollator(tok.pad_token_id)(rows)
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        alone = model(input_ids=torch.tensor([b])).logits[0]
        # with a KV cache (transformers' default) the packing is not detected and b sees a:
        leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=True).logits[0]
    torch.testing.assert_close(packed[len(a):], alone, atol=1e-5, rtol=1e-5)
    assert (leaky[len(a):] - alone).abs().max() > 1e-3  # the check can fail: contamination is visible


def test_quickstart_sft_runs_and_output_loads_with_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = run_stage(recipe_from_dict(tiny_recipe(tmp_path / "sft")))
    logs = [json.loads(line) for line in open(out / "log_history.jsonl")]
    losses = [r["loss"] for r in logs if "loss" in r]
    assert len(losses) == 6 and losses[-1] < losses[0]
    evals = json.loads((out / "eval.json").read_text())
    assert evals["after"]["eval_loss"] < evals["before"]["eval_loss"]
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tok = AutoTokenizer.from_pretrained(out / "model")
    assert "{% generation %}" in tok.chat_template and model.generation_config.eos_token_id
    assert not list((out / "model").glob("*.bin"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seeds"]["seed"] == 7 and manifest["recipe"]["stage"] == "sft"
    assert manifest["versions"]["trl"] and manifest["extra"]["rows"] > 0


def test_resume_after_kill_reproduces_uninterrupted_weights(tmp_path):
    full = run_stage(recipe_from_dict(tiny_recipe(tmp_path / "full")))
    killed = tmp_path / "killed"
    run_stage(recipe_from_dict(tiny_recipe(killed)))
    # Simulate a kill after step 3: the later checkpoint and the final model never got written, and a
    # half-written checkpoint was left behind.
    shutil.rmtree(killed / "checkpoint-6")
    shutil.rmtree(killed / "model")
    (killed / "checkpoint-9").mkdir()
    resumed = run_stage(recipe_from_dict(tiny_recipe(killed)))
    a = load_file(full / "model" / "model.safetensors")
    b = load_file(resumed / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run differs from the uninterrupted one"


def test_lora_and_qlora_train_adapters(tmp_path):
    for name, extra in [("lora", {}), ("qlora", {"quantization": {"bits": 4, "compute_dtype": "float32"}})]:
        raw = tiny_recipe(tmp_path / name, max_steps=3, save_steps=10)
        raw.update({"peft": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}, **extra})
        if name == "qlora":
            raw["model"] = {"name_or_path": str(_saved_base(tmp_path))}
        out = run_stage(recipe_from_dict(raw))
        adapter = load_file(out / "adapter" / "adapter_model.safetensors")
        lora_b = [v for k, v in adapter.items() if "lora_B" in k]
        assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: non-zero = trained


def _saved_base(tmp_path: Path) -> Path:
    """The builtin model saved as a checkpoint folder, so bitsandbytes can quantise it on load."""
    from align_kit.quickstart.model import build_model, build_tokenizer

    folder = tmp_path / "base"
    if not folder.exists():
        tok = build_tokenizer()
        build_model(tok).save_pretrained(folder)
        tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_stories260k_on_alpaca_lowers_eval_loss(shared, tmp_path, mode):
    raw = {
        "stage": "sft", "output_dir": str(tmp_path / mode), "seed": 0,
        "model": {"name_or_path": str(shared / "models/stories260K"), "template": "llama2"},
        "data": {"train": [{"path": str(shared / "data/instruct/alpaca_en_demo.json"), "format": "alpaca",
                            "max_rows": 400}], "eval_fraction": 0.1},
        "trainer": {"learning_rate": 5e-3 if mode == "lora" else 2e-3, "per_device_train_batch_size": 8,
                    "max_length": 256, "max_steps": 12, "save_strategy": "no", "logging_steps": 4},
    }
    if mode == "lora":
        raw["peft"] = {"r": 8, "alpha": 16}
    out = run_stage(recipe_from_dict(raw))
    evals = json.loads((out / "eval.json").read_text())
    assert evals["after"]["eval_loss"] < evals["before"]["eval_loss"] - 0.05, evals


def test_data_inspect_marks_trained_tokens(capsys):
    from align_kit.cli import main

    assert main(["data", "inspect", str(ROOT / "recipes/tiny/sft.yaml")]) == 0
    out = capsys.readouterr().out
    assert "template: llama3" in out and "[[" in out and "<|eot_id|>]]" in out


def test_two_processes_under_accelerate(tmp_path):
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tmp_path / "ddp", max_steps=3, save_steps=10)))
    launch_two_processes("-m", "align_kit", "train", str(recipe))
    assert (tmp_path / "ddp" / "model" / "model.safetensors").exists()
    logs = [json.loads(line) for line in open(tmp_path / "ddp" / "log_history.jsonl")]
    assert max(r["step"] for r in logs) == 3


def test_lm_head_choice_changes_the_path_not_the_loss(tmp_path):
    """``sft.lm_head``: TRL's chunked head and the model's own loss give the same losses; only the chunked
    path logs TRL's per-step entropy and token accuracy, which is how we know it ran."""
    logs = {}
    for head in ("chunked", "full"):
        recipe = tiny_recipe(tmp_path / head, max_steps=2, save_steps=10)
        recipe["sft"] = {"lm_head": head}
        out = run_stage(recipe_from_dict(recipe))
        logs[head] = [json.loads(line) for line in open(out / "log_history.jsonl") if '"loss"' in line]
    losses = {h: [r["loss"] for r in rows] for h, rows in logs.items()}
    assert len(losses["full"]) == 2
    assert losses["chunked"] == pytest.approx(losses["full"], rel=1e-4)
    assert all("entropy" in r for r in logs["chunked"]) and not any("entropy" in r for r in logs["full"])


def test_trained_positions_loss_equals_the_models_own_loss_and_gradients():
    """The CPU loss runs the LM head on trained positions only; loss and every gradient must equal the model's
    own loss over full logits on a packed, padded batch whose prompts are not trained."""
    from align_kit.data.packing import PackedCollator, pack_samples
    from align_kit.quickstart.model import build_model, build_tokenizer
    from align_kit.stages.sft import trained_positions_loss

    tok = build_tokenizer()
    model = build_model(tok).train()
    texts = ["Reverse: abc then more context here", "Uppercase: xyz", "Count the letters in banana", "Say hi"]
    samples = []
    for text in texts:
        ids = tok(text).input_ids
        samples.append({"input_ids": ids, "assistant_masks": [0] * (len(ids) // 2) + [1] * (len(ids) - len(ids) // 2)})
    batch = PackedCollator(tok.pad_token_id)(pack_samples(samples, max_length=24))
    rows = batch["input_ids"].shape[0]
    assert rows >= 2 and (batch["input_ids"] == tok.pad_token_id).any()  # several packed rows, one padded
    targets = int((batch["labels"][:, 1:] != -100).sum())

    def loss_and_grads(fn):
        model.zero_grad(set_to_none=True)
        loss = fn()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    own, own_grads = loss_and_grads(lambda: model(**batch).loss)
    ours, our_grads = loss_and_grads(lambda: trained_positions_loss(model, batch))
    hook.remove()
    torch.testing.assert_close(ours, own, atol=1e-6, rtol=1e-6)
    assert own_grads.keys() == our_grads.keys() and len(our_grads) > 10
    for name, grad in own_grads.items():
        torch.testing.assert_close(our_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    # the model's head saw every position of the [rows, L] batch; ours only the trained targets
    assert seen[0] == rows and seen[1] == targets < batch["input_ids"].numel() // 2
    # with the Trainer's count of the whole accumulated batch, both divide by it
    scaled = trained_positions_loss(model, batch, num_items_in_batch=torch.tensor(2 * targets)).detach()
    torch.testing.assert_close(scaled, model(**batch, num_items_in_batch=torch.tensor(2 * targets)).loss.detach())
    torch.testing.assert_close(scaled, own / 2)
