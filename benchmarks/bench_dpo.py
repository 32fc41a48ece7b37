"""Preference-stage throughput: align_kit's DPO (or reward) stage vs TRL's DPOTrainer (RewardTrainer) defaults.

Same weights (the SFT benchmark's seeded Llama-shaped checkpoint, 32,000-token vocabulary), same pairs (the
first ``--pairs`` Anthropic HH-RLHF helpful-base pairs from ../shared, converted once by align_kit into
``{prompt, chosen, rejected}`` conversations), one epoch each. Reported: pairs per second of the training
loop (``train_runtime``) and the process's peak RSS.

- ``align_kit``: the stage's ``run`` on a recipe that sets only the learning rate (TRL's default), one
  epoch and no checkpoints: align_kit's defaults otherwise (fp32 on CPU, no gradient checkpointing; DPO's
  reference is a frozen copy, as TRL's default makes; DPO runs TRL's chunked log-prob head with 512-token
  tiles on CPU; reward trains each 8-pair step as 4 micro-batches of 2 pairs on CPU).
- ``--arms 'NAME=KEY=VALUE;KEY=VALUE'`` adds align_kit arms with recipe overrides, to measure one setting at
  a time (``trainer.per_device_train_batch_size=8``, ``model.gradient_checkpointing=true``,
  ``dpo.logprob_token_tile=0``). Each record also holds the peak RSS before and after training.
- ``trl``: ``DPOTrainer`` / ``RewardTrainer`` with their config's defaults; only ``use_cpu=True`` on CPU
  (the config refuses to build without it), which leaves ``bf16=True`` and ``gradient_checkpointing=True``.
- ``trl_tuned``: the same trainer as a competent user would set it on a CPU without native bf16:
  ``use_cpu=True, bf16=False, gradient_checkpointing=False`` (TRL 1.16's DPO ``padding_free`` falls back
  to padding with a warning, and RewardConfig has no packing, so there is nothing more to turn on).
Every arm counts the tokens its batches are scored on (DPO: completion tokens of chosen and rejected;
reward: every real token) and prints them (``trained_tokens``), with the positions computed incl. padding.

    python benchmarks/bench_dpo.py              # DPO pairs/s
    python benchmarks/bench_reward.py           # reward-model pairs/s
    python benchmarks/bench_dpo.py --arms 'align_kit,trl,align_kit_trl_tile=dpo.logprob_token_tile=0'
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ARMS = ("align_kit", "trl", "trl_tuned")
LR = {"dpo": 1e-6, "reward": 1e-4}  # DPOConfig's and RewardConfig's default learning rates


def prepare(pairs: int, family: str = "llama") -> Path:
    """Checkpoint folder (shared with bench_sft) and the converted pairs (``pairs-N.json``)."""
    from align_kit.config import DataArgs, DataSource
    from align_kit.data.sources import load_data

    work = common.WORK / f"sft-{family}-cpu"
    common.build_model_dir(family, common.CPU_SHAPE, work / "model")
    out = work / f"pairs-{pairs}.json"
    if not out.exists():
        src = DataSource(path=str(common.HH_HELPFUL), format="hh_rlhf", max_rows=pairs)
        data = load_data(DataArgs(train=[src], eval_fraction=0.0, on_bad_row="skip"), "preference")
        out.write_text(json.dumps([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in data.train]))
    return work


def phase_rss(fn):
    """Wrap a train call so the record also holds the peak RSS before training (models loaded, data
    tokenised) and at its end: where a peak comes from (loading vs the training steps)."""
    phases = {}

    def wrapped(*args, **kwargs):
        phases["rss_before_train_mib"] = round(common.peak_rss_mib(), 1)
        out = fn(*args, **kwargs)
        phases["rss_after_train_mib"] = round(common.peak_rss_mib(), 1)
        return out
    return wrapped, phases


def arm_align_kit(stage: str, work: Path, pairs: int, overrides: list[str]) -> dict:
    from align_kit.config import apply_overrides, recipe_from_dict
    from align_kit.stages import common as stage_common
    from align_kit.stages import run_stage

    stage_common.train, phases = phase_rss(stage_common.train)
    recipe = {"stage": stage, "output_dir": str(work / f"out-{stage}-align_kit"), "seed": 0,
              "model": {"name_or_path": str(work / "model")},
              "data": {"train": [{"path": str(work / f"pairs-{pairs}.json"), "format": "preference"}],
                       "eval_fraction": 0.0},
              "trainer": {"learning_rate": LR[stage], "num_train_epochs": 1, "save_strategy": "no"}}
    parsed = recipe_from_dict(apply_overrides(recipe, overrides))
    args = parsed.trainer_config()
    out = run_stage(parsed)
    history = [json.loads(line) for line in open(out / "log_history.jsonl")]
    return {"train_s": next(h["train_runtime"] for h in history if "train_runtime" in h), "bf16": args.bf16,
            "gradient_checkpointing": args.gradient_checkpointing, "overrides": overrides, **phases}


def arm_trl(stage: str, work: Path, rows: list[dict], tuned: bool = False) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(work / "model")
    torch.manual_seed(0)
    if stage == "dpo":
        from trl import DPOConfig as Config
        from trl import DPOTrainer as Trainer

        model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.float32)
    else:
        from trl import RewardConfig as Config
        from trl import RewardTrainer as Trainer

        model = AutoModelForSequenceClassification.from_pretrained(work / "model", num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = tok.pad_token_id
    # tuned: what a competent user sets on a CPU without native bf16 (fp32, no recomputation)
    tuned_settings = {"bf16": False, "gradient_checkpointing": False} if tuned else {}
    args = Config(output_dir=str(work / f"out-{stage}-trl"), use_cpu=True, learning_rate=LR[stage],
                  num_train_epochs=1, save_strategy="no", report_to="none", **tuned_settings)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    train, phases = phase_rss(trainer.train)
    result = train()
    return {"train_s": result.metrics["train_runtime"], "bf16": args.bf16,
            "gradient_checkpointing": args.gradient_checkpointing, **phases}


def worker(ns) -> None:
    work = Path(ns.work)
    rows = json.loads((work / f"pairs-{ns.pairs}.json").read_text())
    counts = common.count_trained_tokens()
    if ns.worker == "align_kit":
        rec = arm_align_kit(ns.stage, work, ns.pairs, ns.set)
    else:
        rec = arm_trl(ns.stage, work, rows, tuned=ns.worker == "trl_tuned")
    rec.update(trained_tokens=counts["trained_tokens"], positions=counts["positions"])
    rec.update(bench=ns.stage, family="llama", arm=ns.label or ns.worker, pairs=len(rows), pairs_per_s=len(rows) / rec["train_s"])
    common.emit(rec)


def parse_arms(text: str) -> dict[str, tuple[str, list[str]]]:
    """Arm name -> (worker arm, align_kit recipe overrides).

    >>> parse_arms("align_kit,trl,ak_gc=model.gradient_checkpointing=true;trainer.bf16=false")["ak_gc"]
    ('align_kit', ['model.gradient_checkpointing=true', 'trainer.bf16=false'])
    """
    arms = {}
    for item in filter(None, (a.strip() for a in text.split(","))):
        name, _, sets = item.partition("=")
        if sets:
            arms[name] = ("align_kit", sets.split(";"))
        elif name in ARMS:
            arms[name] = (name, [])
        else:
            raise SystemExit(f"--arms: unknown arm {name!r} (valid: {', '.join(ARMS)} or NAME=KEY=VALUE)")
    return arms


def main(argv=None, stage: str = "dpo") -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", default=stage, choices=["dpo", "reward"])
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--arms", default=",".join(ARMS),
                   help="comma-separated; 'NAME=KEY=VALUE;KEY=VALUE' adds an align_kit arm with recipe overrides, "
                        "e.g. 'ak_nogc=model.gradient_checkpointing=false'")
    p.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)  # worker: recipe overrides
    p.add_argument("--label", help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=ARMS)
    p.add_argument("--work")
    ns = p.parse_args(argv)
    if ns.worker:
        return worker(ns)
    print(json.dumps({"machine": common.machine()}), flush=True)
    work = prepare(ns.pairs)
    arms = parse_arms(ns.arms)
    records = []
    for rnd, arm in common.interleaved(list(arms), ns.repeats):
        worker_arm, overrides = arms[arm]
        rec = common.run_worker(Path(__file__).with_name("bench_dpo.py"),
                                ["--worker", worker_arm, "--label", arm, "--stage", ns.stage, "--work", str(work),
                                 "--pairs", str(ns.pairs), *[f"--set={o}" for o in overrides]])
        rec["round"] = rnd
        print(json.dumps(rec), flush=True)
        records.append(rec)
    common.print_table(common.summarise(records, "pairs_per_s"), "pairs/s", baseline_arm="trl")
    common.print_round_ratios(records, "pairs_per_s", [(a, b) for a in arms for b in ("trl", "trl_tuned")
                                                       if b in arms and not a.startswith("trl")])
    for arm in arms:
        counted = sorted({(r.get("trained_tokens"), r.get("positions")) for r in records if r["arm"] == arm})
        print(f"{arm}: (trained tokens, positions computed incl. padding) {counted}", flush=True)
    print(json.dumps({"loadavg_end": [round(x, 2) for x in os.getloadavg()]}), flush=True)
    return records


if __name__ == "__main__":
    main()
