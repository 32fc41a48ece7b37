"""The quickstart over seeds: what each stage changes, per stage and per task kind, as median [min, max].

Each seed draws its own data (prompts, which demonstrations slip, the pairs' wrong answers) and trains every
stage with the recipe's seed + the seed (``align-kit quickstart --seed N``), in its own process. Afterwards
every stage's model answers the held-out prompts greedily here, so the per-kind figures come from one place.
The README's quickstart figures and the margins of tests/stages/test_quickstart.py come from this table.

    python benchmarks/quickstart_seeds.py                       # seeds 0-4, one at a time, all cores
    python benchmarks/quickstart_seeds.py --seeds 0 1 --jobs 2 --threads 1
    python benchmarks/quickstart_seeds.py --set sft:trainer.num_train_epochs=6   # try a change over seeds
    python benchmarks/quickstart_seeds.py --rl recipes/tiny/grpo.yaml           # + GRPO from each SFT model

It prints the CPU model and its vector extensions, the thread count and the library versions beside the
table, and writes ``seeds.json`` and ``seeds.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_STAGES = ("sft", "reward", "dpo", "ppo")


def cpu_description() -> str:
    """CPU model name and the vector extensions that change floating-point kernels (AVX2, AVX-512, AMX)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    ext = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16") if f in flags]
    return f"{model} ({os.cpu_count()} cores; {' '.join(ext) or 'no AVX2'})"


def versions() -> str:
    from importlib.metadata import version

    return ", ".join(f"{p} {version(p)}" for p in ("torch", "transformers", "trl", "peft", "accelerate", "datasets"))


def run_seed(seed: int, out: Path, threads: int | None, extra: list[str], reuse: bool, rl: list[Path]) -> float:
    """Run the quickstart for ``seed`` in its own process, then each ``rl`` recipe from its SFT model (into
    ``seed-N/<recipe name>``); returns the quickstart's wall time in seconds."""
    folder = out / f"seed-{seed}"
    timing = folder / "wall_seconds.json"
    if not (reuse and timing.exists()):
        _quickstart(seed, folder, out, threads, extra)
    for recipe in rl:
        if not (reuse and (folder / recipe.stem / "model").exists()):
            _rl(seed, folder, recipe, threads)
    return json.loads(timing.read_text())["seconds"]


def _env(threads: int | None) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def _rl(seed: int, folder: Path, recipe: Path, threads: int | None) -> None:
    from align_kit.quickstart import recipe_seed_overrides, tasks

    data = folder / "data" if seed else tasks.HERE
    cmd = [sys.executable, "-m", "align_kit", "train", str(recipe), f"model.name_or_path={folder / 'sft'}",
           f"output_dir={folder / recipe.stem}", *recipe_seed_overrides(recipe, seed, data)]
    with open(folder.parent / f"seed-{seed}-{recipe.stem}.log", "w") as log:
        proc = subprocess.run(cmd, env=_env(threads), stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"seed {seed}, {recipe}: failed (exit {proc.returncode}): see {log.name}")


def _quickstart(seed: int, folder: Path, out: Path, threads: int | None, extra: list[str]) -> None:
    timing = folder / "wall_seconds.json"
    cmd = [sys.executable, "-m", "align_kit", "quickstart", "--seed", str(seed), "--output-dir", str(folder)]
    for item in extra:
        cmd += ["--set", item]
    start = time.perf_counter()
    with open(out / f"seed-{seed}.log", "w") as log:
        proc = subprocess.run(cmd, env=_env(threads), stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"seed {seed} failed (exit {proc.returncode}): see {out / f'seed-{seed}.log'}")
    timing.write_text(json.dumps({"seconds": round(seconds, 1), "threads": threads}))


def measure(folder: Path, rl: list[str]) -> dict:
    """Greedy verifier accuracy of every policy stage (overall and per kind) and the reward model's pairwise
    accuracy per kind, on the held-out split of this seed's data; plus what the stages wrote in eval.json."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align_kit.generation import generate
    from align_kit.quickstart import tasks
    from align_kit.scoring import RewardScorer

    torch.manual_seed(0)
    data = folder / "data" if (folder / "data").exists() else tasks.HERE
    rows = [json.loads(line) for line in (data / "sft_test.jsonl").read_text().splitlines()]
    prompts = [r["messages"][:-1] for r in rows]
    texts = [p[-1]["content"] for p in prompts]
    result: dict = {"stages": {}}
    for stage in ("sft", "dpo", "ppo", *rl):
        if not (folder / stage / "model").exists():
            continue
        model = AutoModelForCausalLM.from_pretrained(folder / stage / "model")
        tok = AutoTokenizer.from_pretrained(folder / stage / "model")
        kinds = tasks.accuracy_by_kind(texts, generate(model, tok, prompts, max_new_tokens=8))
        result["stages"][stage] = {"verifier": kinds.pop("all"), "kinds": kinds}
    if (folder / "reward" / "model").exists():
        scorer = RewardScorer(folder / "reward" / "model")
        pairs = [json.loads(line) for line in (data / "pref_test.jsonl").read_text().splitlines()]
        # a pair counts as right when the chosen answer scores higher: fed to the verifier as "the right answer
        # was picked" (the chosen answer) or not (the rejected one)
        texts = [p["prompt"][-1]["content"] for p in pairs]
        picked = []
        for pair in pairs:
            chosen, rejected = scorer(pair["prompt"], [pair["chosen"][0]["content"], pair["rejected"][0]["content"]])
            picked.append(pair["chosen" if chosen > rejected else "rejected"][0]["content"])
        kinds = tasks.accuracy_by_kind(texts, picked)
        result["stages"]["reward"] = {"accuracy": kinds.pop("all"), "kinds": kinds}
    evals = {s: json.loads((folder / s / "eval.json").read_text()) for s in (*PIPELINE_STAGES, *rl)
             if (folder / s / "eval.json").exists()}
    result["eval_json"] = evals
    return result


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def table(results: list[dict], rl: list[str]) -> list[str]:
    """Markdown rows: one per (stage, figure), median [min, max] over seeds, then each seed's value."""
    seeds = [r["seed"] for r in results]
    lines = ["| stage | figure | median [min, max] | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|---|---|" + "---|" * len(seeds)]

    def row(stage: str, name: str, values: list[float | None]) -> None:
        if any(v is None for v in values):
            return
        lines.append(f"| {stage} | {name} | {_cell(values)} | " + " | ".join(f"{v:.3f}" for v in values) + " |")

    def get(r: dict, *path):
        node = r
        for p in path:
            if not isinstance(node, dict) or p not in node:
                return None
            node = node[p]
        return node

    for stage in (*PIPELINE_STAGES, *rl):
        if not all(stage in r["stages"] for r in results):
            continue
        main = "accuracy" if stage == "reward" else "verifier"
        row(stage, "held-out pairwise accuracy" if stage == "reward" else "greedy verifier accuracy",
            [r["stages"][stage][main] for r in results])
        for kind in results[0]["stages"][stage]["kinds"]:
            row(stage, f"  {kind}", [get(r, "stages", stage, "kinds", kind) for r in results])
        if stage == "reward":
            row(stage, "longer-answer baseline", [get(r, "eval_json", "reward", "length_baseline_accuracy") for r in results])
        if stage == "dpo":
            row(stage, "log-ratio accuracy", [get(r, "eval_json", "dpo", "after", "logratio_accuracy") for r in results])
        if stage == "ppo" or stage in rl:
            row(stage, "sampled verifier, before", [get(r, "eval_json", stage, "before", "sampled_verifier_accuracy") for r in results])
            row(stage, "sampled verifier, after", [get(r, "eval_json", stage, "after", "sampled_verifier_accuracy") for r in results])
            row(stage, "reward-model score, before", [get(r, "eval_json", stage, "before", "reward_mean") for r in results])
            row(stage, "reward-model score, after", [get(r, "eval_json", stage, "after", "reward_mean") for r in results])
    row("all", "seconds", [r["seconds"] for r in results])
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--out", type=Path, default=Path("runs/quickstart-seeds"))
    ap.add_argument("--jobs", type=int, default=1, help="seeds run at once (each in its own process)")
    ap.add_argument("--threads", type=int, help="OMP threads per seed (default: torch's own choice)")
    ap.add_argument("--set", action="append", default=[], metavar="STAGE:key=value", help="passed to every seed")
    ap.add_argument("--reuse", action="store_true", help="measure seeds already run into --out instead of rerunning")
    ap.add_argument("--rl", type=Path, action="append", default=[], metavar="RECIPE",
                    help="also run this RL recipe from each seed's SFT model, e.g. recipes/tiny/grpo.yaml")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:  # the runs are subprocesses; measuring happens here, in turn
        seconds = list(pool.map(lambda s: run_seed(s, args.out, args.threads, args.set, args.reuse, args.rl), args.seeds))
    rl = [recipe.stem for recipe in args.rl]
    results = [{"seed": s, "seconds": t, **measure(args.out / f"seed-{s}", rl)} for s, t in zip(args.seeds, seconds)]
    header = [f"CPU: {cpu_description()}", f"threads per seed: {args.threads or 'default'}; seeds at once: {args.jobs}",
              f"versions: {versions()}", f"extra settings: {' '.join(args.set) or 'none'}",
              f"command: python benchmarks/quickstart_seeds.py {' '.join(sys.argv[1:])}".rstrip()]
    text = "\n".join(header) + "\n\n" + "\n".join(table(results, rl)) + "\n"
    print(text)
    (args.out / "seeds.md").write_text(text)
    (args.out / "seeds.json").write_text(json.dumps({"header": header, "results": results}, indent=1))


if __name__ == "__main__":
    main()
