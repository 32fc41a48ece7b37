"""PPO loop on tiny in-process models: training moves the policy, the roles stay where they belong,
resume is bitwise exact, the guards stop a bad run, and two processes under accelerate finish."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import launch_two_processes

from align_kit.data.tokenize import Tokenized
from align_kit.ppo.config import PPOConfig
from align_kit.ppo.loop import PPODivergedError, PPOTrainer, left_pad
from align_kit.ppo.modelset import build_models, causal_logits
from align_kit.ppo.rollout import rollout

HERE = Path(__file__).parent
PROMPTS = ["Add 3 and 4.", "Reverse: abc", "Uppercase: xyz", "Sort the letters: cab", "Add 1 and 9.", "Reverse: qwe"]


def tiny_checkpoints(root: Path) -> tuple[Path, Path]:
    """An SFT-like causal LM and a one-label reward model (LlamaConfig hidden 32, 2 layers) saved to disk."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from align_kit.quickstart.model import build_tokenizer

    tok = build_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    policy = LlamaForCausalLM(cfg)
    with torch.no_grad():  # make EOS likely enough that some responses end within a few tokens
        policy.lm_head.weight[tok.eos_token_id] *= 0
        policy.model.embed_tokens.weight[tok.eos_token_id] += 0.5
    policy.save_pretrained(root / "sft")
    tok.save_pretrained(root / "sft")
    cfg.num_labels = 1
    reward = LlamaForSequenceClassification(cfg)
    with torch.no_grad():
        reward.score.weight.normal_(0, 1.0)  # scores of order 1, so advantages are not all noise
    reward.save_pretrained(root / "rm")
    return root / "sft", root / "rm"



@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory.mktemp("ppo_models"))


@pytest.fixture(scope="module")
def tokenizer(ckpts):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ckpts[0])


def make_cfg(**kw) -> PPOConfig:
    base = dict(steps=3, batch_size=4, mini_batch_size=2, gradient_accumulation_steps=2, ppo_epochs=2,
                max_new_tokens=6, learning_rate=3e-3, critic_learning_rate=3e-3, save_steps=1, sample_steps=2,
                lr_scheduler="linear", kl_coef=0.1, lora_target_modules=["q_proj", "v_proj"], save_total_limit=None)
    base.update(kw)
    return PPOConfig(**base)


def trainer_for(cfg, ckpts, tokenizer, out) -> PPOTrainer:
    models = build_models(cfg, str(ckpts[0]), str(ckpts[1]), pad_token_id=tokenizer.pad_token_id)
    prompts = [tokenizer(p).input_ids for p in PROMPTS]
    demos = demonstrations(tokenizer) if cfg.ptx_coef > 0 else None
    return PPOTrainer(cfg, models, tokenizer, prompts, out, demonstrations=demos)


def trained(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_rollout_reads_logprobs_and_reward_where_transformers_does(ckpts, tokenizer):
    """Left padding changes no log-prob; the reward is the sequence classifier's own output at the last token."""
    from transformers import AutoModelForSequenceClassification

    cfg = make_cfg(max_new_tokens=5)
    models = build_models(cfg, str(ckpts[0]), str(ckpts[1]), pad_token_id=tokenizer.pad_token_id)
    ids, mask = left_pad([tokenizer(p).input_ids for p in PROMPTS[:2]], tokenizer.pad_token_id)
    torch.manual_seed(3)
    exp = rollout(models, models.policy, models.critic, ids, mask, cfg, [tokenizer.eos_token_id], tokenizer.pad_token_id)
    assert exp.response_ids.shape == exp.logprobs.shape == exp.values.shape == (2, exp.response_ids.shape[1])
    assert torch.equal(exp.logprobs, exp.ref_logprobs)  # reference = policy before any update
    rm = AutoModelForSequenceClassification.from_pretrained(ckpts[1]).eval()
    for row in range(2):  # the same sequence alone, without padding, through plain transformers
        seq = torch.cat([ids[row][mask[row].bool()], exp.response_ids[row][exp.response_mask[row].bool()]])
        prompt_len = int(mask[row].sum())
        with torch.no_grad():
            logits = models.policy(seq[None]).logits[0, prompt_len - 1 : -1]
            hf_score = rm(seq[None]).logits[0, 0]
        alone = torch.log_softmax(logits, -1).gather(1, seq[prompt_len:, None])[:, 0]
        n = len(alone)
        assert torch.allclose(exp.logprobs[row, :n], alone, atol=1e-5)
        if exp.response_ids[row, n - 1] != tokenizer.pad_token_id:  # HF skips trailing pad ids, we do not
            assert torch.allclose(exp.raw_scores[row], hf_score, atol=1e-5)


def test_responses_cut_at_stop_and_unfinished_ones_penalised(ckpts, tokenizer):
    from align_kit.ppo.rollout import score_responses

    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ids, mask = left_pad([tokenizer(p).input_ids for p in PROMPTS[:2]], pad)
    a, b = tokenizer.convert_tokens_to_ids(["a", "b"])
    sampled = torch.tensor([[a, eos, b, b], [a, b, a, b]])  # row 0 stops at t=1, row 1 never stops
    models = build_models(make_cfg(), str(ckpts[0]), str(ckpts[1]), pad_token_id=pad)
    for kw, expected_row1 in (({"missing_eos_score": -1.0}, lambda raw: -1.0),
                              ({"missing_eos_penalty": 0.5}, lambda raw: raw - 0.5)):
        cfg = make_cfg(**kw)
        exp = score_responses(models, models.policy, models.critic, ids, mask, sampled, cfg, [eos], pad)
        assert exp.response_ids.tolist() == [[a, eos, pad, pad], [a, b, a, b]]
        assert exp.response_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]] and exp.ended.tolist() == [True, False]
        assert exp.scores[0] == exp.raw_scores[0]
        assert exp.scores[1].item() == pytest.approx(expected_row1(exp.raw_scores[1].item()), abs=1e-6)


def test_short_run_trains_policy_and_critic_only(ckpts, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    trainer = trainer_for(make_cfg(), ckpts, tokenizer, tmp_path)
    models = trainer.models
    before = {"policy": trained(models.policy), "critic": trained(models.critic),
              "ref": {n: p.clone() for n, p in models.reference.named_parameters()},
              "reward": {n: p.clone() for n, p in models.reward.named_parameters()}}
    out = trainer.train()
    for role in ("policy", "critic"):
        moved = [n for n, p in trained(getattr(models, role)).items() if not torch.equal(p, before[role][n])]
        assert len(moved) == len(before[role]), f"{role}: only {len(moved)} of {len(before[role])} tensors moved"
    assert all(torch.equal(p, before["ref"][n]) for n, p in models.reference.named_parameters())
    assert all(torch.equal(p, before["reward"][n]) for n, p in models.reward.named_parameters())
    logs = [json.loads(line) for line in (tmp_path / "log_history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2, 3]
    assert logs[0]["kl"] == 0.0 and all(0 < r["kl"] < 10 for r in logs[1:])  # identical at step 1, then finite
    for key in ("score", "entropy", "clip_fraction", "approx_kl", "policy_loss", "value_loss",
                "explained_variance", "response_length", "kl_coef"):
        assert all(torch.isfinite(torch.tensor(r[key])) for r in logs), key
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 2 * 2  # steps 1 and 2, two samples
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    reloaded = AutoModelForCausalLM.from_pretrained(out)  # plain transformers
    assert torch.equal(reloaded.lm_head.weight, models.policy.lm_head.weight)


def test_target_kl_drops_the_updates_after_the_policy_moved_too_far(ckpts, tokenizer, tmp_path):
    """With target_kl set, a step stops its remaining updates once the approximate KL of the next minibatches
    (measured before their update) passes 1.5 x target_kl. The first update of a step sees the rollout policy
    itself (approx KL ~1e-13), so it is always taken; at a tiny target every later one is dropped."""
    from align_kit.errors import ConfigError

    plain = trainer_for(make_cfg(steps=2), ckpts, tokenizer, tmp_path / "plain")
    plain.train()
    stopped = trainer_for(make_cfg(steps=2, target_kl=1e-9), ckpts, tokenizer, tmp_path / "stopped")
    before = trained(stopped.models.policy)
    stopped.train()
    logs = {name: [json.loads(line) for line in (tmp_path / name / "log_history.jsonl").read_text().splitlines()]
            for name in ("plain", "stopped")}
    assert [r["updates"] for r in logs["plain"]] == [2.0, 2.0]  # 2 epochs x 1 optimiser step
    assert [r["updates"] for r in logs["stopped"]] == [1.0, 1.0]
    assert any(not torch.equal(p, before[n]) for n, p in trained(stopped.models.policy).items())
    with pytest.raises(ConfigError, match="target_kl"):
        make_cfg(target_kl=0.0)


def test_lora_mode_shares_bases(ckpts, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = make_cfg(memory_mode="lora", steps=2, learning_rate=3e-2, ptx_coef=0.5)  # ptx trains the adapter only
    trainer = trainer_for(cfg, ckpts, tokenizer, tmp_path)
    models = trainer.models
    assert models.reference is None and models.reward is None
    sft = AutoModelForCausalLM.from_pretrained(ckpts[0]).eval()
    ids, mask = left_pad([tokenizer(p).input_ids for p in PROMPTS[:3]], tokenizer.pad_token_id)
    scores_before = models.reward_forward(models.critic, ids, mask).detach()
    trainer.train()
    with torch.no_grad():
        ref = models.reference_forward(models.policy, ids, mask)
        assert torch.allclose(ref, causal_logits(sft, ids, mask), atol=1e-5)  # adapter off = the SFT model
        assert not torch.allclose(causal_logits(models.policy, ids, mask), ref, atol=1e-4)  # adapter on moved
        assert torch.equal(models.reward_forward(models.critic, ids, mask), scores_before)  # reward head untouched
        assert not torch.equal(models.critic(ids, mask), scores_before)  # the critic's copy of the head trained


def test_lora_mode_on_4bit_bases(ckpts, tokenizer, tmp_path):
    """QLoRA layout: both shared bases in bitsandbytes NF4 (runs on CPU), adapters and the critic head in fp32."""
    import bitsandbytes as bnb

    trainer = trainer_for(make_cfg(memory_mode="lora", steps=1, quantize_frozen=True, ptx_coef=0.5), ckpts, tokenizer,
                          tmp_path)
    q_proj = trainer.models.policy.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, bnb.nn.Linear4bit) and q_proj.lora_A["default"].weight.dtype == torch.float32
    before = trained(trainer.models.policy)
    trainer.train()
    log = json.loads((tmp_path / "log_history.jsonl").read_text())
    assert all(torch.isfinite(torch.tensor(log[k])) for k in ("kl", "policy_loss", "value_loss", "ptx_loss"))
    assert any(not torch.equal(p, before[n]) for n, p in trained(trainer.models.policy).items())
    assert (tmp_path / "model" / "adapter_config.json").exists()  # a 4-bit base is not merged


def demonstrations(tokenizer) -> list[Tokenized]:
    """Each prompt of PROMPTS with the fixed answer "ok" + EOS (the trained tokens), for the PPO-ptx term."""
    demos = []
    for prompt in PROMPTS:
        head, answer = tokenizer(prompt).input_ids, tokenizer("ok", add_special_tokens=False).input_ids
        answer = answer + [tokenizer.eos_token_id]
        demos.append(Tokenized(head + answer, [0] * len(head) + [1] * len(answer)))
    return demos


def demo_nll(policy, demos, pad_id) -> float:
    from align_kit.ppo.losses import ptx_loss
    from align_kit.ppo.update import right_pad_demos

    ids, mask, labels = right_pad_demos(demos, pad_id)
    with torch.no_grad():
        return ptx_loss(causal_logits(policy, ids, mask), labels).item()


def test_ptx_term_pulls_the_policy_towards_the_demonstrations(ckpts, tokenizer, tmp_path):
    """PPO-ptx: with the SFT term on, the demonstrations' NLL falls; with it off (same seeds) it does not fall
    as far. The term is logged, and a run asking for it without demonstrations is refused."""
    from align_kit.errors import AlignKitError

    demos = demonstrations(tokenizer)
    start = demo_nll(AutoCausalLM(ckpts[0]), demos, tokenizer.pad_token_id)
    after = {}
    for coef in (0.0, 1.0):
        cfg = make_cfg(steps=2, ptx_coef=coef)
        models = build_models(cfg, str(ckpts[0]), str(ckpts[1]), pad_token_id=tokenizer.pad_token_id)
        trainer = PPOTrainer(cfg, models, tokenizer, [tokenizer(p).input_ids for p in PROMPTS], tmp_path / str(coef),
                             demonstrations=demos)
        trainer.train()
        after[coef] = demo_nll(models.policy, demos, tokenizer.pad_token_id)
        logs = [json.loads(line) for line in (tmp_path / str(coef) / "log_history.jsonl").read_text().splitlines()]
        assert ("ptx_loss" in logs[0]) == (coef > 0)
    assert after[1.0] < start - 0.5 and after[1.0] < after[0.0] - 0.5, (start, after)
    models = build_models(make_cfg(), str(ckpts[0]), str(ckpts[1]), pad_token_id=tokenizer.pad_token_id)
    with pytest.raises(AlignKitError, match="ptx_coef > 0 needs demonstrations"):
        PPOTrainer(make_cfg(ptx_coef=0.5), models, tokenizer, [[1, 2]], tmp_path / "none")
    with pytest.raises(AlignKitError, match="demonstration 1 has 3 tokens and 0 trained of 3 mask entries"):
        PPOTrainer(make_cfg(ptx_coef=0.5), models, tokenizer, [[1, 2]], tmp_path / "bad",
                   demonstrations=[Tokenized([1, 2, 3], [0, 0, 1]), Tokenized([1, 2, 3], [0, 0, 0])])


def test_demonstrations_label_exactly_the_answer_tokens():
    """The stage's ptx rows are tokenised as SFT rows are: the loss falls on the answer and its end-of-turn
    token, not on the prompt, and not on chatml's newline after <|im_end|>; a template that cannot mark the
    answer is an error naming the row."""
    from align_kit.data.tokenize import tokenize_conversation
    from align_kit.errors import DataError
    from align_kit.families import get_template, stop_token_ids
    from align_kit.ppo.update import right_pad_demos
    from align_kit.quickstart.model import build_tokenizer
    from align_kit.stages.ppo import encode_demonstrations

    conv = {"messages": [{"role": "user", "content": "Uppercase: abc"}, {"role": "assistant", "content": "ABC"}]}
    pair = {"prompt": conv["messages"][:1], "chosen": [{"role": "assistant", "content": "no"}],
            "rejected": [{"role": "assistant", "content": "yes"}]}
    for name, end in (("llama3", "<|eot_id|>"), ("chatml", "<|im_end|>")):
        tok, template = build_tokenizer(), get_template(name)
        tok.add_special_tokens({"additional_special_tokens": [t for t in template.special if t not in tok.get_vocab()]})
        tok.chat_template = template.jinja
        stops = stop_token_ids(tok, template)
        for rows, kind, answer in (([conv], "conversations", "ABC"), ([pair], "preferences", "no")):
            (demo,) = encode_demonstrations(rows, tok, kind, max_len=128, stop_ids=stops)
            _, _, labels = right_pad_demos([demo], tok.pad_token_id)
            labelled = [t for t in labels[0].tolist() if t != -100]
            assert labelled == tok(answer, add_special_tokens=False).input_ids + [tok.convert_tokens_to_ids(end)], (
                name, kind, tok.decode(labelled))
            assert demo == tokenize_conversation(tok, rows[0].get("messages") or pair["prompt"] + pair["chosen"], stops)
        assert encode_demonstrations([conv], tok, "conversations", max_len=5, stop_ids=stops) == []  # too long
        tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # no generation markers
        with pytest.raises(DataError, match=r"row 0.*no trained tokens"):
            encode_demonstrations([conv], tok, "conversations", max_len=128, stop_ids=stops)


def AutoCausalLM(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def test_resume_is_bitwise_identical_and_skips_tmp(ckpts, tokenizer, tmp_path, caplog):
    # ptx on: the demonstrations drawn after the resume must be the ones the uninterrupted run drew
    cfg = make_cfg(steps=4, save_steps=2, adaptive_kl=True, kl_target=0.01, kl_horizon=50, ptx_coef=0.5)
    full = trainer_for(cfg, ckpts, tokenizer, tmp_path / "full")
    full.train()
    # a run killed after checkpoint-2, while writing checkpoint-4
    shutil.copytree(tmp_path / "full" / "checkpoint-2", tmp_path / "cut" / "checkpoint-2")
    (tmp_path / "cut" / "checkpoint-4.tmp").mkdir()
    (tmp_path / "cut" / "checkpoint-4.tmp" / "policy.safetensors").write_bytes(b"half-written")
    with caplog.at_level(logging.WARNING):
        resumed = trainer_for(cfg, ckpts, tokenizer, tmp_path / "cut")
    assert resumed.step_done == 2 and "checkpoint-4.tmp" in caplog.text
    resumed.train()
    for role in ("policy", "critic"):
        a, b = trained(getattr(full.models, role)), trained(getattr(resumed.models, role))
        assert all(torch.equal(a[n], b[n]) for n in a), role
    assert full.kl_ctl.kl_coef == resumed.kl_ctl.kl_coef != cfg.kl_coef
    assert full.opt_policy.state_dict()["state"][0]["exp_avg"].equal(resumed.opt_policy.state_dict()["state"][0]["exp_avg"])


def test_nan_guard_and_kl_limit_keep_last_checkpoint(ckpts, tokenizer, tmp_path):
    trainer = trainer_for(make_cfg(steps=1), ckpts, tokenizer, tmp_path / "nan")
    trainer.train()
    trainer.cfg = replace(trainer.cfg, steps=3)
    with torch.no_grad():
        trainer.models.critic.model.score.weight.fill_(float("nan"))
    with pytest.raises(PPODivergedError, match=r"step 2: .*NaN.*checkpoint-1"):
        trainer.train()
    assert (tmp_path / "nan" / "checkpoint-1" / "trainer_state.json").exists()
    assert not (tmp_path / "nan" / "checkpoint-2").exists()

    # a non-finite PPO-ptx loss (the PPO loss itself finite) stops the run the same way
    ptx = trainer_for(make_cfg(steps=1, ptx_coef=1.0), ckpts, tokenizer, tmp_path / "ptx")
    ptx.train()
    ptx.cfg = replace(ptx.cfg, steps=2)
    ptx._ptx_loss = lambda draw: torch.tensor(float("nan"), requires_grad=True)
    with pytest.raises(PPODivergedError, match=r"step 2: .*NaN.*checkpoint-1"):
        ptx.train()
    assert not (tmp_path / "ptx" / "checkpoint-2").exists()
    # stopped before the first optimiser step that would have applied the NaN gradient
    assert all(torch.isfinite(p).all() for p in ptx.models.policy.parameters())

    limited = trainer_for(make_cfg(steps=3, kl_limit=1e-6), ckpts, tokenizer, tmp_path / "kl")
    with pytest.raises(PPODivergedError, match=r"step 2: mean KL .* exceeds kl_limit 1e-06.*checkpoint-1"):
        limited.train()
    assert [p.name for p in (tmp_path / "kl").glob("checkpoint-*")] == ["checkpoint-1"]


def test_two_processes_under_accelerate_run_to_the_end_and_resume(ckpts, tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2`` on CPU (gloo): a full run, then a resume from checkpoint-2."""
    proc = launch_two_processes(str(HERE / "ppo_ddp_script.py"), str(ckpts[0]), str(ckpts[1]), str(tmp_path),
                                timeout=180)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"num_processes": 2, "steps": 4, "resumed_at": 2, "policy_moved": True,
                      "resume_identical": True, "ranks_agree": True}
    assert "skipping checkpoint-4.tmp: incomplete" in proc.stderr  # rundir.complete_checkpoints, every rank
    for run in ("full", "cut"):
        assert (tmp_path / run / "model" / "model.safetensors").exists()
        assert sorted(p.name for p in (tmp_path / run).glob("rng_state_*.pt")) == []
        assert sorted(p.name for p in (tmp_path / run / "checkpoint-4").glob("rng_state_*.pt")) == [
            "rng_state_0.pt", "rng_state_1.pt"]
    assert (tmp_path / "full" / "model" / "model.safetensors").read_bytes() == (
        tmp_path / "cut" / "model" / "model.safetensors").read_bytes()


def test_ppo_stage_from_a_recipe(ckpts, tmp_path):
    """The ``ppo`` stage: recipe -> prompts through the chat template -> PPO -> model/ and before/after eval."""
    from transformers import AutoModelForCausalLM

    from align_kit.config import load_recipe, recipe_from_dict
    from align_kit.stages import run_stage

    shipped = sorted((HERE.parents[1] / "recipes").glob("*/ppo*.yaml"))
    assert len(shipped) == 5  # tiny + LoRA mode for llama3, qwen2.5, mistral, glm4
    for path in shipped:
        loaded = load_recipe(path, inputs=False)  # runs/<family>/sft is written by the SFT stage first
        cfg = loaded.trainer_config()
        assert isinstance(cfg, PPOConfig) and loaded.options.reward_model.endswith("reward")
        assert cfg.memory_mode == ("separate" if path.parent.name == "tiny" else "lora")
    recipe = recipe_from_dict({
        "stage": "ppo", "output_dir": str(tmp_path), "seed": 1, "model": {"name_or_path": str(ckpts[0])},
        "data": {"train": [{"name": "quickstart-tasks", "split": "train", "max_rows": 16}],
                 "eval": [{"name": "quickstart-tasks", "split": "test", "max_rows": 4}]},
        "ppo": {"reward_model": str(ckpts[1]), "verifier": "align_kit.quickstart.tasks:verify",
                "eval_max_new_tokens": 4},
        "trainer": {"steps": 2, "batch_size": 4, "mini_batch_size": 4, "max_new_tokens": 4, "save_steps": 2},
    })
    out = run_stage(recipe)
    evals = json.loads((out / "eval.json").read_text())
    for when in ("before", "after"):
        assert evals[when]["prompts"] == 4 and evals[when]["verifier_accuracy"] == 0.0  # an untrained model
    assert AutoModelForCausalLM.from_pretrained(out / "model").num_parameters() > 0
    first = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert first["prompt"].startswith("<|begin_of_text|><|start_header_id|>user")  # through the chat template
    assert "<|eot_id|><|start_header_id|>assistant<|end_header_id|>" in first["prompt"]
    with pytest.raises(Exception, match="memory_mode: lora needs a peft"):
        recipe_from_dict({**recipe.to_dict(), "ppo": {"reward_model": "x"}, "trainer": {"memory_mode": "lora"}})
    # sampled answers in the evaluation: added to eval.json, and the training run is the same (a shifted random
    # stream would sample other rollouts and move the weights by far more than the tolerance)
    from safetensors.torch import load_file

    sampled = recipe_from_dict({**recipe.to_dict(), "output_dir": str(tmp_path / "sampled"),
                                "ppo": {**recipe.to_dict()["ppo"], "eval_samples": 3}})
    evals_s = json.loads((run_stage(sampled) / "eval.json").read_text())
    for when in ("before", "after"):
        assert evals_s[when]["samples_per_prompt"] == 3 and evals_s[when]["sampled_verifier_accuracy"] == 0.0
        assert evals_s[when]["reward_mean"] == pytest.approx(evals[when]["reward_mean"], abs=1e-6)
        assert evals_s[when]["sampled_reward_mean"] != evals_s[when]["reward_mean"]  # sampled, not greedy
    plain, with_samples = (load_file(d / "model" / "model.safetensors") for d in (out, tmp_path / "sampled"))
    start = load_file(ckpts[0] / "model.safetensors")
    assert all(torch.allclose(plain[k], with_samples[k], atol=1e-6) for k in plain)
    assert any(not torch.equal(plain[k], start[k]) for k in plain)  # and training did move them (lr 1e-5, 2 steps)

