"""Pretrain stage on the real stories260K checkpoint: held-out perplexity falls on English and Chinese,
resume continues from the checkpoint's step to the same weights, vocabulary extension trains new rows
without moving old ids, LoRA/QLoRA train their adapters, and two processes under accelerate finish."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from helpers import launch_two_processes, with_overrides
from safetensors.torch import load_file

from align_kit.config import load_recipe, recipe_from_dict
from align_kit.errors import ConfigError
from align_kit.stages import pretrain, run_stage

ROOT = Path(__file__).resolve().parents[2]


def make_recipe(shared, out, *, wiki=3, chinese=300, steps=4, block=64, **over):
    data = f"{shared}/data/pretrain"
    train = ([{"path": f"{data}/wiki_demo.txt", "max_rows": wiki}] if wiki else []) + (
        [{"path": f"{data}/chinese.txt", "max_rows": chinese}] if chinese else [])
    raw = {"stage": "pretrain", "output_dir": str(out), "seed": 0,
           "model": {"name_or_path": f"{shared}/models/stories260K", "family": "llama"},
           "data": {"train": train, "eval_fraction": 0.34 if wiki else 0.2},
           "pretrain": {"block_size": block, "max_eval_blocks": 16},
           "trainer": {"max_steps": steps, "per_device_train_batch_size": 4, "learning_rate": 3e-3,
                       "logging_steps": 1, "save_steps": 2, "report_to": "none", "dataloader_num_workers": 0}}
    return recipe_from_dict(with_overrides(raw, over))


def test_perplexity_falls_on_english_and_chinese(shared, tmp_path):
    """Acceptance: wiki_demo + chinese.txt from stories260K; both held-out perplexities must fall."""
    recipe = make_recipe(shared, tmp_path, wiki=4, chinese=600, steps=30, block=128,
                         trainer__per_device_train_batch_size=8, trainer__save_steps=30, trainer__warmup_steps=3,
                         trainer__lr_scheduler_type="cosine")
    out = run_stage(recipe)
    evals = json.loads((out / "eval.json").read_text())
    before, after = evals["before"], evals["after"]
    assert set(before) == set(after) == {"wiki_demo", "chinese"}
    # Children's-story English is close to Wikipedia English; Chinese is byte fallback the model never saw.
    assert 20 < before["wiki_demo"]["perplexity"] < 200 and before["chinese"]["perplexity"] > 1e4
    assert after["wiki_demo"]["perplexity"] < 0.8 * before["wiki_demo"]["perplexity"]
    assert after["chinese"]["perplexity"] < 200
    for name in ("wiki_demo", "chinese"):  # bits per character = loss x tokens per character / ln 2
        assert after[name]["bits_per_char"] < before[name]["bits_per_char"]
        tokens_per_char = after[name]["bits_per_char"] * math.log(2) / after[name]["loss"]
        assert tokens_per_char == pytest.approx(before[name]["bits_per_char"] * math.log(2) / before[name]["loss"])
    assert 2.0 < tokens_per_char < 3.5  # the last one, Chinese: UTF-8 byte fallback, ~2.6 tokens per character
    # add_eos: the figure without the EOS positions is reported beside. The 16 held-out Chinese blocks hold many
    # short lines, so EOS positions; the first 16 blocks of a long article none, and there both figures agree
    # (the Trainer's mean loss and align_kit.evaluation's own forward over the same blocks).
    print({n: (before[n]["perplexity"], before[n]["perplexity_without_eos"], after[n]["perplexity"],
               after[n]["perplexity_without_eos"], after[n]["eos_positions_left_out"]) for n in before})
    assert before["chinese"]["eos_positions_left_out"] == after["chinese"]["eos_positions_left_out"] > 0
    assert after["chinese"]["perplexity_without_eos"] < before["chinese"]["perplexity_without_eos"]
    assert after["wiki_demo"]["eos_positions_left_out"] == 0
    assert after["wiki_demo"]["perplexity_without_eos"] == pytest.approx(after["wiki_demo"]["perplexity"], rel=1e-4)
    stats = json.loads((out / "manifest.json").read_text())["extra"]
    assert stats["block_size"] == 128 and stats["new_tokens"] == 0 and stats["eval_blocks"] == {
        "wiki_demo": 16, "chinese": 16}
    # Weights 1:1 share tokens: the mixture holds as many blocks of each source (the sum stays the same).
    sources = stats["sources"]
    assert stats["train_blocks"] == sum(s["blocks"] for s in sources.values()) == sum(
        s["mixed_blocks"] for s in sources.values())
    assert abs(sources["wiki_demo"]["mixed_blocks"] - sources["chinese"]["mixed_blocks"]) <= 1
    assert sources["wiki_demo"]["blocks"] != sources["chinese"]["blocks"]  # so the weights did something
    assert (out / "model" / "model.safetensors").exists() and (out / "report.md").exists()


def test_resume_from_a_checkpoint_reaches_the_same_weights(shared, tmp_path):
    full = run_stage(make_recipe(shared, tmp_path / "full", wiki=0, steps=4))
    assert sorted(p.name for p in full.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    shutil.copytree(full / "checkpoint-2", tmp_path / "cut" / "checkpoint-2")
    shutil.copy(full / "run_identity.json", tmp_path / "cut")  # the same run, cut short (align_kit.identity)
    state_file = tmp_path / "cut" / "checkpoint-2" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["log_history"][0]["loss"] = 123.0  # a marker: only a run that resumed from this file logs it
    state_file.write_text(json.dumps(state))
    cut = run_stage(make_recipe(shared, tmp_path / "cut", wiki=0, steps=4))
    history = [json.loads(line) for line in (cut / "log_history.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in history if "loss" in r]
    assert [step for step, _ in losses] == [1, 2, 3, 4] and losses[0][1] == 123.0  # steps 3-4 trained after resuming
    a, b = load_file(full / "model" / "model.safetensors"), load_file(cut / "model" / "model.safetensors")
    base = load_file(Path(shared) / "models/stories260K/model.safetensors")
    assert not torch.equal(a["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


def test_held_out_documents_are_load_datas_split_per_source(shared):
    """Loading each source alone holds out exactly the documents ``load_data`` holds out for the recipe."""
    from align_kit.data.sources import load_data

    recipe = make_recipe(shared, "unused", wiki=4, chinese=60)
    train, held_out, loaded = pretrain.load_documents(recipe.data)
    together = load_data(recipe.data, "text")
    assert [name for name, _, _ in train] == ["wiki_demo", "chinese"] and list(held_out) == ["wiki_demo", "chinese"]
    assert [len(d) for d in held_out.values()] == [1, 20]  # int(4 x 0.34), int(60 x 0.34)
    assert [d for docs in held_out.values() for d in docs] == [r["text"] for r in together.eval]
    for (name, docs, _), rows in zip(train, (4, 60)):  # documents, unmixed: the stage mixes blocks, not documents
        assert len(docs) + len(held_out[name]) == rows and not set(docs) & set(held_out[name])
    assert len(loaded.files) == 2 and len(loaded.reports) == 2
    own_eval = recipe_from_dict({**recipe.to_dict(), "data": {
        "train": [{"path": f"{shared}/data/pretrain/chinese.txt", "max_rows": 30}],
        "eval": [{"path": f"{shared}/data/pretrain/chinese.txt", "max_rows": 5},
                 {"path": f"{shared}/data/pretrain/wiki_demo.txt", "max_rows": 1}]}})
    train, held_out, _ = pretrain.load_documents(own_eval.data)
    assert len(train[0][1]) == 30 and {k: len(v) for k, v in held_out.items()} == {"chinese_2": 5, "wiki_demo": 1}


def test_sources_of_each_format_become_documents(shared, tmp_path):
    """Cards and paths: jsonl (c4_demo), blank-line separated txt (tinyshakespeare), parquet with text_field."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["first parquet document", "second one"], "id": [1, 2]}),
                   tmp_path / "docs.parquet")
    recipe = make_recipe(shared, tmp_path / "run", wiki=0, chinese=0, data={"train": [
        {"name": "c4_demo", "max_rows": 5}, {"name": "tinyshakespeare", "text_split": "blank", "max_rows": 2},
        {"path": str(tmp_path / "docs.parquet"), "text_field": "content"}], "eval_fraction": 0})
    train, held_out, loaded = pretrain.load_documents(recipe.data)
    docs = {name: d for name, d, _ in train}
    assert list(docs) == ["c4_demo", "tinyshakespeare", "docs"] and held_out == {}
    assert len(docs["c4_demo"]) == 5 and docs["c4_demo"][0].startswith("Don’t think you need all the bells")
    assert docs["tinyshakespeare"] == ["First Citizen:\nBefore we proceed any further, hear me speak.",
                                       "All:\nSpeak, speak."]
    assert docs["docs"] == ["first parquet document", "second one"]


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_vocabulary_extension_trains_new_rows_and_keeps_old_ids(shared, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    (tmp_path / "listed.txt").write_text("<think>\n</think>\n", encoding="utf-8")
    recipe = make_recipe(shared, tmp_path / "run", wiki=0, chinese=600, steps=4,
                         pretrain__extend_vocab={"sentencepiece": {"vocab_size": 1500, "character_coverage": 0.98},
                                                 "tokens_file": str(tmp_path / "listed.txt"), "max_new_tokens": 400})
    out = run_stage(recipe)
    base_tok = AutoTokenizer.from_pretrained(Path(shared) / "models/stories260K")
    tok = AutoTokenizer.from_pretrained(out / "model")
    new = (out / "new_tokens.txt").read_text(encoding="utf-8").split()
    assert len(new) == 400 and len(tok) == 512 + 400 and new[:3] == ["<think>", "</think>", "一个"]  # listed first
    assert tok.convert_tokens_to_ids(new) == list(range(512, 912))
    english = "Once upon a time, there was a little girl named Lily. She loved to play outside: 3.5 (ok)!"
    assert tok(english).input_ids == base_tok(english).input_ids  # same ids for old-vocabulary text
    assert base_tok.get_vocab() == {t: i for t, i in tok.get_vocab().items() if i < 512}
    line = "我们如何在日常生活中减少用水？"
    assert len(tok(line).input_ids) < len(base_tok(line).input_ids) / 2  # Chinese pieces replace byte fallback

    base = AutoModelForCausalLM.from_pretrained(Path(shared) / "models/stories260K").get_input_embeddings().weight
    grown = AutoModelForCausalLM.from_pretrained(out / "model").get_input_embeddings().weight
    assert grown.shape == (912, 64)
    mean_init = base.mean(0)  # load_model initialises new rows around the mean of the old ones
    used = sorted({i for ids in tok(["我们如何在日常生活中减少用水？", "可以使用数据"]).input_ids for i in ids if i >= 512})
    assert used and all(not torch.allclose(grown[i], mean_init, atol=1e-3) for i in used)


def test_embedding_warmup_changes_only_new_rows(shared, tmp_path):
    from transformers import AutoModelForCausalLM, Trainer

    from align_kit.data.blocks import collate_blocks

    recipe = make_recipe(shared, tmp_path, wiki=0, model__new_tokens=["我们", "可以"],
                         pretrain__embedding_warmup_steps=3)
    model = AutoModelForCausalLM.from_pretrained(recipe.model.name_or_path)
    model.resize_token_embeddings(514, mean_resizing=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(0, 514, (8, 32)).tolist()
    from datasets import Dataset

    trainer = Trainer(model=model, args=recipe.trainer_config(use_cpu=True, learning_rate=1e-2),
                      train_dataset=Dataset.from_dict({"input_ids": ids}), data_collator=collate_blocks)
    pretrain.warm_new_embeddings(trainer, recipe, base_vocab=512)
    after = dict(model.named_parameters())
    emb = "model.embed_tokens.weight"  # tied with lm_head in stories260K
    assert torch.equal(after[emb][:512], before[emb][:512])
    assert (after[emb][512:] - before[emb][512:]).abs().min() > 0
    assert all(torch.equal(after[n], before[n]) for n in before if n != emb)
    assert all(p.requires_grad for p in model.parameters())  # unfrozen for the main run


@pytest.mark.parametrize("quantized", [False, True], ids=["lora-new-tokens", "qlora"])
def test_lora_and_qlora_train_their_adapters(shared, tmp_path, quantized, monkeypatch):
    """LoRA with two new tokens (embeddings trained in full, tied input/output kept tied, a warm-up of the new
    rows first); QLoRA on a 4-bit NF4 base (bitsandbytes runs on CPU)."""
    from transformers import AutoModelForCausalLM

    from align_kit.stages import common

    extra = {"quantization": {"bits": 4}} if quantized else {
        "peft": {"r": 4, "alpha": 8, "modules_to_save": ["embed_tokens", "lm_head"]},
        "model__new_tokens": ["我们", "可以"], "pretrain__embedding_warmup_steps": 2}
    recipe = make_recipe(shared, tmp_path, wiki=0, chinese=200, steps=3, trainer__learning_rate=1e-2,
                         **{"peft": {"r": 4, "alpha": 8}, **extra})
    captured, original = {}, common.save_final

    def spy(model, tokenizer, out, merge_lora=True, accelerator=None):  # the trained model, as handed over
        captured["model"] = model
        return original(model, tokenizer, out, merge_lora, accelerator)

    monkeypatch.setattr(common, "save_final", spy)
    out = run_stage(recipe)
    model = captured["model"]
    trained = trainable(model)
    lora_b = {n: p for n, p in trained.items() if "lora_B" in n}
    assert len(lora_b) == 5 * 7 and all(p.abs().sum() > 0 for p in lora_b.values())  # lora_B starts at zero
    assert (out / "adapter" / "adapter_config.json").exists()
    if quantized:
        assert all("lora_" in n for n in trained)  # only adapters train on a 4-bit base
        assert (out / "model" / "adapter_config.json").exists()  # a 4-bit base is not merged
        return
    assert [n for n in trained if "lora_" not in n] == ["base_model.model.model.embed_tokens.modules_to_save.default.weight"]
    wrapper = model.base_model.model.model.embed_tokens
    init, now = wrapper.original_module.weight, wrapper.modules_to_save["default"].weight
    assert now.shape == (514, 64) and (now[512:] - init[512:]).abs().min() > 0  # the new rows trained
    merged = AutoModelForCausalLM.from_pretrained(out / "model")  # merged: loads with plain transformers
    assert torch.equal(merged.get_input_embeddings().weight, merged.get_output_embeddings().weight)
    assert torch.equal(merged.get_input_embeddings().weight, now.detach())


def test_options_are_checked_before_the_model_loads(shared, tmp_path):
    with pytest.raises(ConfigError, match="modules_to_save: \\[embed_tokens, lm_head\\]"):
        make_recipe(shared, tmp_path, peft={"r": 4}, model__new_tokens=["<x>"])
    with pytest.raises(ConfigError, match="give tokens_file or sentencepiece"):
        make_recipe(shared, tmp_path, pretrain__extend_vocab={"max_new_tokens": 3})
    with pytest.raises(ConfigError, match=r"pretrain.extend_vocab.sentencepiece.character_coverage: expected a share in \[0.98, 1.0\] "
                       r"\(SentencePiece's range\), found 0.9"):
        make_recipe(shared, tmp_path, pretrain__extend_vocab={"sentencepiece": {"character_coverage": 0.9}})
    with pytest.raises(ConfigError, match="embedding_warmup_steps needs new tokens"):
        make_recipe(shared, tmp_path, pretrain__embedding_warmup_steps=2)
    with pytest.raises(ConfigError, match="unknown key 'model_typ'"):
        make_recipe(shared, tmp_path, pretrain__extend_vocab={"sentencepiece": {"model_typ": "bpe"}})
    with pytest.raises(ConfigError, match="pretrain.block_size: expected at most the model's "
                                          "max_position_embeddings=512, found 1024"):
        make_recipe(shared, tmp_path, wiki=0, chinese=50, block=1024)  # read from config.json: no load


def test_shipped_pretrain_recipes_load(monkeypatch, tmp_path):
    """Every shipped pretraining recipe loads with its inputs checked: the shared data, and its Hub model in the
    (offline) Hugging Face cache as after a first online run."""
    from helpers import cache_hub_models

    monkeypatch.setenv("ALIGN_KIT_SHARED", str(ROOT.parent / "shared"))
    shipped = sorted((ROOT / "recipes").glob("*/pretrain*.yaml"))
    hub_ids = [load_recipe(p, inputs=False).model.name_or_path for p in shipped]
    cache_hub_models(monkeypatch, tmp_path / "hub_cache", *[i for i in hub_ids if not i.startswith("builtin:")])
    names = [f"{p.parent.name}/{p.name}" for p in shipped]
    assert names == ["glm4-9b/pretrain_qlora.yaml", "llama2-7b/pretrain_lora_zh_vocab.yaml",
                     "llama3-8b/pretrain_qlora.yaml", "mistral-7b/pretrain_qlora_zh_vocab.yaml",
                     "qwen2.5-7b/pretrain_lora.yaml", "tiny/pretrain.yaml", "tiny/pretrain_vocab.yaml"], names
    for path in shipped:
        recipe = load_recipe(path)
        assert recipe.stage == "pretrain" and recipe.trainer_config().max_steps != 0
        if recipe.peft is not None and (recipe.model.new_tokens or recipe.options.extend_vocab):
            assert {"embed_tokens", "lm_head"} <= set(recipe.peft.modules_to_save), path
        if path.parent.name != "tiny":  # real models: real context lengths and bf16
            assert recipe.options.block_size >= 2048 and recipe.trainer["bf16"] is True, path


def test_two_processes_under_accelerate_finish(shared, tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2 -m align_kit train recipes/tiny/pretrain.yaml`` on CPU."""
    launch_two_processes("-m", "align_kit", "train", str(ROOT / "recipes/tiny/pretrain.yaml"), f"output_dir={tmp_path}",
                         "trainer.max_steps=3", "trainer.save_steps=3", "trainer.per_device_train_batch_size=4",
                         "pretrain.max_eval_blocks=8", env={"ALIGN_KIT_SHARED": str(shared)}, timeout=240)
    state = json.loads((tmp_path / "checkpoint-3" / "trainer_state.json").read_text())
    blocks = json.loads((tmp_path / "manifest.json").read_text())["extra"]["train_blocks"]
    # Each step takes 4 blocks on each of the 2 processes: 3 steps cover 24 blocks.
    assert state["global_step"] == 3 and state["epoch"] == pytest.approx(24 / blocks, rel=0.02)
    assert set(json.loads((tmp_path / "eval.json").read_text())["after"]) == {"wiki_demo", "chinese-demo"}
