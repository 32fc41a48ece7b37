"""Instruction formats -> messages: every real row converts; broken rows name file, row and field."""

from __future__ import annotations

import json

import pytest

from align_kit.data.formats import FLAN_COT_COLUMNS, convert_records, to_messages
from align_kit.data.io import read_records
from align_kit.errors import DataError, SkipReport


@pytest.mark.parametrize("name, expected", [("alpaca_en_demo.json", 999), ("alpaca_zh_demo.json", 1000)])
def test_all_alpaca_rows_convert(shared, name, expected):
    report = SkipReport(name)
    rows = list(convert_records(read_records(shared / "data/instruct" / name), "alpaca", name, report=report))
    assert len(rows) == expected == report.kept and report.rejected == 0
    assert rows[0]["messages"][-1]["role"] == "assistant"


@pytest.mark.parametrize("name, expected", [("creak", 6915), ("strategyqa", 2061), ("qasc", 1084)])
def test_all_flan_cot_rows_convert(shared, name, expected):
    path = shared / f"data/flan/{name}_train.tsv"
    rows = list(convert_records(read_records(path, columns=FLAN_COT_COLUMNS), "flan_cot", str(path)))
    assert len(rows) == expected
    assert all(r["messages"][1]["content"].rstrip(".").split("So the answer is ")[1] for r in rows[:50])
    assert "\\n" not in rows[0]["messages"][0]["content"]  # escaped newlines restored


def test_formats_to_one_schema():
    alpaca = {"instruction": "Translate", "input": "chat", "output": "cat", "system": "Be exact.",
              "history": [["hi", "hello"]]}
    assert [m["role"] for m in to_messages(alpaca)] == ["system", "user", "assistant", "user", "assistant"]
    assert to_messages(alpaca)[3]["content"] == "Translate\nchat"
    assert to_messages({"inputs": "Q?", "targets": "A"})[1] == {"role": "assistant", "content": "A"}
    sharegpt = {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"},
                                  {"from": "gpt", "value": "a"}]}
    assert [m["role"] for m in to_messages(sharegpt)] == ["system", "user", "assistant"]
    renamed = to_messages({"prompt": "q", "completion": "a"}, "alpaca", columns={"prompt": "instruction",
                                                                                "completion": "output"})
    assert renamed[-1]["content"] == "a"


@pytest.mark.parametrize("record, message", [
    ({"instruction": "x"}, "row 3: field 'output': expected a non-empty string, found missing"),
    ({"instruction": "x", "output": None}, "field 'output': expected a non-empty string, found null"),
    ({"instruction": "x", "output": 42}, "field 'output': expected a string, found number 42"),
    ({"instruction": "x", "output": "  "}, "field 'output': expected a non-empty string, found an empty string"),
    ({"messages": []}, "field 'messages': expected at least one user and one assistant turn"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
     "field 'messages[1].role': expected assistant (turns alternate user, assistant), found user"),
    ({"messages": [{"role": "user", "content": "a"}]}, "expected a final assistant turn"),
    ({"conversations": [{"from": "robot", "value": "a"}]}, "field 'conversations[0].from'"),
    ({"text": "hello"}, "expected instruction/output (alpaca)"),
])
def test_bad_rows_name_file_row_field(record, message):
    with pytest.raises(DataError) as exc:
        to_messages(record, "auto", "data.jsonl", 3)
    assert message in str(exc.value) and str(exc.value).startswith("data.jsonl")


def test_skip_mode_counts_by_reason(tmp_path):
    path = tmp_path / "mixed.jsonl"
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "a"}, {"instruction": "a", "output": ""},
            {"instruction": "c", "output": "d"}, {"instruction": "a", "output": 5}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError, match="row 2"):
        list(convert_records(read_records(path), "alpaca", str(path)))
    report = SkipReport(str(path))
    kept = list(convert_records(read_records(path), "alpaca", str(path), skip=True, report=report))
    assert len(kept) == 2 and report.kept == 2
    assert dict(report.reasons) == {"a non-empty string": 2, "a string": 1}


def test_cli_convert_prints_summary(tmp_path, capsys):
    from align_kit.cli import main

    src = tmp_path / "in.json"
    src.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "a", "output": None}]))
    assert main(["data", "convert", str(src), "--out", str(tmp_path / "o.jsonl"), "--skip-bad-rows"]) == 0
    assert "kept 1, rejected 1" in capsys.readouterr().out
    assert main(["data", "convert", str(src)]) == 2
    assert "row 2: field 'output'" in capsys.readouterr().err
