"""Is the training template the format the model is served in? A battery of conversations rendered twice.

``check_template(tokenizer)`` renders every conversation of :data:`BATTERY` with the training template
(``{% generation %}`` markers removed: they print nothing) and with a reference: the tokenizer's own chat
template when it ships one, else the official template of the family version (the copies inside TRL) or
the vendor's own encoder (``mistral-common`` for Mistral, when installed and a tokenizer file is at hand).
Any difference is reported token by token. ``align-kit data check-template`` prints the report; the SFT
stage refuses to train on a mismatch (``sft: {check_template: false}`` opts out).
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
