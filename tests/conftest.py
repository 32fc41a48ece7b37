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


def _quickstart_inputs_hash() -> str:
    import hashlib

    repo = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    files = sorted([*repo.glob("align_kit/**/*.py"), *repo.glob("align_kit/quickstart/*.jsonl"),
                    *repo.glob("align_kit/templates/*"), *repo.glob("recipes/tiny/*.yaml")])
    for f in files:
        digest.update(f.relative_to(repo).as_posix().encode() + f.read_bytes())
    return digest.hexdigest()[:12]


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory) -> Path:
    """The quickstart pipeline (SFT -> reward -> DPO -> PPO on the builtin model), run once per test session
    and shared by all test processes (file-locked): the acceptance tests of each stage read its outputs."""
    from filelock import FileLock

    from align_kit.pipeline import run_pipeline

    # Shared between the xdist workers of one session; keyed by the code, recipes and data that produce it, so
    # a run without xdist (whose base temp's parent outlives the session) never reads a stale pipeline.
    root = tmp_path_factory.getbasetemp().parent / f"quickstart-{_quickstart_inputs_hash()}"
    with FileLock(str(root) + ".lock"):
        if not (root / "pipeline.json").exists() or not (root / "ppo" / "model").exists():
            run_pipeline(Path(__file__).resolve().parents[1] / "recipes/tiny/pipeline.yaml", output_dir=str(root))
    return root
