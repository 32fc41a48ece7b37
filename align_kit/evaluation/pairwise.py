"""Pairwise comparisons: a reward model's accuracy on preference pairs, its calibration, the length baseline.

**The tie rule** (one rule, everywhere a pair is compared: the reward stage's ``eval.json``, the pipeline gate
that reads it, ``align-kit eval --task reward``, DPO/KTO's likelihood and log-ratio accuracies, win rate):
a pair counts 1 when chosen scores above rejected, 0 when below, and **1/2 when they tie**. A model that
cannot tell the two answers apart then scores the chance level 0.5, not 0 (which would call it worse than a
coin) nor 1. Ties are also counted and reported (``ties``), so an accuracy made of ties is visible. The
arithmetic lives once, in the ``reward_accuracy`` metric of :mod:`align_kit.metrics`; this module calls it.
Ties are exact equality of the scores: with left truncation at ``max_length`` two answers that differ only
in tokens cut off score exactly the same, which is why evaluation must use the training ``max_length``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

from align_kit.errors import DataError
from align_kit.metrics import compute

ScoreFn = Callable[[list[dict], list[str]], list[float]]
TIE_RULE = "a tie counts 1/2"


def pairwise_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> dict:
    """``accuracy`` (ties count 1/2), ``ties``, ``pairs`` and ``mean_margin`` of chosen minus rejected scores.

    >>> pairwise_accuracy([1.0, 0.2, 0.0, 3.0], [0.0, 0.7, 0.0, 1.0])
    {'accuracy': 0.625, 'mean_margin': 0.625, 'pairs': 4, 'ties': 1}
    """
    if len(chosen) != len(rejected) or not chosen:
        raise DataError("scores", None, None, f"{len(chosen)} chosen and {len(rejected)} rejected scores",
                        "the same non-zero number of chosen and rejected scores")
    return compute("reward_accuracy", chosen_scores=list(chosen), rejected_scores=list(rejected))


def calibration(margins: Sequence[float], bins: int = 10) -> dict:
    """ECE and the reliability curve of the Bradley-Terry preference probability ``sigmoid(margin)``.

    Each pair is counted in both orders, ``(p, 1)`` and ``(1 - p, 0)``: with only the first order every outcome
    is 1 and any over-confident model would look calibrated. Bins split [0, 1] evenly; ECE is the
    bin-size-weighted gap between mean predicted probability and observed frequency. A tie (p = 0.5) lands
    once in each half, observed 1/2 on average: the tie rule again.

    >>> c = calibration([2.0, 1.0, -1.0], bins=2)
    >>> [(b["count"], b["observed"]) for b in c["reliability"]], c["ece"]
    ([(3, 0.333), (3, 0.667)], 0.1143)
    """
    probs = [1.0 / (1.0 + math.exp(-max(min(m, 60.0), -60.0))) for m in margins]
    points = [(p, 1.0) for p in probs] + [(1.0 - p, 0.0) for p in probs]
    curve, ece = [], 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [(p, y) for p, y in points if lo <= p < hi or (b == bins - 1 and p == 1.0)]
        if not inside:
            continue
        conf = sum(p for p, _ in inside) / len(inside)
        freq = sum(y for _, y in inside) / len(inside)
        ece += len(inside) / len(points) * abs(conf - freq)
        curve.append({"bin": [lo, hi], "count": len(inside), "predicted": round(conf, 3), "observed": round(freq, 3)})
    return {"ece": round(ece, 4), "reliability": curve}


def pairwise_metrics(chosen: Sequence[float], rejected: Sequence[float], bins: int = 10) -> dict:
    """Pairwise accuracy (ties count 1/2), ties, mean margin, ECE and the reliability curve.

    >>> m = pairwise_metrics([2.0, 1.0, 0.0], [0.0, 0.0, 0.0], bins=2)
    >>> round(m["accuracy"], 4), m["ties"], m["mean_margin"], m["pairs"], m["tie_rule"]
    (0.8333, 1, 1.0, 3, 'a tie counts 1/2')
    """
    acc = pairwise_accuracy(chosen, rejected)
    return {"pairs": acc["pairs"], "accuracy": acc["accuracy"], "ties": acc["ties"],
            "tie_rule": TIE_RULE, "mean_margin": acc["mean_margin"],
            **calibration([c - r for c, r in zip(chosen, rejected)], bins)}


def length_baseline_accuracy(pairs: Sequence[dict]) -> float:
    """Accuracy of "prefer the longer answer" (ties count 1/2), the baseline a reward model must beat.

    >>> a = lambda t: [{"role": "assistant", "content": t}]
    >>> length_baseline_accuracy([{"chosen": a("long one"), "rejected": a("no")}, {"chosen": a("x"), "rejected": a("y")}])
    0.75
    """
    lengths = [(len(p["chosen"][-1]["content"]), len(p["rejected"][-1]["content"])) for p in pairs]
    return round(pairwise_accuracy([float(c) for c, _ in lengths], [float(r) for _, r in lengths])["accuracy"], 4)


def score_pairs(score_fn: ScoreFn, pairs: Sequence[dict]) -> tuple[list[float], list[float]]:
    """``(chosen scores, rejected scores)`` of preference pairs, each pair's two answers scored in one call."""
    from align_kit.evaluation.generated import progress

    chosen, rejected = [], []
    for pair in progress(pairs, "reward pairs"):
        c, r = score_fn(pair["prompt"], [pair["chosen"][-1]["content"], pair["rejected"][-1]["content"]])
        chosen.append(c)
        rejected.append(r)
    return chosen, rejected


def reward_accuracy(score_fn: ScoreFn, pairs: Sequence[dict], bins: int = 10) -> dict:
    """Everything about a scorer on preference pairs: :func:`pairwise_metrics`, the longer-answer baseline,
    and the per-pair ``chosen_scores`` / ``rejected_scores``.

    ``pairs`` use the Preference schema: ``{"prompt": [messages], "chosen": [assistant msg], "rejected": [...]}``.
    """
    chosen, rejected = score_pairs(score_fn, pairs)
    return {**pairwise_metrics(chosen, rejected, bins), "length_baseline_accuracy": length_baseline_accuracy(pairs),
            "chosen_scores": chosen, "rejected_scores": rejected}


def reward_model_accuracy(model_dir: str | Path, pairs: Sequence[dict], max_length: int | None,
                          bins: int = 10) -> dict:
    """:func:`reward_accuracy` of the saved reward model in ``model_dir``, each sequence cut to its last
    ``max_length`` tokens as in training. The reward stage (on what it shipped) and ``align-kit eval --task
    reward`` both call this, so one model gets one accuracy."""
    from align_kit.scoring import RewardScorer

    return {**reward_accuracy(RewardScorer(model_dir, max_length=max_length), pairs, bins),
            "max_length": max_length}
