"""Run identity (align_kit.identity): a run folder is resumed or reused only by the recipe that made it.

Changing the learning rate, the data or the base model of a finished run and of a half-finished one stops
before anything loads, naming the changed key; ``resume_anyway`` continues it and the manifest says so. The
pipeline does the same per stage, including a stage whose base (an earlier stage) was retrained.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from align_kit.config import recipe_from_dict
from align_kit.errors import ConfigError
from align_kit.stages import run_stage

ROOT = Path(__file__).resolve().parents[2]


def _data_file(folder: Path, rows: int = 160) -> Path:
    src = ROOT / "align_kit/quickstart/sft_train.jsonl"
    path = folder / "train.jsonl"
    path.write_text("".join(src.read_text(encoding="utf-8").splitlines(keepends=True)[:rows]), encoding="utf-8")
    return path


def _recipe(out: Path, data: Path, model: str = "builtin:tiny-llama", **trainer) -> dict:
    return {"stage": "sft", "output_dir": str(out), "seed": 5, "model": {"name_or_path": model},
            "data": {"train": [{"path": str(data)}], "eval_fraction": 0.1},
            "trainer": {"learning_rate": 3e-3, "per_device_train_batch_size": 8, "max_length": 128, "logging_steps": 1,
                        "save_steps": 2, "max_steps": 4, "lr_scheduler_type": "constant", **trainer}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished run and a half-finished one (killed after checkpoint-2 of 4), their data and a saved base."""
    from align_kit.quickstart.model import build_model, build_tokenizer

    root = tmp_path_factory.mktemp("identity")
    data = _data_file(root)
    finished = run_stage(recipe_from_dict(_recipe(root / "finished", data)))
    half = root / "half"
    shutil.copytree(finished, half)
    shutil.rmtree(half / "model")
    shutil.rmtree(half / "checkpoint-4")
    tok = build_tokenizer()
    build_model(tok).save_pretrained(root / "base")  # the builtin model's weights, as a local folder
    tok.save_pretrained(root / "base")
    return {"root": root, "data": data, "finished": finished, "half": half, "base": root / "base"}


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("kind", ["finished", "half"])
@pytest.mark.parametrize("change", ["learning_rate", "data", "base_model"])
def test_a_changed_recipe_stops_naming_the_key(runs, kind, change, tmp_path):
    out = runs[kind]
    before = _snapshot(out)
    data, model, trainer = runs["data"], "builtin:tiny-llama", {}
    if change == "learning_rate":
        trainer, expected = {"learning_rate": 1e-5}, r"trainer\.learning_rate \(0\.003 -> 1e-05\)"
    elif change == "data":
        data = tmp_path / "other.jsonl"
        lines = runs["data"].read_text(encoding="utf-8").splitlines(keepends=True)
        data.write_text("".join(lines[1:]), encoding="utf-8")  # one row fewer
        expected = r"data\.train\[0\]\.content \(sha256:"
    else:
        model, expected = str(runs["base"]), r"model\.name_or_path \(builtin:tiny-llama -> sha256:"
    with pytest.raises(ConfigError, match=expected) as err:
        run_stage(recipe_from_dict(_recipe(out, data, model, **trainer)))
    message = str(err.value)
    assert "\n" not in message and "new output_dir" in message and "resume_anyway: true" in message
    assert _snapshot(out) == before  # refused before anything was written or loaded


def test_the_same_recipe_resumes_and_reuses(runs, tmp_path):
    finished = tmp_path / "finished"
    shutil.copytree(runs["finished"], finished)  # a run moved to another folder is still the same run
    weights = load_file(finished / "model" / "model.safetensors")
    run_stage(recipe_from_dict(_recipe(finished, runs["data"], logging_steps=2)))  # logging is not identity
    again = load_file(finished / "model" / "model.safetensors")
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    assert json.loads((finished / "manifest.json").read_text())["extra"]["run_identity"]["overrides"] == []


def test_a_folder_without_identity_is_not_resumed(runs, tmp_path):
    half = tmp_path / "half"
    shutil.copytree(runs["half"], half)
    (half / "run_identity.json").unlink()
    with pytest.raises(ConfigError, match="no run_identity.json"):
        run_stage(recipe_from_dict(_recipe(half, runs["data"])))


def test_resume_anyway_continues_and_the_manifest_says_so(runs, tmp_path):
    half = tmp_path / "half"
    shutil.copytree(runs["half"], half)
    raw = _recipe(half, runs["data"], learning_rate=1e-5)
    raw["resume_anyway"] = True
    run_stage(recipe_from_dict(raw))
    state = json.loads((half / "checkpoint-4" / "trainer_state.json").read_text())
    # resumed from checkpoint-2 and trained steps 3-4 (HF Trainer restores the checkpoint's optimizer and
    # scheduler, so the rate in force stays the old one: the override continues a run, it does not redo it)
    assert state["global_step"] == 4 and [r["step"] for r in state["log_history"] if "loss" in r] == [1, 2, 3, 4]
    assert (half / "model" / "model.safetensors").exists()
    manifest = json.loads((half / "manifest.json").read_text())
    overrides = manifest["extra"]["run_identity"]["overrides"]
    assert len(overrides) == 1 and overrides[0]["changed"] == ["trainer.learning_rate (0.003 -> 1e-05)"]
    assert manifest["recipe"]["trainer"]["learning_rate"] == 1e-5 and manifest["recipe"]["resume_anyway"] is True
    # the folder now records the new settings: the same recipe again (without the override) reuses it
    raw.pop("resume_anyway")
    run_stage(recipe_from_dict(raw))


def test_cli_refuses_with_one_line_and_resumes_anyway_with_the_flag(runs, tmp_path):
    finished = tmp_path / "finished"
    shutil.copytree(runs["finished"], finished)
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(finished, runs["data"])))
    cmd = [sys.executable, "-m", "align_kit", "train", str(recipe), "trainer.learning_rate=1e-5"]
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    for extra in ([], ["--check"]):  # --check refuses what the run would
        refused = subprocess.run([*cmd, *extra], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        lines = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "trainer.learning_rate (0.003 -> 1e-05)" in lines[0]
    done = subprocess.run([*cmd, "--resume-anyway"], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    overrides = json.loads((finished / "manifest.json").read_text())["extra"]["run_identity"]["overrides"]
    assert overrides[-1]["changed"] == ["trainer.learning_rate (0.003 -> 1e-05)"]


def test_pipeline_stops_at_a_changed_stage_and_at_a_stage_whose_base_changed(runs, tmp_path):
    from align_kit.pipeline import run_pipeline

    first = _recipe("unused", runs["data"])
    second = _recipe("unused", runs["data"], max_steps=2)
    (tmp_path / "first.yaml").write_text(yaml.safe_dump(first))
    (tmp_path / "second.yaml").write_text(yaml.safe_dump(second))
    spec = {"stages": [{"name": "first", "recipe": "first.yaml"},
                       {"name": "second", "recipe": "second.yaml", "use": {"model.name_or_path": "first"}}]}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    run_pipeline(path, output_dir=str(out))
    run_pipeline(path, output_dir=str(out))  # unchanged: both reused
    assert [s["status"] for s in json.loads((out / "pipeline.json").read_text())["stages"]] == ["done (reused)"] * 2

    with pytest.raises(ConfigError, match=r"stage 'first': .*trainer\.max_steps \(4 -> 6\)"):
        run_pipeline(path, {"first": ["trainer.max_steps=6"]}, output_dir=str(out))
    # with the override the first stage trains on to step 6; the second, built on the old first model, stops
    with pytest.raises(ConfigError, match=r"stage 'second': .*model\.name_or_path \(sha256:"):
        run_pipeline(path, {"first": ["trainer.max_steps=6", "resume_anyway=true"]}, output_dir=str(out))
    assert json.loads((out / "first" / "checkpoint-6" / "trainer_state.json").read_text())["global_step"] == 6
    overrides = json.loads((out / "first" / "manifest.json").read_text())["extra"]["run_identity"]["overrides"]
    assert overrides[0]["changed"] == ["trainer.max_steps (4 -> 6)"]
    run_pipeline(path, {"first": ["trainer.max_steps=6"], "second": ["resume_anyway=true"]}, output_dir=str(out))
    second_overrides = json.loads((out / "second" / "manifest.json").read_text())["extra"]["run_identity"]["overrides"]
    assert [c.split(" ")[0] for c in second_overrides[0]["changed"]] == ["model.name_or_path"]


def test_a_resume_says_so_without_the_tied_weights_warning(runs, tmp_path, caplog):
    import logging

    half = tmp_path / "half"
    shutil.copytree(runs["half"], half)
    warned: list[str] = []
    seen = logging.Handler()
    seen.emit = lambda record: warned.append(record.getMessage())
    trainer_log = logging.getLogger("transformers.trainer")  # transformers' loggers do not reach caplog
    trainer_log.addHandler(seen)
    try:
        with caplog.at_level(logging.INFO, logger="align_kit"):
            run_stage(recipe_from_dict(_recipe(half, runs["data"])))
    finally:
        trainer_log.removeHandler(seen)
    assert "resuming from checkpoint-2 (step 2)" in caplog.text
    assert not [m for m in warned if "missing keys" in m]  # lm_head.weight is tied to the embeddings
    assert not (half / "README.md").exists()  # no TRL stub card ("fine-tuned version of [None]")


def test_the_tied_keys_filter_lets_other_missing_keys_through():
    import logging

    from align_kit.quickstart.model import build_model, build_tokenizer
    from align_kit.stages.common import _tied_keys_filter

    quiet = _tied_keys_filter(build_model(build_tokenizer()))

    def shown(keys) -> bool:
        msg = f"There were missing keys in the checkpoint model loaded: {keys}."
        return quiet.filter(logging.LogRecord("transformers.trainer", 30, "", 0, msg, None, None))

    assert not shown(["lm_head.weight"])
    assert shown(["model.norm.weight"]) and shown(["lm_head.weight", "model.norm.weight"])
