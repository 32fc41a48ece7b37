"""GRPO under ``accelerate launch`` for test_grpo.py: ``python grpo_ddp_script.py SFT_DIR OUT_DIR``.

Runs 4 GRPO steps (a reward function, no critic, no reward model) with checkpoints at 2 and 4, then resumes a
copy cut back to checkpoint-2 (as after a kill) and prints one JSON line (main process): processes, steps, the
resume step, whether the policy moved, whether the resumed run ends bitwise equal to the uninterrupted one,
whether the ranks hold identical weights, and the critic (None).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/rl_reward_fns.py

from align_kit.ppo.config import PPOConfig  # noqa: E402
from align_kit.ppo.loop import PPOTrainer  # noqa: E402
from align_kit.ppo.modelset import build_models  # noqa: E402
from align_kit.ppo.rewards import Rewarder, RewardSource, resolve_sources  # noqa: E402

PROMPTS = ["Add 3 and 4.", "Reverse: abc", "Uppercase: xyz", "Sort the letters: cab", "Add 1 and 9.", "Reverse: qwe"]


def run(cfg, sft, out, acc, tok):
    models = build_models(cfg, sft, None, pad_token_id=tok.pad_token_id)
    start = torch.cat([p.detach().flatten() for p in models.policy.parameters()]).clone()
    reward = Rewarder(resolve_sources([RewardSource(function="rl_reward_fns:short")]))
    trainer = PPOTrainer(cfg, models, tok, [tok(p).input_ids for p in PROMPTS], out, accelerator=acc,
                         rewarder=reward, prompt_rows=[(p, {}) for p in PROMPTS])
    resumed_at = trainer.step_done
    trainer.train()
    flat = torch.cat([p.detach().flatten() for p in acc.unwrap_model(trainer.policy).parameters()])
    return flat, start, resumed_at, trainer.step_done, trainer.critic


def main(sft: str, out: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    acc = Accelerator(cpu=True)
    tok = AutoTokenizer.from_pretrained(sft)
    # per process: 1 prompt x 4 generations = 4 rows, minibatch 2, accumulation 2: one optimiser step an epoch
    cfg = PPOConfig(advantage_estimator="grpo", num_generations=4, steps=4, save_steps=2, batch_size=1,
                    mini_batch_size=2, gradient_accumulation_steps=2, ppo_epochs=2, max_new_tokens=5,
                    learning_rate=3e-3, kl_coef=0.05, kl_in="loss", kl_estimator="k3", sample_steps=4,
                    save_total_limit=None)
    full, start, _, steps, critic = run(cfg, sft, Path(out) / "full", acc, tok)
    if acc.is_main_process:
        shutil.copytree(Path(out) / "full" / "checkpoint-2", Path(out) / "cut" / "checkpoint-2")
    acc.wait_for_everyone()
    resumed, _, resumed_at, _, _ = run(cfg, sft, Path(out) / "cut", acc, tok)
    gathered = acc.gather(torch.stack([full, resumed]))  # (2 processes x 2 runs, n)
    if acc.is_main_process:
        print(json.dumps({"num_processes": acc.num_processes, "steps": steps, "resumed_at": resumed_at,
                          "policy_moved": not torch.equal(full, start),
                          "resume_identical": bool(torch.equal(gathered[0], gathered[1])),
                          "ranks_agree": bool(torch.equal(gathered[0], gathered[2]) and torch.equal(gathered[1], gathered[3])),
                          "critic": critic}))
    acc.end_training()


if __name__ == "__main__":
    main(*sys.argv[1:3])
