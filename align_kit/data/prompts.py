"""Prompt rows for RL: a prompt (a conversation ending with a user turn) and the row's reference fields, which
reward functions and verifiers receive (``align_kit/ppo/rewards.py``).

Schema: ``{"prompt": [{"role": "user", "content": str}, ...], "reference": {field: value, ...}}``.

Formats:

- ``prompts``: ``{"prompt": str | [messages], <any other fields>}``; every other field is a reference field.
- ``flan_cot``: FLAN v2 CoT rows ``question, answer, rationale``: the question is the prompt, ``answer`` and
  ``rationale`` the reference.
- ``gsm8k``: ``{"question", "answer"}`` with the worked solution ending ``#### 42``: the reference ``answer`` is
  what follows ``####`` and ``solution`` the whole text.
- ``messages`` (and anything the SFT formats read, e.g. alpaca): a conversation whose last assistant turn is
  dropped from the prompt and becomes the reference ``answer``.

>>> to_prompt_row({"question": "Tom has 3 ...", "answer": "3 + 4 = 7\\n#### 7"}, "gsm8k")["reference"]
{'answer': '7', 'solution': '3 + 4 = 7\\n#### 7'}
>>> to_prompt_row({"prompt": "2+2?", "answer": "4", "level": 1}, "prompts")
{'prompt': [{'role': 'user', 'content': '2+2?'}], 'reference': {'answer': '4', 'level': 1}}
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from align_kit.errors import DataError, convert_rows, describe

PROMPT_FORMATS = ("prompts", "flan_cot", "gsm8k")


def _text(record: dict, key: str, where: tuple) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(where[0], where[1], key, "missing" if key not in record else describe(value),
                        "a non-empty string")
    return value


def _prompt_messages(value, where: tuple) -> list[dict]:
    if isinstance(value, str) and value.strip():
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        if value[-1].get("role") != "user" or not isinstance(value[-1].get("content"), str):
            raise DataError(where[0], where[1], "prompt", f"a last turn with role {value[-1].get('role')!r}",
                            "a conversation ending with a user turn")
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise DataError(where[0], where[1], "prompt", describe(value), "a string or a list of messages ending with a "
                                                                   "user turn")


def to_prompt_row(record: dict, fmt: str = "auto", source: str = "<record>", row: int | None = None,
                  columns: dict[str, str] | None = None) -> dict:
    """One record -> ``{"prompt": [messages], "reference": {...}}``; a bad record is a DataError naming the field."""
    where = (source, row)
    if columns:
        record = {columns.get(k, k): v for k, v in record.items()}
    if fmt == "auto":
        fmt = "prompts" if "prompt" in record else "gsm8k" if "####" in str(record.get("answer", "")) else "messages"
    if fmt == "prompts":
        return {"prompt": _prompt_messages(record.get("prompt"), where),
                "reference": {k: v for k, v in record.items() if k != "prompt"}}
    if fmt == "flan_cot":
        return {"prompt": [{"role": "user", "content": _text(record, "question", where).replace("\\n", "\n")}],
                "reference": {"answer": _text(record, "answer", where).strip(),
                              "rationale": str(record.get("rationale") or "").replace("\\n", "\n").strip()}}
    if fmt == "gsm8k":
        solution = _text(record, "answer", where)
        if "####" not in solution:
            raise DataError(source, row, "answer", describe(solution), "a solution ending '#### <answer>'")
        return {"prompt": [{"role": "user", "content": _text(record, "question", where)}],
                "reference": {"answer": solution.rsplit("####", 1)[1].strip(), "solution": solution}}
    from align_kit.data.formats import to_messages  # a conversation: its last assistant turn is the reference

    messages = to_messages(record, fmt, source, row)
    return {"prompt": messages[:-1], "reference": {"answer": messages[-1]["content"]}}


def convert_prompt_records(records: Iterable[tuple[int, dict]], fmt: str, source: str, *, skip: bool = False,
                           report=None, columns: dict[str, str] | None = None) -> Iterator[dict]:
    """Convert ``(row, record)`` pairs; ``skip`` drops bad rows into ``report`` (a SkipReport) instead of raising."""
    yield from convert_rows(records, lambda row, rec: to_prompt_row(rec, fmt, source, row, columns),
                            skip=skip, report=report)
