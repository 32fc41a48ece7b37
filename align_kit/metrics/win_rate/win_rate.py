"""Win rate of a policy against a reference, judged by a reward model's scores (an ``evaluate`` metric).

For each prompt the judge scores the policy's answer and the reference's answer. A win counts 1, a tie 1/2
and a loss 0, so a policy identical to its reference scores exactly 0.5: ties are the judge saying "no
difference", and dropping them would inflate the rate of a policy that changed little. Scores within
``tie_margin`` of each other are ties (use it when the judge's score noise is known).

Example::

    >>> import evaluate
    >>> win_rate = evaluate.load("align_kit/metrics/win_rate")                        # doctest: +SKIP
    >>> win_rate.compute(policy_scores=[2.0, 0.5, 1.0], reference_scores=[1.0, 0.5, 3.0])  # doctest: +SKIP
    {'win_rate': 0.5, 'wins': 1, 'ties': 1, 'losses': 1, 'mean_score_delta': -0.3333333333333333}
"""

import datasets
import evaluate

_CITATION = """\
@article{ouyang2022training,
  title={Training language models to follow instructions with human feedback},
  author={Ouyang, Long and others}, journal={NeurIPS}, year={2022}}
"""

_INPUTS = """
Args:
    policy_scores (list of float): judge (reward model) score of the policy's response to each prompt.
    reference_scores (list of float): judge score of the reference model's response to the same prompts.
    tie_margin (float, optional): |policy - reference| <= tie_margin counts as a tie. Default 0.0.
Returns:
    win_rate (float): (wins + ties / 2) / n.
    wins, ties, losses (int): counts.
    mean_score_delta (float): mean of policy - reference scores.
"""


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _INPUTS)
class WinRate(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation=_CITATION, inputs_description=_INPUTS,
            features=datasets.Features({"policy_scores": datasets.Value("float64"),
                                        "reference_scores": datasets.Value("float64")}))

    def _compute(self, policy_scores, reference_scores, tie_margin=0.0):
        if not policy_scores:
            raise ValueError("win_rate needs at least one pair of scores")
        if tie_margin < 0:
            raise ValueError(f"tie_margin must be >= 0, got {tie_margin}")
        deltas = [p - r for p, r in zip(policy_scores, reference_scores)]
        wins = sum(d > tie_margin for d in deltas)
        losses = sum(d < -tie_margin for d in deltas)
        ties = len(deltas) - wins - losses
        return {"win_rate": (wins + 0.5 * ties) / len(deltas), "wins": wins, "ties": ties, "losses": losses,
                "mean_score_delta": sum(deltas) / len(deltas)}
