"""Killing `align-kit pipeline` in the middle of a stage and re-running it finishes with the same weights
as an uninterrupted run (the stage resumes from its last complete checkpoint; finished stages are reused)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]


def _pipeline(tmp_path: Path) -> Path:
    sft = {"stage": "sft", "seed": 3, "model": {"name_or_path": "builtin:tiny-llama"},
           "data": {"train": [{"name": "quickstart-tasks", "max_rows": 400}], "eval_fraction": 0.05},
           "trainer": {"learning_rate": 3e-3, "per_device_train_batch_size": 4, "max_length": 128,
                       "max_steps": 30, "save_steps": 3, "logging_steps": 1, "lr_scheduler_type": "constant"}}
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(sft))
    spec = {"output_dir": "unused", "stages": [{"name": "sft", "recipe": "sft.yaml"}]}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path / "pipeline.yaml"


def _run(pipeline: Path, out: Path, kill_after_checkpoint: bool = False) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "align_kit", "pipeline", str(pipeline), "--output-dir", str(out)]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if not kill_after_checkpoint:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()[-2000:]
        return proc.returncode
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        done = [p for p in (out / "sft").glob("checkpoint-*") if (p / "trainer_state.json").exists()]
        if len(done) >= 2:  # mid-stage: a few checkpoints written, training still going
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    return proc.returncode


def test_killed_pipeline_resumes_to_the_same_weights(tmp_path):
    pipeline = _pipeline(tmp_path)
    _run(pipeline, tmp_path / "straight")
    code = _run(pipeline, tmp_path / "killed", kill_after_checkpoint=True)
    assert code == -signal.SIGKILL, "the run finished before it could be killed: make it longer"
    assert not (tmp_path / "killed" / "sft" / "model").exists()
    _run(pipeline, tmp_path / "killed")
    a = load_file(tmp_path / "straight" / "sft" / "model" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "sft" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
