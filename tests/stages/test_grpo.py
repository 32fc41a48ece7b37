"""Critic-free RL (GRPO, RLOO, REINFORCE++) in the RL loop on tiny in-process models: only the roles a run
needs are built, rewards come from Python functions (each failure mode stops the run naming the function,
the prompt and the response, keeping the last checkpoint), resume is bitwise, two processes finish, and on the
quickstart GRPO with the verifier as its only reward lifts held-out greedy accuracy."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import test_ppo as ppo_tests  # the tiny checkpoints and prompts of the PPO tests (a module: nothing re-collected)
import torch
from helpers import launch_two_processes

from align_kit.errors import ConfigError
from align_kit.ppo.config import PPOConfig
from align_kit.ppo.loop import PPODivergedError, PPOTrainer, left_pad
from align_kit.ppo.modelset import build_models, causal_logits
from align_kit.ppo.rewards import Rewarder, RewardSource, resolve_sources

HERE = Path(__file__).parent
FNS = "rl_reward_fns"  # tests/rl_reward_fns.py (tests/ is on the path, as for helpers): module:function sources


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return ppo_tests.tiny_checkpoints(tmp_path_factory.mktemp("grpo_models"))


@pytest.fixture(scope="module")
def tokenizer(ckpts):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ckpts[0])


def make_cfg(**kw) -> PPOConfig:
    base = dict(advantage_estimator="grpo", num_generations=4, steps=3, batch_size=2, mini_batch_size=4,
                gradient_accumulation_steps=1, ppo_epochs=2, max_new_tokens=6, learning_rate=3e-3, save_steps=1,
                sample_steps=2, kl_coef=0.0, kl_in="loss", kl_estimator="k3", lora_target_modules=["q_proj", "v_proj"],
                save_total_limit=None)
    base.update(kw)
    return PPOConfig(**base)


def rewarder(fn: str = "short", **kw) -> Rewarder:
    return Rewarder(resolve_sources([RewardSource(function=f"{FNS}:{fn}")]), **kw)


def trainer_for(cfg, ckpts, tokenizer, out, reward=None, with_rm: bool = False) -> PPOTrainer:
    models = build_models(cfg, str(ckpts[0]), str(ckpts[1]) if with_rm else None, pad_token_id=tokenizer.pad_token_id)
    prompts = [tokenizer(p).input_ids for p in ppo_tests.PROMPTS]
    rows = [(p, {"letter": p[-1]}) for p in ppo_tests.PROMPTS]
    return PPOTrainer(cfg, models, tokenizer, prompts, out, rewarder=reward or rewarder(), prompt_rows=rows)


def trained(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def logs(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log_history.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"])
def test_critic_free_estimators_build_only_the_policy_and_train_it(ckpts, tokenizer, tmp_path, estimator):
    cfg = make_cfg(advantage_estimator=estimator, steps=2)
    trainer = trainer_for(cfg, ckpts, tokenizer, tmp_path)
    models = trainer.models
    # kl_coef 0 and no reward model: the policy is the only model; no critic optimiser or scheduler either
    assert (models.critic, models.reference, models.reward) == (None, None, None)
    assert (trainer.critic, trainer.opt_critic, trainer.sched_critic) == (None, None, None)
    before = trained(models.policy)
    trainer.train()
    assert any(not torch.equal(p, before[n]) for n, p in trained(models.policy).items())
    log = logs(tmp_path)
    assert "reward/short" in log[0] and "groups_all_equal" in log[0] and "value_loss" not in log[0]
    assert log[-1]["kl"] == 0.0 and "kl_loss" not in log[-1]  # no KL anywhere
    from safetensors.torch import load_file

    assert load_file(str(tmp_path / "checkpoint-2" / "critic.safetensors")) == {}
    assert (tmp_path / "model" / "model.safetensors").exists()


def test_on_policy_run_skips_the_rollout_forward_and_updates_the_same(ckpts, tokenizer, tmp_path, monkeypatch):
    """One epoch, one update, no KL, no critic: the rollout's policy forward is skipped (the update's log-probs,
    detached, are the old ones), and the weights come out as with that forward."""
    cfg = make_cfg(steps=2, ppo_epochs=1, mini_batch_size=4, gradient_accumulation_steps=2)  # 8 rows: one update
    assert not cfg.needs_rollout_logprobs and make_cfg().needs_rollout_logprobs  # 2 epochs need them
    fast = trainer_for(cfg, ckpts, tokenizer, tmp_path / "fast")
    fast.train()
    monkeypatch.setattr(PPOConfig, "needs_rollout_logprobs", property(lambda self: True))
    slow = trainer_for(cfg, ckpts, tokenizer, tmp_path / "slow")
    slow.train()
    a, b = trained(fast.models.policy), trained(slow.models.policy)
    assert all(torch.allclose(a[n], b[n], atol=1e-6) for n in a)
    assert any(not torch.equal(a[n], p) for n, p in trained(ppo_tests.AutoCausalLM(ckpts[0])).items())
    fast_log, slow_log = logs(tmp_path / "fast"), logs(tmp_path / "slow")
    assert [r["approx_kl"] for r in fast_log] == [0.0, 0.0]  # exactly on-policy
    assert [r["score"] for r in fast_log] == [r["score"] for r in slow_log]  # the same samples


def test_kl_loss_term_loads_a_reference_and_logs_it(ckpts, tokenizer, tmp_path):
    trainer = trainer_for(make_cfg(steps=2, kl_coef=0.1), ckpts, tokenizer, tmp_path)
    assert trainer.models.reference is not None and trainer.models.critic is None
    trainer.train()
    log = logs(tmp_path)
    assert log[0]["kl"] == 0.0  # the first rollout's policy is the reference: k3 exactly 0
    assert log[0]["kl_loss"] > 0 and log[-1]["kl"] > 0  # the updates moved it, and the loss term measured that


def test_reward_model_mixed_with_a_function(ckpts, tokenizer, tmp_path):
    reward = Rewarder(resolve_sources([RewardSource(function=f"{FNS}:short", weight=0.5)]), model_weight=2.0)
    trainer = trainer_for(make_cfg(steps=1), ckpts, tokenizer, tmp_path, reward=reward, with_rm=True)
    assert trainer.models.reward is not None and trainer.models.critic is None
    trainer.train()
    (log,) = logs(tmp_path)
    # the logged score is the weighted mix of the two logged sources' means
    assert log["score"] == pytest.approx(2.0 * log["reward/reward_model"] + 0.5 * log["reward/short"], abs=1e-5)


def test_dynamic_sampling_logs_dropped_groups(ckpts, tokenizer, tmp_path):
    # a 0/1 reward the random policy almost never earns: most groups are all 0 and are dropped
    trainer = trainer_for(make_cfg(steps=1, dynamic_sampling=True), ckpts, tokenizer, tmp_path,
                          reward=rewarder("with_reference"))
    trainer.train()
    (log,) = logs(tmp_path)
    assert log["groups_dropped"] == pytest.approx(2 * log["groups_all_equal"])  # 2 groups on this process


def test_lora_mode_critic_free_holds_one_base(ckpts, tokenizer, tmp_path):
    """Policy = adapter on, reference = adapter off: one copy of the SFT weights in memory, trained through."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = make_cfg(memory_mode="lora", steps=2, learning_rate=3e-2, kl_coef=0.05)
    trainer = trainer_for(cfg, ckpts, tokenizer, tmp_path)
    models = trainer.models
    assert isinstance(models.policy, PeftModel)
    assert (models.critic, models.reference, models.reward) == (None, None, None)
    sft = AutoModelForCausalLM.from_pretrained(ckpts[0]).eval()
    lora = sum(p.numel() for p in models.policy.parameters() if p.requires_grad)
    assert sum(p.numel() for p in models.policy.parameters()) == sft.num_parameters() + lora  # one base
    trainer.train()
    ids, mask = left_pad([tokenizer(p).input_ids for p in ppo_tests.PROMPTS[:3]], tokenizer.pad_token_id)
    with torch.no_grad():
        ref = models.reference_forward(models.policy, ids, mask)
        assert torch.allclose(ref, causal_logits(sft, ids, mask), atol=1e-5)  # adapter off = the SFT model
        assert not torch.allclose(causal_logits(models.policy, ids, mask), ref, atol=1e-4)
    assert logs(tmp_path)[-1]["kl"] > 0


@pytest.mark.parametrize("fn, message", [
    ("raises", r"raised RuntimeError: the grader crashed"),
    ("nan", r"returned number nan; expected a finite number"),
    ("string", r"returned string '1.0'; expected a finite number"),
    ("none", r"returned null; expected a finite number"),
    ("hangs", r"ran past reward_timeout 0.5 s"),
])
def test_bad_reward_function_stops_naming_function_prompt_response(ckpts, tokenizer, tmp_path, fn, message):
    trainer = trainer_for(make_cfg(steps=1), ckpts, tokenizer, tmp_path)
    trainer.train()  # checkpoint-1 from a good function
    trainer.cfg = replace(trainer.cfg, steps=2)
    trainer.rewarder = rewarder(fn, timeout=0.5)
    with pytest.raises(PPODivergedError) as info:
        trainer.train()
    text = str(info.value)
    assert f"reward function '{fn}' " in text and "for prompt '" in text and "and response '" in text, text
    assert __import__("re").search(message, text), text
    assert "step 2" in text and "checkpoint-1" in text
    assert not (tmp_path / "checkpoint-2").exists()
    # the prompt named is one of the step's prompts
    assert any(f"for prompt {p!r}" in text for p in ppo_tests.PROMPTS)


def test_fallback_scores_and_counts_bad_responses(ckpts, tokenizer, tmp_path):
    trainer = trainer_for(make_cfg(steps=2), ckpts, tokenizer, tmp_path,
                          reward=rewarder("nan", on_error="fallback", fallback=-1.0))
    trainer.train()
    log = logs(tmp_path)
    assert [r["reward_fallbacks/nan"] for r in log] == [8.0, 16.0]  # 2 prompts x 4 generations per step, running
    assert log[0]["score"] == -1.0


def test_reward_sources_refused_at_recipe_load():
    from align_kit.config import recipe_from_dict

    base = {"stage": "ppo", "model": {"name_or_path": "x"}, "data": {"train": [{"name": "quickstart-tasks"}]},
            "trainer": {"advantage_estimator": "grpo", "num_generations": 2, "batch_size": 2, "mini_batch_size": 4}}
    cases = [
        ({"rewards": [{"function": "no_such_module_xyz:f"}]}, r"'no_such_module_xyz:f' is not importable"),
        ({"rewards": [{"function": f"{FNS}:missing"}]}, r"'rl_reward_fns:missing' is not importable"),
        ({"rewards": [{"function": f"{FNS}:NOT_A_FUNCTION"}]}, r"is number 3; expected a function"),
        ({"rewards": [{"function": "plain"}]}, r"expected module:function"),
        ({"rewards": [{"verifier": "boxd"}]}, r"verifier: 'boxd'; expected one of"),
        ({"rewards": [{"verifier": "regex", "pattern": "("}]}, r"is not a regular expression"),
        ({"rewards": [{"verifier": "exact", "function": f"{FNS}:short"}]}, r"exactly one of"),
        ({}, r"ppo.rewards: expected a reward: ppo.reward_model"),
    ]
    for opts, message in cases:
        with pytest.raises(ConfigError, match=message):
            recipe_from_dict({**base, "ppo": opts})
    with pytest.raises(ConfigError, match=r"batch_size x num_generations = 3 x 2 = 6 rows per process"):
        recipe_from_dict({**base, "ppo": {"rewards": [{"verifier": "exact"}]},
                          "trainer": {**base["trainer"], "batch_size": 3}})
    with pytest.raises(ConfigError, match="gae learns a critic that starts from the reward model"):
        recipe_from_dict({**base, "ppo": {"rewards": [{"verifier": "exact"}]}, "trainer": {}})


def test_resume_is_bitwise_identical(ckpts, tokenizer, tmp_path):
    cfg = make_cfg(steps=4, save_steps=2, kl_coef=0.05, dynamic_sampling=True, clip_range_high=0.28)
    full = trainer_for(cfg, ckpts, tokenizer, tmp_path / "full")
    full.train()
    shutil.copytree(tmp_path / "full" / "checkpoint-2", tmp_path / "cut" / "checkpoint-2")
    resumed = trainer_for(cfg, ckpts, tokenizer, tmp_path / "cut")
    assert resumed.step_done == 2
    resumed.train()
    a, b = trained(full.models.policy), trained(resumed.models.policy)
    assert all(torch.equal(a[n], b[n]) for n in a)

    def untimed(rows):  # timings differ between runs; every other logged number must not
        return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rows]

    assert untimed(logs(tmp_path / "full")[2:]) == untimed(logs(tmp_path / "cut"))


def test_two_processes_run_grpo_to_the_end_and_resume(ckpts, tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2`` on CPU (gloo): GRPO to the end, then a resume from
    checkpoint-2 that ends bitwise equal; both processes hold the same weights."""
    proc = launch_two_processes(str(HERE / "grpo_ddp_script.py"), str(ckpts[0]), str(tmp_path), timeout=240)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"num_processes": 2, "steps": 4, "resumed_at": 2, "policy_moved": True,
                      "resume_identical": True, "ranks_agree": True, "critic": None}
    assert (tmp_path / "full" / "model" / "model.safetensors").read_bytes() == (
        tmp_path / "cut" / "model" / "model.safetensors").read_bytes()


@pytest.mark.xdist_group("quickstart")  # after the pipeline, on its worker: the other one never waits on its lock
def test_grpo_from_the_quickstart_sft_model_lifts_the_verifier(quickstart, tmp_path):
    """recipes/tiny/grpo.yaml from the quickstart's SFT model, the verifier as the only reward (no reward model,
    no critic, no reference): held-out greedy verifier accuracy rises. Over seeds 0-4 of the seeds table
    (benchmarks/RESULTS.md, `python benchmarks/quickstart_seeds.py --rl recipes/tiny/grpo.yaml`) it went
    0.742 [0.708, 0.771] -> 0.979 [0.833, 0.983], a lift of +0.092 to +0.271 (seed 0, this test: 0.771 -> 0.983).
    The margin below (0.05, 12 of 240 prompts) is under the smallest lift."""
    from align_kit.config import load_recipe
    from align_kit.stages import run_stage

    recipe = load_recipe(HERE.parents[1] / "recipes" / "tiny" / "grpo.yaml",
                         [f"model.name_or_path={quickstart / 'sft'}", f"output_dir={tmp_path}"])
    assert recipe.options.reward_model is None and recipe.trainer_config().advantage_estimator == "grpo"
    out = run_stage(recipe)
    evals = json.loads((out / "eval.json").read_text())
    before, after = evals["before"]["verifier_accuracy"], evals["after"]["verifier_accuracy"]
    assert after >= before + 0.05, (before, after)  # lift over seeds: [+0.092, +0.271]
    assert "reward_mean" not in evals["after"]  # no reward model to score with
    log = logs(out)
    assert len(log) == 12 and all("reward/verify" in row for row in log)  # 120 steps, logged every 10
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-120", "checkpoint-80"]


def test_data_inspect_shows_the_templated_prompt_and_its_reference(capsys, tmp_path, shared, monkeypatch):
    """An RL recipe's row: the prompt as the policy sees it (chat template + generation prompt) and the
    reference fields its reward functions receive: the quickstart's conversations, and FLAN CoT prompt rows."""
    import yaml

    from align_kit.cli import main

    root = HERE.parents[1]
    assert main(["data", "inspect", str(root / "recipes/tiny/grpo.yaml"), "model.name_or_path=builtin:tiny-llama",
                 "--row", "2"]) == 0
    out = capsys.readouterr().out
    prompt = json.loads((root / "align_kit/quickstart/sft_train.jsonl").read_text().splitlines()[1])["messages"]
    assert f"user<|end_header_id|>\n\n{prompt[0]['content']}<|eot_id|>" in out
    assert out.rstrip().endswith(f'reference: {{"answer": "{prompt[1]["content"]}"}}')
    assert "<|start_header_id|>assistant<|end_header_id|>\n\n\nreference:" in out  # generation prompt, then nothing
    recipe = tmp_path / "flan.yaml"
    recipe.write_text(yaml.safe_dump({
        "stage": "ppo", "model": {"name_or_path": "builtin:tiny-llama"},
        "data": {"train": [{"name": "flan_cot", "split": "creak", "max_rows": 3}], "eval_fraction": 0},
        "ppo": {"prompts_from": "prompts", "rewards": [{"verifier": "answer_is"}]},
        "trainer": {"advantage_estimator": "grpo", "num_generations": 2, "batch_size": 2, "mini_batch_size": 4}}))
    monkeypatch.setenv("ALIGN_KIT_SHARED", str(shared))
    assert main(["data", "inspect", str(recipe), "--row", "1"]) == 0
    out = capsys.readouterr().out
    assert "Is the claim above correct" in out and '"answer": "' in out and '"rationale": ' in out


def test_grpo_recipe_under_accelerate_launch_with_two_processes(ckpts, tmp_path):
    """The stage itself under ``accelerate launch --multi_gpu --num_processes 2``: the quickstart verifier as the only
    reward, each process its own prompts and whole groups, the before/after evaluation on the main process."""
    import yaml

    recipe = tmp_path / "grpo.yaml"
    recipe.write_text(yaml.safe_dump({
        "stage": "ppo", "output_dir": str(tmp_path / "out"), "seed": 3, "model": {"name_or_path": str(ckpts[0])},
        "data": {"train": [{"name": "quickstart-tasks", "split": "train", "max_rows": 16}],
                 "eval": [{"name": "quickstart-tasks", "split": "test", "max_rows": 4}]},
        "ppo": {"rewards": [{"function": "align_kit.quickstart.tasks:verify"}],
                "verifier": "align_kit.quickstart.tasks:verify", "eval_max_new_tokens": 4},
        "trainer": {"advantage_estimator": "rloo", "num_generations": 4, "batch_size": 1, "mini_batch_size": 2,
                    "gradient_accumulation_steps": 2, "steps": 2, "max_new_tokens": 4, "save_steps": 2}}))
    proc = launch_two_processes("-m", "align_kit", "train", str(recipe), timeout=240)
    assert "critic: none; reward model: none (reward functions)" in proc.stderr
    out = tmp_path / "out"
    assert (out / "model" / "model.safetensors").exists() and (out / "checkpoint-2" / "rng_state_1.pt").exists()
    evals = json.loads((out / "eval.json").read_text())
    assert evals["before"]["prompts"] == evals["after"]["prompts"] == 4
    assert [row["step"] for row in logs(out)] == [1, 2] and "reward/verify" in logs(out)[0]
