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
    assert not train & set(test) and len(set(test)) == tasks.N_TEST
    for row in read("sft_test.jsonl"):
        assert tasks.verify(row["messages"][0]["content"], row["messages"][1]["content"])
    for row in read("pref_test.jsonl") + read("pref_train.jsonl")[:500]:
        prompt = row["prompt"][0]["content"]
        assert tasks.verify(prompt, row["chosen"][0]["content"])
        assert not tasks.verify(prompt, row["rejected"][0]["content"])
    kinds = {p.split(":")[0].split("?")[0] for p in test}
    assert kinds == {"Contains z", "Length"}


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


def test_every_draw_comes_from_its_seed(tmp_path):
    """``--seed N`` draws other prompts, slips and pairs; the same seed draws the same files."""
    first, again, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    tasks.write_files(first, seed=3)
    tasks.write_files(again, seed=3)
    tasks.write_files(other, seed=4)
    for name in ("sft_train.jsonl", "pref_test.jsonl"):
        assert (first / name).read_bytes() == (again / name).read_bytes()
        assert (first / name).read_bytes() != (other / name).read_bytes()


def test_seed_overrides_point_every_stage_at_the_drawn_data(tmp_path):
    from pathlib import Path

    from align_kit.config import load_recipe
    from align_kit.quickstart import seed_overrides

    root = Path(__file__).resolve().parents[2] / "recipes" / "tiny"
    overrides = seed_overrides(root / "pipeline.yaml", 2, tmp_path)
    assert set(overrides) == {"sft", "reward", "dpo", "ppo"}
    for stage, items in overrides.items():
        # inputs=False: the earlier stages' folders (runs/quickstart/sft) are not written here
        base = load_recipe(root / f"{stage}.yaml", inputs=False)
        recipe = load_recipe(root / f"{stage}.yaml", items, inputs=False)
        assert recipe.seed == base.seed + 2
        for src in recipe.data.train + recipe.data.eval:
            assert src.name is None and Path(src.path).parent == tmp_path.resolve() and Path(src.path).exists()
