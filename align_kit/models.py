"""Loading tokenizers and models: family template, dtype, attention backend, bitsandbytes, LoRA.

Security: ``trust_remote_code`` only when the recipe sets it (with a warning naming the repository);
pickle-based weights (.bin/.pt) are refused unless ``model.allow_pickle``.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from align_kit.errors import ConfigError
from align_kit.families import (
    Family,
    Template,
    apply_family,
    detect_template,
    family_for_model_type,
    get_family,
    get_template,
    stop_token_ids,
)

if TYPE_CHECKING:  # annotations only: the recipe loader (config) calls check_targets_early below
    from align_kit.config import ModelArgs, PeftArgs, QuantArgs

log = logging.getLogger("align_kit")
BUILTIN = "builtin:tiny-llama"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _is_local(name: str) -> bool:
    return Path(name).exists()


def check_source(args: ModelArgs) -> None:
    """Refuse remote code and pickle weights unless the recipe allows them; fail early on missing paths."""
    name = args.name_or_path
    if name == BUILTIN:
        return
    # a Hub id is "owner/name" (dots allowed: Qwen/Qwen2.5-7B); a path starts with . / ~, has more parts, or is
    # a bare file name
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or ("/" not in name and Path(name).suffix)
    if looks_local and not _is_local(name):
        raise ConfigError(f"model.name_or_path: '{name}' does not exist (expected a checkpoint folder or a Hub id)")
    if _is_local(name):
        folder = Path(name)
        safe = list(folder.glob("*.safetensors"))
        pickled = [p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES and "optimizer" not in p.name
                   and "training_args" not in p.name and "rng_state" not in p.name and "scheduler" not in p.name]
        if pickled and not safe and not args.allow_pickle:
            raise ConfigError(f"model.name_or_path: '{name}' holds pickle-based weights ({', '.join(pickled[:3])}), "
                              "which can run arbitrary code when loaded. Convert them to safetensors, or set "
                              "model.allow_pickle: true if you trust their origin")
        if not (folder / "config.json").exists() and not (folder / "adapter_config.json").exists():
            raise ConfigError(f"model.name_or_path: '{name}' has no config.json (expected a Hugging Face checkpoint folder)")
    folder = Path(name) if _is_local(name) else _cached_snapshot(args)
    if folder is not None and not args.trust_remote_code:
        custom = _custom_code(folder)
        if custom:
            raise ConfigError(f"model.name_or_path: '{name}' ships its own Python code ({', '.join(custom[:3])}, "
                              "named by auto_map) that loading would run; found model.trust_remote_code: false, "
                              "expected true to run it. Set it only if you trust this repository")
    if args.trust_remote_code:
        log.warning("trust_remote_code is on: Python code from '%s' will run on this machine", name)


def _cached_snapshot(args: ModelArgs) -> Path | None:
    """The local Hugging Face cache's snapshot folder of a Hub id when its config.json is there (no download), so
    code a cached repository ships is refused before anything loads; else None (checked when it loads)."""
    name = args.name_or_path
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json", revision=args.revision)
    except Exception:  # not a valid repository id, an unreadable cache: the load will say what is wrong
        return None
    return Path(found).parent if isinstance(found, str) else None


def _custom_code(folder: Path) -> list[str]:
    """Python modules a local checkpoint's ``auto_map`` (config.json, tokenizer_config.json) would import."""
    import json

    modules = set()
    for name in ("config.json", "tokenizer_config.json"):
        try:
            auto_map = json.loads((folder / name).read_text(encoding="utf-8")).get("auto_map") or {}
        except (OSError, ValueError, AttributeError):
            continue
        for ref in auto_map.values():
            for item in ref if isinstance(ref, list) else [ref]:
                if isinstance(item, str) and "." in item:
                    modules.add(item.split("--")[-1].rsplit(".", 1)[0] + ".py")
    return sorted(modules)


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def resolve_attention(name: str) -> str:
    """FlashAttention-2 when installed and on CUDA, else SDPA; eager only on request."""
    if name != "auto":
        return name
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_tokenizer(args: ModelArgs):
    """Tokenizer with the family's chat template, stop tokens and pad token applied."""
    check_source(args)
    if args.name_or_path == BUILTIN:
        from align_kit.quickstart.model import build_tokenizer

        tokenizer = build_tokenizer()
        model_type = "llama"
    else:
        from transformers import AutoTokenizer

        kw = dict(revision=args.revision, trust_remote_code=args.trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(args.name_or_path, **kw)
        model_type = _model_type(args, kw)
    family, template = resolve_family(args, model_type, tokenizer)
    for note in apply_family(tokenizer, template, family, override_template=args.override_template):
        log.info("tokenizer: %s", note)
    for tok in args.new_tokens:
        if tok in tokenizer.get_vocab():
            raise ConfigError(f"model.new_tokens: '{tok}' is already in the vocabulary")
    if args.new_tokens:
        tokenizer.add_tokens(list(args.new_tokens))
    tokenizer.align_kit_template = template.name  # recorded in cards and manifests
    return tokenizer


def _model_type(args: ModelArgs, kw) -> str:
    from transformers import AutoConfig

    folder = Path(args.name_or_path)
    if _is_local(args.name_or_path) and not (folder / "config.json").exists() and (folder / "adapter_config.json").exists():
        import json

        base = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
        return AutoConfig.from_pretrained(base, **kw).model_type
    return AutoConfig.from_pretrained(args.name_or_path, **kw).model_type


def resolve_family(args: ModelArgs, model_type: str, tokenizer) -> tuple[Family, Template]:
    family = family_for_model_type(model_type) if args.family == "auto" else get_family(args.family)
    if args.template != "auto":
        template = get_template(args.template)
    elif family.name == "glm":
        template = get_template("chatglm3" if model_type == "chatglm" else "glm4")
    else:
        template = detect_template(family, tokenizer.get_vocab())
    return family, template


def quantization_config(q: QuantArgs | None):
    if q is None:
        return None
    from transformers import BitsAndBytesConfig

    if q.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = resolve_dtype(q.compute_dtype)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.quant_type,
                              bnb_4bit_use_double_quant=q.double_quant, bnb_4bit_compute_dtype=compute)


def load_model(args: ModelArgs, tokenizer, *, quant: QuantArgs | None = None, head: str = "causal_lm",
               num_labels: int = 1):
    """Load (or build, for the builtin) a causal LM or a sequence classifier (``head="classifier"``)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    check_source(args)
    dtype = resolve_dtype(args.dtype)
    attn = resolve_attention(args.attn_implementation)
    if args.name_or_path == BUILTIN:
        from align_kit.quickstart.model import build_model

        model = build_model(tokenizer, head=head, attn_implementation=attn)
    else:
        cls = AutoModelForCausalLM if head == "causal_lm" else AutoModelForSequenceClassification
        kw = dict(revision=args.revision, trust_remote_code=args.trust_remote_code, dtype=dtype,
                  attn_implementation=attn, use_safetensors=None if args.allow_pickle else True)
        if head != "causal_lm":
            kw["num_labels"] = num_labels
        qc = quantization_config(quant)
        if qc is not None:
            kw["quantization_config"] = qc
        model = cls.from_pretrained(args.name_or_path, **kw)
        if qc is not None:
            keep_4bit_trainable_on_cpu(model)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        # New special tokens (template markers, vocabulary extension): rows for them; mean-initialised.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    if head != "causal_lm" and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    template = get_template(getattr(tokenizer, "align_kit_template", "llama2"))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.eos_token_id = stop_token_ids(tokenizer, template)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if args.liger_kernels:
        apply_liger(model)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model


def keep_4bit_trainable_on_cpu(model) -> int:
    """Stop bitsandbytes repacking 4-bit weights for its CPU inference kernel; returns the layers changed.

    On a CPU with AVX512-BF16, bitsandbytes' ``Linear4bit`` rewrites its weight into an inference-only layout
    the first time it runs in eval mode without grad (an evaluation before training, a frozen reference pass
    over a shared LoRA base). From then on the layer's matmul has no backward, so every gradient before it is
    zero and LoRA adapters silently stop training. Measured with bitsandbytes 0.50.2: QLoRA SFT ended with all
    LoRA B matrices still zero. Models that are only ever evaluated lose nothing but that kernel's speed.
    """
    try:
        import bitsandbytes
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return 0
    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    if layers and not hasattr(layers[0], "support_avx512bf16_for_cpu"):
        log.warning("bitsandbytes %s: Linear4bit has no support_avx512bf16_for_cpu; check that 4-bit layers "
                    "still train after an evaluation pass on CPU (tests/unit/test_compat.py)",
                    getattr(bitsandbytes, "__version__", "?"))
        return 0
    for m in layers:
        m.support_avx512bf16_for_cpu = False
    return len(layers)


def apply_liger(model) -> None:
    """Swap in Liger's fused Triton kernels (RMSNorm, RoPE, SwiGLU) on this model instance. Its fused linear
    cross-entropy stays off: it replaces ``forward``, which TRL's trainers patch with their own chunked LM head
    (TRL refuses the combination). compat.py has already refused a machine without CUDA or liger-kernel."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model, fused_linear_cross_entropy=False, cross_entropy=False)
    log.info("Liger kernels applied to %s", type(model).__name__)


def lora_config(p: PeftArgs, model, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig

    targets = p.target_modules
    if targets == "auto":
        names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        family_targets = _family_targets(model)
        targets = [t for t in family_targets if t in names]
        if not targets:
            raise ConfigError(f"peft.target_modules: none of the family's targets {list(family_targets)} are in the "
                              f"model; set them explicitly (linear layers: {sorted(names)[:12]})")
    else:
        check_targets(targets, model)
    return LoraConfig(r=p.r, lora_alpha=p.alpha, lora_dropout=p.dropout, target_modules=list(targets),
                      modules_to_save=list(p.modules_to_save) or None, task_type=task_type)


def check_targets(targets: list[str] | str, model) -> None:
    """Every name in ``peft.target_modules`` must match a module as peft matches them (the full name or its
    last dotted parts; a single string is a regular expression over full names), or peft stops with a
    traceback mid-load, or, for a list where some names match, silently adapts fewer layers than asked."""
    import re

    full = [n for n, _ in model.named_modules() if n]
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    if isinstance(targets, str):
        if not any(re.fullmatch(targets, n) for n in full):
            raise ConfigError(f"peft.target_modules: the pattern {targets!r} matches no module of the model; "
                              f"expected a list of module names such as {linear[:8]}")
        return
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in full)]
    if missing:
        raise ConfigError(f"peft.target_modules: {missing} match no module of the model; expected names such as "
                          f"{linear[:8]} (its linear layers)")


def check_targets_early(recipe) -> None:
    """``peft.target_modules`` (a list) against the model's module names before anything loads, so that
    ``--check`` refuses what the run would: the builtin model is built in process, a local checkpoint as an
    empty skeleton on the meta device from its config.json (no weights read). Hub ids and remote-code models
    are checked when they load (:func:`check_targets`)."""
    p = recipe.peft
    if p is None or isinstance(p.target_modules, str):
        return
    name = recipe.model.name_or_path
    if name == BUILTIN:
        from align_kit.quickstart.model import build_model, build_tokenizer

        with torch.device("meta"):
            skeleton = build_model(build_tokenizer())
    elif (Path(name) / "config.json").is_file() and not recipe.model.trust_remote_code:
        from transformers import AutoConfig, AutoModelForCausalLM

        try:
            config = AutoConfig.from_pretrained(name)
            with torch.device("meta"):
                skeleton = AutoModelForCausalLM.from_config(config)
        except (ValueError, KeyError, OSError):
            return  # an architecture transformers cannot build from its config alone: checked when it loads
    else:
        return
    heads = {"lm_head", "score", "classifier"}  # the stage may put another head on the same body
    check_targets([t for t in p.target_modules if t not in heads], skeleton)


def _family_targets(model) -> tuple[str, ...]:
    try:
        return family_for_model_type(model.config.model_type).lora_targets
    except ConfigError:
        return ("q_proj", "k_proj", "v_proj", "o_proj")


def apply_lora(model, p: PeftArgs | None, quantized: bool, task_type: str = "CAUSAL_LM"):
    """Wrap ``model`` with LoRA adapters (preparing a k-bit model first); returns the model unchanged if no peft."""
    if p is None:
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, lora_config(p, model, task_type))


def save_for_transformers(model, tokenizer, out: Path) -> None:
    """Save weights (or the adapter) as safetensors plus the tokenizer with its chat template."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
