"""Kill-and-resume harness shared by ``test_kill_resume.py`` (a short CI version) and
``benchmarks/kill_resume.py`` (ten or more random kill points).

Each stage runs as a real ``python -m align_kit train`` subprocess on tiny recipes (the builtin 0.44M Llama,
8 optimiser steps, a checkpoint every 2). A kill point is a checkpoint step ``k`` and a delay ``d``: once
``checkpoint-k`` (or PPO's ``checkpoint-k.tmp``) starts to appear the harness waits ``d`` seconds and sends
SIGKILL, so kills land while a checkpoint is being written as well as between checkpoints. The same command
then resumes the run, and its final weights are compared with an uninterrupted run's.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

STAGES = ("sft", "reward", "dpo", "ppo")
MAX_STEPS, SAVE_STEPS = 8, 2
COMPLETE = "align_kit_complete"  # rundir.COMPLETE: every stage's checkpoints carry it (PPO's inside the rename)


def make_bases(root: Path) -> dict[str, Path]:
    """Saved seeded tiny models: a causal LM (DPO's and PPO's starting point) and a reward model for PPO."""
    from align_kit.quickstart.model import build_model, build_tokenizer

    tok = build_tokenizer()
    bases = {"policy": root / "base_policy", "reward": root / "base_reward"}
    if not (bases["policy"] / "config.json").exists():
        build_model(tok).save_pretrained(bases["policy"])
        tok.save_pretrained(bases["policy"])
    if not (bases["reward"] / "config.json").exists():
        build_model(tok, head="classifier").save_pretrained(bases["reward"])
        tok.save_pretrained(bases["reward"])
    return bases


def recipe(stage: str, out: Path, bases: dict[str, Path]) -> dict:
    """A tiny recipe of ``stage`` writing to ``out`` (8 steps, a checkpoint every 2, no rotation limit)."""
    base = {"stage": stage, "output_dir": str(out), "seed": 11}
    steps = {"max_steps": MAX_STEPS, "save_steps": SAVE_STEPS, "logging_steps": 1, "report_to": "none",
             "lr_scheduler_type": "constant", "use_cpu": True, "dataloader_num_workers": 0}
    if stage == "sft":
        return {**base, "model": {"name_or_path": "builtin:tiny-llama"},
                "data": {"train": [{"name": "quickstart-tasks", "max_rows": 96}], "eval_fraction": 0},
                "trainer": {**steps, "learning_rate": 3e-3, "per_device_train_batch_size": 4, "max_length": 128}}
    prefs = {"train": [{"name": "quickstart-preferences", "split": "train", "max_rows": 48}]}
    if stage == "reward":
        return {**base, "model": {"name_or_path": "builtin:tiny-llama"},
                "data": {**prefs, "eval": [{"name": "quickstart-preferences", "split": "test", "max_rows": 4}]},
                "trainer": {**steps, "learning_rate": 3e-3, "per_device_train_batch_size": 4, "max_length": 64}}
    if stage == "dpo":
        return {**base, "model": {"name_or_path": str(bases["policy"])},
                "data": {**prefs, "eval_fraction": 0}, "dpo": {"reference": "copy"},
                "trainer": {**steps, "learning_rate": 1e-3, "per_device_train_batch_size": 4, "max_length": 64,
                            "beta": 0.3}}
    if stage == "ppo":
        return {**base, "model": {"name_or_path": str(bases["policy"])},
                "data": {"train": [{"name": "quickstart-tasks", "split": "train", "max_rows": 32}],
                         "eval": [{"name": "quickstart-tasks", "split": "test", "max_rows": 2}]},
                "ppo": {"reward_model": str(bases["reward"]), "eval_max_new_tokens": 2},
                "trainer": {"steps": MAX_STEPS, "save_steps": SAVE_STEPS, "batch_size": 4, "mini_batch_size": 2,
                            "max_new_tokens": 4, "logging_steps": 1}}
    raise ValueError(stage)


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
             TOKENIZERS_PARALLELISM="false", PYTHONHASHSEED="0")
    e.pop("RANK", None)
    return e


def command(recipe_file: Path) -> list[str]:
    return [sys.executable, "-m", "align_kit", "train", str(recipe_file)]


def write_recipe(stage: str, out: Path, bases: dict[str, Path]) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe(stage, out, bases)))
    return path


def run_to_end(recipe_file: Path, log_file: Path) -> subprocess.CompletedProcess:
    with open(log_file, "a") as log:
        return subprocess.run(command(recipe_file), env=env(), stdout=log, stderr=subprocess.STDOUT, timeout=600)


@dataclass
class Kill:
    stage: str
    step: int  # the checkpoint whose appearance arms the kill
    delay: float  # seconds after it appears
    landed: str = ""  # "mid-write" | "between checkpoints" | "after the run ended"
    identical: bool = False
    max_abs_diff: float = 0.0


def kill_points(n: int, seed: int, stages=STAGES, max_delay: float = 0.6) -> list[Kill]:
    """``n`` seeded kill points spread over ``stages`` (round robin), each at a random checkpoint and delay."""
    rng = random.Random(seed)
    return [Kill(stages[i % len(stages)], rng.choice(range(SAVE_STEPS, MAX_STEPS + 1, SAVE_STEPS)),
                 round(rng.uniform(0.0, max_delay), 3)) for i in range(n)]


def _appeared(out: Path, step: int) -> bool:
    return (out / f"checkpoint-{step}").exists() or (out / f"checkpoint-{step}.tmp").exists()


def _complete(folder: Path, stage: str) -> bool:
    return (folder / COMPLETE).exists()


def run_killed(kill: Kill, recipe_file: Path, out: Path, log_file: Path) -> None:
    """Start the run, SIGKILL it at ``kill``'s point, then rerun the same command to the end."""
    with open(log_file, "a") as log:
        proc = subprocess.Popen(command(recipe_file), env=env(), stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None and not _appeared(out, kill.step):
            time.sleep(0.002)
        time.sleep(kill.delay)
        if proc.poll() is None:
            folder = out / f"checkpoint-{kill.step}"
            writing = any(not _complete(p, kill.stage) for p in out.glob("checkpoint-*") if p.is_dir())
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kill.landed = "mid-write" if writing or not _complete(folder, kill.stage) else "between checkpoints"
        else:
            kill.landed = "after the run ended"
    result = run_to_end(recipe_file, log_file)
    if result.returncode != 0:
        raise RuntimeError(f"resume of {kill} failed with exit {result.returncode}; see {log_file}")


def final_weights(out: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted((out / "model").glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{out}/model holds no safetensors")
    return {f"{f.name}:{k}": v for f in files for k, v in load_file(str(f)).items()}


def compare(a: dict, b: dict) -> tuple[bool, float]:
    """(bitwise equal, largest absolute difference) of two state dicts."""
    import torch

    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return False, float("inf")  # e.g. the checkout changed under a running benchmark
    diff = max(float((a[k].float() - b[k].float()).abs().max()) if a[k].numel() else 0.0 for k in a)
    return all(torch.equal(a[k], b[k]) for k in a), diff


def run_reference(stage: str, root: Path, bases: dict[str, Path]) -> dict:
    out = root / f"{stage}_full"
    if not (out / "model").exists():
        rf = write_recipe(stage, out, bases)
        result = run_to_end(rf, root / f"{stage}_full.log")
        if result.returncode != 0:
            raise RuntimeError(f"uninterrupted {stage} run failed; see {root / f'{stage}_full.log'}")
    return final_weights(out)


def trial(kill: Kill, index: int, root: Path, bases: dict[str, Path], reference: dict) -> Kill:
    out = root / f"{kill.stage}_kill{index}"
    rf = write_recipe(kill.stage, out, bases)
    run_killed(kill, rf, out, root / f"{out.name}.log")
    kill.identical, kill.max_abs_diff = compare(reference, final_weights(out))
    return kill
