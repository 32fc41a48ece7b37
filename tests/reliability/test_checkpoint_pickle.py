"""No pickle from a run folder: every checkpoint file align_kit resumes from is read with
``torch.load(weights_only=True)`` (or as safetensors/JSON). A planted pickle that would write a file when
unpickled is refused with one line naming the file, and the file is never written.

Kinds: align_kit's PPO checkpoint (``optimizers.pt``, ``rng_state_R.pt``), and HF Trainer checkpoints of the
other stages (``optimizer.pt``, ``scheduler.pt``, ``rng_state.pth``: transformers 5.25 loads them with
``weights_only=True``; these tests hold it to that)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from align_kit.config import recipe_from_dict
from align_kit.guards import UnsafeCheckpointError
from align_kit.stages import run_stage

ROOT = Path(__file__).resolve().parents[2]


class _Planted:
    """Unpickling this calls ``open(marker, "w")``: the file appears only if the pickle ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path: Path, marker: Path) -> None:
    torch.save({"state": {}, "param_groups": [], "planted": _Planted(marker)}, path)
    assert path.exists() and not marker.exists()


def _control(path: Path, marker: Path) -> None:
    """Negative control: the planted file does run when unpickled without weights_only."""
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pickle_sft")
    raw = {"stage": "sft", "output_dir": str(root / "run"), "seed": 3, "model": {"name_or_path": "builtin:tiny-llama"},
           "data": {"train": [{"name": "quickstart-tasks", "max_rows": 80}], "eval_fraction": 0.1},
           "trainer": {"learning_rate": 3e-3, "per_device_train_batch_size": 8, "max_length": 128, "max_steps": 2,
                       "save_steps": 1, "logging_steps": 1, "lr_scheduler_type": "constant"}}
    run_stage(recipe_from_dict(raw))
    return raw


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng_state.pth"])
def test_trainer_checkpoint_pickle_is_refused(sft_run, name, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(sft_run["output_dir"], run)
    shutil.rmtree(run / "model")
    shutil.rmtree(run / "checkpoint-2")  # killed after checkpoint-1: the resume reads its files
    marker = tmp_path / "planted-ran"
    assert (run / "checkpoint-1" / name).exists()
    _plant(run / "checkpoint-1" / name, marker)
    _control(run / "checkpoint-1" / name, marker)
    raw = {**sft_run, "output_dir": str(run)}
    with pytest.raises(UnsafeCheckpointError, match=r"checkpoint-1: refused to load: it holds (io|builtins)\.open, not only tensors"):
        run_stage(recipe_from_dict(raw))
    assert not marker.exists()
    # the same refusal on the command line: one line, exit 2
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": os.environ["PATH"]}
    done = subprocess.run([sys.executable, "-m", "align_kit", "train", str(recipe)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    errors = [line for line in done.stderr.splitlines() if "error: " in line]  # after a progress bar
    assert done.returncode == 2 and "Traceback" not in done.stderr and len(errors) == 1, done.stderr[-2000:]
    assert "refused to load" in errors[0] and not marker.exists()


def _ppo_test_module():
    spec = importlib.util.spec_from_file_location("_ppo_stage_tests", ROOT / "tests/stages/test_ppo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["optimizers.pt", "rng_state_0.pt"])
def test_ppo_checkpoint_pickle_is_refused(name, tmp_path):
    from transformers import AutoTokenizer

    ppo = _ppo_test_module()
    ckpts = ppo.tiny_checkpoints(tmp_path / "models")
    tokenizer = AutoTokenizer.from_pretrained(ckpts[0])
    cfg = ppo.make_cfg(steps=2, save_steps=1)
    ppo.trainer_for(cfg, ckpts, tokenizer, tmp_path / "run").train()
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "run" / "checkpoint-1", cut / "checkpoint-1")
    resumed = ppo.trainer_for(cfg, ckpts, tokenizer, cut)  # the honest files load (weights_only) and resume
    assert resumed.step_done == 1
    marker = tmp_path / "planted-ran"
    _plant(cut / "checkpoint-1" / name, marker)
    _control(cut / "checkpoint-1" / name, marker)
    with pytest.raises(UnsafeCheckpointError, match=rf"{name}: refused to load: it holds (io|builtins)\.open, not only tensors"):
        ppo.trainer_for(cfg, ckpts, tokenizer, cut)
    assert not marker.exists()
