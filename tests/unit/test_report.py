"""Reports: PNG plots are real images, the Markdown links every plot and holds the numbers given."""

from __future__ import annotations

import json
import re

import pytest
from matplotlib.image import imread

from align_kit.errors import DataError
from align_kit.report import read_log_history, write_pipeline_report, write_run_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sft_log():
    log = [{"step": s, "epoch": s / 10, "loss": 3.0 - 0.2 * s, "learning_rate": 1e-3} for s in range(1, 11)]
    log += [{"step": 5, "eval_loss": 2.4}, {"step": 10, "eval_loss": 1.9}, {"step": 10, "train_loss": 2.1}]
    return log


def dpo_log():
    return [{"step": s, "loss": 0.69 - 0.05 * s, "rewards/chosen": 0.1 * s, "rewards/rejected": -0.1 * s,
             "rewards/margins": 0.2 * s, "rewards/accuracies": min(1.0, 0.5 + 0.1 * s)} for s in range(1, 6)]


def rm_log():
    return [{"step": s, "loss": 0.7 - 0.1 * s, "margin": 0.3 * s, "accuracy": 0.5 + 0.05 * s} for s in range(1, 5)]


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000, path
    assert imread(path).shape[:2] == (360, 600)  # 6 x 3.6 inches at 100 dpi, decodable


def images(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def test_run_report_plots_and_numbers(tmp_path):
    path = write_run_report(tmp_path / "sft", sft_log(), {"before": {"verifier_accuracy": 0.125, "perplexity": 41.7},
                                                          "after": {"verifier_accuracy": 0.6875, "perplexity": 7.25}},
                            title="SFT on quickstart tasks")
    md = path.read_text()
    assert images(md) == ["plots/loss.png"]  # only loss keys were logged
    assert_png(tmp_path / "sft" / "plots" / "loss.png")
    assert "| metric | dataset | before | after |" in md
    assert "| verifier_accuracy | - | 0.125 | 0.6875 |" in md and "| perplexity | - | 41.7 | 7.25 |" in md
    assert "| loss | 10 | 2.8 | 1 | 1 | 2.8 |" in md and "| eval_loss | 2 | 2.4 | 1.9 | 1.9 | 2.4 |" in md
    evals = json.loads((tmp_path / "sft" / "evals.json").read_text())
    assert evals[1] == {"metric": "perplexity", "value": 41.7, "stage": "before"}


def test_pipeline_report_covers_every_stage(tmp_path):
    ppo_file = tmp_path / "ppo_log.jsonl"
    ppo_file.write_text("".join(json.dumps({"step": s, "score": 0.1 * s, "score_penalised": 0.1 * s - 0.01,
                                            "kl": 0.02 * s, "policy_loss": -0.01, "value_loss": 0.5 / s}) + "\n"
                                for s in range(1, 9)))
    acc = lambda stage, v: {"metric": "verifier_accuracy", "value": v, "stage": stage, "dataset": "quickstart"}  # noqa: E731
    stages = [
        {"name": "sft", "log_history": sft_log(), "evals": [acc("base", 0.0625), acc("sft", 0.4375)]},
        {"name": "reward", "log_history": rm_log(),
         "evals": [{"metric": "reward_accuracy", "value": 0.8125, "stage": "reward", "dataset": "pref_test"}]},
        {"name": "dpo", "log_history": dpo_log(), "evals": [acc("sft", 0.4375), acc("dpo", 0.5625)]},
        {"name": "ppo", "log_history": ppo_file, "evals": [acc("sft", 0.4375), acc("ppo", 0.625)], "status": "done"},
    ]
    md = write_pipeline_report(tmp_path / "pipe", stages).read_text()
    assert "| verifier_accuracy | quickstart | 0.0625 | 0.4375 | - | 0.5625 | 0.625 |" in md
    assert "| metric | dataset | base | sft | reward | dpo | ppo |" in md
    assert "| reward_accuracy | pref_test | - | - | 0.8125 | - | - |" in md
    assert "| 4 | ppo | done | 8 | - |" in md
    linked = images(md)
    for expected in ("plots/evals_verifier_accuracy.png", "plots/01_sft_loss.png", "plots/02_reward_margins.png",
                     "plots/02_reward_pair_accuracy.png", "plots/03_dpo_margins.png", "plots/03_dpo_dpo_rewards.png",
                     "plots/04_ppo_reward.png", "plots/04_ppo_kl.png", "plots/04_ppo_ppo_losses.png"):
        assert expected in linked, expected
    on_disk = sorted(p.relative_to(tmp_path / "pipe").as_posix() for p in (tmp_path / "pipe" / "plots").iterdir())
    assert on_disk == sorted(linked)  # every plot is linked and every link exists
    for rel in linked:
        assert_png(tmp_path / "pipe" / rel)
    assert "| kl | 8 | 0.02 | 0.16 | 0.02 | 0.16 |" in md and "| rewards/margins | 5 | 0.2 | 1 | 0.2 | 1 |" in md
    assert len(json.loads((tmp_path / "pipe" / "evals.json").read_text())) == 5  # the repeated "sft" rows merged


def test_pipeline_report_maps_before_after_to_models(tmp_path):
    stages = [{"name": "sft", "evals": {"before": {"verifier_accuracy": 0.1, "eval_loss": 3.2},
                                        "after": {"verifier_accuracy": 0.4, "eval_loss": 1.1}}},
              {"name": "reward", "evals": {"accuracy": 0.9, "reliability": [{"bin": [0, 1]}]}},
              {"name": "ppo", "evals": {"before": {"verifier_accuracy": 0.4}, "after": {"verifier_accuracy": 0.7}}}]
    md = write_pipeline_report(tmp_path, stages).read_text()
    assert "| metric | dataset | base | sft | reward | ppo |" in md
    assert "| verifier_accuracy | - | 0.1 | 0.4 | - | 0.7 |" in md and "| eval_loss | - | 3.2 | 1.1 | - | - |" in md
    assert "| accuracy | - | - | - | 0.9 | - |" in md


def test_log_readers(tmp_path):
    state = tmp_path / "trainer_state.json"
    state.write_text(json.dumps({"global_step": 2, "log_history": [{"step": 2, "loss": 1.5}]}))
    assert read_log_history(state) == [{"step": 2, "loss": 1.5}]
    bad = tmp_path / "log.jsonl"
    bad.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(DataError, match="row 2"):
        read_log_history(bad)
    md = write_run_report(tmp_path / "empty", [], None).read_text()
    assert "No evaluations were run." in md and "No training metrics were logged." in md and not images(md)


def test_run_report_plots_every_other_logged_value_that_changes(tmp_path):
    # an RL log: entropy and response length move, kl_coef stays put, timings and counters are not training
    log = [{"step": s, "score": 0.1 * s, "kl": 0.01 * s, "entropy": 2.0 - 0.1 * s, "response_length": 5 + s,
            "kl_coef": 0.05, "time_generate": 0.3 + 0.01 * s, "updates": float(s)} for s in range(1, 6)]
    md = write_run_report(tmp_path / "grpo", log, {"after": {"verifier_accuracy": 0.9}}).read_text()
    linked = images(md)
    assert linked == ["plots/reward.png", "plots/kl.png", "plots/log_entropy.png", "plots/log_response_length.png"]
    for rel in linked:
        assert_png(tmp_path / "grpo" / rel)
    assert "| entropy | 5 | 1.9 | 1.5 | 1.5 | 1.9 |" in md and "kl_coef" not in md and "time_generate" not in md


def _torn_reads(root, monkeypatch, writer=None) -> tuple[int, int]:
    """(torn, total) reads of ``report.md`` by a thread reading it while the pipeline report is rewritten 40
    times, alternately after its first stage and after all 400 (as a pipeline and a rerun over its folder do)."""
    import threading

    import align_kit.report as report

    if writer is not None:
        monkeypatch.setattr(report, "write_text", writer)
    stages = [{"name": f"s{i}", "status": "done"} for i in range(400)]  # ~36 KB: no logs, no evaluations
    write_pipeline_report(root, stages)
    torn, reads, stop = [], [0], threading.Event()

    def reader():
        while not stop.is_set():
            text = (root / "report.md").read_text(encoding="utf-8")
            reads[0] += 1
            rows, sections = text.count("| done |"), text.count("\n## Stage ")
            if rows not in (1, 400) or rows != sections or not text.endswith("No training metrics were logged.\n"):
                torn.append(len(text))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(40):
            write_pipeline_report(root, stages[: 1 if i % 2 else 400])
    finally:
        stop.set()
        thread.join()
    return len(torn), reads[0]


def test_a_reader_never_sees_a_report_being_rewritten(tmp_path, monkeypatch):
    """report.md and evals.json are replaced whole (temp file + rename): a test or a user reading a pipeline's
    report while a stage rewrites it gets the old report or the new one. Negative control: written in place
    (``Path.write_text``, as before), the same reader catches truncated reports (measured: ~1 read in 20)."""
    torn, reads = _torn_reads(tmp_path / "atomic", monkeypatch)
    assert reads > 40 and torn == 0, (torn, reads)
    assert sorted(p.name for p in (tmp_path / "atomic").iterdir()) == ["evals.json", "report.md"]  # no temp left

    def in_place(path, text):
        path.write_text(text, encoding="utf-8")
        return path

    torn, reads = _torn_reads(tmp_path / "in_place", monkeypatch, in_place)
    assert torn > 0, f"the reader never caught an in-place rewrite in {reads} reads: the test has lost its power"
