"""GRPO on the quickstart: align_kit's RL loop vs TRL 1.16's GRPOTrainer, same SFT model, prompts, reward function,
group size, steps and learning rate, arms interleaved in rounds, each in its own process.

    python benchmarks/bench_rl.py --sft runs/quickstart/sft [--steps 120] [--rounds 2] [--seed 42]
    python benchmarks/bench_rl.py --sft runs/quickstart/sft --seeds 42 1 2 --arms align_kit    # the seeds table
    python benchmarks/bench_rl.py --sft runs/quickstart/sft --seeds 42 1 2 --arms align_kit align_kit_plain trl
        # align_kit_plain: share_prompts off (each row computes its own copy of the prompt), for the speed-up's source

Both arms: 4 prompts x 8 generations = 32 completions per optimiser step, 10 new tokens at temperature 1.0,
learning rate 1e-4 (constant), no KL (TRL beta 0; align_kit kl_coef 0), one update per generation batch,
the quickstart verifier (``align_kit.quickstart.tasks:verify``) as the only reward, CPU fp32
(TRL: ``use_cpu=True, bf16=False``). Reported per arm: episodes/s over the training loop, split into
generation / scoring / update seconds, peak RSS, and greedy verifier accuracy on the held-out prompts before
and after (the same evaluation code for both: align_kit's ``evaluate_policy``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, emit, interleaved, run_worker  # noqa: E402

VERIFY = "align_kit.quickstart.tasks:verify"


def quickstart_prompts(split: str, limit: int | None = None) -> list[list[dict]]:
    rows = [json.loads(line) for line in (ROOT / "align_kit/quickstart" / f"sft_{split}.jsonl").read_text().splitlines()]
    return [r["messages"][:-1] for r in rows[:limit]]


def evaluate(model_dir_or_model, tokenizer, prompts, stops) -> float:
    """Greedy verifier accuracy on ``prompts`` with align_kit's evaluation (no reward model)."""
    from align_kit.generation import load_callable
    from align_kit.ppo.evaluate import evaluate_policy
    from align_kit.ppo.modelset import PPOModels

    ids = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False)
           for p in prompts]
    ids = [list(x["input_ids"]) if isinstance(x, dict) else list(x) for x in ids]
    texts = [p[-1]["content"] for p in prompts]
    models = PPOModels(model_dir_or_model, None, None, None)
    out = evaluate_policy(models, model_dir_or_model, None, tokenizer, ids, texts, stops, 12, load_callable(VERIFY))
    return out["verifier_accuracy"]


def arm_align_kit(args) -> dict:
    import torch
    from transformers import AutoTokenizer

    from align_kit.families import get_template, stop_token_ids
    from align_kit.ppo.config import PPOConfig
    from align_kit.ppo.loop import PPOTrainer
    from align_kit.ppo.modelset import build_models
    from align_kit.ppo.rewards import Rewarder, RewardSource, resolve_sources

    torch.set_num_threads(args.threads)
    sft = Path(args.sft) / "model" if (Path(args.sft) / "model").exists() else Path(args.sft)
    tok = AutoTokenizer.from_pretrained(sft)
    stops = stop_token_ids(tok, get_template("llama3"))
    train = quickstart_prompts("train")
    ids = [list(tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
           for p in train]
    cfg = PPOConfig(advantage_estimator="grpo", num_generations=args.gens, batch_size=args.prompts,
                    mini_batch_size=args.prompts * args.gens, ppo_epochs=1, steps=args.steps,
                    learning_rate=args.lr, max_new_tokens=args.max_new, temperature=1.0, kl_coef=0.0, kl_in="loss",
                    loss_aggregation="token_mean", missing_eos_penalty=0.0, logging_steps=1,
                    sample_steps=10**9, save_steps=10**9, save_total_limit=1, seed=args.seed,
                    share_prompts=args.worker != "align_kit_plain")
    models = build_models(cfg, str(sft), None, pad_token_id=tok.pad_token_id)
    eval_prompts = quickstart_prompts("test", args.eval_prompts)
    before = evaluate(models.policy, tok, eval_prompts, stops)
    out = Path(tempfile.mkdtemp(prefix="bench-rl-"))
    trainer = PPOTrainer(cfg, models, tok, ids, out, stop_token_ids=stops,
                         rewarder=Rewarder(resolve_sources([RewardSource(function=VERIFY)])),
                         prompt_rows=[(p[-1]["content"], {}) for p in train])
    start = time.perf_counter()
    while trainer.step_done < cfg.steps:  # the loop of trainer.train() without checkpoints and the final save
        metrics = trainer.step()
        trainer._log_metrics(metrics)
    loop_s = time.perf_counter() - start
    log = [json.loads(line) for line in (out / "log_history.jsonl").read_text().splitlines()]
    after = evaluate(models.policy, tok, eval_prompts, stops)
    split = {k: round(sum(r[f"time_{k}"] for r in log), 2) for k in ("generate", "score", "update")}
    return {"episodes": cfg.steps * cfg.rows_per_process, "loop_s": round(loop_s, 2), **split,
            "verifier_before": before, "verifier_after": after}


def arm_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from align_kit.families import get_template, stop_token_ids
    from align_kit.generation import load_callable

    torch.set_num_threads(args.threads)
    sft = Path(args.sft) / "model" if (Path(args.sft) / "model").exists() else Path(args.sft)
    tok = AutoTokenizer.from_pretrained(sft)
    stops = stop_token_ids(tok, get_template("llama3"))
    verify = load_callable(VERIFY)
    timers = {"score": 0.0}

    def verifier_reward(prompts, completions, **kwargs):
        clock = time.perf_counter()
        out = [float(verify(p[-1]["content"], c[0]["content"])) for p, c in zip(prompts, completions)]
        timers["score"] += time.perf_counter() - clock
        return out

    model = AutoModelForCausalLM.from_pretrained(sft)
    model.generation_config.eos_token_id = stops
    eval_prompts = quickstart_prompts("test", args.eval_prompts)
    before = evaluate(model, tok, eval_prompts, stops)
    config = GRPOConfig(output_dir=tempfile.mkdtemp(prefix="bench-rl-trl-"), use_cpu=True, bf16=False,
                        per_device_train_batch_size=args.prompts * args.gens, num_generations=args.gens,
                        max_completion_length=args.max_new, learning_rate=args.lr, lr_scheduler_type="constant",
                        beta=0.0, max_steps=args.steps, temperature=1.0, logging_steps=10, save_strategy="no",
                        report_to=[], seed=args.seed, dataloader_num_workers=0)
    trainer = GRPOTrainer(model=model, reward_funcs=[verifier_reward], args=config, processing_class=tok,
                          train_dataset=Dataset.from_list([{"prompt": p} for p in quickstart_prompts("train")]))
    gen_clock = {"s": 0.0}
    generate = trainer._generate

    def timed_generate(*a, **kw):  # generation (and its tokenising) inside TRL's rollout
        clock = time.perf_counter()
        try:
            return generate(*a, **kw)
        finally:
            gen_clock["s"] += time.perf_counter() - clock

    trainer._generate = timed_generate
    start = time.perf_counter()
    trainer.train()
    loop_s = time.perf_counter() - start
    after = evaluate(trainer.model, tok, eval_prompts, stops)
    return {"episodes": args.steps * args.prompts * args.gens, "loop_s": round(loop_s, 2),
            "generate": round(gen_clock["s"], 2), "score": round(timers["score"], 2),
            "update": round(loop_s - gen_clock["s"] - timers["score"], 2),  # the rest: log-probs, loss, step
            "verifier_before": before, "verifier_after": after}


# align_kit_plain: align_kit with share_prompts off (every row runs its own copy of the prompt), to show what the
# shared prompt forward gives under the same load; not run unless asked for (--arms align_kit align_kit_plain trl)
ARMS = {"align_kit": arm_align_kit, "align_kit_plain": arm_align_kit, "trl": arm_trl}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft", required=True, help="the quickstart SFT stage's output (runs/quickstart/sft)")
    parser.add_argument("--worker", choices=list(ARMS), help=argparse.SUPPRESS)
    parser.add_argument("--arms", nargs="+", default=["align_kit", "trl"], choices=list(ARMS))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--seed", type=int, default=42, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--gens", type=int, default=8)
    parser.add_argument("--max-new", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--eval-prompts", type=int, default=240)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.worker:
        record = ARMS[args.worker](args)
        emit({"arm": args.worker, "seed": args.seed, **record,
              "episodes_per_s": round(record["episodes"] / record["loop_s"], 1)})
        return
    shared = ["--sft", args.sft, "--steps", str(args.steps), "--prompts", str(args.prompts), "--gens", str(args.gens),
              "--max-new", str(args.max_new), "--lr", str(args.lr), "--eval-prompts", str(args.eval_prompts),
              "--threads", str(args.threads)]
    records = []
    for i, seed in enumerate(args.seeds):
        turn = i % len(args.arms)  # each seed starts with the next arm, so no arm always runs first
        for rnd, arm in interleaved(args.arms[turn:] + args.arms[:turn], args.rounds):
            rec = run_worker(Path(__file__), ["--worker", arm, "--seed", str(seed), *shared], timeout=3600)
            rec["round"] = rnd
            print(json.dumps(rec), flush=True)
            records.append(rec)
    print(f"\nGRPO, quickstart SFT model, {args.prompts} prompts x {args.gens} generations, {args.steps} steps, "
          f"lr {args.lr}, {args.max_new} new tokens, {args.threads} thread(s); seeds {args.seeds}, rounds {args.rounds}")
    loads = [r["loadavg_1m"] for r in records]
    print(f"1-minute load average during the arms: {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} CPUs")
    head = (f"{'arm':<15} {'episodes/s':>18} {'generate s':>10} {'score s':>8} {'update s':>9} {'peak RSS MiB':>12} "
            f"{'verifier before -> after':>26}")
    print(head + "\n" + "-" * len(head))
    for arm in args.arms:
        rs = [r for r in records if r["arm"] == arm]
        eps = [r["episodes_per_s"] for r in rs]
        after = [r["verifier_after"] for r in rs]
        print(f"{arm:<15} {statistics.median(eps):>7.1f} [{min(eps):.1f}, {max(eps):.1f}]"
              f" {statistics.median(r['generate'] for r in rs):>10.1f} {statistics.median(r['score'] for r in rs):>8.2f}"
              f" {statistics.median(r['update'] for r in rs):>9.1f} {statistics.median(r['peak_rss_mib'] for r in rs):>12.0f}"
              f"   {rs[0]['verifier_before']:.3f} -> {statistics.median(after):.3f} [{min(after):.3f}, {max(after):.3f}]")

    if "trl" in args.arms:  # each align_kit arm over TRL in the same seed and round (adjacent in time)
        for arm in [a for a in args.arms if a != "trl"]:
            pairs = [(r, t) for r in records for t in records if r["arm"] == arm and t["arm"] == "trl"
                     and (r["seed"], r["round"]) == (t["seed"], t["round"])]
            ratios = [r["episodes_per_s"] / t["episodes_per_s"] for r, t in pairs]
            print(f"{arm} / trl episodes/s: median {statistics.median(ratios):.2f}x [{min(ratios):.2f}, "
                  f"{max(ratios):.2f}] over {len(ratios)} pairs: " + ", ".join(f"{x:.2f}" for x in ratios))


if __name__ == "__main__":
    main()
