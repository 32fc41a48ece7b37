"""Up-front compatibility check: reject option combinations that cannot work, before any model loads.

Each rule names the problem and the nearest working setting.
"""

from __future__ import annotations

import importlib.util

from align_kit.errors import ConfigError


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# Stages whose rows align_kit packs (data/packing.py): several samples per row, separated only by position
# ids that restart at 0, with no attention mask.
PACKING_STAGES = ("sft",)
# Attention backends for which transformers derives the block-diagonal mask from those position ids
# (``find_packed_sequence_indices`` for eager/sdpa/flex_attention; varlen cu_seqlens for flash_attention_2),
# so a packed sample sees only itself. tests/unit/test_compat.py re-measures eager and sdpa on a real model (a
# packed sample's logits equal its logits alone); flex_attention was measured the same way on Llama, Qwen2,
# Mistral and GLM4 shapes (it compiles with inductor on CPU: too slow for the test suite).
PACKED_MASK_BACKENDS = ("auto", "sdpa", "eager", "flex_attention", "flash_attention_2")


def _check_packing(model) -> None:
    if model.attn_implementation not in PACKED_MASK_BACKENDS:
        raise ConfigError(f"trainer.packing with attn_implementation={model.attn_implementation}: this backend does "
                          "not separate packed samples, which would attend to each other; use attn_implementation: "
                          "sdpa, or packing: false")
    if model.trust_remote_code:
        # Hub modelling code (ChatGLM3) builds its own causal mask and ignores restarting position ids.
        raise ConfigError("trainer.packing with model.trust_remote_code: the repository's own modelling code does not "
                          "separate packed samples (they would attend to each other); set trainer.packing: false")


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
    if recipe.stage in PACKING_STAGES and trainer.get("packing", True):
        _check_packing(model)
    optim = str(trainer.get("optim", ""))
    if ("8bit" in optim or "paged" in optim) and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"trainer.optim={optim} needs bitsandbytes; install it or use optim: adamw_torch")
    if model.liger_kernels:
        if not cuda_available():
            raise ConfigError("model.liger_kernels=true needs a CUDA GPU (Liger's kernels are Triton GPU kernels); "
                              "on this machine set liger_kernels: false")
        if importlib.util.find_spec("liger_kernel") is None:
            raise ConfigError("model.liger_kernels=true needs the liger-kernel package (pip install liger-kernel); "
                              "or set liger_kernels: false")
    if trainer.get("gradient_checkpointing") is not None:
        raise ConfigError("trainer.gradient_checkpointing: set model.gradient_checkpointing instead (align_kit "
                          "configures it together with LoRA and quantisation)")
