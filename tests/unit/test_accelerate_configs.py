"""recipes/accelerate/*.yaml hold the keys accelerate reads, with values it accepts, and name files that exist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "recipes" / "accelerate"
CONFIGS = sorted(FOLDER.glob("*.yaml"))
FAMILY_LAYERS = {"llama": "LlamaDecoderLayer", "qwen2": "Qwen2DecoderLayer", "mistral": "MistralDecoderLayer",
                 "glm4": "Glm4DecoderLayer"}


def load(name: str) -> dict:
    return yaml.safe_load((FOLDER / name).read_text())


def test_every_kind_of_launch_has_a_config():
    names = {p.name for p in CONFIGS}
    assert {"single_device.yaml", "ddp.yaml", "fsdp2.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml"} <= names
    assert {f"fsdp2_{family}.yaml" for family in FAMILY_LAYERS} <= names
    assert "--machine_rank" in (FOLDER / "multi_node.md").read_text()
    assert "--main_process_ip" in (FOLDER / "multi_node.md").read_text()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_keys_are_ones_accelerate_reads(path):
    """Every top-level key is a field of accelerate's ClusterConfig, which is what `--config_file` loads."""
    import dataclasses

    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.utils import DistributedType

    cfg = yaml.safe_load(path.read_text())
    fields = {f.name for f in dataclasses.fields(ClusterConfig)}
    assert set(cfg) <= fields, set(cfg) - fields
    assert cfg["distributed_type"] in {t.value for t in DistributedType}
    assert isinstance(cfg["num_processes"], int) and cfg["num_processes"] >= 1
    assert cfg["num_machines"] == 1 and cfg["machine_rank"] == 0
    loaded = ClusterConfig.from_yaml_file(str(path))  # what `accelerate launch --config_file` does
    assert loaded.distributed_type == cfg["distributed_type"] and loaded.num_processes == cfg["num_processes"]


def test_single_device_and_ddp():
    assert load("single_device.yaml")["distributed_type"] == "NO" and load("single_device.yaml")["num_processes"] == 1
    assert load("ddp.yaml")["distributed_type"] == "MULTI_GPU"


@pytest.mark.parametrize("family,layer", sorted(FAMILY_LAYERS.items()))
def test_fsdp2_full_shard_wraps_the_family_decoder_layer(family, layer):
    import transformers

    cfg = load(f"fsdp2_{family}.yaml")
    fsdp = cfg["fsdp_config"]
    assert cfg["distributed_type"] == "FSDP"
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_reshard_after_forward"] is True  # FSDP2's full shard
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == layer
    # the class the model itself declares as its unsplittable block, under that exact name
    model_cls = getattr(transformers, layer.replace("DecoderLayer", "ForCausalLM"))
    assert model_cls._no_split_modules == [layer]
    # accelerate refuses cpu_ram_efficient_loading without sync_module_states
    assert not fsdp["fsdp_cpu_ram_efficient_loading"] or fsdp["fsdp_sync_module_states"]


def test_generic_fsdp2_falls_back_to_the_model_no_split_modules():
    fsdp = load("fsdp2.yaml")["fsdp_config"]
    assert fsdp["fsdp_version"] == 2 and "fsdp_transformer_layer_cls_to_wrap" not in fsdp


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_point_at_existing_json_of_their_stage(stage):
    cfg = load(f"deepspeed_zero{stage}.yaml")
    assert cfg["distributed_type"] == "DEEPSPEED"
    # accelerate refuses mixed_precision beside a deepspeed_config_file ("will be ignored" error)
    assert "mixed_precision" not in cfg
    json_path = ROOT / cfg["deepspeed_config"]["deepspeed_config_file"]
    assert json_path.is_file()
    ds = json.loads(json_path.read_text())
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["train_micro_batch_size_per_gpu"] == "auto" and ds["bf16"]["enabled"] == "auto"
    assert cfg["deepspeed_config"]["zero3_init_flag"] is (stage == 3)


def test_processes_a_gpu_config_leaves_unjoined_on_cpu_are_stopped(tmp_path):
    """``accelerate launch --num_processes 2`` with the DDP config on a machine without GPUs (and without
    ACCELERATE_USE_CPU) starts two processes that accelerate does not join: each would run the whole stage
    alone into the same folder. The stages' check stops them with the fix in the message."""
    import os
    import subprocess
    import sys

    script = tmp_path / "joined.py"
    script.write_text("from accelerate import Accelerator\nfrom align_kit.stages.common import check_processes_joined\n"
                      "check_processes_joined(Accelerator())\nprint('joined')\n")
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FOLDER / "ddp.yaml"),
           "--num_processes", "2", "--main_process_port", "0", str(script)]
    proc = subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "joined" not in proc.stdout
    assert "launched as 2 processes but accelerate joined 1" in proc.stderr
    assert "ACCELERATE_USE_CPU=1" in proc.stderr
    ok = subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}, capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.count("joined") == 2, ok.stderr[-2000:]


def test_fsdp_config_run_as_ddp_on_cpu_is_reported(monkeypatch, caplog):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from align_kit.stages.common import check_processes_joined

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with caplog.at_level("WARNING", logger="align_kit"):
        check_processes_joined(SimpleNamespace(num_processes=2, distributed_type=DistributedType.MULTI_CPU))
    assert "asks for FSDP, but accelerate runs this launch as MULTI_CPU" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="align_kit"):
        check_processes_joined(SimpleNamespace(num_processes=2, distributed_type=DistributedType.FSDP))
    assert not caplog.text
