"""Preference formats -> one schema: every format, every error names file/row/reason, HH-RLHF accounted for."""

from __future__ import annotations

import gzip
import json

import pytest

from align_kit.data.preference import (
    convert_records,
    detect_format,
    load_preference,
    split_train_eval,
    to_preference,
    to_unpaired,
)
from align_kit.errors import DataError

USER = {"role": "user", "content": "What is 2+3?"}


def hh(*turns: str) -> str:
    return "".join(f"\n\n{t}" for t in turns)


def test_hh_rlhf_multi_turn_splits_shared_prompt():
    rec = {"chosen": hh("Human: Hi", "Assistant: Hello!", "Human: What is 2+3?", "Assistant: 5"),
           "rejected": hh("Human: Hi", "Assistant: Hello!", "Human: What is 2+3?", "Assistant: 6")}
    out = to_preference(rec)
    assert out == {"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                              USER],
                   "chosen": [{"role": "assistant", "content": "5"}],
                   "rejected": [{"role": "assistant", "content": "6"}]}


@pytest.mark.parametrize("rec, field, reason", [
    ({"chosen": hh("Human: a", "Assistant: b"), "rejected": hh("Human: c", "Assistant: d")},
     None, "chosen and rejected sharing the same prompt"),
    ({"chosen": hh("Human: a"), "rejected": hh("Human: a", "Assistant: d")},
     "chosen", "a conversation ending with an assistant turn"),
    ({"chosen": "", "rejected": hh("Human: a", "Assistant: d")}, "chosen", "a non-empty transcript"),
    ({"chosen": hh("Human: a", "Assistant: "), "rejected": hh("Human: a", "Assistant: d")},
     "chosen", "a non-empty chosen response"),
    ({"chosen": "preamble" + hh("Human: a", "Assistant: b"), "rejected": hh("Human: a", "Assistant: d")},
     "chosen", "a transcript starting with a Human: turn"),
    ({"chosen": hh("Assistant: b"), "rejected": hh("Assistant: d")},
     "chosen", "a user turn before the last assistant turn"),
    ({"chosen": hh("Human: a", "Assistant: b"), "rejected": hh("Human: a", "Assistant: b ")},
     "rejected", "different chosen and rejected responses"),
])
def test_hh_rlhf_bad_rows_name_file_row_and_reason(rec, field, reason):
    with pytest.raises(DataError) as info:
        to_preference(rec, "hh_rlhf", source="hh.jsonl", row=7)
    err = info.value
    assert (err.source, err.row, err.field, err.reason) == ("hh.jsonl", 7, field, reason)
    assert str(err).startswith("hh.jsonl: row 7")


def test_hh_rlhf_joins_repeated_speaker_turns():
    # HH helpful-base row 1167 has this shape: the assistant speaks twice before the human replies
    rec = {"chosen": hh("Human: Cost?", "Assistant: Umm. Just a second...", "Assistant: About $50."),
           "rejected": hh("Human: Cost?", "Assistant: Visit their web site.")}
    out = to_preference(rec)
    assert out["prompt"] == [{"role": "user", "content": "Cost?"}]
    assert out["chosen"][0]["content"] == "Umm. Just a second...\n\nAbout $50."


def test_prompt_chosen_rejected_strings_messages_and_implicit_prompt():
    strings = to_preference({"prompt": "What is 2+3?", "chosen": "5", "rejected": "6", "margin": "2"})
    messages = to_preference({"prompt": [USER], "chosen": [{"role": "assistant", "content": "5"}],
                              "rejected": {"role": "assistant", "content": "6"}, "margin": 2.0})
    implicit = to_preference({"chosen": [USER, {"role": "assistant", "content": "5"}],
                              "rejected": [USER, {"role": "assistant", "content": "6"}], "margin": 2})
    assert strings == messages == implicit
    assert strings["margin"] == 2.0 and strings["prompt"] == [USER]


def test_sharegpt_preference_with_system():
    rec = {"system": "Be brief.", "conversations": [{"from": "human", "value": "What is 2+3?"}],
           "chosen": {"from": "gpt", "value": "5"}, "rejected": {"from": "gpt", "value": "6"}}
    assert detect_format(rec) == "sharegpt"
    out = to_preference(rec)
    assert out["prompt"] == [{"role": "system", "content": "Be brief."}, USER]
    assert out["chosen"] == [{"role": "assistant", "content": "5"}]
    bad = dict(rec, conversations=[{"from": "gpt", "value": "hi"}])
    with pytest.raises(DataError, match="a prompt ending with a user turn"):
        to_preference(bad)


def test_paired_answers_j_is_preferred_and_unpaired_labels():
    out = to_preference({"question": "What is 2+3?", "response_j": "5", "response_k": "6"})
    assert (out["chosen"][0]["content"], out["rejected"][0]["content"]) == ("5", "6")
    unpaired = to_unpaired([out])
    assert [u["label"] for u in unpaired] == [True, False]
    for value, expected in ((True, True), ("false", False), (1, True), ("0", False)):
        rec = to_preference({"prompt": "What is 2+3?", "completion": "5", "label": value})
        assert rec == {"prompt": [USER], "completion": [{"role": "assistant", "content": "5"}], "label": expected}
    with pytest.raises(DataError, match="row 4: field 'label': expected a boolean label"):
        to_preference({"prompt": "q", "completion": "a", "label": "maybe"}, source="k.jsonl", row=4)


def test_unknown_columns_and_strict_versus_skip(tmp_path):
    with pytest.raises(DataError, match="the columns of a preference format"):
        detect_format({"instruction": "x", "output": "y"}, "a.jsonl", 1)
    path = tmp_path / "p.jsonl"
    rows = [{"prompt": "q1", "chosen": "a", "rejected": "b"}, {"prompt": "q2", "chosen": "", "rejected": "b"},
            {"prompt": "q3", "chosen": "a", "rejected": "a"}, {"prompt": "q4", "chosen": "c", "rejected": "d"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"p.jsonl: row 2: field 'chosen': expected a non-empty chosen response"):
        load_preference(path)
    kept, report = load_preference(path, skip=True)
    assert [k["prompt"][0]["content"] for k in kept] == ["q1", "q4"]
    assert (report.kept, report.rejected) == (2, 2)
    assert dict(report.reasons) == {"a non-empty chosen response": 1, "different chosen and rejected responses": 1}


def test_split_keeps_prompts_on_one_side_and_is_seeded():
    recs = [to_preference({"prompt": f"q{i % 30}", "chosen": f"a{i}", "rejected": f"b{i}"}) for i in range(90)]
    train, evals = split_train_eval(recs, 0.2, seed=3)
    assert len(train) + len(evals) == 90 and len(evals) == 18  # 6 of 30 prompts x 3 pairs each
    assert not {r["prompt"][0]["content"] for r in train} & {r["prompt"][0]["content"] for r in evals}
    assert split_train_eval(recs, 0.2, seed=3) == (train, evals)
    assert split_train_eval(recs, 0.2, seed=4)[1] != evals


@pytest.mark.parametrize("subset, total, kept, reasons", [
    ("helpful-base", 2354, 2348, {"a non-empty rejected response": 4, "different chosen and rejected responses": 2}),
    ("harmless-base", 2312, 2308, {"a non-empty chosen response": 4}),
])
def test_every_hh_rlhf_test_record_is_parsed_or_reported(shared, subset, total, kept, reasons):
    path = shared / "data" / "hh-rlhf" / subset / "test.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        n_lines = sum(1 for line in fh if line.strip())
    records, report = load_preference(path, skip=True)
    assert n_lines == total
    assert len(records) == report.kept == kept
    assert report.kept + report.rejected == total
    assert dict(report.reasons) == reasons
    assert all(r["prompt"][-1]["role"] == "user" and r["chosen"] != r["rejected"] for r in records)


def test_convert_records_detects_format_once_per_source():
    rows = [(1, {"question": "q", "response_j": "a", "response_k": "b"}),
            (2, {"prompt": "q", "chosen": "a", "rejected": "b"})]
    with pytest.raises(DataError, match="mixed.jsonl: row 2: field 'question'"):
        list(convert_records(rows, "auto", "mixed.jsonl"))
    with pytest.raises(DataError, match="expected a preference format: auto, hh_rlhf"):
        list(convert_records(rows, "pairs", "mixed.jsonl"))


def test_columns_rename_source_names_to_format_names():
    rec = {"query": "What is 2+3?", "good": "5", "bad": "6"}
    out = to_preference(rec, "auto", columns={"query": "prompt", "good": "chosen", "bad": "rejected"})
    assert out["prompt"] == [USER] and out["rejected"] == [{"role": "assistant", "content": "6"}]
