"""PPO throughput and memory: LoRA mode against separate models, same model and batch configuration; and GRPO in
LoRA mode (no critic, no reward model: one copy of the base) beside them.

    python benchmarks/bench_ppo.py                 # both arms, each in its own process
    python benchmarks/bench_ppo.py --hidden 512 --layers 8 --steps 4

Each arm runs in a fresh Python process so its peak resident memory (``ru_maxrss``) is its own. The
table shows episodes per second and the time split into generation, scoring (log-probs of policy and
reference, values, reward) and update; the parameter bytes held by each layout; and peak memory.
One JSON line per arm follows the table. Models are random Llamas built in process (no download).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build_checkpoints(root: Path, args) -> tuple[Path, Path, object]:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
        PreTrainedTokenizerFast,
    )

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i + 3 for i in range(args.vocab - 3)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", bos_token="<s>")
    cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3,
                      num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                      num_key_value_heads=max(1, args.hidden // 64), pad_token_id=0, bos_token_id=1, eos_token_id=2,
                      tie_word_embeddings=False, max_position_embeddings=512)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(root / "sft")
    cfg.num_labels = 1
    LlamaForSequenceClassification(cfg).save_pretrained(root / "rm")
    return root / "sft", root / "rm", tok


def param_bytes(models) -> int:
    """Bytes of distinct parameter and buffer storage held by the four roles together."""
    seen, total = set(), 0
    for model in (models.policy, models.critic, models.reference, models.reward):
        if model is None:
            continue
        for t in [*model.parameters(), *model.buffers()]:
            key = t.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += t.untyped_storage().nbytes()
    return total


def short(prompt: str, response: str) -> float:
    """The GRPO arm's reward function: shorter responses score higher (a program, like a verifier)."""
    return -len(response) / 100


def run_arm(args) -> dict:
    import torch

    from align_kit.ppo.config import PPOConfig
    from align_kit.ppo.loop import PPOTrainer
    from align_kit.ppo.modelset import build_models

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        sft, rm, tok = build_checkpoints(Path(tmp), args)
        grpo = args.arm == "grpo_lora"  # the same episodes per step: batch / 4 prompts x 4 responses each
        cfg = PPOConfig(memory_mode="lora" if grpo else args.arm, steps=args.steps,
                        batch_size=args.batch // 4 if grpo else args.batch, mini_batch_size=args.mini_batch,
                        ppo_epochs=2, max_new_tokens=args.new_tokens, learning_rate=1e-5, critic_learning_rate=1e-5,
                        save_steps=10_000, sample_steps=10_000, resume=False, lora_r=16, lora_alpha=32,
                        advantage_estimator="grpo" if grpo else "gae", num_generations=4 if grpo else 1)
        models = build_models(cfg, str(sft), None if grpo else str(rm))
        weights = param_bytes(models)
        prompts = [[1] + [3 + (7 * i + j) % (args.vocab - 3) for j in range(args.prompt_len)] for i in range(64)]
        reward = {}
        if grpo:
            from align_kit.ppo.rewards import Rewarder, RewardSource, resolve_sources

            reward = {"rewarder": Rewarder(resolve_sources([RewardSource(function="bench_ppo:short")])),
                      "prompt_rows": [("", {})] * len(prompts)}
        trainer = PPOTrainer(cfg, models, tok, prompts, Path(tmp) / "out", **reward)
        totals = {"time_generate": 0.0, "time_score": 0.0, "time_update": 0.0}
        wall = time.perf_counter()
        for step in range(cfg.steps):
            metrics = trainer.step()
            if step == 0:
                continue  # warm-up: first-call allocations and kernel selection
            for key in totals:
                totals[key] += metrics[key]
        wall = time.perf_counter() - wall
    episodes = (cfg.steps - 1) * cfg.rows_per_process
    busy = sum(totals.values())
    return {"arm": args.arm, "hidden": args.hidden, "layers": args.layers, "vocab": args.vocab, "batch": args.batch,
            "new_tokens": args.new_tokens, "timed_steps": cfg.steps - 1, "episodes_per_s": round(episodes / busy, 3),
            "generate_s": round(totals["time_generate"], 3), "score_s": round(totals["time_score"], 3),
            "update_s": round(totals["time_update"], 3), "wall_s": round(wall, 2),
            "param_mib": round(weights / 2**20, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", choices=["separate", "lora", "grpo_lora"], help="run one arm in this process (internal)")
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--batch", type=int, default=8, help="prompts per step")
    parser.add_argument("--mini-batch", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="PPO steps per arm; the first is a warm-up")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(run_arm(args)))
        return
    rows = []
    forwarded = [a for a in sys.argv[1:]]
    for arm in ("separate", "lora", "grpo_lora"):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
        out = subprocess.run([sys.executable, __file__, "--arm", arm, *forwarded], env=env, capture_output=True,
                             text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"\nPPO, random Llama hidden {args.hidden} x {args.layers} layers, vocab {args.vocab}; {args.batch} prompts "
          f"x {args.new_tokens} new tokens per step, {args.steps - 1} timed steps, {args.threads} thread(s)")
    head = f"{'arm':<9} {'episodes/s':>10} {'generate s':>10} {'score s':>8} {'update s':>8} {'params MiB':>10} " \
           f"{'peak RSS MiB':>12}"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['arm']:<9} {r['episodes_per_s']:>10} {r['generate_s']:>10} {r['score_s']:>8} {r['update_s']:>8} "
              f"{r['param_mib']:>10} {r['peak_rss_mib']:>12}")
    sep, lora, grpo = rows
    print(f"lora / separate: params {lora['param_mib'] / sep['param_mib']:.2f}x, peak RSS "
          f"{lora['peak_rss_mib'] / sep['peak_rss_mib']:.2f}x, episodes/s {lora['episodes_per_s'] / sep['episodes_per_s']:.2f}x")
    print(f"grpo_lora / lora: params {grpo['param_mib'] / lora['param_mib']:.2f}x, peak RSS "
          f"{grpo['peak_rss_mib'] / lora['peak_rss_mib']:.2f}x (one base instead of two, no critic)")
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
