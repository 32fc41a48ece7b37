"""Preference data in five input formats -> one schema (TRL's conversational preference type).

Paired output: ``{"prompt": [messages], "chosen": [{"role": "assistant", ...}], "rejected": [...]}`` plus an
optional ``"margin"``. Unpaired output (KTO): ``{"prompt": [...], "completion": [...], "label": bool}``.

Input formats (``fmt="auto"`` detects them from a record's columns; a file keeps the first row's format):

=============  ==========================================================================================
``hh_rlhf``    ``chosen`` / ``rejected`` whole transcripts with ``\\n\\nHuman:`` / ``\\n\\nAssistant:`` turns
``preference`` ``prompt`` + ``chosen`` + ``rejected`` as strings or messages; without ``prompt`` the two message
               lists share an implicit prompt (TRL's implicit-prompt type)
``sharegpt``   ``conversations`` (``from``/``value`` turns) + ``chosen`` / ``rejected`` turns
``paired``     ``question``, ``response_j``, ``response_k`` (j is preferred)
``unpaired``   ``prompt``, ``completion``, ``label`` (true = desirable)
=============  ==========================================================================================

Messages style (TRL's and OpenAI's): ``messages`` stands for the prompt (``messages`` + ``chosen`` +
``rejected``: a one-turn preference file); ``messages`` ending with the assistant reply plus a boolean
``label`` is a KTO row. Message content may be OpenAI content parts (``[{"type": "text", "text": ...}]``).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from align_kit.data.io import read_records
from align_kit.errors import DataError, SkipReport, convert_rows, describe

FORMATS = ("hh_rlhf", "preference", "sharegpt", "paired", "unpaired")
# Spellings used in other tools' docs; accepted so a recipe or card can use either.
ALIASES = {"hh-rlhf": "hh_rlhf", "prompt-chosen-rejected": "preference", "paired-answers": "paired",
           "kto": "unpaired"}
_ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
          "model": "assistant", "bot": "assistant"}
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def detect_format(record: dict, source: str = "<records>", row: int | None = 1) -> str:
    """Name of the preference format a record's columns indicate.

    >>> detect_format({"chosen": "\\n\\nHuman: hi\\n\\nAssistant: a", "rejected": "\\n\\nHuman: hi\\n\\nAssistant: b"})
    'hh_rlhf'
    >>> detect_format({"question": "q", "response_j": "a", "response_k": "b"})
    'paired'
    >>> detect_format({"prompt": "q", "completion": "a", "label": True})
    'unpaired'
    """
    keys = set(record)
    if {"prompt", "completion", "label"} <= keys or {"messages", "label"} <= keys:
        return "unpaired"
    if {"question", "response_j", "response_k"} <= keys:
        return "paired"
    if {"conversations", "chosen", "rejected"} <= keys:
        return "sharegpt"
    if {"chosen", "rejected"} <= keys:
        if "prompt" not in keys and "messages" not in keys and isinstance(record["chosen"], str):
            return "hh_rlhf"
        return "preference"
    raise DataError(source, row, None, f"columns {sorted(keys)[:8]}",
                    "the columns of a preference format (" + ", ".join(FORMATS) + ")")


def parse_hh_transcript(text: object, source: str = "<hh>", row: int | None = None,
                        field: str = "chosen") -> list[dict]:
    """Split an HH-RLHF transcript into messages.

    Consecutive turns of one speaker are joined with a blank line: a few HH transcripts have the assistant
    speak twice in a row, and chat templates need user/assistant alternation.

    >>> parse_hh_transcript("\\n\\nHuman: Hi?\\n\\nAssistant: Hello.\\n\\nAssistant: How can I help?")
    [{'role': 'user', 'content': 'Hi?'}, {'role': 'assistant', 'content': 'Hello.\\n\\nHow can I help?'}]
    """
    if not isinstance(text, str) or not text.strip():
        raise DataError(source, row, field, describe(text), "a non-empty transcript")
    if text.startswith(("Human:", "Assistant:")):  # a few rows lose the leading blank line
        text = "\n\n" + text
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise DataError(source, row, field, describe(parts[0]), "a transcript starting with a Human: turn")
    turns: list[dict] = []
    for tag, content in zip(parts[1::2], parts[2::2]):
        role = "user" if tag == "Human" else "assistant"
        content = content.strip()
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] = (turns[-1]["content"] + "\n\n" + content).strip()
        else:
            turns.append({"role": role, "content": content})
    return turns


def split_shared_prompt(chosen: list[dict], rejected: list[dict], source: str = "<pair>",
                        row: int | None = None) -> dict:
    """Shared prompt = every turn before the last assistant turn; it must be the same in both conversations.

    >>> c = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    >>> r = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}]
    >>> split_shared_prompt(c, r)["rejected"]
    [{'role': 'assistant', 'content': '5'}]
    """
    for field, turns in (("chosen", chosen), ("rejected", rejected)):
        if not turns or turns[-1]["role"] != "assistant":
            raise DataError(source, row, field, describe(turns[-1]["content"] if turns else turns),
                            "a conversation ending with an assistant turn")
        if not any(t["role"] == "user" for t in turns[:-1]):
            raise DataError(source, row, field, "no user turn before the last assistant turn",
                            "a user turn before the last assistant turn")
    if chosen[:-1] != rejected[:-1]:
        at = next((i for i, (a, b) in enumerate(zip(chosen[:-1], rejected[:-1]), 1) if a != b),
                  min(len(chosen), len(rejected)))
        raise DataError(source, row, None, f"prompts that differ from turn {at} "
                        f"({len(chosen) - 1} vs {len(rejected) - 1} prompt turns)",
                        "chosen and rejected sharing the same prompt")
    return _pair(chosen[:-1], chosen[-1]["content"], rejected[-1]["content"], source, row)


def _pair(prompt: list[dict], chosen: str, rejected: str, source: str, row: int | None) -> dict:
    for field, text in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(text, str) or not text.strip():
            raise DataError(source, row, field, describe(text), f"a non-empty {field} response")
    if chosen.strip() == rejected.strip():
        raise DataError(source, row, "rejected", "the same text as chosen", "different chosen and rejected responses")
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen.strip()}],
            "rejected": [{"role": "assistant", "content": rejected.strip()}]}


def _message(obj: object, source: str, row: int | None, field: str) -> dict:
    """One message from ``{"role", "content"}`` or ShareGPT's ``{"from", "value"}``."""
    if not isinstance(obj, dict):
        raise DataError(source, row, field, describe(obj), "a message object with role and content")
    from align_kit.data.formats import content_text

    role = obj.get("role", obj.get("from"))
    if not isinstance(role, str) or role.lower() not in _ROLES:
        raise DataError(source, row, field, f"role {describe(role)}", "a role of system, user or assistant")
    content = content_text(obj.get("content", obj.get("value")), source, row, f"{field}.content")
    return {"role": _ROLES[role.lower()], "content": content.strip()}


def _messages(value: object, source: str, row: int | None, field: str) -> list[dict]:
    """A prompt as messages: a plain string is one user turn."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(source, row, field, describe(value), f"a non-empty {field}")
        return [{"role": "user", "content": value.strip()}]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise DataError(source, row, field, describe(value), "a string or a non-empty list of messages")
    msgs = [_message(m, source, row, field) for m in value]
    if msgs[-1]["role"] != "user":
        raise DataError(source, row, field, f"a last turn by {msgs[-1]['role']}", "a prompt ending with a user turn")
    return msgs


def _response(value: object, source: str, row: int | None, field: str) -> str:
    """A response: a string, one assistant message, or a one-message list."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        msg = _message(value, source, row, field)
        if msg["role"] != "assistant":
            raise DataError(source, row, field, f"a {msg['role']} message", "an assistant message")
        return msg["content"]
    if isinstance(value, str):
        return value
    raise DataError(source, row, field, describe(value), "a response string or one assistant message")


def _margin(record: dict, out: dict, source: str, row: int | None) -> dict:
    if record.get("margin") is not None:
        try:
            out["margin"] = float(record["margin"])
        except (TypeError, ValueError):
            raise DataError(source, row, "margin", describe(record["margin"]), "a number") from None
    return out


def _required(record: dict, key: str, source: str, row: int | None):
    """``record[key]``, or a DataError naming the missing column (a KeyError would reach the user as a traceback).

    >>> _required({"chosen": "a"}, "rejected", "p.jsonl", 3)
    Traceback (most recent call last):
    align_kit.errors.DataError: p.jsonl: row 3: field 'rejected': expected a column 'rejected', found missing (the row has chosen)
    """
    if key not in record:
        raise DataError(source, row, key, f"missing (the row has {', '.join(sorted(map(str, record)))})",
                        f"a column '{key}'")
    return record[key]


def _from_pcr(record: dict, source: str, row: int | None) -> dict:
    if record.get("prompt") in (None, "") and isinstance(_required(record, "chosen", source, row), list):
        chosen = [_message(m, source, row, "chosen") for m in _required(record, "chosen", source, row)]
        rejected = [_message(m, source, row, "rejected") for m in _required(record, "rejected", source, row) or []]
        return split_shared_prompt(chosen, rejected, source, row)
    prompt = _messages(record.get("prompt"), source, row, "prompt")
    return _pair(prompt, _response(_required(record, "chosen", source, row), source, row, "chosen"),
                 _response(_required(record, "rejected", source, row), source, row, "rejected"), source, row)


def _from_sharegpt(record: dict, source: str, row: int | None) -> dict:
    prompt = _messages(_required(record, "conversations", source, row), source, row, "conversations")
    if isinstance(record.get("system"), str) and record["system"].strip() and prompt[0]["role"] != "system":
        prompt.insert(0, {"role": "system", "content": record["system"].strip()})
    return _pair(prompt, _response(_required(record, "chosen", source, row), source, row, "chosen"),
                 _response(_required(record, "rejected", source, row), source, row, "rejected"), source, row)


def _label(value: object, source: str, row: int | None) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise DataError(source, row, "label", describe(value), "a boolean label (true = desirable)")


def _messages_style(record: dict, fmt: str, source: str, row: int | None) -> dict:
    """``messages`` as the prompt; for a KTO row without ``completion`` its last (assistant) turn is the completion.

    >>> r = _messages_style({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
    ...                      "label": True}, "unpaired", "k.jsonl", 1)
    >>> r["prompt"], r["completion"]["content"]
    ([{'role': 'user', 'content': 'q'}], 'a')
    """
    if "messages" not in record or "prompt" in record:
        return record
    out = {k: v for k, v in record.items() if k != "messages"}
    msgs = record["messages"]
    if fmt == "unpaired" and "completion" not in record:
        if not isinstance(msgs, list) or len(msgs) < 2:
            raise DataError(source, row, "messages", describe(msgs),
                            "a list of messages ending with the assistant reply the label judges")
        last = msgs[-1]
        if not isinstance(last, dict) or last.get("role", last.get("from")) not in ("assistant", "gpt"):
            raise DataError(source, row, f"messages[{len(msgs) - 1}]", describe(last),
                            "an assistant reply last (the completion the label judges)")
        out["prompt"], out["completion"] = msgs[:-1], last
    else:
        out["prompt"] = msgs
    return out


def normalise_format(fmt: str | None) -> str | None:
    """Canonical format name (``None`` = detect); unknown names are errors listing the valid ones.

    >>> normalise_format("hh-rlhf"), normalise_format("auto")
    ('hh_rlhf', None)
    """
    if fmt in (None, "", "auto"):
        return None
    fmt = ALIASES.get(fmt, fmt)
    if fmt not in FORMATS:
        raise DataError("data", None, "format", repr(fmt), "a preference format: auto, " + ", ".join(FORMATS))
    return fmt


def to_preference(record: dict, fmt: str | None = None, source: str = "<records>", row: int | None = None,
                  columns: dict[str, str] | None = None) -> dict:
    """Convert one record to the paired (or, for ``unpaired``, the KTO) schema; raises DataError.

    ``columns`` renames source columns to the format's names first (``{"better": "chosen"}``).

    >>> to_preference({"question": "2+2?", "response_j": "4", "response_k": "5"})["chosen"]
    [{'role': 'assistant', 'content': '4'}]
    >>> to_preference({"prompt": "2+2?", "completion": "5", "label": "false"})["label"]
    False
    """
    if columns:
        record = {columns.get(k, k): v for k, v in record.items()}
    fmt = normalise_format(fmt) or detect_format(record, source, row)
    record = _messages_style(record, fmt, source, row)
    if fmt == "hh_rlhf":
        chosen = parse_hh_transcript(record.get("chosen"), source, row, "chosen")
        rejected = parse_hh_transcript(record.get("rejected"), source, row, "rejected")
        return _margin(record, split_shared_prompt(chosen, rejected, source, row), source, row)
    if fmt == "preference":
        return _margin(record, _from_pcr(record, source, row), source, row)
    if fmt == "sharegpt":
        return _margin(record, _from_sharegpt(record, source, row), source, row)
    if fmt == "paired":
        prompt = _messages(record.get("question"), source, row, "question")
        out = _pair(prompt, _response(record.get("response_j"), source, row, "response_j"),
                    _response(record.get("response_k"), source, row, "response_k"), source, row)
        return _margin(record, out, source, row)
    completion = _response(record.get("completion"), source, row, "completion")
    if not completion.strip():
        raise DataError(source, row, "completion", describe(completion), "a non-empty completion")
    return {"prompt": _messages(record.get("prompt"), source, row, "prompt"),
            "completion": [{"role": "assistant", "content": completion.strip()}],
            "label": _label(record.get("label"), source, row)}


def convert_records(records: Iterable[tuple[int, dict]], fmt: str | None, source: str, *, skip: bool = False,
                    report: SkipReport | None = None, columns: dict[str, str] | None = None) -> Iterator[dict]:
    """Convert ``(row, record)`` pairs; strict mode raises the first DataError, skip mode counts it in ``report``.

    With ``fmt`` auto the first good row fixes the format for the whole file, so a later row in another
    format is reported as malformed rather than silently converted differently.
    """
    fmt = normalise_format(fmt)

    def convert(row: int, record: dict) -> dict:
        nonlocal fmt
        if fmt is None:
            fmt = detect_format({(columns or {}).get(k, k): v for k, v in record.items()}, source, row)
        return to_preference(record, fmt, source, row, columns)

    yield from convert_rows(records, convert, skip=skip, report=report)


def load_preference(path: str | Path, fmt: str | None = None, skip: bool = False) -> tuple[list[dict], SkipReport]:
    """Read a preference file of any supported format into the schema; returns rows and the skip report."""
    report = SkipReport(str(path))
    records = read_records(path, skip_report=report if skip else None)
    rows = list(convert_records(records, fmt, str(path), skip=skip, report=report))
    return rows, report


def to_unpaired(pairs: Iterable[dict]) -> list[dict]:
    """Each pair -> a desirable and an undesirable example (KTO learns from these without pairing).

    >>> p = to_preference({"question": "q", "response_j": "a", "response_k": "b"})
    >>> [(u["completion"][0]["content"], u["label"]) for u in to_unpaired([p])]
    [('a', True), ('b', False)]
    """
    out = []
    for pair in pairs:
        out.append({"prompt": pair["prompt"], "completion": pair["chosen"], "label": True})
        out.append({"prompt": pair["prompt"], "completion": pair["rejected"], "label": False})
    return out


def split_train_eval(records: list[dict], eval_fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Seeded split by prompt, so that no prompt of the evaluation part is ever trained on.

    >>> recs = [{"prompt": [{"role": "user", "content": str(i % 5)}]} for i in range(10)]
    >>> tr, ev = split_train_eval(recs, 0.4, seed=1)
    >>> len(tr) + len(ev), {r["prompt"][0]["content"] for r in tr} & {r["prompt"][0]["content"] for r in ev}
    (10, set())
    """
    if not 0.0 < eval_fraction < 1.0:
        raise DataError("split", None, "eval_fraction", describe(eval_fraction), "a fraction between 0 and 1")
    keys = sorted({_prompt_key(r) for r in records})
    random.Random(seed).shuffle(keys)
    # at least one prompt held out, and (with two or more prompts) at least one left to train on
    held = set(keys[: max(1, min(round(len(keys) * eval_fraction), len(keys) - 1))])
    train = [r for r in records if _prompt_key(r) not in held]
    evals = [r for r in records if _prompt_key(r) in held]
    return train, evals


def prompt_count(records: list[dict]) -> int:
    """Distinct prompts among preference or unpaired rows.

    >>> prompt_count([{"prompt": [{"role": "user", "content": c}]} for c in "aab"])
    2
    """
    return len({_prompt_key(r) for r in records})


def _prompt_key(record: dict) -> str:
    return "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in record["prompt"])
