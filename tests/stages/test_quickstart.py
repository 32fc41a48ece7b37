"""The quickstart pipeline end to end: each stage improves what it should, measured by the verifier.

The pipeline runs once per session (the ``quickstart`` fixture); these tests read its outputs. Every bound
below holds for each of the five seeds of the seeds table in benchmarks/RESULTS.md ("Quickstart over seeds",
``python benchmarks/quickstart_seeds.py``), with the margin from that table stated beside it. The table's
extremes are quoted as [min, max] over seeds 0-4.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# One xdist worker takes all of them: the pipeline runs once, and the other worker never waits on its lock.
pytestmark = pytest.mark.xdist_group("quickstart")


def _evals(root: Path, stage: str) -> dict:
    return json.loads((root / stage / "eval.json").read_text())


@pytest.fixture(scope="module")
def kinds(quickstart) -> dict[str, dict[str, float]]:
    """Greedy verifier accuracy per task kind of every policy stage on the 240 held-out prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align_kit.generation import generate
    from align_kit.quickstart import tasks

    rows = [json.loads(line) for line in (tasks.HERE / "sft_test.jsonl").read_text().splitlines()]
    prompts = [r["messages"][:-1] for r in rows]
    out = {}
    for stage in ("sft", "dpo", "ppo"):
        model = AutoModelForCausalLM.from_pretrained(quickstart / stage / "model")
        tok = AutoTokenizer.from_pretrained(quickstart / stage / "model")
        out[stage] = tasks.accuracy_by_kind([p[-1]["content"] for p in prompts], generate(model, tok, prompts, max_new_tokens=8))
    print("greedy verifier accuracy per kind:", json.dumps(out))
    return out


def test_sft_learns_the_tasks_and_the_demonstrators_slip(quickstart, kinds):
    ev = _evals(quickstart, "sft")
    print(f"SFT verifier accuracy: {ev['before']['verifier_accuracy']:.3f} -> {ev['after']['verifier_accuracy']:.3f}")
    assert ev["before"]["verifier_accuracy"] <= 0.05  # an untrained model: 0.000 on every seed
    assert ev["after"]["verifier_accuracy"] >= 0.65  # seeds [0.708, 0.771]; ~0.76 = all right but the slip
    sft = kinds["sft"]
    assert sft["contains"] >= 0.95  # seeds [1.000, 1.000]
    assert sft["length"] >= 0.85  # seeds [0.909, 1.000]
    assert sft["length, slipped"] <= 0.25  # the slip is learnt: seeds [0.000, 0.035]


def test_pipeline_report_shows_every_stage(quickstart):
    report = (quickstart / "report.md").read_text()
    for stage in ("sft", "reward", "dpo", "ppo"):
        assert f"| {stage} |" in report
    assert "verifier_accuracy" in report and list((quickstart / "plots").glob("*.png"))
    summary = json.loads((quickstart / "pipeline.json").read_text())
    assert [s["status"] for s in summary["stages"]] == ["done"] * 4


def test_rerun_reuses_finished_stages(quickstart, tmp_path):
    """The pipeline run again over its finished folder reuses every stage. It runs over a copy: the shared
    folder is read by the other tests of the session, and a rerun rewrites its report.md stage by stage."""
    import shutil

    from align_kit.pipeline import run_pipeline

    copy = tmp_path / "quickstart"
    shutil.copytree(quickstart, copy, symlinks=True)
    before = (copy / "ppo" / "model" / "model.safetensors").stat().st_mtime_ns
    run_pipeline(ROOT / "recipes/tiny/pipeline.yaml", output_dir=str(copy))
    summary = json.loads((copy / "pipeline.json").read_text())
    assert [s["status"] for s in summary["stages"]] == ["done (reused)"] * 4
    assert (copy / "ppo" / "model" / "model.safetensors").stat().st_mtime_ns == before


def test_gate_stops_the_pipeline(quickstart, tmp_path):
    """A gate that the reward model cannot pass stops the pipeline before later stages run."""
    from align_kit.pipeline import GateFailed, run_pipeline

    spec = yaml.safe_load((ROOT / "recipes/tiny/pipeline.yaml").read_text())
    spec["stages"] = spec["stages"][:3]
    spec["stages"][1]["gate"] = {"metric": "accuracy", "min": 1.01}
    for s in spec["stages"]:
        s["recipe"] = str(ROOT / "recipes/tiny" / s["recipe"])
    path = tmp_path / "gated.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "gated"
    out.mkdir()
    for stage in ("sft", "reward"):  # reuse the finished stages: the gate is what is under test
        (out / stage).symlink_to(quickstart / stage, target_is_directory=True)
    with pytest.raises(GateFailed, match="accuracy = .* required >= 1.01"):
        run_pipeline(path, output_dir=str(out))
    assert not (out / "dpo").exists()


def test_reward_model_ranks_held_out_pairs(quickstart):
    ev = _evals(quickstart, "reward")
    print(f"reward model on {ev['pairs']} held-out pairs: accuracy {ev['accuracy']:.3f} "
          f"(longer answer {ev['length_baseline_accuracy']:.3f}), ECE {ev['ece']:.3f}")
    assert ev["pairs"] == 240
    assert ev["accuracy"] >= 0.9  # seeds [0.946, 1.000]
    assert ev["accuracy"] >= ev["length_baseline_accuracy"] + 0.3  # gain over it: seeds [+0.475, +0.513]


def test_dpo_fixes_the_slip(quickstart, kinds):
    ev = _evals(quickstart, "dpo")
    before, after = ev["before"], ev["after"]
    print(f"DPO: likelihood accuracy {before['likelihood_accuracy']:.3f} -> {after['likelihood_accuracy']:.3f}, "
          f"log-ratio accuracy 0.5 -> {after['logratio_accuracy']:.3f}, "
          f"verifier {before['verifier_accuracy']:.3f} -> {after['verifier_accuracy']:.3f}")
    # The log-ratio accuracy (chosen above rejected relative to the reference) is 0.5 before training: all ties.
    assert after["logratio_accuracy"] >= 0.9  # seeds [1.000, 1.000]
    assert after["verifier_accuracy"] >= before["verifier_accuracy"] + 0.15  # gain: seeds [+0.229, +0.292]
    assert kinds["dpo"]["length, slipped"] >= 0.8  # seeds [1.000, 1.000]
    assert kinds["dpo"]["contains"] >= 0.95 and kinds["dpo"]["length"] >= 0.95  # seeds [1.000, 1.000]


def test_ppo_fixes_the_slip_from_the_reward_model_within_the_kl_limit(quickstart, kinds):
    """PPO-ptx raises the verifier's accuracy on held-out prompts above the SFT model's and does not lower the
    reward model's mean score (it rose on every seed, on seed 1 by only +0.034), with the KL below the recipe's
    limit. The gain is the slipped counts: the reward model is exact there (the pairs carry no slip), the SFT
    model's likeliest answer is wrong and the right one is sampled about a quarter of the time; the ptx term
    trains on the slipped demonstrations themselves."""
    from align_kit.config import load_recipe

    ev = _evals(quickstart, "ppo")
    before, after = ev["before"], ev["after"]
    logs = [json.loads(line) for line in (quickstart / "ppo" / "log_history.jsonl").read_text().splitlines()]
    limit = load_recipe(ROOT / "recipes/tiny/ppo.yaml", inputs=False).trainer_config().kl_limit
    print(f"PPO: reward {before['reward_mean']:+.3f} -> {after['reward_mean']:+.3f}, verifier "
          f"{before['verifier_accuracy']:.3f} -> {after['verifier_accuracy']:.3f} (sampled at the training "
          f"temperature {before['sampled_verifier_accuracy']:.3f} -> {after['sampled_verifier_accuracy']:.3f}), max KL "
          f"{max(r['kl'] for r in logs):.3f} (limit {limit})")
    assert before["prompts"] == after["prompts"] == 240
    # Not lowered: raised on every seed, +0.034 to +1.628 (seed 1 barely), so the bound allows 0.1 of noise.
    assert after["reward_mean"] >= before["reward_mean"] - 0.1  # gain: seeds [+0.034, +1.628]
    assert after["verifier_accuracy"] >= before["verifier_accuracy"] + 0.08  # gain: seeds [+0.125, +0.258]
    assert after["sampled_verifier_accuracy"] >= before["sampled_verifier_accuracy"] + 0.02  # [+0.053, +0.195]
    assert kinds["ppo"]["length, slipped"] >= kinds["sft"]["length, slipped"] + 0.3  # gain: [+0.50, +1.00]
    assert kinds["ppo"]["contains"] >= 0.95  # seeds [1.000, 1.000]
    assert kinds["ppo"]["length"] >= kinds["sft"]["length"] - 0.05  # nothing else lost: equal on every seed
    assert max(r["kl"] for r in logs) < limit
