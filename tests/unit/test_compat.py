"""The up-front compatibility check (align_kit/compat.py): every rule refuses with its message and the
nearest working setting before any model loads; the settings it lets through work on this machine."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from align_kit import compat
from align_kit.config import recipe_from_dict
from align_kit.errors import ConfigError


def recipe(stage: str = "sft", model: dict | None = None, trainer: dict | None = None, **extra) -> dict:
    return {"stage": stage, "output_dir": "unused", "model": {"name_or_path": "builtin:tiny-llama", **(model or {})},
            "data": {"train": [{"name": "quickstart-tasks"}]}, "trainer": trainer or {}, **extra}


def refused(raw: dict) -> str:
    with pytest.raises(ConfigError) as exc:
        recipe_from_dict(raw)
    return str(exc.value)


def without(monkeypatch, package: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))


def test_flash_attention_needs_cuda_then_the_package(monkeypatch):
    msg = refused(recipe(model={"attn_implementation": "flash_attention_2"}))
    assert "needs a CUDA GPU" in msg and "attn_implementation: sdpa" in msg
    monkeypatch.setattr(compat, "cuda_available", lambda: True)
    without(monkeypatch, "flash_attn")
    msg = refused(recipe(model={"attn_implementation": "flash_attention_2"}))
    assert "needs the flash-attn package" in msg and "attn_implementation: sdpa" in msg


def test_quantised_full_fine_tuning_is_refused_and_qlora_is_not():
    msg = refused(recipe(quantization={"bits": 4}))
    assert "quantization.bits=4 with full fine-tuning cannot work" in msg and "Add a peft: block (QLoRA)" in msg
    assert recipe_from_dict(recipe(quantization={"bits": 4}, peft={"r": 4})).peft.r == 4


def test_new_tokens_under_quantisation_need_trained_embeddings():
    raw = recipe("pretrain", model={"new_tokens": ["<x>"]}, quantization={"bits": 4}, peft={"r": 4})
    raw["data"] = {"train": [{"path": "corpus.txt", "format": "text"}]}
    assert "modules_to_save: [embed_tokens, lm_head]" in refused(raw)


def test_fp16_needs_cuda():
    assert "trainer.fp16=true needs a CUDA GPU; on CPU remove it" in refused(recipe(trainer={"fp16": True}))


def test_liger_needs_cuda_then_the_package(monkeypatch):
    assert "liger_kernels=true needs a CUDA GPU" in refused(recipe(model={"liger_kernels": True}))
    monkeypatch.setattr(compat, "cuda_available", lambda: True)
    without(monkeypatch, "liger_kernel")
    msg = refused(recipe(model={"liger_kernels": True}))
    assert "needs the liger-kernel package" in msg and "liger_kernels: false" in msg


@pytest.mark.parametrize("optim", ["adamw_bnb_8bit", "paged_adamw_8bit"])
def test_8bit_optimisers_need_bitsandbytes(monkeypatch, optim):
    without(monkeypatch, "bitsandbytes")
    msg = refused(recipe(trainer={"optim": optim}))
    assert f"trainer.optim={optim} needs bitsandbytes" in msg and "optim: adamw_torch" in msg


def test_gradient_checkpointing_belongs_to_the_model_block():
    assert "set model.gradient_checkpointing instead" in refused(recipe(trainer={"gradient_checkpointing": True}))
    r = recipe_from_dict(recipe(model={"gradient_checkpointing": True}))
    args = r.trainer_config()
    assert args.gradient_checkpointing is True and args.gradient_checkpointing_kwargs == {"use_reentrant": False}


def test_packing_with_remote_modelling_code_is_refused_unless_packing_is_off():
    msg = refused(recipe(model={"trust_remote_code": True}))
    assert "trust_remote_code" in msg and "set trainer.packing: false" in msg
    assert recipe_from_dict(recipe(model={"trust_remote_code": True}, trainer={"packing": False}))
    # other stages do not pack: no refusal
    assert recipe_from_dict(recipe("reward", model={"trust_remote_code": True},
                                   data={"train": [{"name": "quickstart-preferences"}]}))


# flex_attention is left out here: on CPU it compiles a kernel with inductor (minutes); measured by hand on
# Llama, Qwen2, Mistral and GLM4 shapes (largest logit difference 3e-7), see docs/distributed.md.
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_packed_samples_stay_separate_on_every_backend_compat_allows(backend):
    """The measurement behind PACKED_MASK_BACKENDS: a packed sample's logits equal its logits alone."""
    from align_kit.data.packing import PackedCollator, pack_samples
    from align_kit.quickstart.model import build_model, build_tokenizer

    assert backend in compat.PACKED_MASK_BACKENDS
    tok = build_tokenizer()
    model = build_model(tok, attn_implementation=backend).eval()
    a, b = tok("Sort: dcba and some context").input_ids, tok("Upper: xyz").input_ids
    rows = pack_samples([{"input_ids": a, "assistant_masks": [1] * len(a)},
                         {"input_ids": b, "assistant_masks": [1] * len(b)}], max_length=64)
    batch = PackedCollator(tok.pad_token_id)(rows)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        alone = model(input_ids=torch.tensor([b])).logits[0]
        # the same row with one causal mask over both samples: what a backend without detection would give
        mixed = model(input_ids=batch["input_ids"], attention_mask=torch.ones_like(batch["input_ids"])).logits[0]
    torch.testing.assert_close(packed[len(a):], alone, atol=1e-5, rtol=1e-5)
    assert (mixed[len(a):] - alone).abs().max() > 1e-3


def test_attention_backend_auto_and_override(monkeypatch):
    from align_kit import models

    assert models.resolve_attention("auto") == "sdpa"  # this machine: no CUDA
    assert models.resolve_attention("eager") == "eager"  # eager only on request
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "flash_attn" else None)
    assert models.resolve_attention("auto") == "flash_attention_2"
    assert models.resolve_attention("sdpa") == "sdpa"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert models.resolve_attention("auto") == "sdpa"


@pytest.mark.parametrize("optim,paged", [("adamw_bnb_8bit", False), ("paged_adamw_8bit", True)])
def test_8bit_and_paged_optimisers_run_on_cpu(optim, paged):
    """bitsandbytes 0.50 runs its 8-bit AdamW on CPU (paged falls back to unpaged memory there), so compat lets
    these through: the trainer builds bitsandbytes' AdamW with 8-bit state and one step moves the weights."""
    from transformers import Trainer

    args = recipe_from_dict(recipe(trainer={"optim": optim})).trainer_config()
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    assert cls.__module__.startswith("bitsandbytes") and kwargs["optim_bits"] == 8 and kwargs["is_paged"] is paged
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(64, 128))  # >= 4096 elements: bitsandbytes keeps 8-bit state
    opt = cls([weight], lr=1e-2, **{k: v for k, v in kwargs.items() if k != "lr"})
    before = weight.detach().clone()
    (weight ** 2).sum().backward()
    opt.step()
    assert opt.state[weight]["state1"].dtype == torch.uint8
    # Adam's first step moves every weight by about lr against its gradient's sign
    moved = (weight.detach() - before)
    assert 0.008 < moved.abs().mean() < 0.012 and torch.all(torch.sign(moved) == -torch.sign(before))


def test_4bit_lora_still_trains_after_an_evaluation_pass(tmp_path):
    """bitsandbytes repacks a 4-bit layer for its CPU inference kernel (on CPUs with AVX512-BF16) the first time
    it runs in eval mode without grad, and the repacked layer has no backward. load_model turns that off, so an
    evaluation before training leaves gradients flowing through every 4-bit layer to the first LoRA adapter.
    (On a CPU without AVX512-BF16 the repacking never happens and this passes either way.)"""
    from align_kit.config import ModelArgs, PeftArgs, QuantArgs
    from align_kit.models import apply_lora, load_model
    from align_kit.quickstart.model import build_model, build_tokenizer

    tok = build_tokenizer()
    build_model(tok).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model = load_model(ModelArgs(name_or_path=str(tmp_path)), tok, quant=QuantArgs(compute_dtype="float32"))
    from bitsandbytes.nn import Linear4bit

    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    assert len(layers) == 14 and all(m.support_avx512bf16_for_cpu is False for m in layers)  # 2 layers x 7
    model = apply_lora(model, PeftArgs(r=4, alpha=8, target_modules=["q_proj", "v_proj"]), quantized=True)
    ids = torch.tensor([tok("Length: abcdef").input_ids])
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    first_b = next(p for n, p in model.named_parameters() if "layers.0." in n and "lora_B" in n)
    assert first_b.grad is not None and first_b.grad.abs().sum() > 0
