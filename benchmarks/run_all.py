"""Every benchmark in one command: SFT, DPO, reward, PPO and the data pipeline.

    python benchmarks/run_all.py                    # CPU, the settings RESULTS.md reports
    python benchmarks/run_all.py --quick            # fewer rows and rounds (a smoke run)
    python benchmarks/run_all.py --device cuda      # GPU track: SFT 1B full fine-tune, 8B LoRA / QLoRA

Each benchmark runs as its own process (and each of its arms in a further process, interleaved and
repeated); their tables stream to the terminal and every JSON line lands in ``<work>/results.jsonl``
(``ALIGN_KIT_BENCH_DIR``, default a folder in the system temp dir) with the machine's load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

HERE = Path(__file__).resolve().parent


def plan(ns) -> list[tuple[str, list[str]]]:
    if ns.device == "cuda":
        return [("sft", ["bench_sft.py", "--device", "cuda", "--rows", "999", "--repeats", "2"])]
    rows, pairs, rounds = (8, 8, 1) if ns.quick else (ns.rows, ns.pairs, ns.repeats)
    return [
        ("sft", ["bench_sft.py", "--families", "llama", "--rows", str(rows), "--repeats", str(rounds),
                 "--arms", "align_kit,trl,trl_tuned,hand,align_kit_plain_ce"]),
        ("sft", ["bench_sft.py", "--families", "qwen2,mistral", "--rows", str(rows), "--repeats",
                 str(max(1, rounds - 1))]),
        ("dpo", ["bench_dpo.py", "--pairs", str(pairs), "--repeats", str(rounds)]),
        ("reward", ["bench_reward.py", "--pairs", str(pairs), "--repeats", str(max(1, rounds - 1))]),
        ("ppo", ["bench_ppo.py", "--steps", "3"]),
        ("pipeline", ["bench_pipeline.py", "--sizes", "1"]),
    ]


def run_one(name: str, argv: list[str], results: Path) -> int:
    """Run one benchmark script, streaming its output; JSON lines are tagged and appended to ``results``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ALIGN_KIT_BENCH_DIR": str(common.WORK)}
    print(f"\n=== {name}: python benchmarks/{' '.join(argv)}  (load {os.getloadavg()[0]:.1f})", flush=True)
    proc = subprocess.Popen([sys.executable, str(HERE / argv[0]), *argv[1:]], stdout=subprocess.PIPE,
                            text=True, env=env, cwd=HERE.parent)
    with open(results, "a", encoding="utf-8") as out:
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.startswith("{"):
                rec = json.loads(line)
                rec.setdefault("bench", name)
                rec.setdefault("loadavg_1m", round(os.getloadavg()[0], 2))
                out.write(json.dumps(rec) + "\n")
                out.flush()
    return proc.wait()


def markdown(results: Path) -> str:
    """A markdown table of medians and ranges per (bench, family, arm) from ``results.jsonl``, with the ratio
    to TRL's arms of the same bench and family (defaults, and as a competent user sets it: ``trl_tuned``), the
    trained tokens each arm counted, peak RSS and the load average the runs saw."""
    import statistics

    recs = [json.loads(line) for line in open(results, encoding="utf-8")]
    recs = [r for r in recs if "arm" in r and r.get("bench") in ("sft", "dpo", "reward")]
    rows = []
    for key in ("tokens_per_s", "pairs_per_s"):
        summary = common.summarise([r for r in recs if key in r], key)
        bases = [{(s["bench"], s["family"]): s["median"] for s in summary if s["arm"] == b} for b in ("trl", "trl_tuned")]
        for s in summary:
            runs = [r for r in recs if (r["bench"], r["family"], r["arm"]) == (s["bench"], s["family"], s["arm"])]
            load = statistics.median(r["loadavg_1m"] for r in runs)
            ratios = [format(s["median"] / b[(s["bench"], s["family"])], ".2f") + "x" if (s["bench"], s["family"]) in b
                      else "" for b in bases]
            trained = sorted({r.get("trained_tokens") for r in runs} - {None})
            rows.append(f"| {s['bench']} | {s['family']} | {s['arm']} | {key.replace('_per_s', '/s')} "
                        f"{s['median']:.3g} [{s['min']:.3g}, {s['max']:.3g}] | {s['runs']} | {ratios[0]} | {ratios[1]} | "
                        f"{', '.join(f'{t:,}' for t in trained)} | {s['peak_rss_mib']:.0f} | {load:.1f} |")
    head = ("| bench | family | arm | throughput median [min, max] | runs | vs TRL defaults | vs TRL tuned | "
            "trained tokens | peak RSS MiB | load 1m |\n|---|---|---|---|---|---|---|---|---|---|\n")
    return head + "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rows", type=int, default=8, help="Alpaca rows per SFT arm")
    p.add_argument("--pairs", type=int, default=8, help="HH-RLHF pairs per DPO / reward arm")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--only", help="comma-separated subset: sft,dpo,reward,ppo,pipeline")
    p.add_argument("--report", action="store_true", help="only print the markdown table of results.jsonl")
    ns = p.parse_args(argv)
    if ns.report:
        print(markdown(common.WORK / "results.jsonl"))
        return 0
    common.WORK.mkdir(parents=True, exist_ok=True)
    results = common.WORK / "results.jsonl"
    start = time.time()
    print(json.dumps({"machine": common.machine(), "device": ns.device, "results": str(results)}), flush=True)
    failed = []
    for name, argv_ in plan(ns):
        if ns.only and name not in ns.only.split(","):
            continue
        if run_one(name, argv_, results) != 0:
            failed.append(name)
    print(f"\nall benchmarks: {time.time() - start:.0f} s, load now {os.getloadavg()[0]:.1f}; "
          f"failed: {failed or 'none'}; JSON lines in {results}")
    print(markdown(results))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
