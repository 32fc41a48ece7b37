"""Instruction-data formats -> one conversational schema ``{"messages": [{"role", "content"}, ...]}``.

Pure functions: each takes a record and where it came from (source, row) and returns a conversation or
raises :class:`DataError` naming the field and what was expected.

>>> to_messages({"instruction": "Say hi", "input": "", "output": "hi"}, "alpaca")
[{'role': 'user', 'content': 'Say hi'}, {'role': 'assistant', 'content': 'hi'}]
>>> to_messages({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}, "sharegpt")[1]
{'role': 'assistant', 'content': 'b'}
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from align_kit.data.tools import next_roles, normalise_tools, tool_calls
from align_kit.errors import DataError, convert_rows, describe

INSTRUCTION_FORMATS = ("alpaca", "flan", "flan_cot", "sharegpt", "messages")
FLAN_COT_COLUMNS = ["question", "answer", "rationale"]
# Columns some format reads: never offered as "a misspelling of" another (input is not a misspelt output).
_KNOWN_KEYS = {"instruction", "input", "output", "system", "history", "inputs", "targets", "question", "answer",
               "rationale", "conversations", "messages", "id"}
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "system": "system",
                   # LLaMA-Factory's tool turns: a call (JSON) is assistant output, its result a tool message
                   "function_call": "assistant", "observation": "tool", "tool": "tool"}


def _looks_like_header(cells: list[str]) -> bool:
    """A header row names columns: every cell a short identifier (FLAN CoT rows are sentences).

    >>> _looks_like_header(["question", "answer", "rationale"]), _looks_like_header(["Is it so?", "yes", "Because."])
    (True, False)
    """
    import re

    return all(re.fullmatch(r"[A-Za-z_][\w.\-]{0,40}", c.strip()) for c in cells)


def headerless_columns(path: str, fmt: str) -> list[str] | None:
    """Column names for a header-less TSV: FLAN CoT's ``question, answer, rationale`` when the format says so,
    or under ``auto`` when the first row has three cells and is not a header; else ``None`` (row 1 is the header).
    """
    if not str(path).lower().endswith(".tsv") or fmt not in ("flan_cot", "auto"):
        return None
    if fmt == "flan_cot":
        return FLAN_COT_COLUMNS
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            first = fh.readline().rstrip("\r\n").split("\t")
    except OSError:
        return None  # the reader reports a missing file
    return FLAN_COT_COLUMNS if len(first) == 3 and not _looks_like_header(first) else None


def parse_columns(spec: list[str] | None) -> dict[str, str]:
    """``--columns`` values (``source=target``, comma-separated or repeated) -> a mapping like a recipe's
    ``columns:``.

    >>> parse_columns(["outptu=output,prompt=instruction", "answer=output"])
    {'outptu': 'output', 'prompt': 'instruction', 'answer': 'output'}
    """
    out = {}
    for item in spec or []:
        for pair in filter(None, (p.strip() for p in item.split(","))):
            src, sep, dst = pair.partition("=")
            if not sep or not src.strip() or not dst.strip():
                from align_kit.errors import ConfigError

                raise ConfigError(f"--columns {pair!r}: expected SOURCE=TARGET, e.g. --columns outptu=output")
            out[src.strip()] = dst.strip()
    return out


def detect_format(record: dict) -> str | None:
    """Guess a record's format from its keys.

    >>> detect_format({"inputs": "q", "targets": "a"}), detect_format({"messages": []}), detect_format({"x": 1})
    ('flan', 'messages', None)
    """
    keys = set(record)
    if "messages" in keys:
        return "messages"
    if "conversations" in keys and not {"chosen", "rejected"} & keys:
        return "sharegpt"
    if "instruction" in keys:
        return "alpaca"
    if {"inputs", "targets"} <= keys:
        return "flan"
    if {"question", "answer", "rationale"} <= keys:
        return "flan_cot"
    return None


def _missing(record: dict, key: str) -> str:
    """How a missing/null field was found, naming a likely misspelt column.

    >>> _missing({"instruction": "x", "outptu": "y"}, "output")
    "missing (the row has 'outptu': a misspelling? rename it, or map it with columns: {outptu: output})"
    """
    if key in record:
        return "null"
    from align_kit.errors import closest

    hint = closest(key, [str(k) for k in record if k not in _KNOWN_KEYS])
    if hint is None:
        return "missing"
    return f"missing (the row has '{hint}': a misspelling? rename it, or map it with columns: {{{hint}: {key}}})"


def _text(record: dict, key: str, where: tuple, *, required: bool = True, allow_empty: bool = False) -> str:
    source, row = where
    if key not in record or record[key] is None:
        if not required:
            return ""
        raise DataError(source, row, key, _missing(record, key), "a non-empty string")
    value = record[key]
    if not isinstance(value, str):
        raise DataError(source, row, key, describe(value), "a string")
    if not allow_empty and not value.strip():
        raise DataError(source, row, key, "an empty string", "a non-empty string")
    return value


def _alpaca(rec: dict, where: tuple) -> list[dict]:
    source, row = where
    instruction = _text(rec, "instruction", where)
    extra = _text(rec, "input", where, required=False, allow_empty=True)
    output = _text(rec, "output", where)
    msgs = []
    if rec.get("system"):
        msgs.append({"role": "system", "content": _text(rec, "system", where)})
    history = rec.get("history") or []
    if not isinstance(history, list):
        raise DataError(source, row, "history", describe(history), "a list of [instruction, response] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) and x.strip() for x in pair)):
            raise DataError(source, row, f"history[{i}]", describe(pair), "a pair of non-empty strings")
        msgs += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    user = instruction if not extra.strip() else f"{instruction}\n{extra}"
    return msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _flan(rec: dict, where: tuple) -> list[dict]:
    return [{"role": "user", "content": _text(rec, "inputs", where)},
            {"role": "assistant", "content": _text(rec, "targets", where)}]


def _flan_cot(rec: dict, where: tuple) -> list[dict]:
    """FLAN v2 CoT TSV rows: the rationale, then the answer, as FLAN's CoT templates phrase it.
    The TSV stores newlines as the two characters backslash-n; they are restored."""
    question = _text(rec, "question", where).replace("\\n", "\n")
    answer = _text(rec, "answer", where).replace("\\n", "\n").strip()
    rationale = _text(rec, "rationale", where).replace("\\n", "\n").strip()
    return [{"role": "user", "content": question},
            {"role": "assistant", "content": f"{rationale} So the answer is {answer}."}]


def _sharegpt(rec: dict, where: tuple) -> list[dict]:
    source, row = where
    turns = rec.get("conversations")
    if not isinstance(turns, list):
        raise DataError(source, row, "conversations", describe(turns), "a list of {from, value} turns")
    msgs = []
    if isinstance(rec.get("system"), str) and rec["system"].strip():
        msgs.append({"role": "system", "content": rec["system"]})
    for i, turn in enumerate(turns):
        field = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise DataError(source, row, field, describe(turn), "an object with 'from' and 'value'")
        kind = str(turn.get("from", "")).lower()
        role = _SHAREGPT_ROLES.get(kind)
        if role is None:
            raise DataError(source, row, f"{field}.from", describe(turn.get("from")),
                            f"one of {', '.join(sorted(_SHAREGPT_ROLES))}")
        if kind == "function_call":
            msgs.append({"role": "assistant", "content": "",
                         "tool_calls": tool_calls(turn.get("value"), where, f"{field}.value")})
            continue
        msgs.append({"role": role, "content": _text(turn, "value", (source, row))})
    return msgs


def content_text(content: object, source: str, row: int | None, field: str) -> str:
    """Message content as text: a string, or OpenAI-style content parts whose text parts are joined.

    >>> content_text([{"type": "text", "text": "Hello"}, {"type": "text", "text": " world"}], "f", 1, "c")
    'Hello world'
    >>> content_text([{"type": "image_url", "image_url": {"url": "x"}}], "f.jsonl", 2, "messages[0].content")
    Traceback (most recent call last):
    align_kit.errors.DataError: f.jsonl: row 2: field 'messages[0].content[0].type': expected 'text' (a text-only model; image, audio and file parts cannot be trained on), found string 'image_url'
    """
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise DataError(source, row, field, describe(content), "a string or a list of {type: text, text} parts")
    texts = []
    for i, part in enumerate(content):
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise DataError(source, row, f"{field}[{i}]", describe(part), "a {type: text, text: ...} part")
        if part.get("type", "text") != "text":
            raise DataError(source, row, f"{field}[{i}].type", describe(part.get("type")),
                            "'text' (a text-only model; image, audio and file parts cannot be trained on)")
        if not isinstance(part.get("text"), str):
            raise DataError(source, row, f"{field}[{i}].text", describe(part.get("text")), "a string")
        texts.append(part["text"])
    return "".join(texts)


def _messages(rec: dict, where: tuple) -> list[dict]:
    source, row = where
    turns = rec.get("messages")
    if not isinstance(turns, list):
        raise DataError(source, row, "messages", describe(turns), "a list of {role, content} messages")
    out = []
    for i, m in enumerate(turns):
        if not isinstance(m, dict) or "role" not in m:
            raise DataError(source, row, f"messages[{i}]", describe(m), "an object with 'role' and 'content'")
        if m["role"] not in ("system", "user", "assistant", "tool"):
            raise DataError(source, row, f"messages[{i}].role", describe(m["role"]),
                            "system, user or assistant (or tool, for a tool result)")
        calls = m.get("tool_calls") if m["role"] == "assistant" else None
        content = content_text(m.get("content") or ("" if calls else m.get("content")), source, row,
                               f"messages[{i}].content")
        if not content.strip() and not calls:
            raise DataError(source, row, f"messages[{i}].content", describe(m.get("content")), "non-empty text")
        msg = {"role": m["role"], "content": content}
        if calls:
            msg["tool_calls"] = tool_calls(calls, where, f"messages[{i}].tool_calls")
        for key in ("name", "tool_call_id"):  # a tool result may say which call it answers
            if m["role"] == "tool" and isinstance(m.get(key), str):
                msg[key] = m[key]
        out.append(msg)
    return out


_CONVERTERS = {"alpaca": _alpaca, "flan": _flan, "flan_cot": _flan_cot, "sharegpt": _sharegpt, "messages": _messages}


def check_conversation(msgs: list[dict], where: tuple, field: str = "messages") -> list[dict]:
    """Optional system first, then user/assistant alternating, ending with an assistant turn; an assistant
    tool call is followed by one or more tool results, then the assistant again.

    >>> check_conversation([{"role": "assistant", "content": "x"}], ("f.json", 1))
    Traceback (most recent call last):
    align_kit.errors.DataError: f.json: row 1: field 'messages[0].role': expected user (turns alternate user, assistant), found assistant
    """
    source, row = where
    if not msgs or (len(msgs) == 1 and msgs[0]["role"] == "system"):
        raise DataError(source, row, field, "an empty conversation", "at least one user and one assistant turn")
    start = 1 if msgs[0]["role"] == "system" else 0
    prev = None
    for i, m in enumerate(msgs[start:], start=start):
        allowed = ("user",) if prev is None else next_roles(prev)
        if m["role"] not in allowed:
            why = ("a tool call is answered by tool results, then the assistant"
                   if "tool" in allowed or (prev and prev["role"] == "tool") else "turns alternate user, assistant")
            raise DataError(source, row, f"{field}[{i}].role", m["role"], f"{' or '.join(allowed)} ({why})")
        prev = m
    if msgs[-1]["role"] != "assistant":
        raise DataError(source, row, field, f"a conversation ending with a {msgs[-1]['role']} turn",
                        "a final assistant turn to learn from")
    return msgs


def to_messages(record: dict, fmt: str = "auto", source: str = "<record>", row: int | None = None,
                columns: dict[str, str] | None = None) -> list[dict]:
    """Convert one record to a validated conversation (its messages; :func:`to_conversation` keeps ``tools``)."""
    return to_conversation(record, fmt, source, row, columns)["messages"]


def to_conversation(record: dict, fmt: str = "auto", source: str = "<record>", row: int | None = None,
                    columns: dict[str, str] | None = None) -> dict:
    """One record -> ``{"messages": [...]}`` plus ``"tools"`` when the row declares tools (kept, never dropped).

    >>> to_conversation({"conversations": [{"from": "human", "value": "Weather?"},
    ...     {"from": "function_call", "value": '{"name": "w", "arguments": {}}'},
    ...     {"from": "observation", "value": "sunny"}, {"from": "gpt", "value": "Sunny."}],
    ...     "tools": '[{"name": "w", "parameters": {}}]'})["tools"][0]["function"]["name"]
    'w'
    """
    where = (source, row)
    if columns:
        record = {columns.get(k, k): v for k, v in record.items()}
    if fmt == "auto":
        fmt = detect_format(record) or ""
        if not fmt:
            raise DataError(source, row, None, f"keys {sorted(record)[:8]}",
                            "instruction/output (alpaca), inputs/targets (flan), question/answer/rationale "
                            "(flan_cot), conversations (sharegpt) or messages; set data.train[].format and "
                            "columns if your names differ")
    if fmt not in _CONVERTERS:
        raise DataError(source, row, None, f"format '{fmt}'", f"one of {', '.join(_CONVERTERS)}")
    msgs = _CONVERTERS[fmt](record, where)
    # name the user's own field: ShareGPT turns line up with 'conversations' unless a system field was put first
    field = "conversations" if fmt == "sharegpt" and msgs[:1] and msgs[0]["role"] != "system" else "messages"
    out = {"messages": check_conversation(msgs, where, field)}
    tools = normalise_tools(record.get("tools"), where)
    if tools:
        out["tools"] = tools
    return out


def convert_records(records: Iterable[tuple[int, dict]], fmt: str, source: str, *, skip: bool = False,
                    report=None, columns: dict[str, str] | None = None) -> Iterator[dict]:
    """Convert ``(row, record)`` pairs; ``skip`` drops bad rows into ``report`` (a SkipReport) instead of raising."""
    yield from convert_rows(records, lambda row, rec: to_conversation(rec, fmt, source, row, columns),
                            skip=skip, report=report)
