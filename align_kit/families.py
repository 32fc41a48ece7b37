"""Model families: chat template, stop tokens, pad-token policy and LoRA targets.

A *family* (llama, qwen, mistral, glm) is detected from ``config.model_type``; a *template* variant
inside it (llama2 / llama3 / llama3_1, chatml / qwen2_5 / qwen3, mistral v1 / v3 / v7, chatglm3 / glm4)
from the tokenizer's special tokens. Both can be overridden in the recipe (``model.family``,
``model.template``).

A model is trained in the format it is served in: a tokenizer that ships a chat template keeps it, as it
is; only a tokenizer without one gets the family's template for its version. align_kit's own templates
wrap each assistant turn, *including its end-of-turn token*, in ``{% generation %}`` markers; for a
template without them (the model's own, or one of the official ones shipped inside TRL) the trained span
is found by rendering (``data/tokenize.py``). Either way a fine-tuned model learns to stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

from align_kit.errors import ConfigError, did_you_mean

# Attention and MLP projections: LoRA on all of them is the QLoRA paper's recommendation.
_LLAMA_LIKE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Template:
    """One chat format. ``stop`` are the tokens that end an assistant turn (generation stops on any)."""

    name: str
    stop: tuple[str, ...]
    special: tuple[str, ...] = ()  # tokens the format needs as single (special) tokens
    marker: str | None = None  # a vocabulary entry that identifies this variant within its family
    trl_file: str | None = None  # an official template that ships inside TRL, used as it is

    @property
    def jinja(self) -> str:
        return read_trl_template(self.trl_file) if self.trl_file else _read_template(self.name)


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    templates: tuple[str, ...]  # first is the default for a base model with no template
    lora_targets: tuple[str, ...]
    pad_candidates: tuple[str, ...]  # first one the tokenizer has becomes pad; never eos unless nothing else


# Mistral's control tokens: instructions, then tools (v3), then the system prompt and tool content (v7)
_MISTRAL_V3 = ("[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
               "[/TOOL_RESULTS]")
_MISTRAL_V7 = (*_MISTRAL_V3, "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]")

TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template("llama2", stop=("</s>",)),
        Template("llama3", stop=("<|eot_id|>", "<|end_of_text|>"), marker="<|eot_id|>",
                 special=("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
        # Llama 3.1-3.3: a system header with "Cutting Knowledge Date"/"Today Date" in every conversation,
        # tool calls; <|eom_id|> ends a turn that waits for a tool. 3.1's vocabulary names <|python_tag|>.
        Template("llama3_1", stop=("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"), marker="<|python_tag|>",
                 special=("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                          "<|eom_id|>", "<|python_tag|>"), trl_file="llama3_1.jinja"),
        Template("chatml", stop=("<|im_end|>", "<|endoftext|>"), special=("<|im_start|>", "<|im_end|>")),
        # Qwen2.5: its own default system line ("You are Qwen, created by Alibaba Cloud. ...") and tool format.
        Template("qwen2_5", stop=("<|im_end|>", "<|endoftext|>"), special=("<|im_start|>", "<|im_end|>"),
                 marker="<tool_call>", trl_file="qwen2_5.jinja"),
        # Qwen3: thinking blocks (the last reply's <think> block is trained; earlier ones are dropped, as served).
        Template("qwen3", stop=("<|im_end|>", "<|endoftext|>"), special=("<|im_start|>", "<|im_end|>"),
                 marker="<think>", trl_file="qwen3.jinja"),
        Template("mistral_v1", stop=("</s>",)),
        Template("mistral_v3", stop=("</s>",), special=_MISTRAL_V3, marker="[INST]"),
        Template("mistral_v3_tekken", stop=("</s>",), special=_MISTRAL_V3),
        Template("mistral_v7", stop=("</s>",), special=_MISTRAL_V7, marker="[SYSTEM_PROMPT]"),
        Template("mistral_v7_tekken", stop=("</s>",), special=_MISTRAL_V7),
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
        Family("llama", ("llama",), ("llama2", "llama3_1", "llama3"), _LLAMA_LIKE,
               ("<pad>", "<unk>", "<|finetune_right_pad_id|>", "<|reserved_special_token_0|>")),
        Family("qwen", ("qwen2", "qwen3", "qwen2_moe", "qwen3_moe"), ("chatml", "qwen3", "qwen2_5"), _LLAMA_LIKE,
               ("<|endoftext|>", "<pad>")),
        Family("mistral", ("mistral", "mixtral"), ("mistral_v1", "mistral_v7", "mistral_v3"), _LLAMA_LIKE, ("<pad>", "<unk>")),
        Family("glm", ("chatglm", "glm", "glm4"), ("chatglm3", "glm4"),
               ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h", *_LLAMA_LIKE, "gate_up_proj"),
               ("<pad>", "[PAD]", "<unk>")),
    )
}


@cache
def _read_template(name: str) -> str:
    return resources.files("align_kit.templates").joinpath(f"{name}.jinja").read_text(encoding="utf-8")


@cache
def read_trl_template(file: str) -> str:
    """An official chat template that ships inside TRL (``trl/chat_templates/<file>``)."""
    return resources.files("trl").joinpath("chat_templates", file).read_text(encoding="utf-8")


def template_source(tokenizer, tools=None) -> str | None:
    """The template text ``apply_chat_template`` uses: of named variants, ``tool_use`` when tools are given and
    it exists, else ``default`` (as transformers picks)."""
    tpl = getattr(tokenizer, "chat_template", None)
    if isinstance(tpl, dict):
        return tpl.get("tool_use") if tools and "tool_use" in tpl else tpl.get("default")
    return tpl


def has_generation_markers(template: str | None) -> bool:
    """Whether a chat template marks assistant output with ``{% generation %}``.

    >>> has_generation_markers("{%- generation -%}x{% endgeneration %}"), has_generation_markers("x")
    (True, False)
    """
    import re

    return bool(template) and re.search(r"{%-?\s*generation\s*-?%}", template) is not None


def strip_generation_markers(template: str) -> str:
    """The template as served: ``{% generation %}`` / ``{% endgeneration %}`` tags removed (they print nothing).

    >>> strip_generation_markers("a{% generation %}{{ x }}{%- endgeneration -%}b")
    'a{{ x }}b'
    """
    import re

    return re.sub(r"{%-?\s*(end)?generation\s*-?%}", "", template)


def _unknown(kind: str, name: str, options) -> ConfigError:
    return ConfigError(f"unknown {kind} '{name}'{did_you_mean(name, options)}; valid: {', '.join(sorted(options))}")


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
    >>> detect_template(FAMILIES["llama"], {"<|eot_id|>", "<|python_tag|>"}).name
    'llama3_1'
    >>> detect_template(FAMILIES["mistral"], {"[INST]", "\u2581the"}).name, detect_template(FAMILIES["mistral"], {"<s>"}).name
    ('mistral_v3', 'mistral_v1')
    >>> detect_template(FAMILIES["mistral"], {"[INST]", "[SYSTEM_PROMPT]", "the"}).name
    'mistral_v7_tekken'
    """
    for name in family.templates:
        tpl = TEMPLATES[name]
        if tpl.marker is not None and tpl.marker in vocab:
            if name in ("mistral_v3", "mistral_v7") and not any(k.startswith("\u2581") for k in vocab):
                return TEMPLATES[name + "_tekken"]  # Tekken (byte-level BPE): no SentencePiece '▁' pieces
            return tpl
    return TEMPLATES[family.templates[0]]  # variants are listed with the marker-less default first


def apply_family(tokenizer, template: Template, family: Family, *, override_template: bool = False) -> list[str]:
    """Give ``tokenizer`` the template, its stop tokens and a pad token; returns notes for the log.

    A tokenizer that already has a chat template keeps it, unchanged, unless ``override_template``: it is
    the format the model is served in. Its original is kept as ``tokenizer.align_kit_own_template`` (the
    reference ``align-kit data check-template`` compares against).
    """
    notes = []
    # The version the vocabulary says (the served format), whatever template training was told to use.
    tokenizer.align_kit_detected_template = detect_template(family, tokenizer.get_vocab()).name
    tokenizer.align_kit_template = template.name  # its stop tokens; data/tokenize.py's rules for the family
    shipped = getattr(tokenizer, "chat_template", None)
    existing = template_source(tokenizer)
    tokenizer.align_kit_own_template = existing or None
    keep = bool(existing) and not override_template
    missing = [t for t in template.special if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
        notes.append(f"added special tokens {missing} (new embedding rows are trained)")
    if keep:
        how = ("its generation markers" if has_generation_markers(existing)
               else "rendering each reply's prompt (it has no generation markers)")
        notes.append(f"kept the tokenizer's own chat template; trained tokens are found from {how}")
        tokenizer.chat_template = shipped  # as shipped: named variants (e.g. tool_use) stay
    else:
        if existing:
            notes.append(f"replaced the tokenizer's chat template with align_kit's '{template.name}' "
                         "(model.override_template)")
        tokenizer.chat_template = template.jinja
    vocab = tokenizer.get_vocab()
    if (not keep and template.stop[0] != tokenizer.eos_token and template.stop[0] in vocab
            and template.stop[0] != "</s>"):
        # Chat models end a reply with the turn terminator (<|im_end|>, <|eot_id|>): make it eos, as the
        # official instruct tokenizers do, so TRL and generate() stop on it. A kept template keeps the eos
        # it ships with (a Llama 3 fine-tune served in ChatML ends with <|im_end|>, not the family's eot).
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
