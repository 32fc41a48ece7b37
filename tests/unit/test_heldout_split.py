"""Reward, DPO and KTO hold out evaluation rows by prompt: no prompt of a held-out pair is trained on, with
the other answers to it, when several pairs share a prompt (as in UltraFeedback or HH-RLHF)."""

from __future__ import annotations

import json

import pytest

from align_kit.config import DataArgs, DataSource, recipe_from_dict
from align_kit.data.preference import _prompt_key
from align_kit.data.sources import hold_out, load_data
from align_kit.errors import ConfigError

PROMPTS, PER_PROMPT = 40, 3


@pytest.fixture()
def shared_prompts(tmp_path):
    """40 prompts with 3 pairs each (120 rows), in file order prompt by prompt."""
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"Length: {'ab' * (p + 1)}", "chosen": str(2 * p + 2), "rejected": str(2 * p + 2 + k)}
            for p in range(PROMPTS) for k in (1, 2, 3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _prompts(rows: list[dict]) -> set[str]:
    return {_prompt_key(r) for r in rows}


@pytest.mark.parametrize("kind", ["preference", "unpaired"])
def test_held_out_prompts_are_never_trained_on(shared_prompts, kind):
    data = DataArgs(train=[DataSource(path=str(shared_prompts))], eval_fraction=0.2, seed=0)
    loaded = load_data(data, kind)
    assert not _prompts(loaded.train) & _prompts(loaded.eval)
    assert len(loaded.train) + len(loaded.eval) == PROMPTS * PER_PROMPT
    assert len(_prompts(loaded.eval)) == round(PROMPTS * 0.2) and len(loaded.eval) == 8 * PER_PROMPT
    # seeded: the same prompts again, other ones under another seed
    assert _prompts(load_data(data, kind).eval) == _prompts(loaded.eval)
    data.seed = 1
    assert _prompts(load_data(data, kind).eval) != _prompts(loaded.eval)


def test_the_row_by_row_split_would_leak(shared_prompts):
    """Negative control: the split the three stages used before (row by row, as SFT still does) puts other
    answers to most held-out prompts into training, so the assertion above can fail."""
    rows = load_data(DataArgs(train=[DataSource(path=str(shared_prompts))], eval_fraction=0), "preference").train
    train, held = hold_out(rows, "instruction", 0.2, 0, "pairs.jsonl")
    assert len(held) == 24 and len(_prompts(train) & _prompts(held)) >= 10


def test_one_prompt_cannot_be_split(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text("".join(json.dumps({"prompt": "Length: ab", "chosen": "2", "rejected": str(k)}) + "\n"
                            for k in (1, 3, 4)))
    with pytest.raises(ConfigError, match="all 3 rows share one prompt.*data.eval_fraction: 0"):
        load_data(DataArgs(train=[DataSource(path=str(path))], eval_fraction=0.5), "preference")


class Loaded(Exception):
    """Raised by the patched loader once a stage has loaded its data: what the test needs, before any model."""


@pytest.mark.parametrize("stage", ["reward", "dpo", "kto"])
def test_every_preference_stage_splits_by_prompt(shared_prompts, tmp_path, monkeypatch, stage):
    import align_kit.data.sources as sources

    real = sources.load_data

    def loaded(data, kind):
        raise Loaded(real(data, kind), kind)

    monkeypatch.setattr(sources, "load_data", loaded)
    recipe = recipe_from_dict({"stage": stage, "output_dir": str(tmp_path / stage),
                               "model": {"name_or_path": "builtin:tiny-llama"},
                               "data": {"train": [{"path": str(shared_prompts)}], "eval_fraction": 0.2}})
    from align_kit.stages import get_stage

    with pytest.raises(Loaded) as caught:
        get_stage(stage).run(recipe)
    data, kind = caught.value.args
    assert kind == ("unpaired" if stage == "kto" else "preference")
    assert data.eval and not _prompts(data.train) & _prompts(data.eval)
