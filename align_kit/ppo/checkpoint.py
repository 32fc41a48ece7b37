"""Atomic PPO checkpoints: everything needed to continue a run exactly where it stopped.

Layout of ``checkpoint-N/`` (N = PPO steps done)::

    policy.safetensors   trainable policy weights (the LoRA adapter, or all weights)
    critic.safetensors   trainable critic weights (adapter + its score head, or all weights)
    optimizers.pt        both AdamW states and both LR-scheduler states
    kl_controller.json   the KL coefficient (and target/horizon when adaptive)
    rng_state_R.pt       python, numpy and torch RNG states of process R
    trainer_state.json   step and episodes done
    align_kit_complete   the marker, written last (``align_kit.rundir``)

A checkpoint is written into ``checkpoint-N.tmp/``, marked and renamed with ``os.replace`` only when all
its files exist (``rundir.publish``), so a run killed mid-write leaves a ``.tmp`` directory that resume
ignores; which checkpoints are complete is ``rundir.complete_checkpoints``, as for every stage.

No pickle: the ``.pt`` files hold tensors, numbers, strings and plain containers only (the numpy RNG state
is stored as a tensor), so they are read with ``torch.load(weights_only=True)``, whose unpickler builds
nothing else. A file holding any other object (a crafted one would run code when unpickled) is refused with
:class:`~align_kit.guards.UnsafeCheckpointError` before anything in it runs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from align_kit import rundir
from align_kit.guards import refuse_unsafe


def rng_state() -> dict:
    """The RNG states as tensors, numbers and tuples (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)}}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])


def load_tensors(path: Path):
    """``torch.load(weights_only=True)``: tensors, numbers, strings and containers, nothing executable."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise refuse_unsafe(path, exc) from None


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
    rundir.publish(tmp, final, f"step {final.name.rpartition('-')[2]}")
    rundir.rotate(final.parent, keep)


def read(path: Path, rank: int) -> dict:
    """Everything in checkpoint ``path``; the RNG state of ``rank`` is None when it was not saved."""
    rng_file = path / f"rng_state_{rank}.pt"
    return {
        "policy": load_file(str(path / "policy.safetensors")),
        "critic": load_file(str(path / "critic.safetensors")),
        "optimizers": load_tensors(path / "optimizers.pt"),
        "kl_controller": json.loads((path / "kl_controller.json").read_text()),
        "trainer_state": json.loads((path / "trainer_state.json").read_text()),
        "rng": load_tensors(rng_file) if rng_file.exists() else None,
    }
