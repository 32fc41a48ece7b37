"""SFT throughput: align_kit's default SFT vs TRL's SFTTrainer defaults vs a hand-written PyTorch loop.

Same weights (a seeded checkpoint folder per family), same samples (the first ``--rows`` Alpaca rows from
../shared, templated and tokenised once by align_kit), one epoch each, so every arm trains on the same
real (non-pad) tokens. Reported: real tokens per second of the training loop and the process's peak RSS.

Arms:
- ``align_kit``: ``align_kit.stages.sft.run`` on a recipe with no trainer settings but learning rate and
  epochs: its packing (best-fit-decreasing rows, per-sample position ids) and its CPU defaults.
- ``trl``: ``trl.SFTTrainer`` on the same tokenised rows with SFTConfig defaults; only ``use_cpu=True`` is
  set on CPU (SFTConfig refuses to build without it on a machine with no bf16 GPU). Its defaults keep
  ``bf16=True`` (autocast on CPU) and ``gradient_checkpointing=True``.
- ``trl_tuned``: ``trl.SFTTrainer`` as a competent user would set it on a CPU without native bf16:
  ``use_cpu=True, bf16=False, gradient_checkpointing=False, packing=True, packing_strategy="bfd",
  padding_free=True`` (TRL's own best-fit packing, flattened per batch with per-sample position ids).
  Both TRL arms get align_kit's trained-token mask as TRL's ``assistant_masks`` column, which TRL always
  applies (its ``completion_mask`` column applies only to prompt/completion datasets), so every arm trains
  on the same tokens; each arm counts the targets its batches carry and prints them (``trained_tokens``).
- ``hand``: AdamW over align_kit's packed batches, ``loss.backward(); step()`` and nothing else: the ceiling.
- ``align_kit_plain_ce`` (only with ``--arms``): the ``align_kit`` arm with the model's own loss (LM head and
  cross-entropy over every position, prompt and padding included: align_kit's CPU loss before it kept only
  the trained positions). It measures what computing logits nobody trains on costs.

    python benchmarks/bench_sft.py                       # CPU: llama, qwen2, mistral; 3 rounds
    python benchmarks/bench_sft.py --device cuda         # GPU track: 1B full fine-tune, 8B LoRA / QLoRA
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ARMS = ("align_kit", "trl", "trl_tuned", "hand", "align_kit_plain_ce")
LR = 2e-5  # TRL's default learning rate, used by every arm


def prepare(family: str, rows: int, shape: dict, tag: str) -> Path:
    """Checkpoint folder + the tokenised rows every arm trains on (``data.json``); cached between runs."""
    from align_kit.config import DataArgs, ModelArgs
    from align_kit.data.sources import load_data
    from align_kit.models import load_tokenizer
    from align_kit.stages.sft import tokenize_rows

    work = common.WORK / f"sft-{family}-{tag}"
    model_dir = common.build_model_dir(family, shape, work / "model")
    data_file = work / f"data-{rows}.json"
    if not data_file.exists():
        tok = load_tokenizer(ModelArgs(name_or_path=str(model_dir)))
        data = load_data(DataArgs(train=[data_source(rows)], eval_fraction=0.0), "instruction")
        tokenized, _ = tokenize_rows(data.train, tok, "train")
        data_file.write_text(json.dumps(tokenized))
    return work


def data_source(rows: int):
    from align_kit.config import DataSource

    return DataSource(path=str(common.ALPACA), format="alpaca", max_rows=rows)


def real_tokens(samples: list[dict], max_length: int = 1024) -> int:
    return sum(min(len(s["input_ids"]), max_length) for s in samples)


def arm_align_kit(work: Path, rows: int, extra: dict) -> dict:
    from align_kit.config import recipe_from_dict
    from align_kit.stages.sft import run

    recipe = {"stage": "sft", "output_dir": str(work / "out-align_kit"), "seed": 0,
              "model": {"name_or_path": str(work / "model")},
              "data": {"train": [{"path": str(common.ALPACA), "format": "alpaca", "max_rows": rows}],
                       "eval_fraction": 0.0},
              "trainer": {"learning_rate": LR, "num_train_epochs": 1, "save_strategy": "no", **extra}}
    for key in ("peft", "quantization", "sft"):
        if key in extra:
            recipe[key] = recipe["trainer"].pop(key)
    recipe["model"].update(recipe["trainer"].pop("model", {}))
    out = run(recipe_from_dict(recipe))
    history = [json.loads(line) for line in open(out / "log_history.jsonl")]
    return {"train_s": next(h["train_runtime"] for h in history if "train_runtime" in h)}


def arm_trl(work: Path, samples: list[dict], device: str, tuned: bool = False) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(work / "model")
    # CPU: fp32 weights (bf16 autocast on top, TRL's default). CUDA: the path, so TRL loads it its own way
    # (since transformers v5 the dtype comes from the checkpoint: bf16 here, like align_kit's "auto").
    model = (AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.float32) if device == "cpu"
             else str(work / "model"))
    cpu = {"use_cpu": True} if device == "cpu" else {}
    if tuned:  # a competent user's settings for this hardware (fp32 without native bf16; TRL's own packing)
        cpu.update(bf16=device != "cpu", gradient_checkpointing=False, packing=True, packing_strategy="bfd",
                   padding_free=True)
    args = SFTConfig(output_dir=str(work / "out-trl"), learning_rate=LR, num_train_epochs=1, save_strategy="no",
                     report_to="none", **cpu)
    # TRL always applies an ``assistant_masks`` column (``completion_mask`` only to prompt/completion rows):
    # the same targets as the other arms
    ds = Dataset.from_list([{"input_ids": s["input_ids"], "assistant_masks": s["assistant_masks"]} for s in samples])
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    result = trainer.train()
    return {"train_s": result.metrics["train_runtime"], "bf16": args.bf16,
            "gradient_checkpointing": args.gradient_checkpointing, "packing": args.packing,
            "padding_free": args.padding_free}


def arm_hand(work: Path, samples: list[dict], device: str, batch_size: int = 8, max_length: int = 1024) -> dict:
    """The overhead ceiling: the same packed batches as align_kit, a bare AdamW loop."""
    import torch
    from transformers import AutoModelForCausalLM

    from align_kit.data.packing import PackedCollator, pack_samples

    torch.manual_seed(0)
    # same weight dtype as align_kit's "auto": fp32 on CPU, bf16 on a bf16 GPU
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=dtype).to(device)
    rows = pack_samples(samples, max_length)
    collate = PackedCollator(model.config.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    order = torch.randperm(len(rows)).tolist()
    model.train()
    trained = positions = 0
    start = time.perf_counter()
    for i in range(0, len(order), batch_size):
        batch = collate([rows[j] for j in order[i:i + batch_size]])
        t, n = common.batch_counts(batch)
        trained, positions = trained + t, positions + n
        batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return {"train_s": time.perf_counter() - start, "trained_tokens": trained, "positions": positions}


def worker(ns) -> None:
    work = Path(ns.work)
    samples = json.loads((work / f"data-{ns.rows}.json").read_text())
    extra = json.loads(ns.extra)
    counts = common.count_trained_tokens()  # the Trainer arms; the hand loop counts its own batches
    if ns.worker == "align_kit_plain_ce":
        from align_kit.stages import sft

        def own_loss(model, inputs, num_items_in_batch=None):  # the LM head over every position
            return model(**inputs, **({} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch})).loss

        sft.trained_positions_loss = own_loss
        rec = arm_align_kit(work, ns.rows, extra)
    elif ns.worker == "align_kit":
        rec = arm_align_kit(work, ns.rows, extra)
    elif ns.worker in ("trl", "trl_tuned"):
        rec = arm_trl(work, samples, ns.device, tuned=ns.worker == "trl_tuned")
    else:
        rec = arm_hand(work, samples, ns.device)
    if ns.worker != "hand":
        rec.update(trained_tokens=counts["trained_tokens"], positions=counts["positions"])
    tokens = real_tokens(samples)
    rec.update(bench="sft", family=ns.family, arm=ns.worker, rows=ns.rows, real_tokens=tokens,
               tokens_per_s=tokens / rec["train_s"])
    if ns.device == "cuda":
        import torch

        rec["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
        shape = common.GPU_SHAPES[ns.tag]
        lora = "peft" in extra
        n = common.count_params(shape, _vocab(work))
        mean_len = tokens / len(samples)
        fpt = common.train_flops_per_token(n, shape, int(mean_len), lora=lora)
        rec.update(params=n, flops_per_token=fpt, mfu=common.mfu(rec["tokens_per_s"], fpt),
                   mfu_formula="(6N (4N for a frozen LoRA base) + 6*layers*hidden*seq) * tokens/s / 989e12")
    common.emit(rec)


def _vocab(work: Path) -> int:
    return json.loads((work / "model" / "config.json").read_text())["vocab_size"]


GPU_CONFIGS = {  # tag -> (shape, align_kit extra settings)
    "1b": {"bf16": True},
    "1b-liger": {"bf16": True, "model": {"liger_kernels": True}},  # align_kit arm only, like the 8B configs
    # 8B: activations of 8 x 1024 tokens without checkpointing take ~45 GB on top of 16 GB of weights
    "8b": {"bf16": True, "peft": {"r": 16, "alpha": 32}, "model": {"gradient_checkpointing": True}},
    "8b-qlora": {"bf16": True, "peft": {"r": 16, "alpha": 32}, "quantization": {"bits": 4},
                 "model": {"gradient_checkpointing": True}},
}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--families", default="llama,qwen2,mistral")
    p.add_argument("--rows", type=int, default=64, help="Alpaca rows per arm (all arms: the same rows)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--arms", default=",".join(ARMS[:4]))
    p.add_argument("--configs", default=",".join(GPU_CONFIGS), help="GPU track configs to run (--device cuda)")
    p.add_argument("--worker", choices=ARMS)
    p.add_argument("--work"), p.add_argument("--family"), p.add_argument("--tag", default="cpu")
    p.add_argument("--extra", default="{}")
    ns = p.parse_args(argv)
    if ns.worker:
        return worker(ns)
    print(json.dumps({"machine": common.machine()}), flush=True)
    records = []
    plans = ([(f, "cpu", {}) for f in ns.families.split(",")] if ns.device == "cpu"
             else [("llama", tag, GPU_CONFIGS[tag]) for tag in ns.configs.split(",")])
    for family, tag, extra in plans:
        shape = common.CPU_SHAPE if tag == "cpu" else common.GPU_SHAPES[tag.split("-")[0]]
        work = prepare(family, ns.rows, shape, tag.split("-")[0])
        # LoRA / QLoRA on the 8B shape: align_kit's arm only (the other arms train every weight)
        arms = ns.arms.split(",") if tag in ("cpu", "1b") else ["align_kit"]
        for rnd, arm in common.interleaved(arms, ns.repeats):
            args = ["--worker", arm, "--work", str(work), "--family", family, "--rows", str(ns.rows),
                    "--device", ns.device, "--tag", tag.split("-")[0], "--extra", json.dumps(extra)]
            rec = common.run_worker(Path(__file__), args)
            rec.update(config=tag, round=rnd)
            if ns.device == "cuda":
                rec["family"] = f"{family}-{tag}"  # one table row per config
            print(json.dumps(rec), flush=True)
            records.append(rec)
    common.print_table(common.summarise(records, "tokens_per_s"), "tokens/s", baseline_arm="trl")
    arms = ns.arms.split(",")
    common.print_round_ratios(records, "tokens_per_s", [(a, b) for a in arms for b in ("trl", "trl_tuned", "hand")
                                                        if a != b and b in arms and not a.startswith("trl")])
    for arm in arms:
        counted = sorted({(r["family"], r.get("trained_tokens"), r.get("positions")) for r in records if r["arm"] == arm})
        print(f"{arm}: (family, trained tokens, positions computed incl. padding) {counted}", flush=True)
    print(json.dumps({"loadavg_end": [round(x, 2) for x in os.getloadavg()]}), flush=True)
    return records


if __name__ == "__main__":
    main()
