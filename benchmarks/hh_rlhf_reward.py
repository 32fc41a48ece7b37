"""Reward model on HH-RLHF helpful-base from stories260K: held-out pairwise accuracy against chance (0.5) and
against the "prefer the longer answer" baseline.

    python benchmarks/hh_rlhf_reward.py [--out runs/bench/reward_hh] [key=value overrides]

Trains with ``recipes/tiny/reward_hh.yaml`` (align_kit splits helpful-base into train and a seeded held-out
10%; held-out rows never enter training), then reads ``eval.json`` and prints a table plus one JSON line.
An existing finished run in ``--out`` is reused (pass ``--fresh`` to retrain). A measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def binomial_interval(acc: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson 95% interval of an accuracy over ``n`` pairs: whether a gap to 0.5 is more than noise."""
    centre = (acc + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(acc * (1 - acc) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def main(argv: list[str] | None = None) -> int:
    from align_kit.config import load_recipe
    from align_kit.stages import common, run_stage

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench/reward_hh")
    parser.add_argument("--fresh", action="store_true", help="delete --out first")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.fresh:
        shutil.rmtree(out, ignore_errors=True)
    recipe = load_recipe(ROOT / "recipes/tiny/reward_hh.yaml", [f"output_dir={out}", *args.overrides])
    start, cpu0 = time.time(), time.process_time()
    if not (common.is_finished(out) and (out / "eval.json").exists()):
        run_stage(recipe)
    ev = json.loads((out / "eval.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else {}
    n, acc, longer = ev["pairs"], ev["accuracy"], ev["length_baseline_accuracy"]
    lo, hi = binomial_interval(acc, n)
    rows = [("held-out pairs", f"{n}"), ("reward model accuracy", f"{acc:.3f}  (95% CI {lo:.3f}-{hi:.3f})"),
            ("chance", "0.500"), ("prefer the longer answer", f"{longer:.3f}"),
            ("vs chance", f"{acc - 0.5:+.3f}"), ("vs longer answer", f"{acc - longer:+.3f}"),
            ("mean margin r_c - r_r", f"{ev['mean_margin']:.3f}"), ("ECE (10 bins)", f"{ev['ece']:.3f}")]
    width = max(len(k) for k, _ in rows)
    print(f"HH-RLHF helpful-base reward model from stories260K ({out})")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print(json.dumps({"benchmark": "hh_rlhf_reward", "pairs": n, "accuracy": acc, "ci95": [round(lo, 3), round(hi, 3)],
                      "chance": 0.5, "length_baseline": longer, "mean_margin": ev["mean_margin"], "ece": ev["ece"],
                      "train_pairs": manifest.get("extra", {}).get("train_pairs"),
                      "wall_s": round(time.time() - start, 1), "cpu_s": round(time.process_time() - cpu0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
