"""Evaluation with real (tiny, in-process) models: perplexity equals exp(HF loss), reward accuracy, win rate,
verifier accuracy and the side-by-side table."""

from __future__ import annotations

import math

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from align_kit.errors import DataError
from align_kit.evaluation import (
    perplexity,
    reward_accuracy,
    side_by_side,
    task_accuracy,
    token_logprobs,
    win_rate,
)

WORDS = "<unk> <pad> <s> </s> the a cat dog sat on mat user assistant : hello world is red blue".split()
TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
            "{% if add_generation_prompt %}assistant : {% endif %}")
PROMPTS = [[{"role": "user", "content": p}] for p in ("hello", "the dog", "red world", "a mat is blue")]


@pytest.fixture(scope="module")
def tok():
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    hf = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                 eos_token="</s>")
    hf.chat_template = TEMPLATE
    return hf


def tiny_llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=1,
                      bos_token_id=2, eos_token_id=3)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def cat_policy(tok):
    """A model trained for 40 Adam steps to answer every prompt with "cat"."""
    model = tiny_llama(0).train()
    texts = [tok.apply_chat_template(p + [{"role": "assistant", "content": "cat"}], tokenize=False) for p in PROMPTS]
    batch = tok(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(40):
        loss = model(**batch, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_perplexity_equals_exp_of_model_loss(tok):
    model = tiny_llama(1)
    texts = ["the cat sat on the mat", "a dog"]
    with torch.no_grad():
        losses = [model(**tok(t, return_tensors="pt"), labels=tok(t, return_tensors="pt")["input_ids"]).loss.item()
                  for t in texts]
    # HF's loss is the mean over the n - 1 predicted tokens: 5 and 1 here; the corpus mean weighs by tokens
    out = perplexity(model, tok, texts, batch_size=2)  # one padded batch: padding must not count
    assert out["num_tokens"] == 6
    assert out["mean_nll"] == pytest.approx((5 * losses[0] + 1 * losses[1]) / 6, abs=1e-5)
    assert out["perplexity"] == pytest.approx(math.exp(out["mean_nll"]), rel=1e-9)
    # windows of 3 tokens: "the cat sat | on the mat" scores 2 + 2 tokens, each window on its own
    logp = token_logprobs(model, tok, ["the cat sat on the mat"], max_length=3)
    with torch.no_grad():
        parts = [model(**tok(t, return_tensors="pt"), labels=tok(t, return_tensors="pt")["input_ids"]).loss.item()
                 for t in ("the cat sat", "on the mat")]
    assert len(logp[0]) == 4 and -sum(logp[0]) == pytest.approx(2 * parts[0] + 2 * parts[1], abs=1e-5)
    with pytest.raises(DataError, match="row 2: field 'text'"):
        perplexity(model, tok, ["fine", "  "])


def test_reward_accuracy_with_scorer():
    pairs = [{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": c}],
              "rejected": [{"role": "assistant", "content": r}]}
             for c, r in (("long answer", "no"), ("abc", "xyz"), ("a", "longer"), ("yes indeed", "ok"))]
    seen = []

    def by_length(prompt, responses):
        seen.append(prompt[-1]["content"])
        return [float(len(r)) for r in responses]

    out = reward_accuracy(by_length, pairs)
    assert out["accuracy"] == pytest.approx((2 + 0.5) / 4) and out["ties"] == 1 and seen == ["q"] * 4
    assert out["mean_margin"] == pytest.approx((9 + 0 - 5 + 8) / 4)


def test_win_rate_and_task_accuracy_see_the_trained_policy(tok, cat_policy):
    reference = tiny_llama(0)  # the policy's starting point

    def count_cats(prompt, responses):
        return [float(r.split().count("cat")) for r in responses]

    same = win_rate(reference, reference, tok, PROMPTS, count_cats, max_new_tokens=4)
    assert (same["ties"], same["win_rate"]) == (4, 0.5)  # a policy equal to its reference: exactly even
    out = win_rate(cat_policy, reference, tok, PROMPTS, count_cats, max_new_tokens=4)
    assert [s["policy"].split()[0] for s in out["samples"]] == ["cat"] * 4
    assert out["wins"] == 4 - sum(s["reference"].split()[:1] == ["cat"] for s in out["samples"])
    assert out["win_rate"] == (out["wins"] + 0.5 * out["ties"]) / 4 and out["wins"] >= 3

    def says_cat(prompt, response):
        return response.split()[:1] == ["cat"]

    trained = task_accuracy(cat_policy, tok, PROMPTS, says_cat, max_new_tokens=2)
    before = task_accuracy(reference, tok, PROMPTS, says_cat, max_new_tokens=2)
    assert trained["accuracy"] == 1.0 and trained["correct"] == 4
    assert before["accuracy"] == sum(r.split()[:1] == ["cat"] for r in before["responses"]) / 4 < 1.0

    table = side_by_side(PROMPTS, {"before": before["responses"], "after": trained["responses"]})
    rows = table.splitlines()
    assert rows[0] == "| prompt | before | after |" and len(rows) == 6
    assert rows[2].startswith("| hello | ") and rows[2].endswith(f"| {trained['responses'][0]} |")


def test_cli_eval_perplexity_and_samples(tok, cat_policy, tmp_path, capsys):
    import json

    from align_kit.cli import main

    for name, model in (("base", tiny_llama(0)), ("sft", cat_policy)):
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    (tmp_path / "held_out.txt").write_text("the cat sat on the mat\na dog is red\n")
    out = tmp_path / "ppl.json"
    assert main(["eval", str(tmp_path / "base"), "--task", "perplexity", "--data", str(tmp_path / "held_out.txt"),
                 "--out", str(out)]) == 0
    want = perplexity(tiny_llama(0), tok, ["the cat sat on the mat", "a dog is red"])
    got = json.loads(out.read_text())
    assert got["num_tokens"] == 8 and got["perplexity"] == pytest.approx(want["perplexity"], rel=1e-5)
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "base"), "--task", "samples", "--data", str(tmp_path / "prompts.jsonl"),
                 "--compare", str(tmp_path / "sft"), "--max-new-tokens", "1"]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0] == "| prompt | base | sft |" and all(row.endswith("| cat |") for row in table[2:])
    assert main(["eval", str(tmp_path / "base"), "--task", "win-rate", "--data", str(tmp_path / "prompts.jsonl")]) == 2


def test_cli_eval_reward_and_win_rate_with_a_reward_model(tok, tmp_path, capsys):
    import json

    from transformers import LlamaForSequenceClassification

    from align_kit.cli import main
    from align_kit.scoring import RewardScorer

    torch.manual_seed(3)
    rm = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=1, num_labels=1))
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    for name, seed in (("policy", 0), ("ref", 1)):
        tiny_llama(seed).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    pairs = [{"prompt": p, "chosen": [{"role": "assistant", "content": c}],
              "rejected": [{"role": "assistant", "content": r}]}
             for p, c, r in zip(PROMPTS, ("cat", "the mat", "red", "a dog"), ("dog", "blue", "world is", "sat on"))]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))

    scorer = RewardScorer(tmp_path / "rm")
    margins = [a - b for a, b in (scorer(p["prompt"], [p["chosen"][0]["content"], p["rejected"][0]["content"]])
                                  for p in pairs)]
    out = tmp_path / "reward.json"
    assert main(["eval", str(tmp_path / "rm"), "--task", "reward", "--data", str(tmp_path / "pairs.jsonl"),
                 "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["pairs"] == 4 and got["accuracy"] == (sum(m > 0 for m in margins) + 0.5 * sum(m == 0 for m in margins)) / 4
    assert got["mean_margin"] == pytest.approx(sum(margins) / 4, abs=1e-6)

    out = tmp_path / "win.json"
    assert main(["eval", str(tmp_path / "policy"), "--task", "win-rate", "--data", str(tmp_path / "prompts.jsonl"),
                 "--reference", str(tmp_path / "ref"), "--reward-model", str(tmp_path / "rm"),
                 "--max-new-tokens", "3", "--out", str(out)]) == 0
    win = json.loads(out.read_text())
    assert win["wins"] + win["ties"] + win["losses"] == 4 and len(win["samples"]) == 4
    for s in win["samples"]:  # the judge's scores are the reward model's scores of those very answers
        want = scorer([{"role": "user", "content": s["prompt"]}], [s["policy"], s["reference"]])
        assert [s["policy_score"], s["reference_score"]] == pytest.approx(want, abs=1e-6)


def test_block_perplexity_without_an_added_end_of_document_token(tok):
    """Pretraining adds EOS between documents; the figure without the positions that predict EOS or the token
    after it equals the model's own loss with those labels masked, and the full figure its plain loss."""
    from align_kit.evaluation import block_perplexity

    model = tiny_llama(2)
    eos = tok.eos_token_id
    words = tok.convert_tokens_to_ids("the cat sat on the mat a dog is red".split())
    blocks = [words[:4] + [eos] + words[4:7], [eos] + words[5:10] + [eos, words[0]]]  # 8 tokens each
    out = block_perplexity(model, blocks, without_id=eos, batch_size=2)
    ids = torch.tensor(blocks)
    labels = ids.clone()
    for b, block in enumerate(blocks):
        for t in range(1, len(block)):  # label t is predicted at position t - 1
            if block[t] == eos or block[t - 1] == eos:
                labels[b, t] = -100
    with torch.no_grad():
        full = model(input_ids=ids, labels=ids).loss.item()
        masked = model(input_ids=ids, labels=labels).loss.item()
    assert out["num_tokens"] == 14 and out["tokens_left_out"] == int((labels[:, 1:] == -100).sum()) == 5
    assert out["mean_nll"] == pytest.approx(full, abs=1e-5)
    assert out["mean_nll_without"] == pytest.approx(masked, abs=1e-5)
    assert out["perplexity_without"] == pytest.approx(math.exp(masked), rel=1e-5)
