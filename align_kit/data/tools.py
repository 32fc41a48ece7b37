"""Tool calling in conversations: a ``tools`` list, assistant tool calls and tool results, kept as data.

One schema, the one Hugging Face chat templates render (``apply_chat_template(messages, tools=...)``):

- ``tools``: ``[{"type": "function", "function": {"name", "description", "parameters"}}, ...]``
- a tool call: ``{"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function":
  {"name": str, "arguments": dict}}]}`` (trained as assistant output)
- a tool result: ``{"role": "tool", "content": str}`` (context, like a user turn)

LLaMA-Factory's ShareGPT turns ``function_call`` (a JSON ``{"name", "arguments"}`` or a list of them) and
``observation``, with ``tools`` as a JSON string, and OpenAI's ``tool_calls`` (arguments as a JSON string) /
``tool`` role convert to it. A row that cannot is refused naming the field and what was expected.
"""

from __future__ import annotations

import json

from align_kit.errors import DataError, describe


def _json(value: object, where: tuple, field: str, expected: str):
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise DataError(where[0], where[1], field, f"text that is not JSON ({exc.msg})", expected) from None


def normalise_tools(value: object, where: tuple, field: str = "tools") -> list[dict] | None:
    """A row's ``tools`` (a list, or LLaMA-Factory's JSON string) as OpenAI function entries; ``None`` if absent.

    >>> normalise_tools('[{"name": "f", "parameters": {}}]', ("t.json", 1))
    [{'type': 'function', 'function': {'name': 'f', 'parameters': {}}}]
    """
    if value in (None, "", []):
        return None
    expected = "a list of function schemas {name, description, parameters} (or a JSON string of one)"
    value = _json(value, where, field, expected)
    if not isinstance(value, list):
        raise DataError(where[0], where[1], field, describe(value), expected)
    out = []
    for i, tool in enumerate(value):
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise DataError(where[0], where[1], f"{field}[{i}]", describe(tool), "a function schema with a name")
        out.append({"type": "function", "function": fn})
    return out


def tool_calls(value: object, where: tuple, field: str) -> list[dict]:
    """Tool calls (OpenAI's list, or LLaMA-Factory's function_call JSON: one call or a list) in one schema;
    arguments become a dict (templates write them with ``tojson``).

    >>> tool_calls('{"name": "f", "arguments": {"x": 1}}', ("t.json", 1), "conversations[1].value")
    [{'type': 'function', 'function': {'name': 'f', 'arguments': {'x': 1}}}]
    """
    expected = 'a tool call {"name": ..., "arguments": {...}} or a list of them'
    value = _json(value, where, field, expected)
    calls = value if isinstance(value, list) else [value]
    if not calls:
        raise DataError(where[0], where[1], field, "an empty list", expected)
    out = []
    for i, call in enumerate(calls):
        at = f"{field}[{i}]" if isinstance(value, list) else field
        fn = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise DataError(where[0], where[1], at, describe(call), expected)
        args = _json(fn.get("arguments", {}), where, f"{at}.arguments", "arguments as a JSON object")
        if not isinstance(args, dict):
            raise DataError(where[0], where[1], f"{at}.arguments", describe(args), "arguments as a JSON object")
        entry = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
        if isinstance(call, dict) and isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        out.append(entry)
    return out


def uses_tools(messages: list[dict], tools: list[dict] | None = None) -> bool:
    """Whether a conversation has tools, tool calls or tool results.

    >>> uses_tools([{"role": "user", "content": "x"}]), uses_tools([{"role": "tool", "content": "1"}])
    (False, True)
    """
    return bool(tools) or any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)


def template_renders_tools(template: str | None) -> bool:
    """Whether a chat template has a tool format (it reads ``tool_calls`` and the ``tool`` role).

    >>> template_renders_tools("{% for tool_call in message.tool_calls %}"), template_renders_tools("{{ x }}")
    (True, False)
    """
    return bool(template) and "tool_calls" in template


def next_roles(message: dict) -> tuple[str, ...]:
    """Which roles may follow a message: a tool call is answered by tool results, results by more results or
    the assistant, an answer by the user.

    >>> next_roles({"role": "assistant", "tool_calls": [{}]}), next_roles({"role": "tool"})
    (('tool',), ('tool', 'assistant'))
    """
    role = message["role"]
    if role == "assistant":
        return ("tool",) if message.get("tool_calls") else ("user",)
    if role == "tool":
        return ("tool", "assistant")
    return ("assistant",)
