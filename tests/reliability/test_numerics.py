"""Numerical faults: NaN/inf loss or weights stop a run with a clear error, keep the last good checkpoint and
write none after the fault; a checkpoint write that fails (full disk) fails loudly, leaves the previous
checkpoint complete, and the rerun resumes from it to the uninterrupted run's weights."""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402

from align_kit import guards  # noqa: E402
from align_kit.cli import main  # noqa: E402
from align_kit.config import recipe_from_dict  # noqa: E402
from align_kit.stages import common, run_stage  # noqa: E402


def small(stage: str, out: Path, **trainer) -> dict:
    raw = harness.recipe(stage, out, {})
    raw["trainer"].update(max_steps=6, save_steps=2, **trainer)
    return raw


class PoisonAt(TrainerCallback):
    """Writes NaN into one weight after optimiser step ``step``: what an fp16 overflow or a bad batch does."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                [p for p in model.parameters() if p.requires_grad][-1].fill_(float("nan"))  # final norm / score head
        return control


def poison(monkeypatch, step: int) -> None:
    real = common.stage_callbacks
    monkeypatch.setattr(common, "stage_callbacks", lambda recipe: [*real(recipe), PoisonAt(step)])


@pytest.mark.parametrize("stage", ["sft", "reward"])
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(stage, tmp_path, monkeypatch):
    poison(monkeypatch, 3)  # weights NaN after step 3: the loss logged at step 4 is NaN
    out = tmp_path / stage
    with pytest.raises(guards.TrainingDivergedError) as err:
        run_stage(recipe_from_dict(small(stage, out)))
    msg = str(err.value)
    assert msg.startswith("training stopped at step 4: loss=nan")
    assert "The last good checkpoint, checkpoint-2, is kept" in msg
    assert [p.name for p in common.complete_checkpoints(out)] == ["checkpoint-2"]
    assert not (out / "checkpoint-4").exists() and not (out / "model").exists()


def test_nan_between_logging_steps_is_caught_at_the_save(tmp_path, monkeypatch):
    # Logging every 100 steps: the NaN never reaches on_log, but the checkpoint after it is refused.
    poison(monkeypatch, 3)
    out = tmp_path / "sft"
    with pytest.raises(guards.TrainingDivergedError, match=r"at step 4: the model weights hold NaN") as err:
        run_stage(recipe_from_dict(small("sft", out, logging_steps=100)))
    assert "checkpoint-4 was not kept. The last good checkpoint, checkpoint-2, is kept" in str(err.value)
    assert [p.name for p in common.complete_checkpoints(out)] == ["checkpoint-2"]
    assert not (out / "checkpoint-4").exists()


def test_absurd_learning_rate_through_the_cli_exits_2_with_the_reason(tmp_path, capsys):
    import yaml

    raw = small("sft", tmp_path / "run", learning_rate=1e12)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err
    # progress bars share stderr without newlines; the error is the text after "error: "
    (line,) = [x[x.index("error: "):] for x in err.splitlines() if "error: " in x]
    assert line.startswith("error: training stopped at step 2: loss=") and "Traceback" not in err
    assert "expected finite values; lower trainer.learning_rate" in line
    # the fault shows at the first save step, before that checkpoint is written
    assert line.endswith("No checkpoint was written before the fault.")
    assert not list((tmp_path / "run").glob("checkpoint-*"))


def test_full_disk_during_a_checkpoint_fails_loudly_and_the_previous_one_resumes(tmp_path, monkeypatch):
    full = run_stage(recipe_from_dict(small("sft", tmp_path / "full")))
    real_save = torch.save

    def full_disk(obj, f, *a, **kw):
        if "checkpoint-4" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *a, **kw)

    out = tmp_path / "disk"
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        run_stage(recipe_from_dict(small("sft", out)))
    monkeypatch.setattr(torch, "save", real_save)
    assert (out / "checkpoint-4").is_dir()  # the half-written one is still there ...
    assert [p.name for p in common.complete_checkpoints(out)] == ["checkpoint-2"]  # ... and ignored
    assert not (out / "model").exists()
    run_stage(recipe_from_dict(small("sft", out)))  # disk freed: the same recipe resumes from checkpoint-2
    equal, diff = harness.compare(harness.final_weights(full), harness.final_weights(out))
    assert equal, diff
    assert [p.name for p in common.complete_checkpoints(out)] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]


def test_full_disk_on_the_cli_is_one_line(tmp_path, monkeypatch, capsys):
    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(small("sft", tmp_path / "run")))
    real_save = torch.save

    def full_disk(obj, f, *a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(f))

    monkeypatch.setattr(torch, "save", full_disk)
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err
    monkeypatch.setattr(torch, "save", real_save)
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("error: ")]
    assert "no space left on the device while writing" in line and "checkpoint-2" in line
    assert line.endswith("it resumes from the last complete checkpoint")


def test_rotation_waits_for_the_new_checkpoint(tmp_path):
    # save_total_limit: 1 — HF Trainer would delete checkpoint-2 before checkpoint-4 is marked; we rotate after.
    out = tmp_path / "rot"
    run_stage(recipe_from_dict(small("sft", out, save_total_limit=1)))
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-6"]
    assert (out / "checkpoint-6" / common.COMPLETE).read_text() == "step 6\n"
