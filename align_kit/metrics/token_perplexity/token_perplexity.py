"""Perplexity from per-token log-likelihoods (an ``evaluate`` metric that needs no model).

``perplexity = exp(-sum of all token log-probs / number of tokens)``: the token-weighted mean negative
log-likelihood of the whole corpus, exponentiated. Averaging per-sequence perplexities instead would weigh a
5-token line as much as a 500-token article and, since exp is convex, report a larger number; that mean is
returned too (``mean_sequence_perplexity``) because some papers report it, but it is not the headline.
Log-probs are natural-log (what ``log_softmax`` gives). Pass only the scored tokens: the first token of a
sequence has no prediction and padding is not text.

Example::

    >>> ppl = evaluate.load("align_kit/metrics/token_perplexity")                          # doctest: +SKIP
    >>> ppl.compute(logprobs=[[-1.0, -3.0], [-2.0]])["perplexity"]  # exp(6 / 3)         # doctest: +SKIP
    7.38905609893065
"""

import math

import datasets
import evaluate

_CITATION = """\
@book{jurafsky2024speech, title={Speech and Language Processing (3rd ed. draft)},
  author={Jurafsky, Daniel and Martin, James H.}, year={2024}, note={Chapter 3, Evaluating language models}}
"""

_INPUTS = """
Args:
    logprobs (list of list of float): for each sequence, the natural-log probability of each scored token.
Returns:
    perplexity (float): exp(token-weighted mean negative log-likelihood).
    mean_nll (float): token-weighted mean negative log-likelihood (nats per token).
    num_tokens (int), num_sequences (int).
    mean_sequence_perplexity (float): mean of per-sequence perplexities (not token-weighted).
"""


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _INPUTS)
class TokenPerplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation=_CITATION, inputs_description=_INPUTS,
            features=datasets.Features({"logprobs": datasets.Sequence(datasets.Value("float64"))}))

    def _compute(self, logprobs):
        seqs = [list(s) for s in logprobs if len(s)]
        tokens = sum(len(s) for s in seqs)
        if not tokens:
            raise ValueError("token_perplexity needs at least one scored token")
        if any(lp > 1e-9 for s in seqs for lp in s):
            raise ValueError("log-probabilities must be <= 0 (pass log p, not -log p or p)")
        nll = -sum(sum(s) for s in seqs)
        return {"perplexity": math.exp(nll / tokens), "mean_nll": nll / tokens, "num_tokens": tokens,
                "num_sequences": len(seqs),
                "mean_sequence_perplexity": sum(math.exp(-sum(s) / len(s)) for s in seqs) / len(seqs)}
