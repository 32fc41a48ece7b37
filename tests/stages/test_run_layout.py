"""Every stage leaves the same run folder (``align_kit.rundir``): pretrain, SFT, reward, DPO, KTO, PPO and GRPO
each run two steps on the builtin tiny Llama and must hold ``model/`` (loads with transformers, marked
complete), ``manifest.json``, ``run_identity.json``, ``log_history.jsonl`` with a line per logged step,
``eval.json``, ``report.md``, and ``checkpoint-1/``, ``checkpoint-2/`` each carrying the one completeness
marker, with no half-written ``.tmp`` folder left. A folder cut short is caught by the same check."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from helpers import PROSE

from align_kit import rundir
from align_kit.config import recipe_from_dict
from align_kit.stages import run_stage

sys.path.insert(0, str(Path(__file__).parents[1] / "reliability"))
import harness  # noqa: E402  (the tiny recipes of the kill-and-resume tests)

STEPS = {"max_steps": 2, "save_steps": 1}
STAGES = ("pretrain", "sft", "reward", "dpo", "kto", "ppo", "grpo")


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    return harness.make_bases(tmp_path_factory.mktemp("layout_bases"))


def recipe(stage: str, out: Path, bases: dict) -> dict:
    if stage == "pretrain":
        text = out.parent / "prose.txt"
        text.write_text("\n".join([PROSE] * 8) + "\n")
        return {"stage": "pretrain", "output_dir": str(out), "seed": 11, "model": {"name_or_path": "builtin:tiny-llama"},
                "data": {"train": [{"path": str(text)}], "eval_fraction": 0.25},
                "pretrain": {"block_size": 32, "max_eval_blocks": 2},
                "trainer": {**STEPS, "per_device_train_batch_size": 2, "logging_steps": 1, "report_to": "none",
                            "dataloader_num_workers": 0}}
    raw = harness.recipe({"kto": "dpo", "grpo": "ppo"}.get(stage, stage), out, bases)
    if stage in ("ppo", "grpo"):
        raw["trainer"].update(steps=2, save_steps=1)
    else:
        raw["trainer"].update(STEPS)
    if stage == "kto":
        raw["stage"], raw["kto"] = "kto", raw.pop("dpo")
    if stage == "grpo":  # critic-free: the verifier is the reward, groups of 2 responses
        raw["ppo"] = {"rewards": [{"function": "align_kit.quickstart.tasks:verify"}], "eval_max_new_tokens": 2}
        raw["trainer"].update(advantage_estimator="grpo", num_generations=2, batch_size=2, mini_batch_size=4,
                              kl_coef=0.0, kl_in="loss")
    return raw


def layout_problems(out: Path, steps: int = 2) -> list[str]:
    """What the folder lacks of the common layout (empty: it has all of it)."""
    problems = [f"no {name}" for name in ("manifest.json", rundir.IDENTITY_NAME, rundir.LOG, rundir.EVAL, rundir.REPORT)
                if not (out / name).is_file()]
    if not (rundir.is_finished(out) and (rundir.model_dir(out) / "config.json").is_file()):
        problems.append("model/ is not a complete model")
    want = [rundir.checkpoint_path(out, s).name for s in range(1, steps + 1)]
    found = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-"))
    if found != want:
        problems.append(f"checkpoints {found}, expected {want}")
    problems += [f"{name} has no {rundir.COMPLETE}" for name in found if not (out / name / rundir.COMPLETE).is_file()]
    if [p.name for p in rundir.complete_checkpoints(out)] != want:
        problems.append("rundir does not find every checkpoint complete")
    if (out / rundir.LOG).is_file():
        logged = [json.loads(line).get("step") for line in (out / rundir.LOG).read_text().splitlines()]
        if not {1, 2} <= set(logged):
            problems.append(f"log_history.jsonl logs steps {logged}")
    if (out / rundir.EVAL).is_file() and not isinstance(json.loads((out / rundir.EVAL).read_text()), dict):
        problems.append("eval.json is not an object")
    if (out / rundir.REPORT).is_file() and "## Training" not in (out / rundir.REPORT).read_text():
        problems.append("report.md has no training section")
    return problems


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_leaves_the_same_run_folder(stage, bases, tmp_path):
    out = run_stage(recipe_from_dict(recipe(stage, tmp_path / stage, bases)))
    assert layout_problems(out) == []
    if stage in ("ppo", "grpo"):  # the RL loop logs through rundir too: no second log file
        assert not (out / rundir.LEGACY_RL_LOG).exists()
        assert "kl" in (out / rundir.REPORT).read_text()
    # negative control: the same check catches a folder cut short
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    (cut / "checkpoint-2" / rundir.COMPLETE).unlink()
    (cut / rundir.LOG).unlink()
    assert layout_problems(cut) == ["no log_history.jsonl", "checkpoint-2 has no align_kit_complete",
                                    "rundir does not find every checkpoint complete"]
