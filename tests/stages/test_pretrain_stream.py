"""Pretraining streamed from the token shards of `align-kit data run`: exact token ids in the shards, two
processes under accelerate, and a run resumed mid-shard from a checkpoint reaching the same weights."""

from __future__ import annotations

import json
import shutil

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


def _recipe(shared, shards, out, tmp_path):
    raw = {"stage": "pretrain", "output_dir": str(out), "seed": 0,
           "model": {"name_or_path": str(shared / "models" / "stories260K"), "family": "llama"},
           "pretrain": {"block_size": 64, "shards": str(shards), "shuffle_buffer": 32},
           "trainer": {"max_steps": 4, "per_device_train_batch_size": 4, "learning_rate": 3e-3, "logging_steps": 1,
                       "save_steps": 2, "report_to": "none", "dataloader_num_workers": 0}}
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_two_processes_stream_and_resume_mid_shard_to_the_same_weights(shared, shards, tmp_path):
    full = tmp_path / "full"
    launch_two_processes("-m", "align_kit", "train", str(_recipe(shared, shards, full, tmp_path)), timeout=300)
    state = json.loads((full / "checkpoint-4" / "trainer_state.json").read_text())
    blocks = ShardBlocks(shards, 64, 32, 0)
    first_shard = blocks.shards[blocks.order[0]][1]
    # 2 steps x 2 processes x 4 blocks = 16 blocks at the checkpoint: inside the first shard
    assert state["global_step"] == 4 and 16 < first_shard
    assert state["epoch"] == pytest.approx(32 / len(blocks), rel=0.02)
    cut = tmp_path / "cut"
    shutil.copytree(full / "checkpoint-2", cut / "checkpoint-2")  # what a run killed after step 2 leaves
    marker = cut / "checkpoint-2" / "trainer_state.json"
    saved = json.loads(marker.read_text())
    saved["log_history"][0]["loss"] = 123.0  # only a run that resumed from this checkpoint logs it
    marker.write_text(json.dumps(saved))
    launch_two_processes("-m", "align_kit", "train", str(_recipe(shared, shards, cut, tmp_path)), timeout=300)
    history = [json.loads(line) for line in (cut / "log_history.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in history if "loss" in r][0] == 123.0
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
    with pytest.raises(ConfigError, match="pretrain.shuffle_buffer: expected an integer >= 0, found -1"):
        recipe_from_dict({**base, "pretrain": {"shards": str(shards), "shuffle_buffer": -1}})
    with pytest.raises(ConfigError, match="pretrain: expected data .training sources. or pretrain.shards"):
        recipe_from_dict({**base, "pretrain": {}})
