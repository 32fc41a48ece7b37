"""Builtin verifiers, the reward mix, reward-function calling, and prompt rows with reference fields."""

from __future__ import annotations

import math

import pytest
import torch

from align_kit.data.prompts import to_prompt_row
from align_kit.errors import DataError
from align_kit.ppo.rewards import VERIFIERS, Rewarder, RewardFunctionError, RewardSource, resolve_sources


@pytest.mark.parametrize("name, response, reference, expected", [
    ("exact", " 42 ", "42", True), ("exact", "42.", "42", False),
    ("normalised", "The Eiffel Tower!", "eiffel tower", True), ("normalised", "Eiffel", "eiffel tower", False),
    ("last_number", "so 3 + 4 = 7", "#### 7", True), ("last_number", "it is 1,250 apples", "1250", True),
    ("last_number", "7 apples, no 8", "7", False), ("last_number", "no number", "7", False),
    ("boxed", r"thus \boxed{\frac{1}{2}}", r"\frac{1}{2}", True), ("boxed", r"\boxed{3}", r"\boxed{3}", True),
    ("boxed", "3", "3", False),  # no box, no answer
    ("answer_is", "Floyd is a band. So the answer is no.", "no", True), ("answer_is", "no", "no", False),
    ("choice", "The answer is (B).", "B", True), ("choice", "C) since ...", "(C)", True),
    ("choice", "I pick (A), not (D)", "A", False),  # the last stated letter counts
])
def test_builtin_verifiers(name, response, reference, expected):
    assert VERIFIERS[name](response, reference) is expected


def test_mix_weights_sources_and_passes_references():
    sources = resolve_sources([
        RewardSource(verifier="exact", field="answer", weight=2.0),
        RewardSource(verifier="regex", pattern=r"\d+", weight=0.5),
        RewardSource(function="rl_reward_fns:with_reference", weight=1.0),
    ])
    assert [s.name for s in sources] == ["exact:answer", "regex", "with_reference"]
    rewarder = Rewarder(sources, model_weight=0.1)
    total, parts = rewarder.score(["p1", "p2"], ["42", "x y"], [{"answer": "42", "letter": "4"},
                                                             {"answer": "7", "letter": "q"}], torch.tensor([1.0, -3.0]))
    # row 1: 0.1 x 1 + 2 x 1 + 0.5 x 1 + 1 x 1; row 2: 0.1 x -3 + 0 + 0 + 0
    assert total.tolist() == pytest.approx([3.6, -0.3])
    assert {k: v.tolist() for k, v in parts.items()} == {
        "reward_model": [1.0, -3.0], "exact:answer": [1.0, 0.0], "regex": [1.0, 0.0], "with_reference": [1.0, 0.0]}
    with pytest.raises(RewardFunctionError, match=r"reward function 'exact:answer' raised KeyError.*no reference "
                                                  r"field 'answer'.*for prompt 'p' and response '1'"):
        Rewarder(sources[:1]).score(["p"], ["1"], [{}])


def test_a_reward_function_cannot_swallow_its_timeout():
    # rl_reward_fns.hangs catches Exception around its sleep: the alarm is a BaseException and still gets out
    rewarder = Rewarder(resolve_sources([RewardSource(function="rl_reward_fns:hangs")]), timeout=0.2)
    with pytest.raises(RewardFunctionError, match=r"'hangs' ran past reward_timeout 0.2 s"):
        rewarder.score(["p"], ["r"], [{}])
    fallback = Rewarder(rewarder.sources, timeout=0.2, on_error="fallback", fallback=-0.5)
    total, _ = fallback.score(["p", "q"], ["r", "s"], [{}, {}])
    assert total.tolist() == [-0.5, -0.5] and fallback.fallbacks == {"hangs": 2}
    assert math.isclose(Rewarder(resolve_sources([RewardSource(function="rl_reward_fns:short")])).score(
        ["p"], ["abcde"], [{}])[0].item(), -0.5)


def test_prompt_rows_with_reference_fields():
    assert to_prompt_row({"question": "q?", "answer": " yes ", "rationale": "r\\nr"}, "flan_cot") == {
        "prompt": [{"role": "user", "content": "q?"}], "reference": {"answer": "yes", "rationale": "r\nr"}}
    row = to_prompt_row({"question": "Tom has 3 apples...", "answer": "3 + 4 = 7\n#### 7"}, "auto")
    assert row["reference"] == {"answer": "7", "solution": "3 + 4 = 7\n#### 7"}
    conv = {"messages": [{"role": "user", "content": "Length: abc"}, {"role": "assistant", "content": "3"}]}
    assert to_prompt_row(conv, "messages") == {"prompt": conv["messages"][:1], "reference": {"answer": "3"}}
    sys_prompt = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert to_prompt_row({"prompt": sys_prompt, "id": 3}, "prompts")["prompt"] == sys_prompt
    with pytest.raises(DataError, match=r"f.jsonl: row 4: field 'answer': expected a solution ending '#### <answer>'"):
        to_prompt_row({"question": "q", "answer": "7"}, "gsm8k", "f.jsonl", 4)
    with pytest.raises(DataError, match=r"row 2: field 'prompt': expected a conversation ending with a user turn"):
        to_prompt_row({"prompt": conv["messages"]}, "prompts", "f.jsonl", 2)
    with pytest.raises(DataError, match=r"field 'question': expected a non-empty string, found missing"):
        to_prompt_row({"answer": "x"}, "flan_cot", "f.tsv", 1)


def test_flan_cot_card_reads_as_prompt_rows(shared, monkeypatch):
    """The flan_cot data card (headerless TSVs) read as RL prompts: every CREAK row has a yes/no answer."""
    from align_kit.config import DataArgs, DataSource
    from align_kit.data.sources import load_data

    monkeypatch.setenv("ALIGN_KIT_SHARED", str(shared))
    rows = load_data(DataArgs(train=[DataSource(name="flan_cot", split="creak")], eval_fraction=0), "prompt").train
    assert len(rows) == 6915 and {r["reference"]["answer"] for r in rows} == {"yes", "no"}
    assert all(r["prompt"][-1]["role"] == "user" and "\\n" not in r["prompt"][-1]["content"] for r in rows)


def test_gsm8k_card_reads_a_local_copy_as_prompt_rows(tmp_path, monkeypatch):
    """The gsm8k card over a local copy in GSM8K's own layout (ALIGN_KIT_GSM8K): the answer after '####' is the
    reference the last_number verifier checks; the test split is evaluation-only; a row without '####' names its
    file, row and field."""
    import json

    from align_kit.config import DataArgs, DataSource
    from align_kit.data.sources import load_data
    from align_kit.errors import ConfigError

    rows = [{"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May. "
                         "How many clips did she sell altogether?",
             "answer": "She sold 48/2 = <<48/2=24>>24 in May.\nAltogether 48+24 = <<48+24=72>>72 clips.\n#### 72"},
            {"question": "A shop sells 1,200 pens a day. How many in 2 days?", "answer": "1,200*2 = 2,400\n#### 2,400"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("ALIGN_KIT_GSM8K", str(tmp_path))
    loaded = load_data(DataArgs(train=[DataSource(name="gsm8k", split="train")], eval_fraction=0), "prompt").train
    assert [r["reference"]["answer"] for r in loaded] == ["72", "2,400"]
    assert loaded[0]["prompt"] == [{"role": "user", "content": rows[0]["question"]}]
    assert VERIFIERS["last_number"]("so she sold 72 clips in all", loaded[0]["reference"]["answer"])
    assert VERIFIERS["last_number"]("2400 pens\n#### 2400", loaded[1]["reference"]["answer"])
    assert not VERIFIERS["last_number"]("#### 48, then 72 more", loaded[0]["reference"]["answer"])  # '####' wins
    with pytest.raises(ConfigError, match="split 'test' is evaluation-only"):
        load_data(DataArgs(train=[DataSource(name="gsm8k", split="test")], eval_fraction=0), "prompt")
    (tmp_path / "train.jsonl").write_text(json.dumps({"question": "q", "answer": "7"}) + "\n")
    with pytest.raises(DataError, match=r"train.jsonl: row 1: field 'answer': expected a solution ending '#### "):
        load_data(DataArgs(train=[DataSource(name="gsm8k", split="train")], eval_fraction=0), "prompt")
