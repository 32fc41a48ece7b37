"""Run a list of stages as one pipeline: chaining outputs, skipping finished stages, evaluation gates.

A pipeline file::

    output_dir: runs/quickstart
    stages:
      - name: sft
        recipe: sft.yaml                     # relative to the pipeline file
      - name: reward
        recipe: reward.yaml
        gate: {metric: accuracy, min: 0.9}   # stop here if the reward model is poor
      - name: ppo
        recipe: ppo.yaml
        use: {model.name_or_path: sft, ppo.reward_model: reward}   # recipe key <- a stage's model/
        overrides: [trainer.learning_rate=1e-4]
    evaluation:                              # harness benchmarks before/after every policy stage (harness.py)
      harness: {tasks: [quickstart_tasks], limit: 100}

A gate may read a stage's harness scores: ``{metric: harness.after.quickstart_tasks.acc, min: 0.5}``.

Each stage writes to ``<output_dir>/<name>``. A stage whose ``model/`` is complete is skipped on a re-run;
a stage killed midway resumes from its last complete checkpoint (the stages do that themselves).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from align_kit import harness_stage, rundir
from align_kit.config import build, load_recipe, read_yaml_file
from align_kit.errors import AlignKitError, ConfigError
from align_kit.harness import EvaluationArgs
from align_kit.stages import run_stage

log = logging.getLogger("align_kit")


class GateFailed(AlignKitError):
    """An evaluation gate stopped the pipeline."""


@dataclass
class Gate:
    metric: str
    """Dotted path into the stage's eval.json, e.g. accuracy (reward) or after.verifier_accuracy (SFT, DPO)."""
    min: float | None = None
    max: float | None = None


@dataclass
class StageSpec:
    name: str
    recipe: str
    use: dict[str, str] = field(default_factory=dict)
    """Recipe keys (dotted) set to an earlier stage's model folder."""
    overrides: list[str] = field(default_factory=list)
    gate: Gate | None = None


@dataclass
class PipelineSpec:
    stages: list[StageSpec]
    output_dir: str = "runs/pipeline"
    title: str = "align_kit pipeline"
    evaluation: EvaluationArgs | None = None
    """Benchmarks for every stage whose recipe has no ``evaluation:`` block of its own (reward stages excepted)."""


def load_pipeline(path: str | Path) -> tuple[PipelineSpec, Path]:
    path = Path(path)
    raw = read_yaml_file(path, "pipeline")
    try:
        spec = build(PipelineSpec, raw, "pipeline")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    names = [s.name for s in spec.stages]
    for i, s in enumerate(spec.stages):
        for key, ref in s.use.items():
            if ref not in names[:i]:
                raise ConfigError(f"{path}: stage '{s.name}': use.{key} refers to '{ref}', which is not an earlier "
                                  f"stage (earlier: {', '.join(names[:i]) or 'none'})")
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: stage names must be unique, found {names}")
    if spec.evaluation is not None and spec.evaluation.harness is not None:
        from align_kit.harness import check_tasks

        try:
            check_tasks(spec.evaluation.harness)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if spec.evaluation is not None and spec.evaluation.engine == "vllm":  # its environment, before any stage runs
        from align_kit.engines.vllm_engine import vllm_python

        try:
            vllm_python(spec.evaluation.vllm_python, key="evaluation.vllm_python")
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return spec, path.parent


def _metric(evals: dict, dotted: str):
    node = evals
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def check_gate(stage: StageSpec, out: Path) -> None:
    from align_kit.harness import read_results

    if stage.gate is None:
        return
    evals = json.loads((out / "eval.json").read_text()) if (out / "eval.json").exists() else {}
    evals = {**evals, "harness": read_results(out) or {}}  # harness.after.<task>.<metric>
    value = _metric(evals, stage.gate.metric)
    g = stage.gate
    if value is None:
        raise GateFailed(f"gate after stage '{stage.name}': metric {g.metric} not found in {out / 'eval.json'}")
    if (g.min is not None and value < g.min) or (g.max is not None and value > g.max):
        bound = f">= {g.min}" if g.min is not None else f"<= {g.max}"
        raise GateFailed(f"gate after stage '{stage.name}': {g.metric} = {value:.4f}, required {bound}; "
                         "the pipeline stops here (later stages would build on a poor model)")
    log.info("gate after %s: %s = %.4f passed", stage.name, g.metric, value)


def stage_evaluation(evaluation: EvaluationArgs | None, stage: str) -> EvaluationArgs | None:
    """The pipeline's ``evaluation:`` block as a stage without its own gets it: none for reward stages (they
    answer no benchmark), and its engine only for the stages that answer with it (RL stages evaluate with
    their rollout engine, pretraining generates nothing).

    >>> block = EvaluationArgs(engine="vllm")
    >>> stage_evaluation(block, "reward") is None, stage_evaluation(block, "dpo").engine, stage_evaluation(block, "ppo").engine
    (True, 'vllm', None)
    """
    if evaluation is None or stage == "reward":
        return None
    return replace(evaluation, engine=evaluation.engine if stage in ("sft", "dpo", "kto") else None)


def run_pipeline(path: str | Path, overrides: dict[str, list[str]] | None = None, output_dir: str | None = None,
                 only: list[str] | None = None) -> Path:
    """Run every stage in order; returns the pipeline output folder (with report.md)."""
    spec, base = load_pipeline(path)
    root = Path(output_dir or spec.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    done: dict[str, Path] = {}
    summary = []
    for stage in spec.stages:
        out = root / stage.name
        extra = [f"output_dir={out}"] + [f"{k}={rundir.model_dir(done[v])}" for k, v in stage.use.items()]
        # a stage left out by --only is recorded, not run: its inputs (an earlier stage's folder) may not exist
        recipe = load_recipe(base / stage.recipe, [*stage.overrides, *(overrides or {}).get(stage.name, []), *extra],
                             inputs=not only or stage.name in only)
        if recipe.evaluation is None:
            recipe.evaluation = stage_evaluation(spec.evaluation, recipe.stage)
        if only and stage.name not in only:
            status = "skipped (not selected)"
        elif rundir.is_finished(out) and _same_run(stage, recipe, out):
            status = "done (reused)"
            log.info("stage %s: finished earlier, reusing %s", stage.name, rundir.model_dir(out))
            harness_stage.run_for_stage(recipe, out)  # scored only when harness.json lacks these settings
        else:  # run_stage checks (and records) the identity of a half-finished stage itself
            log.info("stage %s: running %s", stage.name, stage.recipe)
            run_stage(recipe)
            status = "done"
        done[stage.name] = out
        summary.append({"name": stage.name, "kind": recipe.stage, "status": status, "output_dir": str(out),
                        "start": stage.use.get("model.name_or_path"),
                        "log_history": next((str(out / n) for n in (rundir.LOG, rundir.LEGACY_RL_LOG)
                                             if (out / n).exists()), None),
                        "evals": _stage_evals(out, stage.name)})
        if rundir.is_main_process():
            _report(root, spec, summary)
        if not status.startswith("skipped"):
            check_gate(stage, out)
    return root


def _same_run(stage: StageSpec, recipe, out: Path) -> bool:
    """Whether a finished stage was made by this recipe (align_kit.identity). A stage made with other
    settings (its own overrides, or an earlier stage retrained under it) stops the pipeline, unless the stage
    sets ``resume_anyway``: it is then run, which reuses its final checkpoint and records the override."""
    from align_kit.identity import compare, mismatch_error

    _, changed = compare(recipe, out)
    if not changed:
        return True
    if recipe.resume_anyway:
        return False
    raise mismatch_error(f"stage '{stage.name}': ", out, changed)


def _stage_evals(out: Path, name: str) -> list[dict] | None:
    """The stage's eval.json as records, with its harness scores (before/after) added."""
    from align_kit.harness import read_results
    from align_kit.report import normalise_evals

    evals = json.loads((out / "eval.json").read_text()) if (out / "eval.json").exists() else None
    records = normalise_evals(evals, stage=name) + harness_stage.records(read_results(out))
    return records or None


def _report(root: Path, spec: PipelineSpec, summary: list[dict]) -> None:
    from align_kit.harness import read_results
    from align_kit.report import write_pipeline_report

    report = write_pipeline_report(root, summary, title=spec.title)
    runs = [(s["name"], r) for s in summary if (r := read_results(s["output_dir"]))]
    harness_stage.append_section(report, runs)
    rundir.write_json(root / "pipeline.json", {"stages": summary})
