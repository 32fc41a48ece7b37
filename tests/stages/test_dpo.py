"""DPO/KTO stage: the loss by hand, loss names checked against TRL, reference modes, cache reuse, resume,
and the quickstart acceptance run (SFT -> DPO raises held-out preference and verifier accuracy)."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import with_overrides

from align_kit.config import recipe_from_dict
from align_kit.errors import ConfigError
from align_kit.stages import dpo

PAIRS = [{"prompt": [{"role": "user", "content": f"Add {a} and {b}."}],
          "chosen": [{"role": "assistant", "content": str(a + b)}],
          "rejected": [{"role": "assistant", "content": str(a + b + 1)}]} for a, b in [(1, 2), (3, 4), (5, 0), (2, 2)]]


def write_pairs(path, pairs):
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return str(path)


def tiny_recipe(tmp_path, model_path, data_path, **over):
    raw = {"stage": "dpo", "output_dir": str(tmp_path / "run"), "seed": 1,
           "model": {"name_or_path": model_path},
           "data": {"train": [{"path": data_path}], "eval_fraction": 0},
           "trainer": {"per_device_train_batch_size": 4, "max_steps": 2, "learning_rate": 1e-3, "beta": 0.3,
                       "use_cpu": True, "logging_steps": 1, "save_steps": 1, "report_to": "none"}}
    return recipe_from_dict(with_overrides(raw, over))


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory):
    """A saved builtin tiny Llama (random init, seeded) with its tokenizer: stands in for an SFT checkpoint."""
    from align_kit.quickstart.model import build_model, build_tokenizer

    folder = tmp_path_factory.mktemp("base")
    tok = build_tokenizer()
    build_model(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def sequence_logps(model, batch) -> torch.Tensor:
    """Sum over completion tokens of log p(token | prefix), straight from a plain transformers forward."""
    ids, mask, completion = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (logp * completion[:, 1:]).sum(-1)


def test_sigmoid_dpo_loss_matches_the_paper_formula(tmp_path, base_checkpoint):
    from transformers import AutoModelForCausalLM
    from trl import DPOTrainer

    from align_kit.models import load_tokenizer

    recipe = tiny_recipe(tmp_path, base_checkpoint, write_pairs(tmp_path / "p.jsonl", PAIRS),
                         dpo={"reference": "copy"})
    tokenizer = load_tokenizer(recipe.model)
    trainer = dpo.build_trainer(recipe, DPOTrainer, PAIRS, tokenizer, "copy")
    with torch.no_grad():  # move the policy away from the reference so the log-ratios are not zero
        gen = torch.Generator().manual_seed(0)
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch).item()

    policy = AutoModelForCausalLM.from_pretrained(base_checkpoint).eval()
    policy.load_state_dict(trainer.model.state_dict())
    reference = AutoModelForCausalLM.from_pretrained(base_checkpoint).eval()
    pi, ref = sequence_logps(policy, batch), sequence_logps(reference, batch)
    n = len(PAIRS)  # the batch is [chosen..., rejected...]
    margin = (pi[:n] - ref[:n]) - (pi[n:] - ref[n:])
    by_hand = -F.logsigmoid(0.3 * margin).mean().item()
    assert margin.abs().min().item() > 1e-3  # a real test: the log-ratios differ from zero
    assert trl_loss == pytest.approx(by_hand, rel=1e-5, abs=1e-6)
    assert abs(by_hand - 0.6931) > 1e-3  # not the trivial log(2) of an untouched policy


def test_loss_names_are_exactly_the_ones_trl_implements():
    from trl import DPOTrainer

    source = inspect.getsource(DPOTrainer._compute_loss)
    assert set(re.findall(r'loss_type == "(\w+)"', source)) == set(dpo.LOSS_TYPES)


def test_kto_loss_names_are_exactly_trls_and_live_in_the_kto_stage():
    from trl import KTOConfig

    from align_kit.stages import kto

    assert set(kto.KTO_LOSS_TYPES) == set(KTOConfig.__dataclass_fields__["loss_type"].metadata["choices"])
    assert not hasattr(dpo, "KTO_LOSS_TYPES") and not hasattr(dpo, "run_kto")


def test_bad_options_fail_before_any_model_loads(tmp_path):
    data = write_pairs(tmp_path / "p.jsonl", PAIRS)
    with pytest.raises(ConfigError, match=r"unknown DPO loss 'simpo'.*sigmoid, hinge, ipo, exo_pair"):
        tiny_recipe(tmp_path, "builtin:tiny-llama", data, trainer__loss_type=["simpo"])
    with pytest.raises(ConfigError, match="reference: adapter needs a peft: block"):
        tiny_recipe(tmp_path, "builtin:tiny-llama", data, dpo={"reference": "adapter"})
    with pytest.raises(ConfigError, match="reference: unknown value 'frozen'"):
        tiny_recipe(tmp_path, "builtin:tiny-llama", data, dpo={"reference": "frozen"})
    with pytest.raises(ConfigError, match="set dpo.reference: precomputed"):
        tiny_recipe(tmp_path, "builtin:tiny-llama", data, trainer__precompute_ref_log_probs=True)
    ok = tiny_recipe(tmp_path, "builtin:tiny-llama", data, trainer__loss_type=["sigmoid", "sft"])
    assert dpo.reference_mode(ok) == "copy"
    from align_kit.config import load_recipe  # KTO shares the check and names its own block

    with pytest.raises(ConfigError, match="set kto.reference: precomputed"):
        load_recipe(Path(__file__).parents[2] / "recipes" / "tiny" / "kto.yaml",
                    ["trainer.precompute_ref_log_probs=true"], inputs=False)
    lora = tiny_recipe(tmp_path, "builtin:tiny-llama", data, peft={"r": 4})
    assert dpo.reference_mode(lora) == "adapter"


def quickstart_recipe(out, **over) -> dict:
    raw = {"stage": "dpo", "output_dir": str(out), "seed": 5,
           "model": {"name_or_path": "builtin:tiny-llama"},
           "data": {"train": [{"name": "quickstart-preferences", "split": "train", "max_rows": 64}],
                    "eval": [{"name": "quickstart-preferences", "split": "test", "max_rows": 16}]},
           "trainer": {"learning_rate": 1e-3, "per_device_train_batch_size": 8, "max_length": 64, "beta": 0.1,
                       "max_steps": 4, "logging_steps": 1, "save_steps": 2, "lr_scheduler_type": "constant",
                       "report_to": "none"}}
    for key, value in over.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


def test_precomputed_reference_is_cached_on_disk_and_resume_finishes_the_run(tmp_path):
    from safetensors.torch import load_file

    from align_kit.stages import run_stage

    raw = quickstart_recipe(tmp_path / "run", dpo={"reference": "precomputed"})
    out = run_stage(recipe_from_dict(raw))
    caches = sorted((out / "ref_cache").rglob("cache-*.arrow"))
    assert caches, "reference log-probs were not written into the output folder"
    stamps = {p: p.stat().st_mtime_ns for p in caches}
    uninterrupted = load_file(out / "model" / "model.safetensors")
    ev = json.loads((out / "eval.json").read_text())
    assert ev["reference"] == "precomputed" and ev["after"]["pairs"] == 16

    # Simulate a run killed after step 2: only checkpoint-2 survives. Resuming must finish at step 4 with the
    # same weights as the uninterrupted run, and reuse the cached reference log-probs.
    import shutil

    shutil.rmtree(out / "checkpoint-4")
    shutil.rmtree(out / "model")
    run_stage(recipe_from_dict(raw))
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    resumed = load_file(out / "model" / "model.safetensors")
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6)
    assert sorted((out / "ref_cache").rglob("cache-*.arrow")) == caches
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_reference_handling_per_mode(tmp_path):
    from peft import PeftModel
    from trl import DPOTrainer

    from align_kit.models import load_tokenizer

    pairs = [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in PAIRS]
    for mode, peft in (("adapter", {"r": 4, "alpha": 8, "dropout": 0.0}), ("copy", None)):
        over = {"dpo": {"reference": mode}}
        if peft:
            over["peft"] = peft
        recipe = recipe_from_dict(quickstart_recipe(tmp_path / mode, **over))
        trainer = dpo.build_trainer(recipe, DPOTrainer, pairs, load_tokenizer(recipe.model), mode)
        if mode == "adapter":
            assert trainer.ref_model is None and isinstance(trainer.model, PeftModel)  # no second copy
        else:
            assert trainer.ref_model is not None and trainer.ref_model is not trainer.model
            assert not any(p.requires_grad for p in trainer.ref_model.parameters())


def test_lora_dpo_and_kto_run_and_save_plain_models(tmp_path):
    from transformers import AutoModelForCausalLM

    from align_kit.stages import run_stage

    lora = quickstart_recipe(tmp_path / "lora", peft={"r": 4, "alpha": 8, "dropout": 0.0}, dpo={"reference": "adapter"})
    lora["trainer"].update(max_steps=2, save_steps=10, loss_type=["ipo"])
    out = run_stage(recipe_from_dict(lora))
    assert (out / "adapter" / "adapter_config.json").exists() and not (out / "model" / "adapter_config.json").exists()
    AutoModelForCausalLM.from_pretrained(out / "model")
    kto = quickstart_recipe(tmp_path / "kto", stage="kto", kto={"reference": "copy"})
    kto["trainer"].update(max_steps=2, save_steps=10)
    out = run_stage(recipe_from_dict(kto))
    logs = [json.loads(line) for line in open(out / "log_history.jsonl")]
    assert [r["step"] for r in logs if "loss" in r] == [1, 2]
    assert json.loads((out / "eval.json").read_text())["after"]["pairs"] == 16


def test_two_processes_under_accelerate(tmp_path):
    """``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m align_kit train`` (gloo)."""
    import yaml
    from helpers import launch_two_processes

    raw = quickstart_recipe(tmp_path / "ddp", dpo={"reference": "copy"})
    raw["trainer"].update(max_steps=2, save_steps=10, per_device_train_batch_size=4)
    recipe = tmp_path / "dpo.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    launch_two_processes("-m", "align_kit", "train", str(recipe))
    assert (tmp_path / "ddp" / "model" / "model.safetensors").exists()
    ev = json.loads((tmp_path / "ddp" / "eval.json").read_text())
    assert ev["before"]["pairs"] == ev["after"]["pairs"] == 16
