"""A small quickstart pipeline (SFT -> DPO on the builtin model, few steps) with harness benchmarks before and
after each stage: scores and per-benchmark contamination in report.md, evals.json and the model card, and a
gate on a harness metric."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install 'align-kit[eval]')")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_harness import QUESTIONS, _quiz_rows, local_task_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
QS = ROOT / "align_kit" / "quickstart"


def _lines(path: Path, n: int) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)[:n]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from align_kit.pipeline import run_pipeline

    tmp = tmp_path_factory.mktemp("harness_pipeline")
    include = local_task_folder(tmp, _quiz_rows())
    planted = [json.dumps({"messages": [{"role": "user", "content": f"Quiz: {q}"},
                                        {"role": "assistant", "content": "no"}]}) + "\n" for q in QUESTIONS[:2]]
    sft_lines = _lines(QS / "sft_train.jsonl", 600)
    (tmp / "sft_train.jsonl").write_text("".join(sft_lines[:300] + planted + sft_lines[300:]), encoding="utf-8")
    (tmp / "sft_test.jsonl").write_text("".join(_lines(QS / "sft_test.jsonl", 24)), encoding="utf-8")
    (tmp / "pref_train.jsonl").write_text("".join(_lines(QS / "pref_train.jsonl", 64)), encoding="utf-8")
    (tmp / "pref_test.jsonl").write_text("".join(_lines(QS / "pref_test.jsonl", 8)), encoding="utf-8")
    spec = {"output_dir": str(tmp / "run"), "title": "harness pipeline",
            "evaluation": {"harness": {"tasks": ["quickstart_tasks", "village_quiz", "quickstart_choice"],
                                       "include": [str(include)],
                                       "limit": 24}},
            "stages": [
                {"name": "sft", "recipe": str(ROOT / "recipes/tiny/sft.yaml"),
                 "overrides": [f"data.train=[{{path: {tmp}/sft_train.jsonl, format: messages}}]",
                               f"data.eval=[{{path: {tmp}/sft_test.jsonl, format: messages}}]",
                               "trainer.max_steps=30", "trainer.save_steps=100", "trainer.warmup_steps=2",
                               "sft.verifier_max_new_tokens=8"]},
                {"name": "dpo", "recipe": str(ROOT / "recipes/tiny/dpo.yaml"), "use": {"model.name_or_path": "sft"},
                 "overrides": [f"data.train=[{{path: {tmp}/pref_train.jsonl, format: preference}}]",
                               f"data.eval=[{{path: {tmp}/pref_test.jsonl, format: preference}}]",
                               "trainer.max_steps=4", "trainer.save_steps=100", "trainer.warmup_steps=1"]}]}
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path, run_pipeline(path)


def test_report_shows_scores_before_and_after_with_overlap(run):
    _, root = run
    sft = json.loads((root / "sft" / "harness.json").read_text())
    dpo = json.loads((root / "dpo" / "harness.json").read_text())
    assert sft["start"] == "builtin:tiny-llama" and sft["after"]["quickstart_tasks"]["documents"] == 24
    assert dpo["before"] == sft["after"]  # the DPO stage starts from the SFT model: scored once
    assert sft["after"]["quickstart_tasks"]["acc"] > sft["before"]["quickstart_tasks"]["acc"]
    # the 2 planted quiz questions are in the SFT data (602 rows after no held-out split), none in DPO's
    assert sft["contamination"]["village_quiz"]["contaminated_rows"] == 2
    assert dpo["contamination"]["village_quiz"]["contaminated_rows"] == 0
    report = (root / "report.md").read_text()
    assert "## Benchmarks (lm-evaluation-harness) and training-data overlap" in report
    n = sft["contamination"]["village_quiz"]["training_rows"]
    assert "| sft | village_quiz | acc | 3 |" in report and f"| 2 / {n} (" in report
    # "Length: abcd" is too short for the 13-word rule: said so, not reported as a clean 0
    assert "| sft | quickstart_tasks | acc | 24 | 0 |" in report and "not measurable: test documents under 8" in report
    assert "| acc | quickstart_tasks |" in report  # the before/after table: base, sft and dpo columns
    assert (root / "plots" / "evals_acc.png").is_file()


def test_harness_accuracy_equals_the_stages_verifier_metric(run):
    """Same 24 held-out rows, same model: the SFT stage's own verifier accuracy and the harness's agree."""
    _, root = run
    evals = json.loads((root / "sft" / "eval.json").read_text())
    harness_acc = json.loads((root / "sft" / "harness.json").read_text())["after"]["quickstart_tasks"]["acc"]
    assert harness_acc == pytest.approx(evals["after"]["verifier_accuracy"])


def test_a_multiple_choice_task_reports_acc_and_acc_norm(run):
    """quickstart_choice (log-likelihood) beside the generated tasks: both metrics before and after, in
    report.md and evals.json, a gate can read acc_norm, and its prompts are too short for the overlap rule."""
    from align_kit.pipeline import Gate, GateFailed, StageSpec, check_gate

    _, root = run
    sft = json.loads((root / "sft" / "harness.json").read_text())
    for when in ("before", "after"):
        assert set(sft[when]["quickstart_choice"]) == {"acc", "acc_norm", "documents"}
        assert sft[when]["quickstart_choice"]["documents"] == 24
    report = (root / "report.md").read_text()
    for metric in ("acc", "acc_norm"):
        value = sft["after"]["quickstart_choice"][metric]
        assert f"| sft | quickstart_choice | {metric} | 24 | " in report and f" | {value:.4g} | not measurable" in report
    records = json.loads((root / "sft" / "evals.json").read_text())
    assert {(r["stage"], r["metric"]) for r in records if r.get("dataset") == "quickstart_choice"} == \
        {(s, m) for s in ("before", "after") for m in ("acc", "acc_norm")}
    assert sft["contamination"]["quickstart_choice"]["indexed_documents"] == 0
    gate = Gate(metric="harness.after.quickstart_choice.acc_norm", min=1.01)
    with pytest.raises(GateFailed, match=r"harness.after.quickstart_choice.acc_norm = [0-9.]+, required >= 1.01"):
        check_gate(StageSpec(name="sft", recipe="sft.yaml", gate=gate), root / "sft")


def test_model_card_lists_benchmarks_beside_contamination(run, tmp_path):
    from align_kit.modelcard import card_from_run

    _, root = run
    card = card_from_run(root / "dpo", tmp_path / "card", "tiny-dpo").read_text()
    assert "## Benchmarks and training-data overlap" in card
    n = json.loads((root / "sft" / "harness.json").read_text())["contamination"]["village_quiz"]["training_rows"]
    assert "| sft | village_quiz | acc |" in card and f"2 / {n} (" in card
    assert "| dpo | village_quiz | acc |" in card and "| base | quickstart_tasks | acc |" in card
    assert "| dpo | quickstart_choice | acc_norm |" in card  # a multiple-choice task's second metric too


def test_changing_the_benchmarks_rescores_without_retraining(run):
    """The evaluation block is no part of a run's identity: a re-run with another limit reuses both stages
    and scores them again."""
    from align_kit.pipeline import run_pipeline

    path, root = run
    weights = (root / "dpo" / "model" / "model.safetensors").stat().st_mtime_ns
    spec = yaml.safe_load(path.read_text())
    spec["evaluation"]["harness"]["limit"] = 12
    changed = path.with_name("pipeline_limit12.yaml")
    changed.write_text(yaml.safe_dump(spec))
    run_pipeline(changed)
    summary = json.loads((root / "pipeline.json").read_text())
    assert [s["status"] for s in summary["stages"]] == ["done (reused)"] * 2
    assert (root / "dpo" / "model" / "model.safetensors").stat().st_mtime_ns == weights
    for stage in ("sft", "dpo"):
        result = json.loads((root / stage / "harness.json").read_text())
        assert result["settings"]["limit"] == 12 and result["after"]["quickstart_tasks"]["documents"] == 12
    run_pipeline(path)  # back to the module's settings for the tests below


def test_gate_on_a_harness_metric_stops_the_pipeline(run):
    from align_kit.pipeline import GateFailed, run_pipeline

    path, root = run
    spec = yaml.safe_load(path.read_text())
    spec["stages"][1]["gate"] = {"metric": "harness.after.quickstart_tasks.acc", "min": 1.01}
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(GateFailed, match=r"harness.after.quickstart_tasks.acc = [0-9.]+, required >= 1.01"):
        run_pipeline(path)
    summary = json.loads((root / "pipeline.json").read_text())
    assert [s["status"] for s in summary["stages"]] == ["done (reused)"] * 2
