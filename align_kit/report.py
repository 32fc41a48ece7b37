"""Run and pipeline reports: PNG plots of training logs (matplotlib, Agg) and a Markdown summary.

Inputs are plain: a log history is a list of dicts (``trainer.state.log_history``, one dict per logging
step) or a path to a ``.jsonl`` log (a run's ``log_history.jsonl``) or to ``trainer_state.json``. Evaluation
results are records ``{"metric", "value", "stage", "dataset"?, "split"?}`` where ``stage`` says which model
was measured (``base``, ``sft``, ``dpo``...), so a table with one column per stage shows what each stage did.
Plots are drawn with the object API on an Agg canvas: no pyplot, no global backend switch in the caller.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from align_kit.data.io import write_text
from align_kit.errors import DataError

# (file stem, title, y label, log keys): a plot is drawn when any of its keys was logged.
PLOTS = (
    ("loss", "Training and evaluation loss", "loss", ("loss", "eval_loss")),
    ("ppo_losses", "PPO policy and value loss", "loss", ("policy_loss", "value_loss")),
    ("reward", "PPO reward (reward-model score)", "score", ("score", "score_penalised")),
    ("kl", "PPO KL to the reference policy", "KL (nats/sequence)", ("kl",)),
    ("margins", "Reward margin (chosen - rejected)", "margin",
     ("rewards/margins", "eval_rewards/margins", "margin", "eval_margin")),
    ("pair_accuracy", "Pairwise accuracy (chosen ranked first)", "accuracy",
     ("rewards/accuracies", "eval_rewards/accuracies", "accuracy", "eval_accuracy")),
    ("dpo_rewards", "DPO implicit rewards", "reward", ("rewards/chosen", "rewards/rejected")),
)
# Counters and clocks: they change at every step but say nothing about training.
NOT_PLOTTED = ("step", "epoch", "total_flos", "updates")
MAX_OTHER_PLOTS = 16


def changing_keys(log_history: Sequence[Mapping], covered=()) -> list[str]:
    """Logged numeric keys whose value changes over the run, other than ``covered`` (and counters, timings).

    >>> log = [{"step": 1, "loss": 2.0, "lr": 1e-3, "entropy": 0.5, "time_generate": 0.2},
    ...        {"step": 2, "loss": 1.0, "lr": 1e-3, "entropy": 0.4, "time_generate": 0.3}]
    >>> changing_keys(log, covered={"loss"})
    ['entropy']
    """
    out = []
    for key in dict.fromkeys(k for rec in log_history for k in rec):
        if key in covered or key in NOT_PLOTTED or key.startswith("time_") or key.endswith(("_runtime", "_per_second")):
            continue
        _, values = series(log_history, key)
        if len(values) > 1 and min(values) != max(values):
            out.append(key)
    return out


def read_log_history(source: str | Path | Sequence[Mapping]) -> list[dict]:
    """Log records from a list, a ``.jsonl`` file, or a ``trainer_state.json`` (its ``log_history``)."""
    if not isinstance(source, (str, Path)):
        return [dict(r) for r in source]
    path = Path(source)
    if not path.is_file():
        raise DataError(str(path), None, None, "no such file", "a training log (.jsonl or trainer_state.json)")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        state = json.loads(text)
        return list(state.get("log_history", [])) if isinstance(state, dict) else list(state)
    records = []
    for row, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(str(path), row, None, f"invalid JSON ({exc.msg})", "one JSON object per line") from None
    return records


def series(log_history: Iterable[Mapping], key: str) -> tuple[list[float], list[float]]:
    """``(steps, values)`` of one logged key; records without it (or with a non-finite value) are skipped.

    >>> series([{"step": 1, "loss": 2.0}, {"step": 2, "eval_loss": 1.5}, {"step": 3, "loss": 1.0}], "loss")
    ([1, 3], [2.0, 1.0])
    """
    steps, values = [], []
    for i, rec in enumerate(log_history):
        value = rec.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            steps.append(rec.get("step", i))
            values.append(float(value))
    return steps, values


def plot_keys(log_history: Sequence[Mapping], keys: Sequence[str], path: str | Path, title: str,
              ylabel: str = "") -> Path | None:
    """Draw the logged ``keys`` against step into a PNG; ``None`` when none of them was logged."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    drawn = [(k, *series(log_history, k)) for k in keys]
    drawn = [(k, s, v) for k, s, v in drawn if v]
    if not drawn:
        return None
    fig = Figure(figsize=(6, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for key, steps, values in drawn:
        ax.plot(steps, values, marker="o" if len(values) < 30 else None, markersize=3, label=key)
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_stage_metric(evals: Sequence[Mapping], metric: str, path: str | Path) -> Path | None:
    """A bar per measured model (stage) for one metric: the pipeline's effect at a glance."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in evals if r["metric"] == metric]
    if len(rows) < 2:
        return None
    fig = Figure(figsize=(6, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    labels = [f"{r['stage']}\n{r.get('dataset', '')}".strip() for r in rows]
    bars = ax.bar(range(len(rows)), [float(r["value"]) for r in rows], color="#4c72b0")
    ax.bar_label(bars, fmt="%.3g", fontsize=8)
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set(title=f"{metric} by stage", ylabel=metric)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _numbers(values: Mapping, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a (nested) result dict with dotted names; lists, strings and booleans are left out.

    >>> _numbers({"accuracy": 0.5, "ppl": {"perplexity": 7.0, "num_tokens": 12}, "curve": [1], "ok": True})
    {'accuracy': 0.5, 'ppl.perplexity': 7.0, 'ppl.num_tokens': 12.0}
    """
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def normalise_evals(evals: Sequence[Mapping] | Mapping | None, stage: str = "after") -> list[dict]:
    """Evaluation records from a list, from ``{stage: {metric: value}}`` (``{"before": ..., "after": ...}``),
    or from a flat ``{metric: value}`` of one model (recorded under ``stage``).

    >>> normalise_evals({"before": {"accuracy": 0.25}, "after": {"accuracy": 0.75}})
    [{'metric': 'accuracy', 'value': 0.25, 'stage': 'before'}, {'metric': 'accuracy', 'value': 0.75, 'stage': 'after'}]
    >>> normalise_evals({"accuracy": 0.8, "reliability": [{"bin": [0, 1]}]}, stage="reward")
    [{'metric': 'accuracy', 'value': 0.8, 'stage': 'reward'}]
    """
    if not evals:
        return []
    if isinstance(evals, Mapping):
        if "before" in evals or "after" in evals or all(isinstance(v, Mapping) for v in evals.values()):
            # {"before": {...}, "after": {...}} plus descriptive strings (e.g. "reference": "copy")
            return [{"metric": m, "value": v, "stage": str(name)} for name, values in evals.items()
                    if isinstance(values, Mapping) for m, v in _numbers(values).items()]
        return [{"metric": m, "value": v, "stage": stage} for m, v in _numbers(evals).items()]
    out = []
    for i, rec in enumerate(evals):
        if not isinstance(rec, Mapping) or "metric" not in rec or "value" not in rec:
            raise DataError("evals", i + 1, None, str(rec)[:60], "a record with metric, value and stage")
        out.append({**rec, "value": float(rec["value"]), "stage": str(rec.get("stage", "-"))})
    return out


def _fmt(value: float) -> str:
    """Four significant digits, as in the tables.

    >>> _fmt(0.123456), _fmt(1234.5), _fmt(float("nan"))
    ('0.1235', '1234', 'nan')
    """
    return f"{value:.4g}"


def eval_table(evals: Sequence[Mapping]) -> str:
    """Markdown table: one row per (metric, dataset), one column per stage in the order first measured."""
    stages = list(dict.fromkeys(r["stage"] for r in evals))
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for r in evals:
        rows.setdefault((r["metric"], str(r.get("dataset") or "-")), {})[r["stage"]] = r["value"]
    lines = ["| metric | dataset | " + " | ".join(stages) + " |", "|" + "---|" * (len(stages) + 2)]
    for (metric, dataset), values in rows.items():
        cells = [_fmt(values[s]) if s in values else "-" for s in stages]
        lines.append(f"| {metric} | {dataset} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _slug(name: str) -> str:
    """A file-name-safe stage name.

    >>> _slug("DPO (beta=0.1)")
    'dpo_beta_0.1'
    """
    return re.sub(r"[^a-z0-9.]+", "_", name.lower()).strip("_") or "stage"


def _log_summary(log_history: Sequence[Mapping]) -> list[str]:
    """Lines giving first -> last value of each plotted key that was logged (and of the others that changed)."""
    lines = []
    covered = [key for _, _, _, keys in PLOTS for key in keys]
    for key in covered + changing_keys(log_history, covered)[:MAX_OTHER_PLOTS]:
        _, values = series(log_history, key)
        if values:
            lines.append(f"| {key} | {len(values)} | {_fmt(values[0])} | {_fmt(values[-1])} | "
                         f"{_fmt(min(values))} | {_fmt(max(values))} |")
    if not lines:
        return ["No training metrics were logged."]
    return ["| logged key | points | first | last | min | max |", "|---|---|---|---|---|---|", *lines]


def _stage_section(root: Path, name: str, log_history: Sequence[Mapping], prefix: str) -> list[str]:
    lines = _log_summary(log_history)
    for stem, title, ylabel, keys in PLOTS:
        png = plot_keys(log_history, keys, root / "plots" / f"{prefix}{stem}.png", f"{name}: {title}", ylabel)
        if png is not None:
            rel = png.relative_to(root).as_posix()
            lines += ["", f"![{name}: {title}]({rel})"]
    covered = [key for _, _, _, keys in PLOTS for key in keys]
    for key in changing_keys(log_history, covered)[:MAX_OTHER_PLOTS]:  # whatever else the run logged that moved
        png = plot_keys(log_history, (key,), root / "plots" / f"{prefix}log_{_slug(key)}.png", f"{name}: {key}", key)
        if png is not None:
            lines += ["", f"![{name}: {key}]({png.relative_to(root).as_posix()})"]
    return lines


def write_run_report(run_dir: str | Path, log_history: str | Path | Sequence[Mapping],
                     evals: Sequence[Mapping] | Mapping | None = None, title: str | None = None) -> Path:
    """Write ``run_dir/report.md`` with plots under ``run_dir/plots/`` and the evaluations in ``evals.json``.

    ``evals.json`` is what ``align-kit export`` puts into the model card's ``model-index``.
    """
    root = Path(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    history = read_log_history(log_history)
    records = normalise_evals(evals)
    lines = [f"# {title or root.name}", "", "## Evaluation", "",
             eval_table(records) if records else "No evaluations were run.", "", "## Training", ""]
    lines += _stage_section(root, title or root.name, history, "")
    write_text(root / "evals.json", json.dumps(records, indent=2) + "\n")
    return write_text(root / "report.md", "\n".join(lines) + "\n")


def write_pipeline_report(out_dir: str | Path, stages: Sequence[Mapping], title: str = "Pipeline report") -> Path:
    """Write ``out_dir/report.md`` for a pipeline: stage overview, evaluation before/after each stage, plots.

    Each stage is ``{"name", "kind"?, "log_history" (list or path)?, "evals"?, "status"?, "output_dir"?}``.
    ``evals`` may be records, a flat ``{metric: value}`` (of this stage's model) or ``{"before": ..., "after":
    ...}``: "before" becomes the column of the model the stage started from (``base``, or the previous policy
    stage: a reward-model stage does not change the policy) and "after" the stage's own column.
    """
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    evals: list[dict] = []
    policy = "base"  # the model a policy stage starts from; reward-model stages do not change it
    for stage in stages:
        name = str(stage["name"])
        for rec in normalise_evals(stage.get("evals"), stage=name):
            start = stage.get("start") or policy  # the stage whose model this one started from
            rec["stage"] = {"before": start, "after": name}.get(rec["stage"], rec["stage"])
            if rec not in evals:  # a stage's "before" is the previous stage's "after"
                evals.append(rec)
        if "reward" not in str(stage.get("kind", name)).lower():
            policy = name
    lines = [f"# {title}", "", "## Stages", "", "| # | stage | status | logged steps | output |", "|---|---|---|---|---|"]
    histories = []
    for i, stage in enumerate(stages, 1):
        history = read_log_history(stage["log_history"]) if stage.get("log_history") else []
        histories.append(history)
        output = Path(str(stage["output_dir"])).name if stage.get("output_dir") else "-"
        lines.append(f"| {i} | {stage['name']} | {stage.get('status', 'done')} | {len(history)} | {output} |")
    lines += ["", "## Evaluation before and after each stage", ""]
    lines += [eval_table(evals) if evals else "No evaluations were run."]
    for metric in dict.fromkeys(r["metric"] for r in evals):
        png = plot_stage_metric(evals, metric, root / "plots" / f"evals_{_slug(metric)}.png")
        if png is not None:
            lines += ["", f"![{metric} by stage]({png.relative_to(root).as_posix()})"]
    for i, (stage, history) in enumerate(zip(stages, histories), 1):
        lines += ["", f"## Stage {i}: {stage['name']}", ""]
        lines += _stage_section(root, str(stage["name"]), history, f"{i:02d}_{_slug(str(stage['name']))}_")
    # Both replaced whole (temp file + rename): a pipeline rewrites them after every stage, and a reader meanwhile
    # (another process, a test reading the session's quickstart folder) must see a whole report, never a cut one.
    write_text(root / "evals.json", json.dumps(evals, indent=2) + "\n")
    return write_text(root / "report.md", "\n".join(lines) + "\n")
