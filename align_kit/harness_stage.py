"""Harness benchmarks around a stage: scores before and after, the training data's overlap with each test set.

:func:`run_for_stage` writes ``<run>/harness.json``::

    {"settings": {...}, "start": "<model the stage started from>",
     "before": {task: {metric: value, "documents": n}}, "after": {...},
     "contamination": {task: {"training_rows", "contaminated_rows", "share", "test_documents", ...}}}

adds the scores to the run's ``evals.json`` (what ``align-kit export`` puts in the model card, with the
contamination figures beside them) and a section to its ``report.md``. A finished run with the same settings
is not scored again, and a stage that starts from a run with the same settings reuses that run's "after" as
its "before".
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from align_kit.data.io import write_text
from align_kit.errors import ConfigError
from align_kit.harness import RESULTS, evaluate_model, load_tasks, read_results, settings, task_documents

log = logging.getLogger("align_kit")
# Which rows a stage trains on (align_kit.data.sources.load_data kinds); PPO's depends on ppo.prompts_from.
DATA_KIND = {"sft": "instruction", "reward": "preference", "dpo": "preference", "kto": "unpaired",
             "pretrain": "text"}
PPO_KIND = {"conversations": "instruction", "preferences": "preference", "prompts": "prompt"}


def harness_args(recipe):
    evaluation = getattr(recipe, "evaluation", None)
    return evaluation.harness if evaluation is not None else None


def check_recipe(recipe) -> None:
    """Refuse at load what cannot run: a reward model answers no benchmark; unknown tasks, no harness."""
    from align_kit.harness import check_tasks

    args = harness_args(recipe)
    if args is None:
        return
    if recipe.stage == "reward":
        raise ConfigError("evaluation.harness: a reward model scores responses and answers no benchmark; "
                          "put the harness tasks on the policy stages (sft, dpo, kto, ppo, pretrain)")
    check_tasks(args)


def _load(model_args):
    from align_kit.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_args)
    return load_model(model_args, tokenizer), tokenizer


def _score(model_args, args, tasks) -> dict:
    log.info("harness: scoring %s on %s", model_args.name_or_path, ", ".join(tasks))
    model, tokenizer = _load(model_args)
    scores = evaluate_model(model, tokenizer, args, tasks)
    del model
    return scores


def _reused_before(start: str, sig: dict) -> dict | None:
    """The "after" scores of the run whose model this stage starts from, when measured with the same settings."""
    folder = Path(start)
    for run in (folder, folder.parent):
        prev = read_results(run) if run.is_dir() else None
        if prev and prev.get("settings") == sig and prev.get("after"):
            return prev["after"]
    return None


def training_rows(recipe) -> list:
    """The rows the stage trains on (after the held-out split and the mixture)."""
    from align_kit.data.sources import load_data

    kind = PPO_KIND[recipe.options.prompts_from] if recipe.stage == "ppo" else DATA_KIND.get(recipe.stage)
    if recipe.data is None or kind is None:
        return []
    return load_data(recipe.data, kind).train


def run_for_stage(recipe, out: str | Path | None = None) -> dict | None:
    """Score the stage's start and trained models on its harness tasks; record the overlap; ``None`` without
    an ``evaluation.harness`` block."""
    from align_kit.harness import contamination
    from align_kit.rundir import is_main_process, model_dir

    args = harness_args(recipe)
    out = Path(out or recipe.output_dir)
    if args is None or not is_main_process():
        return None
    sig = settings(args)
    prev = read_results(out)
    if prev and prev.get("settings") == sig and prev.get("after"):
        return prev
    tasks = load_tasks(args)
    start = recipe.model.name_or_path
    before = _reused_before(start, sig) or _score(recipe.model, args, tasks)
    after = _score(dataclasses.replace(recipe.model, name_or_path=str(model_dir(out))), args, tasks)
    result = {"settings": sig, "start": Path(start).name if Path(start).exists() else start,
              "before": before, "after": after,
              "contamination": contamination(training_rows(recipe), task_documents(tasks, args.limit))}
    write_text(out / RESULTS, json.dumps(result, indent=2) + "\n")
    _add_to_run_files(out, result)
    return result


def records(result: dict | None) -> list[dict]:
    """Evaluation records (:mod:`align_kit.report`) of a ``harness.json``: one per task, metric and stage,
    the "after" ones carrying the task's contamination figures (the stage's training data).

    >>> recs = records({"before": {"t": {"acc": 0.25, "documents": 4}}, "after": {"t": {"acc": 0.5, "documents": 4}},
    ...                 "contamination": {"t": {"training_rows": 10, "contaminated_rows": 1}}})
    >>> recs[0]["stage"], "training_rows" in recs[0], recs[1]
    ('before', False, {'metric': 'acc', 'value': 0.5, 'stage': 'after', 'dataset': 't', 'split': 'test', 'task': 'benchmark', 'training_rows': 10, 'contaminated_rows': 1})
    """
    out = []
    for stage in ("before", "after"):
        for task, scores in ((result or {}).get(stage) or {}).items():
            overlap = (result.get("contamination") or {}).get(task) or {}
            for metric, value in scores.items():
                if metric in ("documents", "responses") or not isinstance(value, (int, float)):
                    continue
                # the overlap is the stage's training data: it belongs to the model trained on it ("after")
                shown = overlap if stage == "after" else {}
                out.append({"metric": metric, "value": float(value), "stage": stage, "dataset": task,
                            "split": "test", "task": "benchmark",
                            **{k: shown[k] for k in ("training_rows", "contaminated_rows", "test_documents",
                                                      "indexed_documents") if k in shown}})
    return out


def overlap_text(rec: dict) -> str:
    """``3 / 2000 (0.15%)`` for a record with contamination figures, ``-`` without.

    >>> overlap_text({"training_rows": 2000, "contaminated_rows": 3}), overlap_text({})
    ('3 / 2000 (0.15%)', '-')
    >>> overlap_text({"training_rows": 20, "contaminated_rows": 0, "indexed_documents": 0})
    'not measurable: test documents under 8 words'
    >>> overlap_text({"training_rows": 20, "contaminated_rows": 1, "indexed_documents": 3, "test_documents": 4})
    '1 / 20 (5.00%); 3 of 4 test documents long enough to check'
    """
    if "training_rows" not in rec:
        return "-"
    indexed, docs = rec.get("indexed_documents"), rec.get("test_documents")
    if indexed == 0:  # the n-gram rule skips items this short ("Length: abcd")
        return "not measurable: test documents under 8 words"
    n, k = rec["training_rows"], rec["contaminated_rows"]
    text = f"{k} / {n} ({100 * k / n:.2f}%)" if n else "0 / 0"
    if indexed is not None and docs and indexed < docs:
        text += f"; {indexed} of {docs} test documents long enough to check"
    return text


def section(runs: list[tuple[str, dict]]) -> list[str]:
    """Markdown lines: per stage and task, the scores before and after and the training rows overlapping the
    task's test set."""
    lines = ["## Benchmarks (lm-evaluation-harness) and training-data overlap", "",
             "Overlap: training rows of the stage sharing an n-gram with the task's test documents "
             "(align_kit's decontamination rule: 13 words, 25 Chinese characters).", "",
             "| stage | task | metric | documents | before | after | training rows overlapping the test set |",
             "|---|---|---|---|---|---|---|"]
    for stage, result in runs:
        for task, after in (result.get("after") or {}).items():
            before = (result.get("before") or {}).get(task, {})
            overlap = (result.get("contamination") or {}).get(task, {})
            for metric, value in after.items():
                if metric in ("documents", "responses") or not isinstance(value, (int, float)):
                    continue
                prior = before.get(metric)
                lines.append(f"| {stage} | {task} | {metric} | {after.get('documents', '-')} | "
                             f"{'-' if prior is None else f'{prior:.4g}'} | {value:.4g} | {overlap_text(overlap)} |")
    return lines


def _add_to_run_files(out: Path, result: dict) -> None:
    evals_file = out / "evals.json"
    evals = json.loads(evals_file.read_text(encoding="utf-8")) if evals_file.is_file() else []
    evals = [r for r in evals if r.get("task") != "benchmark"] + records(result)
    write_text(evals_file, json.dumps(evals, indent=2) + "\n")
    append_section(out / "report.md", [(out.name, result)])


def append_section(report: Path, runs: list[tuple[str, dict]]) -> None:
    """Add (or replace) the benchmarks section at the end of a ``report.md``."""
    if not runs:
        return
    text = report.read_text(encoding="utf-8") if report.is_file() else ""
    head = text.split("\n## Benchmarks (lm-evaluation-harness)", 1)[0].rstrip("\n")
    write_text(report, (head + "\n\n" if head else "") + "\n".join(section(runs)) + "\n")
