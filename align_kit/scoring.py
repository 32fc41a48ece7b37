"""Score responses with a trained reward model (its accuracy on pairs: ``align_kit.evaluation.pairwise``).

A reward checkpoint is a plain ``AutoModelForSequenceClassification`` (``num_labels=1``) with its tokenizer and
chat template saved beside it, so :func:`score` needs nothing from align_kit's recipe to run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from align_kit.errors import ConfigError, DataError, describe


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
