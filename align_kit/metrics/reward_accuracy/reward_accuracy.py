"""Pairwise accuracy and margin of a reward model on preference pairs (an ``evaluate`` metric).

Accuracy is the share of pairs whose chosen response scores above the rejected one; a tie counts 1/2, so a
reward model that gives every response the same score gets the chance level 0.5 rather than 0 or an
undefined value. The margin ``chosen - rejected`` shows how sure the model is, and its mean can grow while
accuracy stays flat (the model grows more confident on pairs it already ranked right).

Example::

    >>> acc = evaluate.load("align_kit/metrics/reward_accuracy")                           # doctest: +SKIP
    >>> acc.compute(chosen_scores=[1.0, 0.2, 0.0, 3.0], rejected_scores=[0.0, 0.7, 0.0, 1.0])  # doctest: +SKIP
    {'accuracy': 0.625, 'mean_margin': 0.625, 'pairs': 4, 'ties': 1}
"""

import datasets
import evaluate

_CITATION = """\
@article{bai2022training,
  title={Training a Helpful and Harmless Assistant with Reinforcement Learning from Human Feedback},
  author={Bai, Yuntao and others}, journal={arXiv:2204.05862}, year={2022}}
"""

_INPUTS = """
Args:
    chosen_scores (list of float): reward of the preferred response of each pair.
    rejected_scores (list of float): reward of the dispreferred response of the same pair.
Returns:
    accuracy (float): (pairs with chosen > rejected + ties / 2) / pairs.
    mean_margin (float): mean of chosen - rejected.
    pairs (int), ties (int).
"""


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _INPUTS)
class RewardAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation=_CITATION, inputs_description=_INPUTS,
            features=datasets.Features({"chosen_scores": datasets.Value("float64"),
                                        "rejected_scores": datasets.Value("float64")}))

    def _compute(self, chosen_scores, rejected_scores):
        if not chosen_scores:
            raise ValueError("reward_accuracy needs at least one pair")
        margins = [c - r for c, r in zip(chosen_scores, rejected_scores)]
        right = sum(m > 0 for m in margins)
        ties = sum(m == 0 for m in margins)
        return {"accuracy": (right + 0.5 * ties) / len(margins), "mean_margin": sum(margins) / len(margins),
                "pairs": len(margins), "ties": ties}
