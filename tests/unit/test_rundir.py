"""The run folder's one definition of a complete checkpoint (``align_kit.rundir``): published by rename with
the marker inside, or marked after an in-place write; anything cut short is skipped with a message; RL
checkpoints written before the marker existed still resume; the RL log keeps the steps of the checkpoint a
run resumes from and takes over an older ``ppo_log.jsonl``."""

from __future__ import annotations

import json
import logging

from align_kit import rundir


def _rl_checkpoint(folder, marker_key: bool) -> None:
    folder.mkdir(parents=True)
    (folder / "kl_controller.json").write_text("{}")
    state = {"step": 1, **({rundir.MARKER_KEY: rundir.COMPLETE} if marker_key else {})}
    (folder / "trainer_state.json").write_text(json.dumps(state))


def test_publish_and_mark_give_complete_checkpoints_in_step_order(tmp_path, caplog):
    for step in (10, 9):  # numeric order, not text order
        tmp = rundir.staging(rundir.checkpoint_path(tmp_path, step))
        (tmp / "weights").write_text("w")
        rundir.publish(tmp, rundir.checkpoint_path(tmp_path, step), f"step {step}")
    in_place = rundir.checkpoint_path(tmp_path, 11)  # the Trainer's way: written in place, then marked
    in_place.mkdir()
    assert [p.name for p in rundir.complete_checkpoints(tmp_path)] == ["checkpoint-9", "checkpoint-10"]
    rundir.mark_complete(in_place, "step 11")
    assert (in_place / rundir.COMPLETE).read_text() == "step 11\n"
    (tmp_path / "checkpoint-12.tmp").mkdir()  # a write that never finished
    rundir.checkpoint_path(tmp_path, 13).mkdir()  # in place, killed before the marker
    with caplog.at_level(logging.WARNING, logger="align_kit"):
        assert rundir.last_checkpoint(tmp_path).name == "checkpoint-11"
    assert "skipping checkpoint-12.tmp: incomplete" in caplog.text
    assert "skipping checkpoint-13: incomplete (killed while writing?): no align_kit_complete marker" in caplog.text
    assert not list(tmp_path.glob(".*tmp")) and not list(tmp_path.glob("*/.*tmp"))
    rundir.rotate(tmp_path, keep=1, protect="checkpoint-9")
    assert [p.name for p in rundir.complete_checkpoints(tmp_path)] == ["checkpoint-9", "checkpoint-11"]


def test_rl_checkpoints_from_before_the_marker_still_count(tmp_path):
    _rl_checkpoint(tmp_path / "checkpoint-2", marker_key=False)  # an older run folder: published whole by rename
    assert rundir.is_complete(tmp_path / "checkpoint-2")
    _rl_checkpoint(tmp_path / "checkpoint-4", marker_key=True)  # a current one that lost its marker: cut short
    assert not rundir.is_complete(tmp_path / "checkpoint-4")
    assert rundir.last_checkpoint(tmp_path).name == "checkpoint-2"
    assert not rundir.is_complete(tmp_path)  # an empty folder is no checkpoint


def test_resume_log_keeps_the_steps_up_to_the_checkpoint_and_takes_over_ppo_log(tmp_path):
    lines = [{"step": s, "score": s / 10} for s in (1, 2, 3)]
    (tmp_path / rundir.LEGACY_RL_LOG).write_text("".join(json.dumps(r) + "\n" for r in lines))
    rundir.resume_log(tmp_path, 2)  # resumed from checkpoint-2: step 3 is trained and logged again
    assert not (tmp_path / rundir.LEGACY_RL_LOG).exists()
    assert rundir.read_log(tmp_path) == lines[:2]
    rundir.append_log(tmp_path, {"step": 3, "score": 0.5})
    assert [r["step"] for r in rundir.read_log(tmp_path)] == [1, 2, 3]
    rundir.resume_log(tmp_path, 0)  # a fresh start in the folder: nothing of the old log stays
    assert rundir.read_log(tmp_path) == []
