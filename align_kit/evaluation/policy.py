"""A policy on held-out preference pairs (DPO, KTO): summed response log-probs, likelihood and log-ratio
accuracy (ties count 1/2, see :mod:`align_kit.evaluation.pairwise`), and the verifier's accuracy of greedy
answers to the same prompts."""

from __future__ import annotations

from dataclasses import dataclass

from align_kit.evaluation.pairwise import pairwise_accuracy


@dataclass
class PolicyEval:
    """Held-out numbers of a policy. Log-probs are summed over response tokens, one entry per pair."""

    chosen_logps: list[float]
    rejected_logps: list[float]
    logratio_accuracy: float | None = None
    verifier_accuracy: float | None = None

    @property
    def likelihood_accuracy(self) -> float:
        """Share of pairs where the policy itself gives the chosen response the higher log-probability."""
        return pairwise_accuracy(self.chosen_logps, self.rejected_logps)["accuracy"]

    def summary(self) -> dict:
        if not self.chosen_logps:  # no held-out pairs: no accuracy to report (not 0)
            return {"pairs": 0}
        out = {"pairs": len(self.chosen_logps), "likelihood_accuracy": round(self.likelihood_accuracy, 4)}
        if self.logratio_accuracy is not None:
            out["logratio_accuracy"] = round(self.logratio_accuracy, 4)
        if self.verifier_accuracy is not None:
            out["verifier_accuracy"] = round(self.verifier_accuracy, 4)
        return out


def logit_batches(lengths: list[int], vocab: int, budget: int, max_rows: int = 32) -> list[tuple[int, int]]:
    """Consecutive ``(start, end)`` row ranges whose padded logits (rows x longest x vocab) fit in ``budget``
    floats; a row longer than the budget gets a batch of its own.

    >>> logit_batches([10, 10, 30, 5], vocab=100, budget=4000)
    [(0, 2), (2, 3), (3, 4)]
    """
    batches, start = [], 0
    while start < len(lengths):
        end, width = start + 1, lengths[start]
        while end < len(lengths) and end - start < max_rows:
            wider = max(width, lengths[end])
            if (end - start + 1) * wider * vocab > budget:
                break
            end, width = end + 1, wider
        batches.append((start, end))
        start = end
    return batches


# Floats of logits per evaluation forward (256 MiB in float32). The held-out log-probs need the full
# [rows x length x vocabulary] logits of a plain forward: 32 pairs of 800 tokens at a 32,000 vocabulary
# would be 3.3 GB, plus as much again for the log-softmax, far above the training step's peak.
EVAL_LOGIT_BUDGET = 2**26


def completion_logps(model, tokenizer, prompts: list[list[dict]], completions: list[list[dict]],
                     batch_size: int = 32, logit_budget: int = EVAL_LOGIT_BUDGET) -> list[float]:
    """Sum of log pi(token) over each completion's tokens, tokenised as TRL's DPOTrainer does: the
    completion starts where the templated prompt (with generation prompt) and prompt+completion diverge.
    Rows go through the model in batches of at most ``batch_size`` whose logits fit in ``logit_budget``."""
    import torch

    seqs = []
    for prompt, completion in zip(prompts, completions):
        p_ids = list(tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                                   return_dict=True)["input_ids"])
        full = list(tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"])
        start = next((i for i, (a, b) in enumerate(zip(p_ids, full)) if a != b), min(len(p_ids), len(full)))
        seqs.append((full, start))
    device = next(model.parameters()).device
    vocab = model.get_output_embeddings().weight.shape[0]
    out: list[float] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i, j in logit_batches([len(s) for s, _ in seqs], vocab, logit_budget, batch_size):
            chunk = seqs[i:j]
            width = max(len(s) for s, _ in chunk)
            ids = torch.tensor([s + [tokenizer.pad_token_id] * (width - len(s)) for s, _ in chunk], device=device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s, _ in chunk], device=device)
            # completion mask over target positions 1..width-1 (token t is predicted from position t-1)
            target = torch.tensor([[1 if start <= t < len(s) else 0 for t in range(1, width)] for s, start in chunk],
                                  device=device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            # the target's logit minus the log-normaliser: one logits-sized temporary, not a full log-softmax
            logp = logits.gather(-1, ids[:, 1:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
            del logits
            out += (logp * target).sum(-1).tolist()
    model.train(was_training)
    return out


def preference_eval(model, tokenizer, pairs: list[dict], verifier: str | None = None, max_new_tokens: int = 16,
                    reference: PolicyEval | None = None, engine=None) -> PolicyEval:
    """Log-probs of held-out pairs, log-ratio accuracy against ``reference`` (the same pairs scored by the
    starting policy, which is the DPO reference), and the accuracy of greedy answers under ``verifier``
    (``module:function``), generated by transformers or by a vLLM ``engine`` (given the model's weights first)."""
    if not pairs:
        return PolicyEval([], [])
    prompts = [p["prompt"] for p in pairs]
    chosen = completion_logps(model, tokenizer, prompts, [p["chosen"] for p in pairs])
    rejected = completion_logps(model, tokenizer, prompts, [p["rejected"] for p in pairs])
    result = PolicyEval(chosen, rejected)
    if reference is not None:  # chosen above rejected relative to the reference: log-ratio differences
        result.logratio_accuracy = pairwise_accuracy(
            [c - rc for c, rc in zip(chosen, reference.chosen_logps)],
            [r - rr for r, rr in zip(rejected, reference.rejected_logps)])["accuracy"]
    if verifier:
        from align_kit.evaluation.generated import task_accuracy
        from align_kit.generation import load_callable

        result.verifier_accuracy = task_accuracy(model, tokenizer, prompts, load_callable(verifier),
                                                 max_new_tokens, engine=engine)["accuracy"]
    return result
