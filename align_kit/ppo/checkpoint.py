"""Atomic PPO checkpoints: everything needed to continue a run exactly where it stopped.

Layout of ``checkpoint-N/`` (N = PPO steps done)::

    policy.safetensors   trainable policy weights (the LoRA adapter, or all weights)
    critic.safetensors   trainable critic weights (adapter + its score head, or all weights)
    optimizers.pt        both AdamW states and both LR-scheduler states
    kl_controller.json   the KL coefficient (and target/horizon when adaptive)
    rng_state_R.pt       python, numpy and torch RNG states of process R
    trainer_state.json   step and episodes done; written last

A checkpoint is written into ``checkpoint-N.tmp/`` and renamed with ``os.replace`` only when all
its files exist, so a run killed mid-write leaves a ``.tmp`` directory that resume ignores.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def write_files(tmp: Path, policy: dict, critic: dict, optimizers: dict, kl_state: dict, trainer_state: dict) -> None:
    """Main process: write the shared files of a checkpoint into ``tmp`` (trainer_state.json last)."""
    save_file(policy, str(tmp / "policy.safetensors"))
    save_file(critic, str(tmp / "critic.safetensors"))
    torch.save(optimizers, tmp / "optimizers.pt")
    (tmp / "kl_controller.json").write_text(json.dumps(kl_state, indent=1))
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))


def write_rng(tmp: Path, rank: int) -> None:
    torch.save(rng_state(), tmp / f"rng_state_{rank}.pt")


def finalize(tmp: Path, final: Path, keep: int | None) -> None:
    """Main process: publish ``tmp`` as ``final`` and drop the oldest checkpoints beyond ``keep``."""
    if final.exists():  # the same step saved again (e.g. a rerun): replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep is not None:
        for old in complete_checkpoints(final.parent)[:-keep]:
            shutil.rmtree(old)


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Published checkpoints, oldest first. ``.tmp`` leftovers are reported and skipped."""
    found = []
    if not output_dir.is_dir():
        return found
    for path in output_dir.iterdir():
        if path.name.startswith("checkpoint-") and path.name.endswith(".tmp"):
            log.warning("ignoring incomplete checkpoint %s (a run stopped while writing it)", path.name)
            continue
        match = CHECKPOINT_RE.match(path.name)
        if match and (path / "trainer_state.json").exists():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def read(path: Path, rank: int) -> dict:
    """Everything in checkpoint ``path``; the RNG state of ``rank`` is None when it was not saved."""
    rng_file = path / f"rng_state_{rank}.pt"
    return {
        "policy": load_file(str(path / "policy.safetensors")),
        "critic": load_file(str(path / "critic.safetensors")),
        # weights_only=False: the optimiser and RNG states hold plain python objects we wrote ourselves
        "optimizers": torch.load(path / "optimizers.pt", weights_only=False),
        "kl_controller": json.loads((path / "kl_controller.json").read_text()),
        "trainer_state": json.loads((path / "trainer_state.json").read_text()),
        "rng": torch.load(rng_file, weights_only=False) if rng_file.exists() else None,
    }
