"""Conversations -> token ids and the mask of trained tokens, through the tokenizer's chat template.

The mask comes from the template's ``{% generation %}`` spans (transformers maps them to tokens via
character offsets), so what is trained is exactly each assistant reply *and its end-of-turn token*.
"""

from __future__ import annotations

from dataclasses import dataclass

from align_kit.errors import DataError


@dataclass
class Tokenized:
    input_ids: list[int]
    assistant_masks: list[int]  # 1 = trained (assistant reply + end-of-turn), 0 = context


def tokenize_conversation(tokenizer, messages: list[dict], stop_ids: list[int], where=("<data>", None)) -> Tokenized:
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    if 1 not in mask:
        raise DataError(where[0], where[1], "messages", "no trained tokens after templating",
                        "a chat template with {% generation %} markers around assistant replies")
    # Every trained span must end on a stop token, or the fine-tuned model never learns to stop.
    for i, (m, nxt) in enumerate(zip(mask, mask[1:] + [0])):
        if m == 1 and nxt == 0 and ids[i] not in stop_ids:
            tok = tokenizer.convert_ids_to_tokens(ids[i])
            raise DataError(where[0], where[1], "messages", f"a trained reply ending with token {tok!r}",
                            f"each reply to end with an end-of-turn token {tokenizer.convert_ids_to_tokens(stop_ids)}")
    return Tokenized(ids, mask)


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
