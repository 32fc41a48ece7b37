"""The vLLM rollout engine (align_kit/engines) against the policy it serves, on CPU, with tiny Llamas of head
size 64 (vLLM's CPU attention refuses 8; 32 and 64 run) built in process.

One engine serves the whole module (a start is ~40 s on 2 cores). Skipped, with the reason, where the vLLM
environment is absent; ``.ci/run`` creates it, so CI runs these."""

from __future__ import annotations

import pytest
import torch
from helpers import require_vllm

from align_kit.engines import logprob_gap, right_pad, row_seeds
from align_kit.engines.vllm_engine import VLLMEngine, full_state_dict, vllm_python
from align_kit.errors import ConfigError
from align_kit.ppo.modelset import causal_logits

MAX_NEW = 24
STOP = 3  # <|eot_id|> of the quickstart tokenizer


def llama(tokenizer, seed: int):
    """A quickstart-shaped Llama with 2 heads of 64 (not the quickstart's 4 of 32) and a wider initialisation, so
    its greedy answers are decided by clear margins rather than float noise between near-equal logits."""
    from align_kit.quickstart.model import build_model

    return build_model(tokenizer, seed=seed, num_attention_heads=2, num_key_value_heads=2,
                       initializer_range=0.2).eval()


@pytest.fixture(scope="module")
def tokenizer():
    from align_kit.quickstart.model import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="module")
def prompts(tokenizer):
    """20 held-out prompts (never trained on): quickstart-style questions of 10-40 tokens."""
    words = ["apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "zebra", "candle", "mirror"]
    texts = [f"How many letters are in '{words[i % 10]}'? {'Think.' * (i % 4)}" for i in range(20)]
    return [[tokenizer.bos_token_id] + tokenizer(t, add_special_tokens=False).input_ids for t in texts]


@pytest.fixture(scope="module")
def engine(tokenizer):
    require_vllm()
    with VLLMEngine(llama(tokenizer, seed=0), max_model_len=128, seed=0, kv_cache_gib=0.0625) as eng:
        yield eng


@torch.no_grad()
def hf_greedy(model, prompt: list[int]) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=[STOP],
                         pad_token_id=0, bos_token_id=None)
    return out[0, len(prompt):].tolist()


def engine_greedy(engine, prompts) -> list[list[int]]:
    tokens, _ = engine.generate(prompts, [0] * len(prompts), max_new_tokens=MAX_NEW, temperature=0.0,
                                stop_ids=[STOP])
    return tokens


def test_after_a_weight_sync_greedy_answers_equal_the_policys(engine, tokenizer, prompts):
    """The engine started from model A; after syncing model B's weights its greedy answers are B's own, token
    for token (the stop token included), on 20 held-out prompts. Negative control: before the sync they were
    A's, which differ from B's on most prompts."""
    model_b = llama(tokenizer, seed=1)
    expected = [hf_greedy(model_b, p) for p in prompts]
    before = engine_greedy(engine, prompts)
    assert sum(a != b for a, b in zip(before, expected)) >= 10  # the engine really held other weights
    seconds = engine.sync(model_b)
    assert seconds > 0
    assert engine_greedy(engine, prompts) == expected


def test_lora_policy_syncs_merged(engine, tokenizer, prompts):
    """A LoRA policy (adapter weights non-zero, as after training) syncs as base + scale x B @ A: the engine's
    greedy answers equal the PEFT model's own."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(llama(tokenizer, seed=2), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    expected = [hf_greedy(model, p) for p in prompts[:8]]
    with model.disable_adapter():  # the adapter changes the answers: a sync that dropped it would be caught
        assert expected != [hf_greedy(model, p) for p in prompts[:8]]
    engine.sync(model)
    assert engine_greedy(engine, prompts[:8]) == expected


def test_sampled_logprobs_match_the_policys_recomputed_ones(engine, tokenizer, prompts):
    """On the engine's own samples (temperature 0.7, a seed per row), the policy's recomputed log-probs of the
    sampled tokens differ from the engine's by a mean of |diff| < 1e-4 nats (measured 2.5e-6 in float32 on this
    CPU). Negative control: against another model's log-probs the gap is far larger."""
    model = llama(tokenizer, seed=3)
    engine.sync(model)
    temperature = 0.7
    tokens, engine_lp = engine.generate(prompts, row_seeds(0, 1, 0, len(prompts)), max_new_tokens=MAX_NEW,
                                        temperature=temperature, stop_ids=[STOP])
    assert any(len(set(t)) > 3 for t in tokens)  # sampled, not a degenerate repeat

    def policy_lp(policy):
        out = []
        for prompt, resp in zip(prompts, tokens):
            ids = torch.tensor([prompt + resp])
            logits = causal_logits(policy, ids, torch.ones_like(ids))[0, len(prompt) - 1 : -1] / temperature
            out.append(torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(resp)[:, None])[:, 0].tolist())
        return right_pad(out, 0.0, dtype=torch.float32)

    mask = right_pad([[1] * len(t) for t in tokens], 0)
    engine_t = right_pad(engine_lp, 0.0, dtype=torch.float32)
    with torch.no_grad():
        gap = logprob_gap(policy_lp(model), engine_t, mask)
        other = logprob_gap(policy_lp(llama(tokenizer, seed=4)), engine_t, mask)
    print(f"mean |engine - policy| log-prob: {gap:.2e} nats; against another model {other:.2e}")
    assert gap < 1e-4
    assert other > 100 * gap and other > 0.05


def test_full_state_dict_of_a_lora_model_loads_into_a_plain_one(tokenizer):
    """No engine needed: the merged weights the sync sends, loaded into a plain transformers model, give the
    PEFT model's logits; tied embeddings appear once."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(llama(tokenizer, seed=5), LoraConfig(r=4, lora_alpha=8, target_modules=["v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.05)
    state = full_state_dict(model)
    assert "lm_head.weight" not in state and not any("lora" in k or "base_layer" in k for k in state)
    plain = llama(tokenizer, seed=6)
    plain.load_state_dict(state, strict=False)
    ids = torch.tensor([[2, 40, 41, 42, 43]])
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
        with model.disable_adapter():  # the delta is real: the base alone gives other logits
            assert not torch.allclose(model(ids).logits, plain(ids).logits, atol=1e-3)


def test_missing_environment_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGN_KIT_VLLM_PYTHON", str(tmp_path / "nope" / "python"))
    with pytest.raises(ConfigError, match=r"trainer.rollout.python: expected .*no file at .*nope/python \(\$ALIGN_KIT_VLLM_PYTHON\).*\.venv-vllm"):
        vllm_python()


def test_rollout_settings_are_checked_at_recipe_load(tokenizer, tmp_path, monkeypatch):
    """``trainer.rollout`` is checked with the recipe (``--check``), before any model loads: a misspelt key names
    the right one, TIS without a separate engine is refused, and engine vllm without its environment says where
    it looked and how to make one."""
    from align_kit.config import recipe_from_dict

    llama(tokenizer, seed=0).save_pretrained(tmp_path / "sft")
    tokenizer.save_pretrained(tmp_path / "sft")
    base = {"stage": "ppo", "model": {"name_or_path": str(tmp_path / "sft")}, "output_dir": str(tmp_path / "run"),
            "data": {"train": [{"name": "quickstart-tasks", "split": "train"}]},
            "ppo": {"rewards": [{"verifier": "exact"}]}, "trainer": {"advantage_estimator": "grpo",
                                                                      "num_generations": 2, "mini_batch_size": 2}}

    def load(rollout):
        return recipe_from_dict({**base, "trainer": {**base["trainer"], "rollout": rollout}})

    assert load({"engine": "hf"}).trainer_config().rollout.engine == "hf"
    with pytest.raises(ConfigError, match=r"trainer.rollout: unknown key 'engin' \(did you mean 'engine'\?\)"):
        load({"engin": "vllm"})
    with pytest.raises(ConfigError, match=r"trainer.rollout.tis_cap: 2.0 corrects for a separate engine's sampling"):
        load({"tis_cap": 2.0})
    with pytest.raises(ConfigError, match=r"trainer.rollout.engine: expected one of hf, vllm, found 'sglang'"):
        load({"engine": "sglang"})
    monkeypatch.setenv("ALIGN_KIT_VLLM_PYTHON", str(tmp_path / "none" / "python"))
    with pytest.raises(ConfigError, match=r"no file at .*none/python.*\.venv-vllm/bin/pip install torch==2\.13\.0"):
        load({"engine": "vllm"})


def test_a_refused_request_names_vllms_reason_and_the_engine_keeps_serving(engine, prompts):
    """A prompt longer than the engine's max_model_len (128) is refused by vLLM: the trainer gets an EngineError
    leading with vLLM's own words, then the server's traceback, and the next request is answered as usual."""
    from align_kit.engines.vllm_engine import EngineError

    with pytest.raises(EngineError, match=r"vLLM engine failed during generate: .*maximum context length is 128 tokens"):
        engine.generate([[2] + [40] * 200], [0], max_new_tokens=4, temperature=0.0, stop_ids=[STOP])
    tokens, _ = engine.generate(prompts[:2], [0, 0], max_new_tokens=4, temperature=0.0, stop_ids=[STOP])
    assert len(tokens) == 2 and all(1 <= len(t) <= 4 for t in tokens)


def test_evaluation_generates_through_the_engine_as_transformers_does(engine, prompts):
    """``align-kit eval --engine vllm`` (verifier, win-rate, samples): the evaluation functions given the engine
    answer with the model's weights (synced first) the texts transformers' generate gives, through the same
    chat template, stop ids and decoding, on 20 held-out conversations; the command's generation path with the
    engine gives the same verifier accuracy as without it."""
    from argparse import Namespace

    from align_kit.commands.evaluation import _generated
    from align_kit.evaluation import generate_responses
    from align_kit.quickstart.model import build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}A: {% endif %}")
    model = llama(tokenizer, seed=3)
    convs = [[{"role": "user", "content": tokenizer.decode(p[1:])}] for p in prompts]
    expected = generate_responses(model, tokenizer, convs, MAX_NEW)
    assert len(set(expected)) > 5  # answers that differ from prompt to prompt, so equality says something
    assert generate_responses(model, tokenizer, convs, MAX_NEW, engine=engine) == expected

    rows = [(c, {"answer": expected[i] if i % 2 else "no"}) for i, c in enumerate(convs)]  # half right by design
    args = Namespace(task="verifier", verifier="exact_match", max_new_tokens=MAX_NEW)
    hf, vllm = _generated(args, model, tokenizer, rows, None), _generated(args, model, tokenizer, rows, engine)
    assert vllm["responses"] == hf["responses"] and vllm["accuracy"] == hf["accuracy"] >= 0.5


def test_eval_refuses_an_engine_for_tasks_that_generate_nothing(tmp_path, capsys):
    """``--engine vllm`` with ``--task perplexity`` or ``reward`` is one clear error, not a silently unused flag."""
    from align_kit.cli import main

    data = tmp_path / "t.txt"
    data.write_text("some text\n")
    for task in ("perplexity", "reward"):
        assert main(["eval", str(tmp_path), "--task", task, "--data", str(data), "--engine", "vllm"]) == 2
        assert f"--engine vllm: --task {task} generates nothing" in capsys.readouterr().err


def test_rl_evaluation_answers_through_the_engine_as_the_policy_does(engine, tokenizer, prompts, monkeypatch):
    """The RL stage's before/after evaluation (``ppo.evaluate.evaluate_policy``) given the run's engine: the
    greedy figures (verifier accuracy, ended share, mean length) equal those of the policy's own ``generate``,
    the policy's ``generate`` is never called, and the sampled figures come from seeds fixed per row (a second
    evaluation draws the same answers, as before and after must)."""
    from types import SimpleNamespace

    from align_kit.ppo.evaluate import evaluate_policy

    model = llama(tokenizer, seed=5)
    engine.sync(model)
    texts = [tokenizer.decode(p[1:]) for p in prompts]

    def verify(prompt: str, response: str) -> bool:  # a verdict that varies with the answer's text
        return sum(map(ord, response)) % 2 == 0

    models = SimpleNamespace(has_reward_model=False)
    settings = dict(verify=verify, samples=3, temperature=1.0, seed=7)
    hf = evaluate_policy(models, model, None, tokenizer, prompts, texts, [STOP], MAX_NEW, **settings)
    calls = []
    monkeypatch.setattr(model, "generate", lambda *a, **k: calls.append(1))
    first = evaluate_policy(models, model, None, tokenizer, prompts, texts, [STOP], MAX_NEW, engine=engine, **settings)
    second = evaluate_policy(models, model, None, tokenizer, prompts, texts, [STOP], MAX_NEW, engine=engine,
                             **settings)
    assert not calls
    greedy = ("verifier_accuracy", "ended", "response_length", "prompts")
    assert {k: first[k] for k in greedy} == {k: hf[k] for k in greedy}
    assert 0 < hf["verifier_accuracy"] < 1 and hf["response_length"] > 1  # figures that can differ
    assert first == second and first["samples_per_prompt"] == 3 and "sampled_verifier_accuracy" in first


def test_many_seeded_rows_at_once_sample_reproducibly(engine, prompts):
    """240 sampled rows, each with its own seed, 7,000+ prompt tokens in one call: more than one scheduler
    step's token budget (4,096), which with chunked prefill crashed vLLM's CPU sampler ("CPU Generator does not
    use offset"); the worker prefills every prompt whole. The same call twice draws the same tokens."""
    rows = [p + p[1:] for p in prompts] * 12  # 240 rows of 20-80 tokens
    assert sum(map(len, rows)) > 4096
    seeds = row_seeds(0, 3, 0, len(rows))
    first, _ = engine.generate(rows, seeds, max_new_tokens=8, temperature=1.0, stop_ids=[STOP])
    second, _ = engine.generate(rows, seeds, max_new_tokens=8, temperature=1.0, stop_ids=[STOP])
    assert first == second and len(first) == 240 and all(first)
    assert len({tuple(t) for t in first[:20]}) > 1  # distinct prompts, distinct samples: not one row repeated
