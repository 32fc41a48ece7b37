"""Score responses with a trained reward model, and measure a reward model on held-out pairs.

A reward checkpoint is a plain ``AutoModelForSequenceClassification`` (``num_labels=1``) with its tokenizer and
chat template saved beside it, so :func:`score` needs nothing from align_kit's recipe to run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from align_kit.errors import ConfigError, DataError, describe


def pairwise_metrics(chosen: Sequence[float], rejected: Sequence[float], bins: int = 10) -> dict:
    """Pairwise accuracy, mean margin and a reliability curve of the Bradley-Terry preference probability.

    The model predicts ``p = sigmoid(r_chosen - r_rejected)`` that the first response is preferred. Each pair is
    counted in both orders, ``(p, 1)`` and ``(1 - p, 0)``: with only the first order every outcome is 1 and any
    over-confident model would look calibrated. Bins split [0, 1] evenly; ECE is the bin-size-weighted gap
    between mean predicted probability and observed frequency.

    >>> m = pairwise_metrics([2.0, 1.0, 0.0], [0.0, 0.0, 1.0], bins=2)
    >>> m["accuracy"], round(m["mean_margin"], 3), m["pairs"]
    (0.667, 0.667, 3)
    >>> [(b["count"], b["observed"]) for b in m["reliability"]]
    [(3, 0.333), (3, 0.667)]
    """
    if len(chosen) != len(rejected) or not chosen:
        raise DataError("scores", None, None, f"{len(chosen)} chosen and {len(rejected)} rejected scores",
                        "the same non-zero number of chosen and rejected scores")
    margins = [c - r for c, r in zip(chosen, rejected)]
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
    return {"pairs": len(margins), "accuracy": round(sum(m > 0 for m in margins) / len(margins), 3),
            "mean_margin": sum(margins) / len(margins), "ece": round(ece, 4), "reliability": curve}


def length_baseline_accuracy(pairs: Sequence[dict]) -> float:
    """Accuracy of "prefer the longer answer" (ties count half), the baseline a reward model must beat.

    >>> a = lambda t: [{"role": "assistant", "content": t}]
    >>> length_baseline_accuracy([{"chosen": a("long one"), "rejected": a("no")}, {"chosen": a("x"), "rejected": a("y")}])
    0.75
    """
    total = 0.0
    for pair in pairs:
        c, r = len(pair["chosen"][-1]["content"]), len(pair["rejected"][-1]["content"])
        total += 1.0 if c > r else 0.5 if c == r else 0.0
    return round(total / len(pairs), 4)


class RewardScorer:
    """A loaded reward model; ``scorer(prompt, responses)`` returns one float per response."""

    def __init__(self, model_dir: str | Path, max_length: int | None = None, batch_size: int = 16):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").exists():
            raise ConfigError(f"{model_dir}: no config.json; expected a reward model directory saved by align-kit")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        if self.model.config.num_labels != 1:
            raise ConfigError(f"{model_dir}: num_labels={self.model.config.num_labels}; a reward model has 1")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.max_length = max_length or getattr(self.tokenizer, "model_max_length", None)
        self.batch_size = batch_size

    def ids(self, prompt: list[dict], response: str) -> list[int]:
        """Token ids of prompt + response, rendered exactly as the reward trainer rendered them."""
        messages = prompt + [{"role": "assistant", "content": response}]
        if self.tokenizer.chat_template:
            out = self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)
            ids = list(out["input_ids"])
        else:  # plain-text models: the trainer appended EOS to non-conversational text too
            text = "".join(m["content"] for m in messages) + (self.tokenizer.eos_token or "")
            ids = self.tokenizer(text)["input_ids"]
        if self.max_length and len(ids) > self.max_length:
            ids = ids[-self.max_length:]  # keep the response end: the score is read at the last token
        return ids

    def __call__(self, prompt: str | list[dict], responses: Sequence[str]) -> list[float]:
        import torch

        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        if not responses:
            raise DataError("score", None, "responses", describe(list(responses)), "at least one response")
        seqs = [self.ids(prompt, r) for r in responses]
        scores: list[float] = []
        pad = self.tokenizer.pad_token_id
        for i in range(0, len(seqs), self.batch_size):
            chunk = seqs[i:i + self.batch_size]
            width = max(len(s) for s in chunk)
            # right padding: the classification head reads the last non-pad token of each row
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in chunk])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in chunk])
            with torch.no_grad():
                logits = self.model(input_ids=ids, attention_mask=mask).logits
            scores.extend(logits[:, 0].float().tolist())
        return scores


def score(model_dir: str | Path, prompt: str | list[dict], responses: Sequence[str]) -> list[float]:
    """Scores of ``responses`` to ``prompt`` (a string or a list of messages) from the reward model in ``model_dir``."""
    return RewardScorer(model_dir)(prompt, responses)
