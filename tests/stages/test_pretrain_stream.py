"""Pretraining streamed from the token shards of `align-kit data run`: exact token ids in the shards, two
processes under accelerate, and a run resumed mid-shard from a checkpoint reaching the same weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import launch_two_processes
from safetensors.torch import load_file

pytest.importorskip("datatrove")

from align_kit.config import recipe_from_dict  # noqa: E402
from align_kit.data.blocks import document_ids  # noqa: E402
from align_kit.data.shards import ShardBlocks, list_shards  # noqa: E402
from align_kit.data.trove.run import run_spec  # noqa: E402
from align_kit.data.trove.spec import parse_spec  # noqa: E402
from align_kit.errors import ConfigError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shards(shared, tmp_path_factory):
    """wiki_demo.txt and c4_demo.jsonl tokenised by stories260K's tokenizer, one shard per task."""
    out = tmp_path_factory.mktemp("trove")
    data, model = shared / "data" / "pretrain", shared / "models" / "stories260K"
    spec = parse_spec({"input": {"paths": [str(data / "c4_demo.jsonl"), str(data / "wiki_demo.txt")]},
                       "output": {"folder": str(out / "run")}, "tasks": 2,
                       "steps": ["pii", {"tokenize": {"tokenizer": str(model)}}]})
    run_spec(spec)
    return out / "run" / "tokens"


def test_shards_hold_the_pretrain_stages_token_stream(shards, shared):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(shared / "models" / "stories260K")
    (first, meta), (second, meta2) = list_shards(shards)
    lines = [json.loads(line)["text"] for line in (shards.parent / "kept" / "00000.jsonl").read_text().splitlines()]
    expected = [t for text in lines for t in document_ids(tok(text, add_special_tokens=False)["input_ids"], 1, 2)]
    import numpy as np

    assert np.fromfile(first, dtype="<u4").tolist() == expected  # [BOS] doc [EOS] ..., exactly
    assert meta["documents"] == 300 and meta2["documents"] == 30 and meta["eos"] == 2 and meta["vocab_size"] == 512
    blocks = ShardBlocks(shards, block_size=64, shuffle_buffer=16, seed=0)
    assert len(blocks) == meta["tokens"] // 64 + meta2["tokens"] // 64
    seen = sorted(tuple(blocks[i]["input_ids"]) for i in range(len(blocks)))
    plain = ShardBlocks(shards, block_size=64, shuffle_buffer=0, seed=0)
    assert seen == sorted(tuple(plain[i]["input_ids"]) for i in range(len(plain)))  # a permutation, no loss
    assert [blocks[i]["input_ids"] for i in range(16)] != [plain[i]["input_ids"] for i in range(16)]


def _recipe(shared, shards, out, tmp_path, steps=8):
    raw = {"stage": "pretrain", "output_dir": str(out), "seed": 0,
           "model": {"name_or_path": str(shared / "models" / "stories260K"), "family": "llama"},
           "pretrain": {"block_size": 64, "shards": str(shards), "shuffle_buffer": 32},
           "trainer": {"max_steps": steps, "per_device_train_batch_size": 4, "learning_rate": 3e-3,
                       "logging_steps": 1, "save_steps": 2, "report_to": "none", "dataloader_num_workers": 0}}
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _start_two_processes(recipe, log):
    """``launch_two_processes`` without waiting, in its own process group so a SIGKILL reaches every rank."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "align_kit", "train", str(recipe)]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_two_processes_sigkilled_mid_shard_resume_to_the_same_weights(shared, shards, tmp_path):
    full = tmp_path / "full"
    launch_two_processes("-m", "align_kit", "train", str(_recipe(shared, shards, full, tmp_path)), timeout=300)
    state = json.loads((full / "checkpoint-8" / "trainer_state.json").read_text())
    blocks = ShardBlocks(shards, 64, 32, 0)
    # 8 steps x 2 processes x 4 blocks = 64 blocks: the whole run stays inside the first shard
    assert state["global_step"] == 8 and 64 < blocks.shards[blocks.order[0]][1]
    assert state["epoch"] == pytest.approx(64 / len(blocks), rel=0.02)
    cut = tmp_path / "cut"
    recipe = _recipe(shared, shards, cut, tmp_path)
    with (tmp_path / "killed.log").open("w") as log:
        proc = _start_two_processes(recipe, log)
        while proc.poll() is None and not (cut / "checkpoint-2" / "align_kit_complete").exists():
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (cut / "model").exists(), "the kill should land before the run ends"
    saved = {p.parent.name: p.stat().st_mtime_ns for p in cut.glob("checkpoint-*/align_kit_complete")}
    assert "checkpoint-2" in saved and "checkpoint-8" not in saved
    launch_two_processes("-m", "align_kit", "train", str(recipe), timeout=300)
    # the re-run resumed: no complete checkpoint of the killed run was trained and saved again
    assert all((cut / name / "align_kit_complete").stat().st_mtime_ns == t for name, t in saved.items())
    a, b = load_file(full / "model" / "model.safetensors"), load_file(cut / "model" / "model.safetensors")
    base = load_file(shared / "models" / "stories260K" / "model.safetensors")
    assert all(a[k].equal(b[k]) for k in a)
    assert any(not a[k].equal(base[k]) for k in base if k in a)
    manifest = json.loads((full / "manifest.json").read_text())["extra"]
    assert manifest["shards"]["count"] == 2 and manifest["train_blocks"] == len(blocks)


def test_streaming_options_are_checked(shared, shards, tmp_path):
    base = {"stage": "pretrain", "output_dir": str(tmp_path), "model": {"name_or_path": "x", "family": "llama"},
            "pretrain": {"shards": str(shards)}}
    with pytest.raises(ConfigError, match="pretrain.shards: streams the training blocks, so data must be left out"):
        recipe_from_dict({**base, "data": {"train": [{"path": "a.txt"}]}})
    with pytest.raises(ConfigError, match=r"pretrain.shuffle_buffer: expected an integer >= 0 \(0 or 1 keeps the shards' order\), found -1"):
        recipe_from_dict({**base, "pretrain": {"shards": str(shards), "shuffle_buffer": -1}})
    with pytest.raises(ConfigError, match="pretrain: expected data .training sources. or pretrain.shards"):
        recipe_from_dict({**base, "pretrain": {}})
