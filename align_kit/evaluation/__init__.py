"""One evaluation path: the stages, the pipeline's gates (which read the ``eval.json`` the stages write with
these functions) and ``align-kit eval`` all call this package.

- :mod:`~align_kit.evaluation.pairwise`: reward-model accuracy on preference pairs, calibration, the
  longer-answer baseline. **Ties count 1/2** in every pairwise comparison (reward accuracy, DPO/KTO
  likelihood and log-ratio accuracy, win rate); ties are counted and reported beside the accuracy.
- :mod:`~align_kit.evaluation.policy`: a policy on held-out pairs (summed response log-probs; DPO and KTO).
- :mod:`~align_kit.evaluation.perplexity`: perplexity of texts and of pretraining blocks, also without the
  end-of-document tokens a stage added (like with like against the base model).
- :mod:`~align_kit.evaluation.generated`: greedy answers, verifier accuracy, win rate, side-by-side samples.
  Sampled (temperature) metrics of RL policies are in :mod:`align_kit.ppo.evaluate`, which generates with the
  rollout's own sampler.
- :mod:`~align_kit.evaluation.runs`: what a run folder says about how to evaluate it (model folder, the
  training ``max_length``).

The formulas themselves are ``evaluate`` modules in :mod:`align_kit.metrics`.
"""

from align_kit.evaluation.generated import (
    generate_responses,
    prompts_from_records,
    side_by_side,
    start_engine,
    task_accuracy,
    win_rate,
)
from align_kit.evaluation.pairwise import (
    TIE_RULE,
    length_baseline_accuracy,
    pairwise_accuracy,
    pairwise_metrics,
    reward_accuracy,
    reward_model_accuracy,
)
from align_kit.evaluation.perplexity import block_perplexity, perplexity, token_logprobs
from align_kit.evaluation.policy import PolicyEval, completion_logps, preference_eval

__all__ = ["TIE_RULE", "PolicyEval", "block_perplexity", "completion_logps", "generate_responses",
           "length_baseline_accuracy", "pairwise_accuracy", "pairwise_metrics", "perplexity", "preference_eval",
           "prompts_from_records", "reward_accuracy", "reward_model_accuracy", "side_by_side", "start_engine",
           "task_accuracy", "token_logprobs", "win_rate"]
