"""``evaluation.engine`` (align_kit/evaluation/engine.py): which stages may name one, the RL rule (the rollout
engine evaluates), the refusals (a quantized base, sharded training, a missing environment), each one line at
recipe load; and a pipeline's block as each stage gets it. The engine runs in tests/stages/test_vllm_*.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from align_kit.config import load_recipe
from align_kit.engines import refuse_sharded
from align_kit.errors import ConfigError
from align_kit.evaluation.engine import evaluation_engine

RECIPES = Path(__file__).parents[2] / "recipes"


@pytest.fixture
def vllm_env(tmp_path, monkeypatch):
    """A file where the vLLM environment's python is expected: the checks look for the file, they start nothing."""
    python = tmp_path / "python"
    python.write_text("")
    monkeypatch.setenv("ALIGN_KIT_VLLM_PYTHON", str(python))
    return python


def load(name: str, *overrides: str):
    return load_recipe(RECIPES / "tiny" / name, list(overrides), inputs=False)


def test_which_engine_each_stage_evaluates_with(vllm_env):
    assert evaluation_engine(load("sft.yaml")) == "hf"
    assert evaluation_engine(load("sft.yaml", "evaluation={engine: vllm}")) == "vllm"
    assert evaluation_engine(load("dpo.yaml", "evaluation={engine: vllm}")) == "vllm"
    assert evaluation_engine(load("grpo.yaml")) == "hf"
    assert evaluation_engine(load("grpo.yaml", "trainer.rollout={engine: vllm}")) == "vllm"  # the rollout's
    assert evaluation_engine(load("grpo.yaml", "trainer.rollout={engine: vllm}", "evaluation={engine: vllm}")) == "vllm"


@pytest.mark.parametrize(("recipe", "overrides", "message"), [
    ("reward.yaml", ["evaluation={engine: vllm}"], r"^.*evaluation.engine: the reward stage's evaluation generates nothing"),
    ("grpo.yaml", ["evaluation={engine: vllm}"],
     r"evaluation.engine: an RL stage evaluates with its rollout engine \(trainer.rollout.engine: hf\), found vllm"),
    ("grpo.yaml", ["trainer.rollout={engine: vllm}", "evaluation={engine: hf}"],
     r"rollout engine \(trainer.rollout.engine: vllm\), found hf"),
    ("sft.yaml", ["evaluation={engine: vllm}", "quantization={bits: 4}", "peft={r: 8}"],
     r"evaluation.engine: vllm is given the model's full weights .* a 4-bit base cannot be handed over exactly"),
    ("sft.yaml", ["evaluation={engine: vlm}"], r"evaluation.engine: expected one of hf, vllm, found 'vlm' \(did you mean 'vllm'\?\)"),
    ("sft.yaml", ["evaluation={engine: vllm, kv_cache_gib: 0}"], r"evaluation.kv_cache_gib: expected a positive number"),
])
def test_an_engine_a_stage_cannot_use_is_one_error_at_load(vllm_env, recipe, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load(recipe, *overrides)


def test_a_missing_vllm_environment_names_the_evaluation_key(tmp_path):
    with pytest.raises(ConfigError, match=r"evaluation.vllm_python: expected the python of a vLLM environment, "
                                          r"found no file at .*nowhere"):
        load("sft.yaml", f"evaluation={{engine: vllm, vllm_python: {tmp_path / 'nowhere'}}}")
    assert load("sft.yaml", f"evaluation={{engine: hf, vllm_python: {tmp_path / 'nowhere'}}}")  # hf: not needed


@pytest.mark.parametrize(("kind", "zero_stage", "refused"), [
    ("NO", None, False), ("MULTI_CPU", None, False), ("MULTI_GPU", None, False), ("DEEPSPEED", 2, False),
    ("FSDP", None, True), ("DEEPSPEED", 3, True)])
def test_sharded_training_is_refused_with_a_vllm_engine(kind, zero_stage, refused):
    """Each engine gets one process's full weights: FSDP and ZeRO-3 processes hold shards."""
    accelerator = SimpleNamespace(distributed_type=SimpleNamespace(value=kind),
                                  state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=zero_stage)
                                                        if zero_stage else None))
    if refused:
        with pytest.raises(ConfigError, match=rf"evaluation.engine: vllm syncs each process's full weights .* "
                                              rf"and {kind} shards them"):
            refuse_sharded(accelerator, "evaluation.engine")
    else:
        refuse_sharded(accelerator, "evaluation.engine")


def test_a_pipelines_engine_reaches_the_stages_that_answer_with_it(vllm_env, tmp_path):
    """pipeline.yaml's ``evaluation: {engine: vllm}``: SFT and DPO get it, the RL stage keeps its rollout engine
    (hf) and the reward stage gets no block; every stage's recipe still passes its checks."""
    import yaml

    from align_kit.pipeline import load_pipeline, stage_evaluation

    spec_path = tmp_path / "pipeline.yaml"
    raw = yaml.safe_load((RECIPES / "tiny" / "pipeline.yaml").read_text())
    raw["evaluation"] = {"engine": "vllm"}
    spec_path.write_text(yaml.safe_dump(raw))
    for stage in raw["stages"]:
        (tmp_path / stage["recipe"]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / stage["recipe"]).write_text((RECIPES / "tiny" / stage["recipe"]).read_text())
    spec, _ = load_pipeline(spec_path)
    got = {}
    for stage in spec.stages:
        recipe = load_recipe(tmp_path / stage.recipe, [], inputs=False)
        recipe.evaluation = stage_evaluation(spec.evaluation, recipe.stage)
        got[recipe.stage] = evaluation_engine(recipe) if recipe.evaluation else None
    assert got == {"sft": "vllm", "reward": None, "dpo": "vllm", "ppo": "hf"}
