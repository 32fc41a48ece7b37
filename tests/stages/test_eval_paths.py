"""One evaluation path: the reward stage's eval.json, the pipeline gate that reads it and ``align-kit eval`` on
the run folder give the same accuracy on pairs that include ties (a tie counts 1/2); eval defaults to the
run's training max_length and honours --max-length; its skip mode counts what it left out by reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from align_kit.cli import main
from align_kit.config import recipe_from_dict
from align_kit.stages import run_stage

QUICKSTART = Path(__file__).resolve().parents[2] / "align_kit" / "quickstart"
MAX_LENGTH = 64  # the recipe's trainer.max_length: what the stage scores with, and eval's default


def _pair(prompt: str, chosen: str, rejected: str) -> dict:
    return {"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def tie_pairs() -> list[dict]:
    """Four pairs whose answers differ only in their first character and are longer than MAX_LENGTH tokens
    (one character is one token): truncated from the left, as in training, both sides are the same tokens and
    score exactly the same. At 512 tokens they differ."""
    return [_pair(f"Repeat: {c}", a + c * 80, b + c * 80) for c, a, b in
            (("x", "a", "b"), ("y", "c", "d"), ("z", "e", "f"), ("w", "g", "h"))]


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalpaths")
    rows = [json.loads(line) for line in (QUICKSTART / "pref_test.jsonl").read_text().splitlines()[:12]]
    eval_file = root / "eval_pairs.jsonl"
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in rows + tie_pairs()))
    raw = {"stage": "reward", "output_dir": str(root / "run"), "seed": 3,
           "model": {"name_or_path": "builtin:tiny-llama"},
           "data": {"train": [{"name": "quickstart-preferences", "split": "train", "max_rows": 64}],
                    "eval": [{"path": str(eval_file), "format": "preference"}]},
           "trainer": {"learning_rate": 3e-3, "per_device_train_batch_size": 16, "max_length": MAX_LENGTH,
                       "max_steps": 2, "logging_steps": 1, "save_steps": 2, "report_to": "none"}}
    return run_stage(recipe_from_dict(raw)), eval_file


def _eval_json(tmp_path: Path, *argv: str) -> dict:
    out = tmp_path / f"eval{len(list(tmp_path.glob('eval*.json')))}.json"
    assert main(["eval", *argv, "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_stage_gate_and_eval_agree_on_pairs_with_ties(reward_run, tmp_path):
    from align_kit.pipeline import Gate, GateFailed, StageSpec, check_gate

    run, eval_file = reward_run
    stage = json.loads((run / "eval.json").read_text())
    cli = _eval_json(tmp_path, str(run), "--task", "reward", "--data", str(eval_file))
    # the run folder is accepted and scored at the run's training length
    assert (cli["max_length"], cli["max_length_from"]) == (MAX_LENGTH, "the run's training max_length")
    assert stage["pairs"] == cli["pairs"] == 16
    assert stage["ties"] == cli["ties"] >= 4  # the four long pairs at least
    # one rule, worked by hand from the scores: right + ties / 2 over all pairs
    margins = [c - r for c, r in zip(cli["chosen_scores"], cli["rejected_scores"])]
    by_hand = (sum(m > 0 for m in margins) + 0.5 * sum(m == 0 for m in margins)) / len(margins)
    print(f"reward accuracy on {cli['pairs']} pairs with {cli['ties']} ties: stage {stage['accuracy']}, "
          f"eval {cli['accuracy']}, by hand {by_hand:.4f} (a tie counted wrong would give "
          f"{sum(m > 0 for m in margins) / len(margins):.4f})")
    assert stage["accuracy"] == cli["accuracy"] == by_hand
    assert stage["tie_rule"] == cli["tie_rule"] == "a tie counts 1/2"
    # the gate reads that same number: it passes at exactly that value and stops just above it
    check_gate(StageSpec("reward", "reward.yaml", gate=Gate("accuracy", min=cli["accuracy"])), run)
    with pytest.raises(GateFailed, match=f"accuracy = {cli['accuracy']:.4f}, required >= "):
        check_gate(StageSpec("reward", "reward.yaml", gate=Gate("accuracy", min=cli["accuracy"] + 1e-3)), run)


def test_eval_honours_max_length_on_a_run_folder(reward_run, tmp_path):
    run, eval_file = reward_run
    short = _eval_json(tmp_path, str(run), "--task", "reward", "--data", str(eval_file))
    full = _eval_json(tmp_path, str(run), "--task", "reward", "--data", str(eval_file), "--max-length", "512")
    assert (full["max_length"], full["max_length_from"]) == (512, "--max-length")
    # at 512 tokens the long pairs' first characters are seen: they no longer tie
    assert short["ties"] >= 4 and full["ties"] == short["ties"] - 4
    assert full["chosen_scores"][:12] == short["chosen_scores"][:12]  # the short pairs fit either way
    assert full["chosen_scores"][12:] != short["chosen_scores"][12:]
    # the run's model/ finds the manifest beside it; a model folder on its own has no training length to go by
    inner = _eval_json(tmp_path, str(run / "model"), "--task", "reward", "--data", str(eval_file))
    assert (inner["max_length"], inner["ties"]) == (MAX_LENGTH, short["ties"])
    bare = tmp_path / "bare"
    shutil.copytree(run / "model", bare)
    alone = _eval_json(tmp_path, str(bare), "--task", "reward", "--data", str(eval_file))
    assert (alone["max_length"], alone["max_length_from"]) == (None, "default")


def _hh(prompt: str, chosen: str, rejected: str) -> dict:
    return {"chosen": f"\n\nHuman: {prompt}\n\nAssistant: {chosen}",
            "rejected": f"\n\nHuman: {prompt}\n\nAssistant: {rejected}"}


def test_eval_skip_mode_counts_what_it_left_out(reward_run, tmp_path, capsys):
    run, _ = reward_run
    raw = tmp_path / "hh.jsonl"
    rows = [_hh("Length: abc", "3", "4"), _hh("Length: abcd", "4", "4"), _hh("Contains z? zq", "yes", "no"),
            {"chosen": "no speaker tags here", "rejected": "\n\nHuman: hi\n\nAssistant: a"},
            _hh("Length: ab", "2", "2 ")]
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # without skip mode: one line naming file, row and field, exit 2
    capsys.readouterr()
    assert main(["eval", str(run), "--task", "reward", "--data", str(raw), "--format", "hh_rlhf"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{raw}: row 2: field 'rejected'" in err and "the same text as chosen" in err
    out = _eval_json(tmp_path, str(run), "--task", "reward", "--data", str(raw), "--format", "hh_rlhf",
                     "--skip-bad-rows")
    assert out["pairs"] == 2
    skipped = out["skipped"]
    assert (skipped["kept"], skipped["rejected"]) == (2, 3)
    assert skipped["reasons"]["different chosen and rejected responses"] == 2  # rows 2 and 5 (after stripping)
    assert sum(skipped["reasons"].values()) == 3
    printed = capsys.readouterr().out
    assert "kept 2, rejected 3" in printed


def test_eval_on_raw_hh_rlhf_stops_or_skips_and_counts(reward_run, shared, tmp_path, capsys):
    """The published helpful-base test file: its row 121 has an empty rejected reply."""
    run, _ = reward_run
    data = shared / "data" / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"
    capsys.readouterr()
    argv = [str(run), "--task", "reward", "--data", str(data), "--format", "hh_rlhf", "--max-rows", "150"]
    assert main(["eval", *argv]) == 2
    assert f"{data}: row 121: field 'rejected': expected a non-empty rejected response" in capsys.readouterr().err
    out = _eval_json(tmp_path, *argv, "--skip-bad-rows")
    assert out["pairs"] == 150 and out["skipped"] == {"kept": 150, "rejected": 1,
                                                       "reasons": {"a non-empty rejected response": 1}}
