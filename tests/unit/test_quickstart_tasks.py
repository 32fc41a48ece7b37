"""The shipped quickstart data is exactly what the generator makes, splits are disjoint, and the
verifier accepts every reference answer and rejects every planted wrong one."""

from __future__ import annotations

import json

from align_kit.quickstart import tasks


def test_shipped_files_match_the_generator(tmp_path):
    counts = tasks.write_files(tmp_path)
    for name in counts:
        assert (tmp_path / name).read_bytes() == (tasks.HERE / name).read_bytes(), f"{name} is stale: regenerate"


def test_splits_disjoint_and_verifier_consistent():
    read = lambda n: [json.loads(line) for line in open(tasks.HERE / n)]  # noqa: E731
    train = {r["messages"][0]["content"] for r in read("sft_train.jsonl")}
    test = [r["messages"][0]["content"] for r in read("sft_test.jsonl")]
    assert not train & set(test) and len(set(test)) == 200
    for row in read("sft_test.jsonl"):
        assert tasks.verify(row["messages"][0]["content"], row["messages"][1]["content"])
    for row in read("pref_test.jsonl") + read("pref_train.jsonl")[:500]:
        prompt = row["prompt"][0]["content"]
        assert tasks.verify(prompt, row["chosen"][0]["content"])
        assert not tasks.verify(prompt, row["rejected"][0]["content"])
    kinds = {p.split(":")[0].split("?")[0] for p in test}
    assert kinds == {"Contains z", "Length", "Last letter", "Uppercase"}


def test_demonstrations_carry_only_the_miscount_slip():
    """Training demonstrations are right except 'Length' on long words, where about SLIP_SHARE say one less;
    the held-out demonstrations and every preference pair's chosen answer are right."""
    read = lambda n: [json.loads(line) for line in open(tasks.HERE / n)]  # noqa: E731
    slipped, long_words = 0, 0
    for row in read("sft_train.jsonl"):
        prompt, reply = row["messages"][0]["content"], row["messages"][1]["content"]
        right = tasks.answer(prompt)
        if prompt.startswith("Length: ") and int(right) >= tasks.SLIP_MIN_LETTERS:
            long_words += 1
            slipped += reply != right
            assert reply in (right, str(int(right) - 1))
        else:
            assert reply == right, prompt
    assert long_words > 50 and abs(slipped / long_words - tasks.SLIP_SHARE) < 0.15
    assert all(tasks.verify(r["prompt"][0]["content"], r["chosen"][0]["content"]) for r in read("pref_train.jsonl"))
