"""What every run leaves next to its outputs: manifest, evaluation record, log history, report."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from align_kit.stages.common import is_main_process, write_json

log = logging.getLogger("align_kit")


@dataclass
class RunInfo:
    recipe: object
    out: Path
    data_files: list[str] = field(default_factory=list)
    skip_reports: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def start_run(recipe, data=None, extra: dict | None = None) -> RunInfo:
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = RunInfo(recipe, out, list(getattr(data, "files", []) or []),
                   [r.to_dict() for r in getattr(data, "reports", [])], dict(extra or {}))
    for r in getattr(data, "reports", []):
        if r.rejected:
            log.warning("skipped rows: %s", r.summary())
    if getattr(data, "cuts", None):  # rows left out on purpose (max_rows, mixture weights): counted too
        info.extra.setdefault("rows_left_out", data.cuts)
    if is_main_process():
        _manifest(info)
    return info


def _manifest(info: RunInfo, evals: dict | None = None) -> None:
    from align_kit.identity import read_identity
    from align_kit.manifest import write_manifest

    extra = {"skipped_rows": info.skip_reports, **info.extra}
    identity = read_identity(info.out)
    if identity is not None:  # the fingerprint, and every resume_anyway that continued this folder
        extra["run_identity"] = {"fingerprint": identity["fingerprint"], "overrides": identity["overrides"]}
    if evals:
        extra["evaluation"] = evals
    write_manifest(info.out, info.recipe.to_dict(), info.data_files, info.recipe.seed, extra=extra)


def finish_run(info: RunInfo, log_history: list[dict], evals: dict) -> None:
    if not is_main_process():
        return
    write_json(info.out / "eval.json", evals)
    from align_kit.data.io import write_jsonl

    write_jsonl(info.out / "log_history.jsonl", log_history)
    _manifest(info, evals)
    from align_kit.report import write_run_report

    write_run_report(info.out, log_history, evals)
