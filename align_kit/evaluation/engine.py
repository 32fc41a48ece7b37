"""Which engine generates a stage's own evaluation answers, and the engine's life around one evaluation.

A recipe (or a pipeline, for each of its stages) says ``evaluation: {engine: vllm}``; the SFT, DPO and KTO stages
then answer their held-out prompts (the verifier accuracy before and after training) with a vLLM server from its
own environment instead of transformers' ``generate``. The server starts for each evaluation and stops after
it, so it holds no memory while the stage trains (a start costs about 30 s on 2 CPU cores). RL stages evaluate
with their rollout engine, which is already running and synced (:mod:`align_kit.ppo.evaluate`); an evaluation
engine that differs from it is refused. The reward stage generates nothing and refuses the setting.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from align_kit.errors import ConfigError

GENERATING_STAGES = ("sft", "dpo", "kto", "ppo")


def evaluation_engine(recipe) -> str:
    """``hf`` or ``vllm``: the recipe's ``evaluation.engine``, else (RL) the rollout engine, else hf."""
    chosen = getattr(getattr(recipe, "evaluation", None), "engine", None)
    if chosen is not None:
        return chosen
    if recipe.stage == "ppo":
        return recipe.trainer_config().rollout.engine
    return "hf"


def check_recipe(recipe) -> None:
    """One ConfigError for an evaluation engine the stage cannot use; run by ``--check`` and the run's load."""
    evaluation = getattr(recipe, "evaluation", None)
    chosen = getattr(evaluation, "engine", None)
    if chosen is None:
        return
    if recipe.stage not in GENERATING_STAGES:
        raise ConfigError(f"evaluation.engine: the {recipe.stage} stage's evaluation generates nothing (the engine "
                          f"answers prompts for the {', '.join(GENERATING_STAGES)} stages); drop it")
    if recipe.stage == "ppo":
        rollout = recipe.trainer_config().rollout.engine
        if chosen != rollout:
            raise ConfigError(f"evaluation.engine: an RL stage evaluates with its rollout engine (trainer.rollout."
                              f"engine: {rollout}), found {chosen}; set both the same, or drop evaluation.engine")
        return
    if chosen == "vllm":
        if recipe.quantization is not None:
            raise ConfigError(f"evaluation.engine: vllm is given the model's full weights (a LoRA adapter merged "
                              f"in), and a {recipe.quantization.bits}-bit base cannot be handed over exactly; "
                              "expected engine hf with a quantization: block")
        from align_kit.engines.vllm_engine import vllm_python

        vllm_python(evaluation.vllm_python, key="evaluation.vllm_python")


@contextlib.contextmanager
def stage_engine(recipe, model, tokenizer, prompts: Sequence[list[dict]], max_new_tokens: int,
                 accelerator=None) -> Iterator[object | None]:
    """A vLLM server holding ``model``'s weights while the block runs when the recipe's evaluation engine is
    vllm, else None (answer with transformers). Under ``accelerate launch`` the server is the main process's:
    the callers evaluate there only, and each process's weights are whole (sharded setups are refused)."""
    if evaluation_engine(recipe) != "vllm" or not prompts:
        yield None
        return
    if accelerator is not None:
        from align_kit.engines import refuse_sharded

        refuse_sharded(accelerator, "evaluation.engine")
    from align_kit.evaluation.generated import start_engine

    evaluation = recipe.evaluation
    with start_engine(model, tokenizer, prompts, max_new_tokens, python=evaluation.vllm_python,
                      kv_cache_gib=evaluation.kv_cache_gib) as engine:
        yield engine
