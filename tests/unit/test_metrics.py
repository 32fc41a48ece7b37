"""The shipped ``evaluate`` metric modules load offline by path and compute hand-checked values."""

from __future__ import annotations

import math

import evaluate
import pytest

from align_kit.errors import ConfigError
from align_kit.metrics import METRICS, compute, load_metric, metric_path


def test_every_metric_loads_offline_as_evaluate_module(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in METRICS:
        metric = load_metric(name)
        assert isinstance(metric, evaluate.Metric) and metric.name == name
        assert metric.info.inputs_description.strip().startswith("Args:")
    # the plain evaluate API works the same way, which is what users' own code does
    direct = evaluate.load(str(metric_path("win_rate")))
    assert direct.compute(policy_scores=[1.0], reference_scores=[0.0])["win_rate"] == 1.0
    with pytest.raises(ConfigError, match="expected one of token_perplexity"):
        metric_path("bleu")


def test_token_perplexity_is_token_weighted():
    # sequence A: 2 tokens, NLL 1 + 3 = 4; sequence B: 1 token, NLL 2. Corpus: 6 nats / 3 tokens = 2 per token.
    out = compute("token_perplexity", logprobs=[[-1.0, -3.0], [-2.0]])
    assert out["mean_nll"] == pytest.approx(2.0) and out["perplexity"] == pytest.approx(math.exp(2.0))
    assert out["num_tokens"] == 3 and out["num_sequences"] == 2
    # per-sequence mean weighs B like A: (e^2 + e^2) / 2 here, different data below shows the gap
    skew = compute("token_perplexity", logprobs=[[-0.1] * 9, [-4.0]])
    assert skew["perplexity"] == pytest.approx(math.exp((0.9 + 4.0) / 10))
    assert skew["mean_sequence_perplexity"] == pytest.approx((math.exp(0.1) + math.exp(4.0)) / 2)
    with pytest.raises(ValueError, match="must be <= 0"):
        compute("token_perplexity", logprobs=[[0.5]])


def test_reward_accuracy_counts_ties_half():
    out = compute("reward_accuracy", chosen_scores=[1.0, 0.2, 0.0, 3.0], rejected_scores=[0.0, 0.7, 0.0, 1.0])
    # right: pairs 1 and 4; wrong: pair 2; tie: pair 3 -> (2 + 0.5) / 4
    assert out == {"accuracy": 0.625, "mean_margin": pytest.approx((1.0 - 0.5 + 0.0 + 2.0) / 4), "pairs": 4,
                   "ties": 1}
    constant = compute("reward_accuracy", chosen_scores=[0.3] * 5, rejected_scores=[0.3] * 5)
    assert constant["accuracy"] == 0.5 and constant["mean_margin"] == 0.0


def test_win_rate_with_ties_and_margin():
    out = compute("win_rate", policy_scores=[2.0, 0.5, 1.0, 1.05], reference_scores=[1.0, 0.5, 3.0, 1.0])
    assert (out["wins"], out["ties"], out["losses"]) == (2, 1, 1) and out["win_rate"] == 0.625
    assert out["mean_score_delta"] == pytest.approx((1.0 + 0.0 - 2.0 + 0.05) / 4)
    loose = load_metric("win_rate").compute(policy_scores=[2.0, 0.5, 1.0, 1.05],
                                            reference_scores=[1.0, 0.5, 3.0, 1.0], tie_margin=0.1)
    assert (loose["wins"], loose["ties"], loose["losses"]) == (1, 2, 1) and loose["win_rate"] == 0.5


def test_verifier_accuracy_builtin_and_imported_verifiers():
    preds, refs = ["7", " abc ", "ABC", "x"], ["7", "abc", "abc", "y"]
    assert compute("verifier_accuracy", predictions=preds, references=refs) == \
        {"accuracy": 0.5, "correct": 2, "total": 4}
    assert compute("verifier_accuracy", predictions=preds, references=refs,
                   verifier="normalized_match")["correct"] == 3
    math_out = compute("verifier_accuracy", predictions=["so the answer is 1,200.", "42 or 41", "none"],
                       references=["1200", "42", "3"], verifier="last_number")
    assert math_out["correct"] == 1  # "42 or 41" ends with 41
    # an importable module:function verifier, called as verify(reference, prediction)
    imported = compute("verifier_accuracy", predictions=["a", "B"], references=["A", "b"],
                       verifier="operator:ne")
    assert imported["correct"] == 2
    with pytest.raises(ValueError, match="cannot import"):
        compute("verifier_accuracy", predictions=["a"], references=["a"], verifier="no_such_mod:f")
