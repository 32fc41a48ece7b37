"""Tool-calling conversations: kept with their tools, rendered in the model's own tool format, tool-call turns
trained as assistant output; refused rows name the field and what was expected; skip mode counts by reason."""

from __future__ import annotations

import json

import pytest
from helpers import qwen2_tokenizer

from align_kit.cli import main
from align_kit.data.formats import convert_records, to_conversation
from align_kit.data.io import read_records
from align_kit.data.tokenize import tokenize_conversation
from align_kit.errors import DataError, SkipReport
from align_kit.families import apply_family, detect_template, get_family, stop_token_ids

TOOLS_LF = json.dumps([{"name": "get_weather", "description": "Current weather in a city.",
                        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}])
LLAMA_FACTORY = {"conversations": [
    {"from": "human", "value": "Weather in Paris?"},
    {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
    {"from": "observation", "value": "18 C, sunny"},
    {"from": "gpt", "value": "It is 18 C and sunny in Paris."}], "tools": TOOLS_LF}
OPENAI = {"messages": [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
    {"role": "assistant", "content": [{"type": "text", "text": "It is 18 C and sunny in Paris."}]}],
    "tools": [{"type": "function", "function": json.loads(TOOLS_LF)[0]}]}
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}


def test_llama_factory_and_openai_tool_rows_convert_to_one_schema():
    lf, oa = to_conversation(LLAMA_FACTORY, row=1), to_conversation(OPENAI, row=2)
    assert lf["tools"] == oa["tools"] == [{"type": "function", "function": json.loads(TOOLS_LF)[0]}]
    assert lf["messages"][1] == {"role": "assistant", "content": "", "tool_calls": [CALL]}
    assert oa["messages"][1] == {"role": "assistant", "content": "", "tool_calls": [{**CALL, "id": "call_1"}]}
    assert lf["messages"][2] == {"role": "tool", "content": "18 C, sunny"}
    assert oa["messages"][2] == {"role": "tool", "content": "18 C, sunny", "tool_call_id": "call_1"}
    assert lf["messages"][3] == oa["messages"][3] == {"role": "assistant", "content": "It is 18 C and sunny in Paris."}


def test_round_trip_keeps_tools(tmp_path, capsys):
    src = tmp_path / "lf.json"
    src.write_text(json.dumps([LLAMA_FACTORY, OPENAI]))
    out = tmp_path / "out.jsonl"
    assert main(["data", "convert", str(src), "--out", str(out)]) == 0
    assert "kept 2, rejected 0" in capsys.readouterr().out
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["tools"][0]["function"]["name"] == "get_weather" for r in written)
    again = list(convert_records(read_records(out), "messages", str(out)))
    assert again == written  # the converted file reads back to the same rows, tools and tool calls included


BAD = [
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "function_call", "value": "get_weather(Paris)"},
                        {"from": "observation", "value": "x"}, {"from": "gpt", "value": "y"}]},
     "conversations[1].value", "text that is not JSON"),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "observation", "value": "x"},
                        {"from": "gpt", "value": "y"}]},
     "conversations[1].role", "expected assistant"),  # a tool result with no call before it
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "y"}], "tools": "{not json"},
     "tools", "text that is not JSON"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": "[1, 2]"}}]},
        {"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]},
     "messages[1].tool_calls[0].arguments", "arguments as a JSON object"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "", "tool_calls": [CALL]},
                   {"role": "user", "content": "and?"}, {"role": "assistant", "content": "y"}]},
     "messages[2].role", "a tool call is answered by tool results"),
]


@pytest.mark.parametrize("row,field,expected", BAD)
def test_refused_rows_name_the_field_and_the_expectation(row, field, expected):
    with pytest.raises(DataError, match=r"row 4: field '" + field.replace("[", r"\[").replace("]", r"\]")
                       + "'.*" + expected):
        to_conversation(row, source="t.json", row=4)


def test_skip_mode_counts_by_reason():
    report = SkipReport("t.json")
    rows = [LLAMA_FACTORY] + [b[0] for b in BAD] + [OPENAI]
    kept = list(convert_records(enumerate(rows, 1), "auto", "t.json", skip=True, report=report))
    assert len(kept) == report.kept == 2 and report.rejected == 5
    assert report.reasons["a tool call {\"name\": ..., \"arguments\": {...}} or a list of them"] == 1
    assert sum(v for k, v in report.reasons.items() if "tool results" in k) == 1


def _qwen_with_tool_tokens(shared):
    """The shared Qwen2 tokenizer with <tool_call> tokens and its family's template applied."""
    tok = qwen2_tokenizer(shared)
    tok.add_tokens(["<tool_call>", "</tool_call>"])
    fam = get_family("qwen")
    tpl = detect_template(fam, tok.get_vocab())
    apply_family(tok, tpl, fam)
    tok.align_kit_template = tpl.name
    return tok, tpl


def test_rendered_in_the_model_tool_format_and_tool_calls_trained(shared):
    tok, tpl = _qwen_with_tool_tokens(shared)
    conv = to_conversation(LLAMA_FACTORY)
    t = tokenize_conversation(tok, conv["messages"], stop_token_ids(tok, tpl), tools=conv["tools"])
    text = tok.decode(t.input_ids, skip_special_tokens=False)
    assert '"name": "get_weather", "description": "Current weather in a city."' in text  # tools in the system turn
    trained = tok.decode([i for i, m in zip(t.input_ids, t.assistant_masks) if m], skip_special_tokens=False)
    assert trained == ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
                       "It is 18 C and sunny in Paris.<|im_end|>")
    assert "18 C, sunny" in text and "18 C, sunny" not in trained  # the tool result is context


def test_a_template_without_tool_format_refuses_instead_of_dropping():
    from align_kit.quickstart.model import build_tokenizer

    tok = build_tokenizer()
    fam = get_family("llama")
    tpl = detect_template(fam, tok.get_vocab())
    apply_family(tok, tpl, fam)
    conv = to_conversation(LLAMA_FACTORY)
    with pytest.raises(DataError, match=r"train\.jsonl: row 7: field 'messages\[1\]\.tool_calls'.*tool format"):
        tokenize_conversation(tok, conv["messages"], stop_token_ids(tok, tpl), ("train.jsonl", 7), conv["tools"])


def test_sft_rows_carry_their_tools_to_the_template(shared):
    """The SFT stage's tokenisation renders a row's tools (the system turn lists them) and trains its call."""
    from align_kit.stages.sft import tokenize_rows

    tok, tpl = _qwen_with_tool_tokens(shared)
    conv = to_conversation(LLAMA_FACTORY)
    (with_tools, without), _ = tokenize_rows([conv, {"messages": conv["messages"]}], tok, "train")
    assert len(with_tools["input_ids"]) > len(without["input_ids"]) + 30  # the tool schema is in the prompt
    assert sum(with_tools["assistant_masks"]) == sum(without["assistant_masks"])  # the same replies trained
    assert "# Tools" in tok.decode(with_tools["input_ids"]) and "# Tools" not in tok.decode(without["input_ids"])
