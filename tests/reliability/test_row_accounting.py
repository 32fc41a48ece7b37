"""Every row accounted for: a real SFT run over a file with one bad row of each kind, including a row whose
prompt fills max_length and one whose reply cannot fit, logs and records counts equal to the rows it dropped
or cut, and what reaches the trainer is exactly the rest."""

from __future__ import annotations

import json
import logging

import pytest
import yaml

from align_kit.cli import main

MAX_LENGTH = 96  # the builtin tokenizer has one token per character


def _rows() -> list:
    good = [{"instruction": f"Add {i} and 1.", "input": "", "output": str(i + 1)} for i in range(12)]
    return [
        *good[:6],
        "{not json",                                                            # unparsable line
        [1, 2],                                                                 # not an object
        {"instruction": "x", "input": "", "output": None},                     # missing reply
        {"instruction": "Keep \u2028 this row.", "input": "", "output": "ok"},  # a valid row with U+2028
        {"instruction": "Count: " + "abc " * 40, "input": "", "output": "40"},  # prompt fills max_length
        {"instruction": "Say it long.", "input": "", "output": "long " * 30},   # reply longer than max_length
        *good[6:],
    ]


def _run(tmp_path, long_rows: str, caplog):
    (tmp_path / "d.jsonl").write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                                              for r in _rows()), encoding="utf-8")
    recipe = {"stage": "sft", "output_dir": str(tmp_path / long_rows), "model": {"name_or_path": "builtin:tiny-llama"},
              "data": {"train": [{"path": str(tmp_path / "d.jsonl"), "format": "alpaca"}], "eval_fraction": 0,
                       "on_bad_row": "skip", "long_rows": long_rows},
              "trainer": {"max_steps": 1, "save_strategy": "no", "max_length": MAX_LENGTH,
                          "per_device_train_batch_size": 2, "packing": False}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="align_kit"):
        assert main(["train", str(tmp_path / "r.yaml")]) == 0
    logged = "\n".join(r.getMessage() for r in caplog.records)
    return logged, json.loads((tmp_path / long_rows / "manifest.json").read_text())["extra"]


def test_truncate_prompt_keeps_the_reply_and_counts_every_row(tmp_path, caplog):
    logged, extra = _run(tmp_path, "truncate_prompt", caplog)
    lines = len(_rows())
    (report,) = extra["skipped_rows"]
    assert report["kept"] + report["rejected"] == lines  # every line of the file is kept or rejected once
    assert report["kept"] == 15 and report["rejected"] == 3
    assert "kept 15, rejected 3" in logged
    fit = extra["long_rows"]["train"]
    assert fit == {"rows": 15, "kept": 14, "truncated_prompt": 1,
                   "dropped": {"last reply does not fit in max_length": 1}}
    assert (f"train: 2 of 15 rows are longer than max_length={MAX_LENGTH}: 1 truncated from the prompt side "
            "(last reply kept whole), 1 dropped (last reply does not fit in max_length: 1)") in logged
    assert extra["truncated_rows"] == 1 and extra["trl_dropped_rows"] == {"train": 0, "eval": 0}


def test_drop_drops_every_long_row_and_counts_it(tmp_path, caplog):
    logged, extra = _run(tmp_path, "drop", caplog)
    assert extra["long_rows"]["train"] == {"rows": 15, "kept": 13, "truncated_prompt": 0,
                                           "dropped": {"longer than max_length": 2}}
    assert "2 dropped (longer than max_length: 2)" in logged


def test_the_fitted_row_trains_its_reply_and_end_of_turn():
    """The prompt-fills-max_length row: cut at its end (TRL's truncation) it keeps no trained token; fitted
    from the prompt side it trains the whole reply and its end-of-turn token."""
    from align_kit.config import ModelArgs
    from align_kit.data.formats import to_messages
    from align_kit.data.packing import IGNORE, pack_samples
    from align_kit.data.tokenize import fit_length, tokenize_conversation
    from align_kit.families import get_template, stop_token_ids
    from align_kit.models import load_tokenizer

    tok = load_tokenizer(ModelArgs("builtin:tiny-llama"))
    stops = stop_token_ids(tok, get_template(tok.align_kit_template))
    row = _rows()[10]
    full = tokenize_conversation(tok, to_messages(row, "alpaca", "t", 1), stops)
    assert len(full.input_ids) > MAX_LENGTH
    cut_at_end = pack_samples([{"input_ids": full.input_ids, "assistant_masks": full.assistant_masks}], MAX_LENGTH)
    assert all(label == IGNORE for label in cut_at_end[0]["labels"])  # what the end cut would train: nothing
    fitted, what = fit_length(full, MAX_LENGTH)
    assert what == "truncated_prompt" and len(fitted.input_ids) == MAX_LENGTH
    trained = [t for t, m in zip(fitted.input_ids, fitted.assistant_masks) if m]
    assert trained == [t for t, m in zip(full.input_ids, full.assistant_masks) if m]  # the whole reply
    assert trained[-1] in stops


def _pairs() -> list[dict]:
    def pair(prompt: str, chosen: str, rejected: str) -> dict:
        return {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}]}

    return [*(pair(f"Add {i} and 1.", str(i + 1), str(i + 2)) for i in range(6)),
            pair("Count: " + "abc " * 40, "40", "41"),                # prompt fills max_length
            pair("Say it.", "long " * 30, "short")]                    # reply longer than max_length


@pytest.mark.parametrize("long_rows", ["truncate_prompt", "drop"])
def test_dpo_counts_the_pairs_trl_would_cut_or_drop(long_rows, tmp_path, caplog):
    """TRL's DPO default (keep_start) cut a long pair's replies at their end and dropped a pair whose prompt
    filled max_length, uncounted. align_kit cuts the prompt side (keep_end) or drops, and counts either way."""
    from align_kit.config import recipe_from_dict
    from align_kit.stages import run_stage

    (tmp_path / "p.jsonl").write_text("".join(json.dumps(p) + "\n" for p in _pairs()), encoding="utf-8")
    raw = {"stage": "dpo", "output_dir": str(tmp_path / "run"), "model": {"name_or_path": "builtin:tiny-llama"},
           "data": {"train": [{"path": str(tmp_path / "p.jsonl")}], "eval_fraction": 0, "long_rows": long_rows},
           "trainer": {"per_device_train_batch_size": 2, "max_steps": 1, "max_length": MAX_LENGTH,
                       "save_strategy": "no", "use_cpu": True, "logging_steps": 1}}
    with caplog.at_level(logging.WARNING, logger="align_kit"):
        run_stage(recipe_from_dict(raw))
    counts = json.loads((tmp_path / "run" / "manifest.json").read_text())["extra"]["long_rows"]
    expected = {"rows": 8, "dropped_by_trl": 0, "dropped": 0}
    expected.update({"truncated_prompt": 2} if long_rows == "truncate_prompt" else {"dropped": 2})
    assert counts == expected
    assert f"train rows longer than max_length={MAX_LENGTH}" in caplog.text
