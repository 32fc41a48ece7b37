"""Shared fixtures: offline mode, ../shared location, a tiny Llama model and tokenizer built in process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
# One torch thread per test process: CI runs two pytest workers on two cores, and oversubscribed
# threads make tiny-model steps ~40x slower than one thread each.
os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED = Path(os.environ.get("ALIGN_KIT_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny matmuls gain nothing from threads, and bitwise kill/resume comparisons need the same reduction
    order as the subprocesses (which run with OMP_NUM_THREADS=1)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared() -> Path:
    """Path of ../shared (real data, tokenizers, stories260K); skips the test when absent."""
    if not (SHARED / "README.md").exists():
        pytest.skip(f"../shared is absent (looked in {SHARED.name}/ beside the project); CI has it")
    return SHARED


def _pipeline_finished(root: Path, pipeline: Path) -> bool:
    """Whether the last pipeline run into ``root`` ran every stage of ``pipeline`` to the end: its pipeline.json
    (written after report.md, after each stage) lists them all as done. A folder holding every stage's model can
    still carry the report of a run that stopped after its first stage (a rerun cut short)."""
    import json

    import yaml

    if not (root / "pipeline.json").is_file():
        return False
    stages = json.loads((root / "pipeline.json").read_text())["stages"]
    names = [s["name"] for s in yaml.safe_load(pipeline.read_text())["stages"]]
    return [s["name"] for s in stages] == names and all(s["status"].startswith("done") for s in stages)


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory) -> Path:
    """The quickstart pipeline (SFT -> reward -> DPO -> PPO on the builtin model), run once per test session
    and shared by that session's test processes (file-locked): the acceptance tests of each stage read its
    outputs, and none may write into it (a rerun test works on a copy).

    The folder is the session's own (pytest's numbered base folder, which xdist's workers share). Sessions run
    without xdist used to share one folder, keyed by a hash of the code, across sessions: two sessions on the same
    code (two worktrees of one commit) read and rewrote it at once, and a rerun over it rewrote report.md stage by
    stage, so the other session could read a one-stage report (and every later session found 'done (reused)').
    """
    import os

    from filelock import FileLock

    from align_kit.pipeline import run_pipeline

    pipeline = Path(__file__).resolve().parents[1] / "recipes/tiny/pipeline.yaml"
    session = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a worker's base folder is <session>/popen-gwN
        session = session.parent
    root = session / "quickstart"
    with FileLock(str(root) + ".lock"):
        if not _pipeline_finished(root, pipeline):  # a half-run folder resumes: finished stages are reused
            run_pipeline(pipeline, output_dir=str(root))
    return root
