"""The quickstart pipeline end to end: each stage improves what it should, measured by the verifier.

The pipeline runs once per session (the ``quickstart`` fixture); these tests read its outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def _evals(root: Path, stage: str) -> dict:
    return json.loads((root / stage / "eval.json").read_text())


def test_sft_beats_the_untrained_model(quickstart):
    ev = _evals(quickstart, "sft")
    print(f"SFT verifier accuracy: {ev['before']['verifier_accuracy']:.3f} -> {ev['after']['verifier_accuracy']:.3f}")
    assert ev["before"]["verifier_accuracy"] <= 0.05
    assert ev["after"]["verifier_accuracy"] >= ev["before"]["verifier_accuracy"] + 0.3


def test_pipeline_report_shows_every_stage(quickstart):
    report = (quickstart / "report.md").read_text()
    for stage in ("sft", "reward", "dpo", "ppo"):
        assert f"| {stage} |" in report
    assert "verifier_accuracy" in report and list((quickstart / "plots").glob("*.png"))
    summary = json.loads((quickstart / "pipeline.json").read_text())
    assert [s["status"] for s in summary["stages"]] == ["done"] * 4


def test_rerun_reuses_finished_stages(quickstart, tmp_path):
    from align_kit.pipeline import run_pipeline

    root = Path(__file__).resolve().parents[2]
    before = (quickstart / "ppo" / "model" / "model.safetensors").stat().st_mtime_ns
    run_pipeline(root / "recipes/tiny/pipeline.yaml", output_dir=str(quickstart))
    summary = json.loads((quickstart / "pipeline.json").read_text())
    assert [s["status"] for s in summary["stages"]] == ["done (reused)"] * 4
    assert (quickstart / "ppo" / "model" / "model.safetensors").stat().st_mtime_ns == before


def test_gate_stops_the_pipeline(quickstart, tmp_path):
    """A gate that the reward model cannot pass stops the pipeline before later stages run."""
    import pytest

    from align_kit.pipeline import GateFailed, run_pipeline

    root = Path(__file__).resolve().parents[2]
    spec = yaml.safe_load((root / "recipes/tiny/pipeline.yaml").read_text())
    spec["stages"] = spec["stages"][:3]
    spec["stages"][1]["gate"] = {"metric": "accuracy", "min": 1.01}
    for s in spec["stages"]:
        s["recipe"] = str(root / "recipes/tiny" / s["recipe"])
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
    assert ev["pairs"] == 200 and ev["accuracy"] >= 0.9  # issue 4's bar (recipes/tiny/reward.yaml: measured)
    assert ev["accuracy"] > ev["length_baseline_accuracy"] + 0.25


def test_dpo_beats_sft(quickstart):
    ev = _evals(quickstart, "dpo")
    before, after = ev["before"], ev["after"]
    print(f"DPO: likelihood accuracy {before['likelihood_accuracy']:.3f} -> {after['likelihood_accuracy']:.3f}, "
          f"log-ratio accuracy 0.5 -> {after['logratio_accuracy']:.3f}, "
          f"verifier {before['verifier_accuracy']:.3f} -> {after['verifier_accuracy']:.3f}")
    # Issue 4's preference accuracy is the log-ratio one: chosen above rejected relative to the reference, 0.5
    # (all ties) before training. The plain likelihood ranking of the SFT model is already near 1.0.
    assert after["logratio_accuracy"] > 0.8
    assert after["likelihood_accuracy"] >= before["likelihood_accuracy"]
    assert after["verifier_accuracy"] > before["verifier_accuracy"]


def test_ppo_raises_reward_and_verifier_within_the_kl_limit(quickstart):
    """PPO-ptx raises the reward model's mean score and the verifier's accuracy on held-out prompts above the
    SFT model's, with the KL below the recipe's limit.

    Where the gain comes from: the SFT demonstrations miscount six-letter words (quickstart/tasks.py), the
    verifier-ranked pairs do not, so the reward model is right where the SFT model's likeliest answer is wrong
    and the right one is often sampled. The ptx term trains on those same slipped demonstrations, so it cannot
    be what fixes them (recipes/tiny/ppo.yaml has the per-kind figures)."""
    from align_kit.config import load_recipe

    ev = _evals(quickstart, "ppo")
    before, after = ev["before"], ev["after"]
    logs = [json.loads(line) for line in (quickstart / "ppo" / "ppo_log.jsonl").read_text().splitlines()]
    root = Path(__file__).resolve().parents[2]
    limit = load_recipe(root / "recipes/tiny/ppo.yaml").trainer_config().kl_limit
    print(f"PPO: reward {before['reward_mean']:+.3f} -> {after['reward_mean']:+.3f}, verifier "
          f"{before['verifier_accuracy']:.3f} -> {after['verifier_accuracy']:.3f} (sampled at the training "
          f"temperature {before['sampled_verifier_accuracy']:.3f} -> {after['sampled_verifier_accuracy']:.3f}), max KL "
          f"{max(r['kl'] for r in logs):.3f} (limit {limit})")
    assert before["prompts"] == after["prompts"] == 200
    assert after["reward_mean"] > before["reward_mean"] + 0.1
    # 10+ more of 200 right: more than the ptx term alone gives (0.905 -> 0.93 with the reward switched off)
    assert after["verifier_accuracy"] >= before["verifier_accuracy"] + 0.05
    assert after["sampled_verifier_accuracy"] > before["sampled_verifier_accuracy"]
    assert max(r["kl"] for r in logs) < limit
    assert all(r["ptx_loss"] < 1.0 for r in logs)  # the demonstrations stay well fitted


def test_dpo_and_ppo_fix_what_the_demonstrations_teach_wrong(quickstart):
    """On the held-out six-letter 'Length' prompts the SFT model gives the demonstrator's slip (5). DPO (from the
    verifier-ranked pairs) and PPO-ptx (from the reward model, although its ptx term trains on those slipped
    demonstrations) give 6."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align_kit.generation import generate
    from align_kit.quickstart import tasks

    rows = [json.loads(line) for line in (tasks.HERE / "prompts_test.jsonl").read_text().splitlines()]
    prompts = [r["prompt"] for r in rows if r["prompt"][-1]["content"].startswith("Length: ")
               and tasks.answer(r["prompt"][-1]["content"]) == str(tasks.SLIP_MIN_LETTERS)]
    right = {}
    for stage in ("sft", "dpo", "ppo"):
        model = AutoModelForCausalLM.from_pretrained(quickstart / stage / "model")
        tok = AutoTokenizer.from_pretrained(quickstart / stage / "model")
        answers = generate(model, tok, prompts, max_new_tokens=4)
        right[stage] = sum(a.strip() == str(tasks.SLIP_MIN_LETTERS) for a in answers)
    print("six-letter Length prompts answered right:", {stage: f"{n}/{len(prompts)}" for stage, n in right.items()})
    assert len(prompts) >= 10
    assert right["sft"] <= len(prompts) // 4
    assert right["dpo"] >= len(prompts) * 3 // 4 and right["ppo"] >= len(prompts) * 3 // 4
