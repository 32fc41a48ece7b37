"""Conversations -> token ids and the mask of trained tokens, through the tokenizer's chat template.

What is trained is exactly each assistant reply *and its end-of-turn token*. Two ways to find it:

- the template has ``{% generation %}`` spans (align_kit's own templates): transformers maps them to tokens
  via character offsets;
- it has none (the model's own template kept as it is, or an official one shipped inside TRL): each reply
  starts where the prompt the model is served for that turn ends, i.e. the rendering of the turns before
  it with ``add_generation_prompt=True``, when the full rendering starts with that text; where the template
  is not prefix-stable (Mistral v3 moves the system prompt into the last user turn) the reply's start is
  where the rendering changes when only that reply is replaced. A reply ends with the first end-of-turn
  token after its content.
"""

from __future__ import annotations

from dataclasses import dataclass

from align_kit.errors import DataError

# A private-use character: replaces one reply to locate it in the rendering (it cannot start or end real text).
_PROBE = "\ue000"


@dataclass
class Tokenized:
    input_ids: list[int]
    assistant_masks: list[int]  # 1 = trained (assistant reply + end-of-turn), 0 = context


def _render(tokenizer, messages: list[dict], **kw) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **kw)


def _common_prefix(a: str, b: str) -> int:
    """Length of the common prefix.

    >>> _common_prefix("abcx", "abyz")
    2
    """
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def reply_spans(tokenizer, messages: list[dict], stop_texts: list[str],
                tools=None) -> tuple[str, list[tuple[int, int | None]]]:
    """The rendering, and the character span ``[start, end)`` of each assistant reply with its end-of-turn token
    (end ``None`` where no end-of-turn token follows the reply). Works with any template, no markers needed."""
    kw = {"tools": tools} if tools else {}
    full = _render(tokenizer, messages, **kw)
    spans, cursor = [], 0
    for i, msg in enumerate(messages):
        if msg.get("role") != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], add_generation_prompt=True, **kw) if i else ""
        if i and full.startswith(prompt) and len(prompt) >= cursor:
            start = len(prompt)
        else:  # not prefix-stable: where does the rendering change when only this reply changes?
            probe = [*messages[:i], {"role": "assistant", "content": _PROBE}, *messages[i + 1:]]
            start = max(cursor, _common_prefix(full, _render(tokenizer, probe, **kw)))
        content = msg.get("content") if isinstance(msg.get("content"), str) else ""
        at = full.find(content.strip(), start) if content.strip() else start
        content_end = at + len(content.strip()) if at >= 0 else start
        ends = [(full.find(s, content_end), s) for s in stop_texts]
        ends = [(pos, s) for pos, s in ends if pos >= 0]
        if not ends:
            spans.append((start, None))
            continue
        pos, s = min(ends)
        spans.append((start, pos + len(s)))
        cursor = pos + len(s)
    return full, spans


def _mask_by_rendering(tokenizer, messages: list[dict], stop_ids: list[int], where, tools=None):
    stop_texts = [t for t in tokenizer.convert_ids_to_tokens(stop_ids) if t]
    full, spans = reply_spans(tokenizer, messages, stop_texts, tools)
    closes_with_eos = getattr(tokenizer, "align_kit_template", None) in ("chatglm3", "glm4")
    if closes_with_eos and spans and spans[-1][1] is None and messages[-1].get("role") == "assistant":
        # GLM's own templates end a reply with the next turn's role token (<|user|>, a stop token) and write
        # nothing after the last one: close it with eos, as GLM's fine-tuning code does, so it learns to stop.
        full += tokenizer.eos_token
        spans[-1] = (spans[-1][0], len(full))
    for n, (_, end) in enumerate(spans, start=1):
        if end is None:
            raise DataError(where[0], where[1], "messages", f"no trained tokens for reply {n}: the template writes no "
                            "end-of-turn token after it", f"a chat template that ends replies with {stop_texts}")
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, mask = list(enc["input_ids"]), []
    for a, b in enc["offset_mapping"]:
        # A token is trained when its characters overlap a reply span (SentencePiece's '▁Hello' starts one
        # character before the reply text; it belongs to the reply).
        mask.append(int(any(a < e and b > s and b > a for s, e in spans)))
    return ids, mask


def refuse_unrendered_tools(template: str | None, messages: list[dict], tools, where) -> None:
    """A template without a tool format would drop tool calls and tools silently: refuse, naming the field."""
    from align_kit.data.tools import template_renders_tools, uses_tools

    if not uses_tools(messages, tools) or template_renders_tools(template):
        return
    at = next((i for i, m in enumerate(messages) if m.get("tool_calls") or m.get("role") == "tool"), None)
    field = "tools" if at is None else f"messages[{at}]" + (".tool_calls" if messages[at].get("tool_calls") else ".role")
    found = "a tools list" if at is None else ("a tool call" if messages[at].get("tool_calls") else "a tool result")
    raise DataError(where[0], where[1], field, found, "a model whose chat template has a tool format (this "
                    "template has none: tools and tool calls would be dropped from the prompt); train it with a "
                    "model that renders tools, or leave these rows out")


def tokenize_conversation(tokenizer, messages: list[dict], stop_ids: list[int], where=("<data>", None),
                          tools=None) -> Tokenized:
    from align_kit.families import has_generation_markers, template_source

    refuse_unrendered_tools(template_source(tokenizer, tools), messages, tools, where)
    if has_generation_markers(template_source(tokenizer, tools)):
        kw = {"tools": tools} if tools else {}
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True, **kw)
        ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    else:
        ids, mask = _mask_by_rendering(tokenizer, messages, stop_ids, where, tools)
    if 1 not in mask:
        raise DataError(where[0], where[1], "messages", "no trained tokens after templating",
                        "a chat template whose assistant replies can be located (generation markers, or "
                        "replies that end with an end-of-turn token)")
    # Every trained span must end on a stop token, or the fine-tuned model never learns to stop.
    for i, (m, nxt) in enumerate(zip(mask, mask[1:] + [0])):
        if m == 1 and nxt == 0 and ids[i] not in stop_ids:
            tok = tokenizer.convert_ids_to_tokens(ids[i])
            raise DataError(where[0], where[1], "messages", f"a trained reply ending with token {tok!r}",
                            f"each reply to end with an end-of-turn token {tokenizer.convert_ids_to_tokens(stop_ids)}")
    return Tokenized(ids, mask)


def completion_tokens(tokenizer, prompt: list[dict], completion: list[dict]) -> Tokenized:
    """Prompt + completion with the completion's tokens marked, split as TRL's preference trainers split
    them: the completion starts where the prompt (with generation prompt) and the full rendering diverge."""
    p_ids = list(tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                               return_dict=True)["input_ids"])
    full = list(tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"])
    start = next((i for i, (a, b) in enumerate(zip(p_ids, full)) if a != b), min(len(p_ids), len(full)))
    return Tokenized(full, [0] * start + [1] * (len(full) - start))


def render_marked(tokenizer, tok: Tokenized, open_mark: str = "[[", close_mark: str = "]]") -> str:
    """The decoded example with trained spans wrapped in markers, for ``align-kit data inspect``."""
    pieces, run, state = [], [], 0
    for tid, m in zip(tok.input_ids + [None], tok.assistant_masks + [-1]):
        if m != state:
            text = tokenizer.decode(run, skip_special_tokens=False)
            pieces.append(f"{open_mark}{text}{close_mark}" if state == 1 else text)
            run, state = [], m
        if tid is not None:
            run.append(tid)
    return "".join(pieces)


# ----------------------------------------------------------------------------- rows longer than max_length
LONG_ROW_REASONS = {"drop": "longer than max_length", "reply": "last reply does not fit in max_length"}


def fit_length(tok: Tokenized, max_length: int | None, how: str = "truncate_prompt") -> tuple[Tokenized | None, str]:
    """A tokenised conversation fitted to ``max_length``: ``(row or None when dropped, what happened)``.

    Cutting a row at its end would train a reply without its end-of-turn token (the model would not learn to
    stop) or, when the prompt alone fills ``max_length``, leave no trained token at all. So a long row is
    either dropped (``how="drop"``) or cut from the prompt side (``"truncate_prompt"``): the last
    ``max_length`` tokens are kept, provided they hold the whole last reply and one token before it; a reply
    cut at its start by the window becomes context. Otherwise the row is dropped. Callers count the outcome.

    >>> t = Tokenized([1, 2, 3, 4, 5, 6, 7], [0, 0, 0, 0, 1, 1, 0])
    >>> fit_length(t, 4)
    (Tokenized(input_ids=[4, 5, 6, 7], assistant_masks=[0, 1, 1, 0]), 'truncated_prompt')
    >>> fit_length(t, 3)
    (None, 'last reply does not fit in max_length')
    >>> fit_length(t, 4, "drop")
    (None, 'longer than max_length')
    >>> fit_length(t, 8)[1]
    'kept'
    """
    ids, mask = tok.input_ids, tok.assistant_masks
    if max_length is None or len(ids) <= max_length:
        return tok, "kept"
    if how == "drop":
        return None, LONG_ROW_REASONS["drop"]
    start = len(ids) - max_length
    last = max(i for i, m in enumerate(mask) if m)  # the last trained token (the final end-of-turn)
    first = last
    while first > 0 and mask[first - 1]:
        first -= 1
    if first <= start:  # the last reply, with a token of context before it, is longer than max_length
        return None, LONG_ROW_REASONS["reply"]
    kept_mask = list(mask[start:])
    i = 0
    while kept_mask[i]:  # an earlier reply cut at its start: no longer a whole reply, so context
        kept_mask[i] = 0
        i += 1
    return Tokenized(list(ids[start:]), kept_mask), "truncated_prompt"
