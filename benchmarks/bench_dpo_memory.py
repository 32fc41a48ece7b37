"""Peak memory of LoRA DPO: reference = the adapter-disabled policy vs a separate frozen reference copy
(and reference log-probs precomputed to disk), each arm in its own process.

    python benchmarks/bench_dpo_memory.py [--hidden 512 --layers 8 --steps 3]

The parent saves one randomly initialised Llama (the "SFT checkpoint", ~25M parameters by default so the
copy is visible above the Python/torch baseline) and starts one child per arm. A child builds the DPO trainer
the way ``align-kit train`` does (``align_kit.stages.dpo.build_trainer``), trains a few steps on quickstart
pairs and reports ``ru_maxrss`` (peak resident memory) before loading models and at the end. On a GPU the
same comparison is ``torch.cuda.max_memory_allocated``, reported too when CUDA is present.
Prints a table and one JSON line per arm.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"adapter": ("adapter", True), "copy": ("copy", True), "precomputed": ("precomputed", True)}


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def save_checkpoint(folder: Path, hidden: int, layers: int) -> int:
    from align_kit.quickstart.model import build_model, build_tokenizer

    tok = build_tokenizer()
    model = build_model(tok, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
                        num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=False)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def child(arm: str, model_dir: str, out: str, steps: int) -> dict:
    import torch
    from trl import DPOTrainer

    from align_kit.config import recipe_from_dict
    from align_kit.models import load_tokenizer
    from align_kit.stages import dpo

    mode, lora = ARMS[arm]
    raw = {"stage": "dpo", "output_dir": out, "seed": 0, "model": {"name_or_path": model_dir},
           "data": {"train": [{"name": "quickstart-preferences", "split": "train", "max_rows": 8 * steps}],
                    "eval_fraction": 0},
           "dpo": {"reference": mode},
           "trainer": {"per_device_train_batch_size": 8, "max_steps": steps, "learning_rate": 1e-4,
                       "max_length": 64, "save_strategy": "no", "logging_steps": steps}}
    if lora:
        raw["peft"] = {"r": 8, "alpha": 16, "dropout": 0.0}
    recipe = recipe_from_dict(raw)
    tokenizer = load_tokenizer(recipe.model)
    from align_kit.data.sources import load_data

    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in load_data(recipe.data, "preference").train]
    base = rss_mib()
    start = time.time()
    trainer = dpo.build_trainer(recipe, DPOTrainer, rows, tokenizer, mode)
    trainer.train()
    result = {"arm": arm, "reference": mode, "lora": lora, "baseline_rss_mib": round(base, 1),
              "peak_rss_mib": round(rss_mib(), 1), "seconds": round(time.time() - start, 1),
              "ref_model_in_memory": trainer.ref_model is not None}
    result["peak_minus_baseline_mib"] = round(result["peak_rss_mib"] - base, 1)
    if torch.cuda.is_available():
        result["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--arms", nargs="*", default=list(ARMS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.model_dir, args.out, args.steps)), flush=True)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        n_params = save_checkpoint(Path(tmp) / "sft", args.hidden, args.layers)
        print(f"model: {n_params / 1e6:.1f}M parameters = {n_params * 4 / 2**20:.0f} MiB in float32 per copy")
        results = []
        for arm in args.arms:
            cmd = [sys.executable, __file__, "--child", arm, "--model-dir", str(Path(tmp) / "sft"),
                   "--out", str(Path(tmp) / arm), "--steps", str(args.steps)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                print(f"{arm}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                return 1
            results.append(json.loads(line[len("RESULT "):]))
    ref = next((r for r in results if r["arm"] == "copy"), results[0])
    print(f"{'arm':<12} {'ref copy':>8} {'peak RSS MiB':>13} {'peak - base':>12} {'vs copy':>9} {'s':>6}")
    for r in results:
        ratio = r["peak_minus_baseline_mib"] / max(ref["peak_minus_baseline_mib"], 1e-9)
        print(f"{r['arm']:<12} {str(r['ref_model_in_memory']):>8} {r['peak_rss_mib']:>13.1f} "
              f"{r['peak_minus_baseline_mib']:>12.1f} {ratio:>8.2f}x {r['seconds']:>6.1f}")
    for r in results:
        print(json.dumps({"benchmark": "dpo_memory", "params_m": round(n_params / 1e6, 2), **r}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
