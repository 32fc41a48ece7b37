"""Is the training template the format the model is served in? A battery of conversations rendered twice.

``check_template(tokenizer)`` renders every conversation of :data:`BATTERY` with the training template
(``{% generation %}`` markers removed: they print nothing) and with a reference: the tokenizer's own chat
template when it ships one, else the official template of the family version (the copies inside TRL) or
the vendor's own encoder (``mistral-common`` for Mistral, when installed and a tokenizer file is at hand).
Any difference is reported token by token. ``align-kit data check-template`` prints the report; the SFT
stage refuses to train on a mismatch (``sft: {check_template: false}`` opts out).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger("align_kit")

SYSTEM = {"role": "system", "content": "You are a careful assistant. Answer briefly."}
U1 = {"role": "user", "content": "What is the capital of France?"}
A1 = {"role": "assistant", "content": "The capital of France is Paris."}
U2 = {"role": "user", "content": "And of Italy? Answer in one word."}
A2 = {"role": "assistant", "content": "Rome."}
EMPTY = {"role": "assistant", "content": ""}

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}},
                   "required": ["city"]}}}
TOOL_CALL = {"role": "assistant", "content": "", "tool_calls": [
    {"type": "function", "id": "call00001", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
TOOL_RESULT = {"role": "tool", "name": "get_weather", "tool_call_id": "call00001", "content": "18 C, sunny"}
TOOL_ANSWER = {"role": "assistant", "content": "It is 18 C and sunny in Paris."}


@dataclass(frozen=True)
class Case:
    name: str
    messages: list[dict]
    tools: list[dict] | None = None
    empty_reply: bool = False  # vendor encoders that refuse empty replies skip it


BATTERY: tuple[Case, ...] = (
    Case("no system", [U1, A1]),
    Case("system", [SYSTEM, U1, A1]),
    Case("multi-turn", [U1, A1, U2, A2]),
    Case("multi-turn with system", [SYSTEM, U1, A1, U2, A2]),
    Case("empty assistant turn", [U1, EMPTY, U2, A2], empty_reply=True),
    Case("tool call", [U1, TOOL_CALL, TOOL_RESULT, TOOL_ANSWER], tools=[WEATHER_TOOL]),
)


@dataclass
class Mismatch:
    case: str
    position: int  # first token that differs
    training: list[str]  # tokens around it, as rendered by the training template
    reference: list[str]
    lengths: tuple[int, int] = (0, 0)


@dataclass
class Report:
    reference: str  # what the training template was compared with
    checked: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # case -> why
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def summary(self) -> str:
        head = (f"chat template check against {self.reference}: {len(self.checked)} conversations "
                f"{'identical' if self.ok else 'rendered'}")
        if self.mismatches:
            head += f", {len(self.mismatches)} differ ({', '.join(m.case for m in self.mismatches)})"
        return head

    def lines(self) -> list[str]:
        out = [self.summary()]
        for case, why in self.skipped.items():
            out.append(f"  skipped '{case}': {why}")
        for m in self.mismatches:
            out.append(f"  '{m.case}': first difference at token {m.position} "
                       f"(training {m.lengths[0]} tokens, reference {m.lengths[1]})")
            out.append(f"    training : {' '.join(m.training)}")
            out.append(f"    reference: {' '.join(m.reference)}")
        return out


# Official templates, inside TRL, of the family versions align_kit renders with its own templates or TRL's.
OFFICIAL_TRL = {"llama3": "llama3.jinja", "llama3_1": "llama3_1.jinja", "qwen2_5": "qwen2_5.jinja",
                "qwen3": "qwen3.jinja"}
# Qwen2-*-Instruct's published template (its tokenizer_config.json); no copy ships inside TRL.
QWEN2_OFFICIAL = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                  "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
                  "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
                  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

# Llama-2-*-chat's published template (its tokenizer_config.json), Meta's reference format.
LLAMA2_OFFICIAL = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\n' + system_message + "
    "'\n<</SYS>>\n\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")
PUBLISHED = {"chatml": ("Qwen2's published template", QWEN2_OFFICIAL),
             "llama2": ("Llama 2 chat's published template", LLAMA2_OFFICIAL)}


def first_difference(a: list, b: list) -> int | None:
    """Index of the first differing element (the shorter length when one is a prefix); ``None`` if equal.

    >>> first_difference([1, 2, 3], [1, 2, 4]), first_difference([1, 2], [1, 2, 3]), first_difference([1], [1])
    (2, 2, None)
    """
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _window(tokenizer, ids: list[int], at: int) -> list[str]:
    lo, hi = max(0, at - 3), at + 6
    toks = [repr(t) for t in tokenizer.convert_ids_to_tokens(ids[lo:hi])]
    if at - lo < len(toks):
        toks[at - lo] = ">>" + toks[at - lo]
    return (["..."] if lo else []) + toks + (["..."] if hi < len(ids) else [])


def _render_ids(tokenizer, template: str, case: Case) -> list[int]:
    kw = {"tools": case.tools} if case.tools else {}
    out = tokenizer.apply_chat_template(case.messages, tokenize=True, return_dict=True, chat_template=template, **kw)
    return list(out["input_ids"])


def _reference(tokenizer, model_dir: str | None):
    """(description, renderer of ids or None, template text if any): the model's own template, else the vendor
    encoder, else the official template of the version the vocabulary names."""
    own = getattr(tokenizer, "align_kit_own_template", None)
    if own:
        return "the tokenizer's own chat template", lambda case: _render_ids(tokenizer, own, case), own
    # without a template of the model's own: the official format of the version its vocabulary names
    name = getattr(tokenizer, "align_kit_detected_template", None) or getattr(tokenizer, "align_kit_template", "")
    if name.startswith("mistral_"):
        encoder = mistral_common_encoder(model_dir)
        if encoder is not None:
            return "mistral-common's encoder", encoder, ""
    if name in OFFICIAL_TRL:
        from align_kit.families import read_trl_template

        official = read_trl_template(OFFICIAL_TRL[name])
        return f"the official {name} template", lambda case: _render_ids(tokenizer, official, case), official
    if name in PUBLISHED:
        what, text = PUBLISHED[name]
        return what, lambda case: _render_ids(tokenizer, text, case), text
    return None, None, ""


def mistral_common_encoder(model_dir: str | None):
    """Ids from ``mistral-common``'s own encoder, when it is installed and the model folder has a tokenizer
    file it reads (``tekken.json``, ``tokenizer.model.v3``, ...); else ``None``."""
    import importlib.util
    from pathlib import Path

    if model_dir is None or not Path(model_dir).is_dir() or importlib.util.find_spec("mistral_common") is None:
        return None
    folder = Path(model_dir)
    files = sorted(folder.glob("tekken.json")) + sorted(folder.glob("tokenizer.model.v*"))
    if not files:
        return None
    from mistral_common.protocol.instruct.validator import ValidationMode
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    enc = MistralTokenizer.from_file(str(files[0]), mode=ValidationMode.finetuning)

    def encode(case: Case) -> list[int]:
        if case.empty_reply:
            raise _Skip("mistral-common's encoder refuses an empty reply")
        return list(enc.encode_chat_completion(mistral_request(case)).tokens)

    return encode


def mistral_request(case: Case):
    """A battery conversation as a ``mistral-common`` request (tools, tool calls and results included)."""
    import json

    from mistral_common.protocol.instruct.messages import (
        AssistantMessage,
        SystemMessage,
        ToolMessage,
        UserMessage,
    )
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.protocol.instruct.tool_calls import Function, FunctionCall, Tool, ToolCall

    msgs = []
    for m in case.messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = [ToolCall(id=c.get("id", "null"), function=FunctionCall(
                name=c["function"]["name"], arguments=json.dumps(c["function"]["arguments"])))
                for c in m["tool_calls"]]
            msgs.append(AssistantMessage(tool_calls=calls))
        elif m["role"] == "tool":
            msgs.append(ToolMessage(content=m["content"], tool_call_id=m.get("tool_call_id"), name=m.get("name")))
        else:
            kind = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}[m["role"]]
            msgs.append(kind(content=m["content"]))
    tools = [Tool(function=Function(**t["function"])) for t in case.tools or []]
    return ChatCompletionRequest(messages=msgs, tools=tools or None)


class _Skip(Exception):
    pass


def check_template(tokenizer, model_dir: str | None = None, training: str | None = None) -> Report:
    """Render :data:`BATTERY` with the training template (markers removed) and the reference; compare ids."""
    from align_kit.data.tools import template_renders_tools
    from align_kit.families import strip_generation_markers, template_source

    training = strip_generation_markers(training or template_source(tokenizer) or "")
    what, reference, ref_source = _reference(tokenizer, model_dir)
    served = getattr(tokenizer, "align_kit_detected_template", None) or getattr(tokenizer, "align_kit_template", "?")
    report = Report(what or f"nothing (no template of the model's own and no official one for '{served}')")
    if reference is None:
        return report
    for case in BATTERY:
        if case.tools and not (template_renders_tools(training) and (not ref_source or template_renders_tools(ref_source))):
            report.skipped[case.name] = "the template has no tool format"
            continue
        try:
            ref = reference(case)
        except _Skip as why:
            report.skipped[case.name] = str(why)
            continue
        except Exception as exc:  # a template may refuse a conversation (raise_exception): note it, go on
            report.skipped[case.name] = f"the reference refuses it ({type(exc).__name__}: {exc})"
            continue
        report.checked.append(case.name)
        try:
            ids = _render_ids(tokenizer, training, case)
        except Exception as exc:  # the reference renders it, the training template cannot: a difference
            report.mismatches.append(Mismatch(case.name, 0, [f"fails: {type(exc).__name__}: {exc}"],
                                              _window(tokenizer, ref, 0), (0, len(ref))))
            continue
        at = first_difference(ids, ref)
        if at is not None:
            report.mismatches.append(Mismatch(case.name, at, _window(tokenizer, ids, at), _window(tokenizer, ref, at),
                                              (len(ids), len(ref))))
    return report


def require_served_format(tokenizer, model_path: str | None, enabled: bool, option: str) -> None:
    """A stage's check at start: refuse (ConfigError) a training template that renders differently from the
    served format, unless the recipe's ``option`` turns the check off."""
    from align_kit.errors import ConfigError

    if not enabled:
        log.warning("chat template check skipped (%s: false)", option)
        return
    report = check_template(tokenizer, model_path)
    if not report.checked:
        log.warning("%s: the training template is not verified", report.summary())
        return
    if report.ok:
        log.info("%s", report.summary())
        return
    first = report.mismatches[0]
    raise ConfigError(f"{report.summary()}; first, '{first.case}' at token {first.position}: training "
                      f"{' '.join(first.training)} vs reference {' '.join(first.reference)}. The model would be "
                      f"trained on a prompt format it is not served in: see `align-kit data check-template "
                      f"{model_path}`, or set {option}: false to train anyway")
