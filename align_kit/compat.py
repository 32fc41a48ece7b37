"""Up-front compatibility check: reject option combinations that cannot work, before any model loads.

Each rule names the problem and the nearest working setting.
"""

from __future__ import annotations

import importlib.util

from align_kit.errors import ConfigError


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check_compatibility(recipe) -> None:
    model, trainer = recipe.model, recipe.trainer
    attn = model.attn_implementation
    if attn == "flash_attention_2":
        if not cuda_available():
            raise ConfigError("model.attn_implementation=flash_attention_2 needs a CUDA GPU; on this machine use "
                              "attn_implementation: sdpa (or auto)")
        if importlib.util.find_spec("flash_attn") is None:
            raise ConfigError("model.attn_implementation=flash_attention_2 needs the flash-attn package "
                              "(pip install flash-attn); or use attn_implementation: sdpa")
    if recipe.quantization is not None:
        if recipe.peft is None:
            raise ConfigError(f"quantization.bits={recipe.quantization.bits} with full fine-tuning cannot work: "
                              "quantised weights are frozen. Add a peft: block (QLoRA), or remove quantization")
        if recipe.stage == "pretrain" and model.new_tokens and not recipe.peft.modules_to_save:
            raise ConfigError("model.new_tokens with quantization: the new embedding rows must be trained in full; "
                              "set peft.modules_to_save: [embed_tokens, lm_head]")
    if trainer.get("fp16") and not cuda_available():
        raise ConfigError("trainer.fp16=true needs a CUDA GPU; on CPU remove it (or use bf16: true)")
    if trainer.get("packing") and attn == "eager" and trainer.get("padding_free", True) is False:
        raise ConfigError("trainer.packing with attn_implementation=eager and padding_free=false would let packed "
                          "samples attend to each other; use attn_implementation: sdpa (align_kit packs with "
                          "per-sample position ids) or packing: false")
    optim = str(trainer.get("optim", ""))
    if ("8bit" in optim or "paged" in optim) and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"trainer.optim={optim} needs bitsandbytes; install it or use optim: adamw_torch")
    if model.liger_kernels and importlib.util.find_spec("liger_kernel") is None:
        raise ConfigError("model.liger_kernels=true needs the liger-kernel package (pip install liger-kernel); "
                          "or set liger_kernels: false")
    if trainer.get("gradient_checkpointing") is not None:
        raise ConfigError("trainer.gradient_checkpointing: set model.gradient_checkpointing instead (align_kit "
                          "configures it together with LoRA and quantisation)")
