"""align_kit's memory defaults for the preference stages on CPU (issue 7: peak memory not above TRL's
defaults): how trainer_defaults resolves the reward stage's micro-batches and checkpointing (a recipe's own
value wins), that the micro-batches give the same update as one batch, and that DPO's smaller log-prob tiles
leave the log-probs and gradients of TRL's chunked head unchanged."""

from __future__ import annotations

import pytest
import torch

from align_kit.config import recipe_from_dict
from align_kit.errors import ConfigError
from align_kit.stages import dpo
from align_kit.stages.common import trainer_defaults

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU defaults")


def recipe(stage: str, trainer: dict | None = None, model: dict | None = None, **extra):
    return recipe_from_dict({"stage": stage, "output_dir": "unused",
                             "model": {"name_or_path": "builtin:tiny-llama", **(model or {})},
                             "data": {"train": [{"name": "quickstart-preferences"}]},
                             "trainer": trainer or {}, **extra})


@cpu_only
def test_reward_recipe_that_says_nothing_gets_four_micro_batches_of_two_pairs():
    d = trainer_defaults(recipe("reward"))
    assert (d["per_device_train_batch_size"], d["gradient_accumulation_steps"]) == (2, 4)
    assert d["gradient_checkpointing"] is False and d["bf16"] is False
    args = recipe("reward").trainer_config()
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (2, 4)
    assert args.gradient_checkpointing is False and args.bf16 is False


@cpu_only
def test_a_recipe_batch_setting_wins_over_the_micro_batches():
    args = recipe("reward", trainer={"per_device_train_batch_size": 16}).trainer_config()
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (16, 1)
    args = recipe("reward", trainer={"gradient_accumulation_steps": 3}).trainer_config()
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (8, 3)  # RewardConfig's 8
    args = recipe("reward", model={"gradient_checkpointing": True}).trainer_config()
    assert args.gradient_checkpointing is True and args.gradient_checkpointing_kwargs == {"use_reentrant": False}


@cpu_only
def test_dpo_keeps_trl_batches_and_no_checkpointing_unless_asked():
    args = recipe("dpo").trainer_config()
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (8, 1)
    assert args.gradient_checkpointing is False and args.bf16 is False
    assert recipe("dpo").options.logprob_token_tile == 512
    args = recipe("dpo", model={"gradient_checkpointing": True}).trainer_config()
    assert args.gradient_checkpointing is True
    with pytest.raises(ConfigError, match="dpo.logprob_token_tile: expected 0"):
        recipe("dpo", dpo={"logprob_token_tile": -1})


def one_reward_step(tmp_path, batch: int, accumulation: int) -> dict[str, torch.Tensor]:
    """Weights after one SGD step of TRL's RewardTrainer over the same 8 pairs with the given layout."""
    from datasets import Dataset
    from trl import RewardTrainer

    from align_kit.data.sources import load_data
    from align_kit.models import load_model, load_tokenizer
    from align_kit.stages.reward import tokenize_pairs

    r = recipe("reward", trainer={"per_device_train_batch_size": batch, "gradient_accumulation_steps": accumulation,
                                  "max_steps": 1, "optim": "sgd", "learning_rate": 0.5, "max_length": 64,
                                  "save_strategy": "no", "logging_steps": 1})
    r.output_dir = str(tmp_path / f"b{batch}")
    tok = load_tokenizer(r.model)
    pairs = load_data(r.data, "preference").train[:8]
    rows, _ = tokenize_pairs(pairs, tok, 64, "left", False)
    assert len({len(x["chosen_ids"]) for x in rows} | {len(x["rejected_ids"]) for x in rows}) > 1  # padding varies
    torch.manual_seed(0)
    model = load_model(r.model, tok, head="classifier")
    trainer = RewardTrainer(model=model, args=r.trainer_config(), train_dataset=Dataset.from_list(rows),
                            processing_class=tok)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    after = trainer.model.state_dict()
    return {k: after[k] - before[k] for k in before}


@cpu_only
def test_micro_batches_give_the_update_of_one_batch(tmp_path):
    whole = one_reward_step(tmp_path, 8, 1)
    micro = one_reward_step(tmp_path, 2, 4)
    moved = max(d.abs().max().item() for d in whole.values())
    assert moved > 1e-3  # the step changed the weights (SGD, so a wrong loss scale would show)
    for name, delta in whole.items():
        torch.testing.assert_close(micro[name], delta, rtol=1e-4, atol=1e-6, msg=name)


def test_small_logprob_tiles_keep_trl_log_probs_and_gradients():
    from trl.kernels import chunked_logprob as kernel

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(300, 16, generator=gen)
    weight = torch.randn(50, 16, generator=gen) * 0.3
    targets = torch.randint(0, 50, (300,), generator=gen)

    def run():
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        logps, *_ = kernel.ChunkedLogProbFunction.apply(h, w, None, targets, 1.0, 32768, None, 1.0, ("log_probs",))
        (logps * torch.linspace(-1, 1, 300)).sum().backward()
        return logps.detach(), h.grad, w.grad

    default_tile = kernel.TOKEN_CHUNK_SIZE
    reference = run()
    with dpo.logprob_tiles(64, torch.device("cpu")):
        assert kernel.TOKEN_CHUNK_SIZE == 64  # 300 tokens -> 5 tiles
        tiled = run()
    assert kernel.TOKEN_CHUNK_SIZE == default_tile == 4096
    exact = torch.log_softmax(hidden @ weight.t(), -1).gather(-1, targets[:, None]).squeeze(-1)
    torch.testing.assert_close(tiled[0], exact, rtol=0, atol=1e-5)
    for a, b in zip(tiled, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with dpo.logprob_tiles(0, torch.device("cpu")):
        assert kernel.TOKEN_CHUNK_SIZE == 4096  # 0 keeps TRL's own tile


def test_eval_log_probs_do_not_depend_on_the_logit_budget():
    from align_kit.data.sources import load_data
    from align_kit.evaluation.policy import completion_logps, logit_batches
    from align_kit.models import load_model, load_tokenizer

    r = recipe("dpo")
    tok = load_tokenizer(r.model)
    torch.manual_seed(0)
    model = load_model(r.model, tok)
    pairs = load_data(r.data, "preference").train[:6]
    prompts, chosen = [p["prompt"] for p in pairs], [p["chosen"] for p in pairs]
    batched = completion_logps(model, tok, prompts, chosen)  # one padded forward of all 6 rows
    one_by_one = completion_logps(model, tok, prompts, chosen, logit_budget=1)  # 6 unpadded forwards
    assert len(batched) == 6 and max(batched) < -1.0
    assert one_by_one == pytest.approx(batched, rel=1e-5, abs=1e-4)
    assert logit_batches([7, 9, 8], vocab=10, budget=1) == [(0, 1), (1, 2), (2, 3)]
    assert logit_batches([7, 9, 8], vocab=10, budget=10**6, max_rows=2) == [(0, 2), (2, 3)]
