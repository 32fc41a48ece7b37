"""Model families: chat template, stop tokens, pad-token policy and LoRA targets.

A *family* (llama, qwen, mistral, glm) is detected from ``config.model_type``; a *template* variant
inside it (llama2 vs llama3, mistral v1 vs v3, chatglm3 vs glm4) from the tokenizer's special tokens.
Both can be overridden in the recipe (``model.family``, ``model.template``).

Every template wraps the assistant turn, *including its end-of-turn token*, in ``{% generation %}``
markers, so ``apply_chat_template(..., return_assistant_tokens_mask=True)`` marks exactly the tokens
that are trained, and a fine-tuned model learns to stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

from align_kit.errors import ConfigError

# Attention and MLP projections: LoRA on all of them is the QLoRA paper's recommendation.
_LLAMA_LIKE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Template:
    """One chat format. ``stop`` are the tokens that end an assistant turn (generation stops on any)."""

    name: str
    stop: tuple[str, ...]
    special: tuple[str, ...] = ()  # tokens the format needs as single (special) tokens
    marker: str | None = None  # a vocabulary entry that identifies this variant within its family

    @property
    def jinja(self) -> str:
        return _read_template(self.name)


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    templates: tuple[str, ...]  # first is the default for a base model with no template
    lora_targets: tuple[str, ...]
    pad_candidates: tuple[str, ...]  # first one the tokenizer has becomes pad; never eos unless nothing else


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template("llama2", stop=("</s>",)),
        Template("llama3", stop=("<|eot_id|>", "<|end_of_text|>"), marker="<|eot_id|>",
                 special=("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
        Template("chatml", stop=("<|im_end|>", "<|endoftext|>"), special=("<|im_start|>", "<|im_end|>")),
        Template("mistral_v1", stop=("</s>",)),
        Template("mistral_v3", stop=("</s>",), special=("[INST]", "[/INST]"), marker="[INST]"),
        Template("chatglm3", stop=("</s>", "<|user|>", "<|observation|>"),
                 special=("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<|system|>", "<|user|>", "<|assistant|>",
                          "<|observation|>")),  # ChatGLM3's order: ids 64789.. follow its 64,789 pieces
        Template("glm4", stop=("<|endoftext|>", "<|user|>", "<|observation|>"), marker="<sop>",
                 special=("[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")),
    )
}

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("llama", ("llama",), ("llama2", "llama3"), _LLAMA_LIKE,
               ("<pad>", "<unk>", "<|finetune_right_pad_id|>", "<|reserved_special_token_0|>")),
        Family("qwen", ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe"), ("chatml",), _LLAMA_LIKE,
               ("<|endoftext|>", "<pad>")),
        Family("mistral", ("mistral", "mixtral"), ("mistral_v1", "mistral_v3"), _LLAMA_LIKE, ("<pad>", "<unk>")),
        Family("glm", ("chatglm", "glm", "glm4"), ("chatglm3", "glm4"),
               ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h", *_LLAMA_LIKE, "gate_up_proj"),
               ("<pad>", "[PAD]", "<unk>")),
    )
}


@cache
def _read_template(name: str) -> str:
    return resources.files("align_kit.templates").joinpath(f"{name}.jinja").read_text(encoding="utf-8")


def closest(word: str, options) -> str | None:
    """Closest valid option for an error message.

    >>> closest("lama", ["llama", "qwen"])
    'llama'
    """
    import difflib

    hits = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return hits[0] if hits else None


def _unknown(kind: str, name: str, options) -> ConfigError:
    hint = closest(name, options)
    return ConfigError(f"unknown {kind} '{name}'" + (f" (did you mean '{hint}'?)" if hint else "")
                       + f"; valid: {', '.join(sorted(options))}")


def family_for_model_type(model_type: str) -> Family:
    """Family of a ``config.model_type``.

    >>> family_for_model_type("qwen2").name, family_for_model_type("mistral").name
    ('qwen', 'mistral')
    """
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    raise ConfigError(f"model_type '{model_type}' is not a known family; set model.family to one of "
                      f"{', '.join(FAMILIES)} and model.template to one of {', '.join(TEMPLATES)}")


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise _unknown("family", name, FAMILIES)
    return FAMILIES[name]


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise _unknown("template", name, TEMPLATES)
    return TEMPLATES[name]


def detect_template(family: Family, vocab: dict[str, int] | set[str]) -> Template:
    """Pick the family's template variant from the tokenizer vocabulary.

    >>> detect_template(FAMILIES["llama"], {"<|eot_id|>", "<s>"}).name
    'llama3'
    >>> detect_template(FAMILIES["mistral"], {"[INST]"}).name, detect_template(FAMILIES["mistral"], {"<s>"}).name
    ('mistral_v3', 'mistral_v1')
    """
    for name in family.templates:
        tpl = TEMPLATES[name]
        if tpl.marker is not None and tpl.marker in vocab:
            return tpl
    return TEMPLATES[family.templates[0]]  # variants are listed with the marker-less default first


def apply_family(tokenizer, template: Template, family: Family, *, override_template: bool = False) -> list[str]:
    """Give ``tokenizer`` the template, its stop tokens and a pad token; returns notes for the log.

    A tokenizer that already has a chat template keeps it unless ``override_template``; but align_kit's
    assistant-only loss needs generation markers, so a template without them is replaced (noted).
    """
    notes = []
    missing = [t for t in template.special if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
        notes.append(f"added special tokens {missing} (new embedding rows are trained)")
    existing = getattr(tokenizer, "chat_template", None)
    if existing and not override_template and "{% generation %}" in existing.replace("{%- generation", "{% generation"):
        notes.append("kept the tokenizer's own chat template (it has generation markers)")
    else:
        if existing:
            notes.append(f"replaced the tokenizer's chat template with align_kit's '{template.name}' "
                         "(it lacked {% generation %} markers needed for assistant-only loss)")
        tokenizer.chat_template = template.jinja
    vocab = tokenizer.get_vocab()
    if template.stop[0] != tokenizer.eos_token and template.stop[0] in vocab and template.stop[0] != "</s>":
        # Chat models end a reply with the turn terminator (<|im_end|>, <|eot_id|>): make it eos, as the
        # official instruct tokenizers do, so TRL and generate() stop on it.
        notes.append(f"eos token set to '{template.stop[0]}' (was '{tokenizer.eos_token}')")
        tokenizer.eos_token = template.stop[0]
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        pad = next((p for p in family.pad_candidates if p in vocab and p != tokenizer.eos_token), None)
        if pad is None:
            pad = tokenizer.eos_token
            notes.append(f"no spare token for padding: using eos '{pad}' (padded positions are masked)")
        tokenizer.pad_token = pad
    return notes


def stop_token_ids(tokenizer, template: Template) -> list[int]:
    """Ids generation stops on: the template's stop tokens that exist, plus eos."""
    vocab = tokenizer.get_vocab()
    ids = [vocab[t] for t in template.stop if t in vocab]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids
