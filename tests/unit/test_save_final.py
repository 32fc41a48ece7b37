"""``common.save_final`` under sharded training: the gathered full state dict is what gets written.

FSDP / ZeRO-3 cannot run on CPU here (accelerate turns FSDP into DDP under ACCELERATE_USE_CPU), so an
accelerator that reports FSDP and hands back a known state dict stands in for the collective; the stage code
path (gather on every rank, unwrap, rank 0 writes) is the real one. It ran for real under FSDP2 on an H100
(benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json

import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file

from align_kit.models import apply_lora
from align_kit.quickstart.model import build_model, build_tokenizer
from align_kit.stages import common


class ShardedAccelerator:
    """Reports FSDP; ``get_state_dict`` returns the module's weights plus 1, as a gather would return
    values that differ from a rank's local module."""

    distributed_type = DistributedType.FSDP

    def __init__(self):
        self.gathered = 0

    def get_state_dict(self, model):
        self.gathered += 1
        return {k: v + 1 for k, v in model.state_dict().items()}

    def unwrap_model(self, model):
        return model


def test_sharded_save_writes_the_gathered_state_dict(tmp_path):
    tok = build_tokenizer()
    model = build_model(tok)
    acc = ShardedAccelerator()
    final = common.save_final(model, tok, tmp_path, accelerator=acc)
    assert acc.gathered == 1 and (final / common.COMPLETE).exists()
    saved = load_file(final / "model.safetensors")
    local = model.state_dict()
    key = "model.layers.0.mlp.down_proj.weight"
    torch.testing.assert_close(saved[key], local[key] + 1)


def test_sharded_lora_keeps_the_adapter_in_model_dir(tmp_path):
    from align_kit.config import PeftArgs

    tok = build_tokenizer()
    model = apply_lora(build_model(tok), PeftArgs(r=4, alpha=8), quantized=False)
    final = common.save_final(model, tok, tmp_path, accelerator=ShardedAccelerator())
    # merging needs the whole base in one process: model/ holds the adapter, `align-kit export` merges
    assert json.loads((final / "adapter_config.json").read_text())["r"] == 4
    assert not (final / "model.safetensors").exists() and (tmp_path / "adapter").is_dir()


def test_unsharded_save_unwraps_and_merges(tmp_path):
    from align_kit.config import PeftArgs

    class Ddp(ShardedAccelerator):
        distributed_type = DistributedType.MULTI_CPU

    tok = build_tokenizer()
    model = apply_lora(build_model(tok), PeftArgs(r=4, alpha=8), quantized=False)
    acc = Ddp()
    final = common.save_final(model, tok, tmp_path, accelerator=acc)
    assert acc.gathered == 0 and (final / "model.safetensors").exists()  # merged plain weights
