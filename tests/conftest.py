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


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory) -> Path:
    """The quickstart pipeline (SFT -> reward -> DPO -> PPO on the builtin model), run once per test session
    and shared by all test processes (file-locked): the acceptance tests of each stage read its outputs."""
    from filelock import FileLock

    from align_kit.pipeline import run_pipeline

    root = tmp_path_factory.getbasetemp().parent / "quickstart"
    with FileLock(str(root) + ".lock"):
        if not (root / "pipeline.json").exists() or not (root / "ppo" / "model").exists():
            run_pipeline(Path(__file__).resolve().parents[1] / "recipes/tiny/pipeline.yaml", output_dir=str(root))
    return root
