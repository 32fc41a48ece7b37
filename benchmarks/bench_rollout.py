"""RL episodes/s with the hf and the vLLM rollout engine, in one run, on a configuration shaped like real RL:
128-token responses from a Llama whose head size (64) vLLM's CPU attention runs.

    python benchmarks/bench_rollout.py [--steps 3] [--max-new-tokens 128] [--prompts 8] [--generations 4]
                                       [--engines hf vllm] [--evaluation N]

Model: 2 layers, hidden 256, 4 heads of 64, vocabulary 4096, random (seeded): with 4096 tokens the EOS is rare,
so nearly every response runs the full 128 tokens, the length the comparison is about. GRPO, 8 prompts x 4
generations = 32 episodes per step, one update per step, a regex verifier as the reward. Each engine runs one
warm-up step first (it holds the vLLM engine's start, reported separately), then ``--steps`` timed steps.
Reported per engine: episodes/s over the timed steps, the generation share of a step, the median weight-sync
seconds (vLLM), the mean response length and the engine/policy log-prob gap.

``--evaluation N`` also times the RL stage's own evaluation (``ppo.evaluate.evaluate_policy``, greedy) of the same
model on N held-out prompts with each engine: transformers' ``generate`` in batches of 32, and the vLLM server
(its start reported apart), and checks the two give the same answer lengths and ended share.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def build_policy(folder: Path, hidden: int = 256, layers: int = 2, vocab: int = 4096):
    from transformers import LlamaConfig, LlamaForCausalLM

    from align_kit.quickstart.model import build_tokenizer

    tok = build_tokenizer()
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
                      num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, max_position_embeddings=1024,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    import torch

    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return tok


def run_engine(engine: str, folder: Path, tok, args) -> dict:
    from align_kit.ppo.config import PPOConfig
    from align_kit.ppo.loop import PPOTrainer
    from align_kit.ppo.modelset import build_models
    from align_kit.ppo.rewards import Rewarder, RewardSource, resolve_sources

    episodes = args.prompts * args.generations
    cfg = PPOConfig(advantage_estimator="grpo", num_generations=args.generations, batch_size=args.prompts,
                    mini_batch_size=episodes, ppo_epochs=1,
                    steps=args.steps + 1, max_new_tokens=args.max_new_tokens, kl_coef=0.0, learning_rate=1e-5,
                    save_steps=10_000, sample_steps=10_000, resume=False, seed=0,
                    rollout={"engine": engine, "kv_cache_gib": 0.25})
    texts = [f"Question {i}: spell the word number {i} backwards." for i in range(64)]
    prompts = [[tok.bos_token_id] + tok(t, add_special_tokens=False).input_ids for t in texts]
    rewarder = Rewarder(resolve_sources([RewardSource(verifier="regex", pattern=".*a.*")]))
    out = Path(tempfile.mkdtemp(prefix=f"bench_rollout_{engine}_"))
    trainer = PPOTrainer(cfg, build_models(cfg, str(folder), None), tok, prompts, out, rewarder=rewarder,
                         prompt_rows=[(t, {}) for t in texts])
    rows = []
    try:
        for _ in range(cfg.steps):
            clock = time.perf_counter()
            metrics = trainer.step()
            metrics["wall"] = time.perf_counter() - clock
            rows.append(metrics)
    finally:
        trainer.engine.close()
    warm, timed = rows[0], rows[1:]
    wall = sum(r["wall"] for r in timed)
    result = {"engine": engine, "episodes_per_step": cfg.rows_per_process, "episodes_per_s": round(cfg.rows_per_process * len(timed) / wall, 2),
              "step_s": round(wall / len(timed), 2),
              "generation_share": round(sum(r["time_generate"] for r in timed) / wall, 3),
              "response_length": round(statistics.mean(r["response_length"] for r in timed), 1)}
    if engine == "vllm":
        result.update(engine_start_s=round(warm["time_engine_start"], 1),
                      sync_s=round(statistics.median(r["time_sync"] for r in timed), 3),
                      sync_share=round(sum(r["time_sync"] for r in timed) / wall, 3),
                      logprob_gap=float(f"{max(r['engine_logprob_diff'] for r in timed):.2e}"))
    return result


def run_evaluation(folder: Path, tok, args) -> dict:
    """Seconds of one greedy evaluation of ``args.evaluation`` prompts, hf against a started vLLM engine."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from align_kit.engines.vllm_engine import VLLMEngine
    from align_kit.ppo.evaluate import evaluate_policy

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    texts = [f"Held-out question {i}: spell the word number {i} backwards." for i in range(args.evaluation)]
    prompts = [[tok.bos_token_id] + tok(t, add_special_tokens=False).input_ids for t in texts]
    models = SimpleNamespace(has_reward_model=False)
    stops = [tok.eos_token_id]
    clock = time.perf_counter()
    hf = evaluate_policy(models, model, None, tok, prompts, texts, stops, args.max_new_tokens)
    hf_s = time.perf_counter() - clock
    clock = time.perf_counter()
    with VLLMEngine(model, max(map(len, prompts)) + args.max_new_tokens, seed=0, kv_cache_gib=0.25) as engine:
        start_s = time.perf_counter() - clock
        seconds = []
        for _ in range(2):  # a fresh engine's first call (an RL run's "before"), then a warm one ("after")
            clock = time.perf_counter()
            vllm = evaluate_policy(models, model, None, tok, prompts, texts, stops, args.max_new_tokens,
                                   engine=engine)
            seconds.append(time.perf_counter() - clock)
    same = all(hf[k] == vllm[k] for k in ("ended", "response_length", "prompts"))
    return {"evaluation_prompts": len(prompts), "response_length": round(hf["response_length"], 1),
            "hf_s": round(hf_s, 2), "vllm_first_s": round(seconds[0], 2), "vllm_warm_s": round(seconds[1], 2),
            "vllm_engine_start_s": round(start_s, 1), "speedup_warm": round(hf_s / seconds[1], 2),
            "speedup_first_with_start": round(hf_s / (seconds[0] + start_s), 2), "same_lengths_and_ended": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--hidden", type=int, default=256, help="model width (heads of 64)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--generations", type=int, default=4, help="responses per prompt")
    parser.add_argument("--engines", nargs="*", default=["hf", "vllm"], help="none: only --evaluation")
    parser.add_argument("--evaluation", type=int, default=0, metavar="N",
                        help="also time the RL stage's greedy evaluation of N prompts with each engine")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    folder = Path(tempfile.mkdtemp(prefix="bench_rollout_model_"))
    tok = build_policy(folder, args.hidden, args.layers, args.vocab)
    results = [run_engine(engine, folder, tok, args) for engine in args.engines]
    for r in results:
        print(json.dumps(r))
    if len(results) == 2:
        print(f"vllm / hf episodes/s: {results[1]['episodes_per_s'] / results[0]['episodes_per_s']:.1f}x")
    if args.evaluation:
        evaluation = run_evaluation(folder, tok, args)
        print(json.dumps(evaluation))
        print(f"evaluation, vllm / hf: {evaluation['speedup_warm']:.2f}x warm "
              f"({evaluation['speedup_first_with_start']:.2f}x for a first call with the engine's start)")


if __name__ == "__main__":  # the vLLM engine's server spawns processes
    main()
