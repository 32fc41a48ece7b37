"""Formats people bring, each with rows written in it: OpenAI content parts, KTO as messages + label, one-turn
preference files in messages style, JSON Lines named .json, FLAN CoT TSV under auto, column mappings on
``data convert``, ``--check`` anywhere, and ``data inspect`` for a preference pair."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align_kit.cli import main
from align_kit.data.formats import to_messages
from align_kit.data.io import read_records
from align_kit.data.preference import load_preference
from align_kit.errors import DataError

ROOT = Path(__file__).resolve().parents[2]
U = {"role": "user", "content": "2+2?"}
A = {"role": "assistant", "content": "4"}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_openai_content_parts():
    rec = {"messages": [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                        {"role": "user", "content": [{"type": "text", "text": "2+2"}, {"type": "text", "text": "?"}]},
                        {"role": "assistant", "content": [{"type": "text", "text": "4"}]}]}
    assert to_messages(rec) == [{"role": "system", "content": "Be brief."}, U, A]
    rec["messages"][1]["content"].append({"type": "image_url", "image_url": {"url": "cat.png"}})
    with pytest.raises(DataError, match=r"row 3: field 'messages\[1\]\.content\[2\]\.type': expected 'text'"):
        to_messages(rec, source="f.jsonl", row=3)


def test_kto_as_messages_with_a_boolean_label(tmp_path):
    path = _jsonl(tmp_path / "kto.jsonl", [
        {"messages": [U, A], "label": True},
        {"messages": [U, {"role": "assistant", "content": [{"type": "text", "text": "5"}]}], "label": False}])
    rows, report = load_preference(path)
    assert rows == [{"prompt": [U], "completion": [A], "label": True},
                    {"prompt": [U], "completion": [{"role": "assistant", "content": "5"}], "label": False}]
    assert report.kept == 2
    _jsonl(path, [{"messages": [U], "label": True}])
    with pytest.raises(DataError, match=r"row 1: field 'messages'.*ending with the assistant reply"):
        load_preference(path)


def test_one_turn_preference_in_messages_style(tmp_path):
    path = _jsonl(tmp_path / "pref.jsonl", [
        {"messages": [U], "chosen": [A], "rejected": [{"role": "assistant", "content": "5"}]},
        {"messages": [U], "chosen": "4", "rejected": "five"},
        {"prompt": [{"role": "user", "content": [{"type": "text", "text": "2+2?"}]}],
         "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "4"}]}], "rejected": "22"}])
    rows, report = load_preference(path)
    assert [r["prompt"] for r in rows] == [[U]] * 3
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [
        ("4", "5"), ("4", "five"), ("4", "22")]
    assert report.kept == 3


def test_json_lines_named_json_and_a_json_list_named_jsonl(tmp_path):
    lines = _jsonl(tmp_path / "rows.json", [{"messages": [U, A]}, {"messages": [U, A]}])
    assert [row for row, _ in read_records(lines)] == [1, 2]
    listed = tmp_path / "rows.jsonl"
    listed.write_text(json.dumps([{"messages": [U, A]}] * 3, indent=1))
    assert [row for row, _ in read_records(listed)] == [1, 2, 3]
    pretty = tmp_path / "one.json"
    pretty.write_text(json.dumps({"data": [{"messages": [U, A]}]}, indent=2))
    assert len(list(read_records(pretty))) == 1  # a pretty-printed object is still one JSON document


FLAN_ROWS = ["Is the sky blue on a clear day?\tyes\tSunlight scatters; blue scatters most.",
             "Can fish climb trees?\tno\tFish live in water and have no limbs."]


def test_flan_cot_tsv_under_auto_keeps_row_one(tmp_path, capsys):
    tsv = tmp_path / "cot.tsv"
    tsv.write_text("\n".join(FLAN_ROWS) + "\n")
    out = tmp_path / "cot.jsonl"
    assert main(["data", "convert", str(tsv), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["messages"][0]["content"] == "Is the sky blue on a clear day?"
    assert rows[0]["messages"][1]["content"] == "Sunlight scatters; blue scatters most. So the answer is yes."
    with_header = tmp_path / "h.tsv"
    with_header.write_text("question\tanswer\trationale\n" + "\n".join(FLAN_ROWS) + "\n")
    assert main(["data", "convert", str(with_header), "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 2  # a real header is still a header
    with pytest.raises(DataError, match=r"question/answer/rationale \(flan_cot\)"):
        to_messages({"q": 1})


def test_convert_with_a_column_mapping(tmp_path, capsys):
    src = _jsonl(tmp_path / "a.jsonl", [{"prompt_text": "Say hi", "reply": "hi"}])
    out = tmp_path / "o.jsonl"
    assert main(["data", "convert", str(src), "--format", "alpaca", "--columns", "prompt_text=instruction",
                 "--columns", "reply=output", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["messages"] == [{"role": "user", "content": "Say hi"},
                                                       {"role": "assistant", "content": "hi"}]
    pref = _jsonl(tmp_path / "p.jsonl", [{"q": "2+2?", "good": "4", "bad": "5"}])
    assert main(["data", "convert-preference", str(pref), "--columns", "q=prompt,good=chosen,bad=rejected",
                 "--out", str(out)]) == 0
    assert json.loads(out.read_text())["rejected"] == [{"role": "assistant", "content": "5"}]
    assert main(["data", "convert", str(src), "--columns", "prompt_text"]) == 2
    assert "expected SOURCE=TARGET" in capsys.readouterr().err


def test_check_in_any_position(capsys):
    recipe = str(ROOT / "recipes/tiny/sft.yaml")
    for argv in (["--check", recipe, "seed=1"], [recipe, "--check", "seed=1"], [recipe, "seed=1", "--check"]):
        assert main(["train", *argv]) == 0
        assert "valid sft recipe" in capsys.readouterr().out
    assert main(["train", recipe, "seed=1", "--chek"]) == 2
    assert "unknown option --chek" in capsys.readouterr().err
    assert main(["train", recipe, "--help"]) == 0 and "--check" in capsys.readouterr().out


def test_inspect_a_preference_pair(capsys):
    recipe = str(ROOT / "recipes/tiny/dpo.yaml")
    assert main(["data", "inspect", recipe, "model.name_or_path=builtin:tiny-llama", "--row", "1"]) == 0
    out = capsys.readouterr().out
    assert "--- prompt" in out and "--- chosen" in out and "--- rejected" in out
    chosen = out.split("--- chosen")[1].split("--- rejected")[0]
    rejected = out.split("--- rejected")[1]
    # only the completion is marked: the prompt ends with the assistant header, outside the marks
    assert "<|end_header_id|>\n\n[[" in chosen and chosen.rstrip().endswith("<|eot_id|>]]")
    assert chosen.count("[[") == rejected.count("[[") == 1 and chosen != rejected
