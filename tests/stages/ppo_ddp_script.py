"""PPO under ``accelerate launch`` for test_ppo.py: ``python ppo_ddp_script.py SFT_DIR RM_DIR OUT_DIR``.

Runs 4 steps with checkpoints at 2 and 4, then resumes a copy cut back to checkpoint-2 (as after a
kill) and prints one JSON line (main process): processes, steps, the resume step, whether the policy
moved, whether the resumed run ends bitwise equal to the uninterrupted one, and whether the ranks
hold identical weights (DDP keeps them in lockstep).
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

from align_kit.data.tokenize import Tokenized
from align_kit.ppo.config import PPOConfig
from align_kit.ppo.loop import PPOTrainer
from align_kit.ppo.modelset import build_models

PROMPTS = ["Add 3 and 4.", "Reverse: abc", "Uppercase: xyz", "Sort the letters: cab", "Add 1 and 9.", "Reverse: qwe"]


def run(cfg, sft, rm, out, acc, tok):
    models = build_models(cfg, sft, rm, pad_token_id=tok.pad_token_id)
    start = torch.cat([p.detach().flatten() for p in models.policy.parameters()]).clone()
    answer = tok("ok", add_special_tokens=False).input_ids
    demos = [Tokenized(tok(p).input_ids + answer, [0] * len(tok(p).input_ids) + [1] * len(answer)) for p in PROMPTS]
    trainer = PPOTrainer(cfg, models, tok, [tok(p).input_ids for p in PROMPTS], out, accelerator=acc,
                         demonstrations=demos)
    resumed_at = trainer.step_done
    trainer.train()
    flat = torch.cat([p.detach().flatten() for p in acc.unwrap_model(trainer.policy).parameters()])
    return flat, start, resumed_at, trainer.step_done


def main(sft: str, rm: str, out: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    acc = Accelerator(cpu=True)
    tok = AutoTokenizer.from_pretrained(sft)
    cfg = PPOConfig(steps=4, save_steps=2, batch_size=2, mini_batch_size=1, gradient_accumulation_steps=2,
                    ppo_epochs=2, max_new_tokens=5, learning_rate=3e-3, critic_learning_rate=3e-3,
                    sample_steps=4, save_total_limit=None, ptx_coef=0.5,  # ptx on: its draws must resume too
                    target_kl=1e-9)  # the second epoch's update is dropped on both processes together
    full, start, _, steps = run(cfg, sft, rm, Path(out) / "full", acc, tok)
    # a run killed while writing checkpoint-4: only checkpoint-2 and a half-written .tmp remain
    if acc.is_main_process:
        shutil.copytree(Path(out) / "full" / "checkpoint-2", Path(out) / "cut" / "checkpoint-2")
        (Path(out) / "cut" / "checkpoint-4.tmp").mkdir()
    acc.wait_for_everyone()
    resumed, _, resumed_at, _ = run(cfg, sft, rm, Path(out) / "cut", acc, tok)
    gathered = acc.gather(torch.stack([full, resumed]))  # (2 processes x 2 runs, n)
    if acc.is_main_process:
        print(json.dumps({"num_processes": acc.num_processes, "steps": steps, "resumed_at": resumed_at,
                          "policy_moved": not torch.equal(full, start),
                          "resume_identical": bool(torch.equal(gathered[0], gathered[1])),
                          "ranks_agree": bool(torch.equal(gathered[0], gathered[2]) and torch.equal(gathered[1], gathered[3]))}))
    acc.end_training()


if __name__ == "__main__":
    main(*sys.argv[1:4])
