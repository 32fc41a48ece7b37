"""Task accuracy with a verifier: the share of predictions a checker accepts (an ``evaluate`` metric).

``verifier`` picks the checker:

- ``"exact_match"`` (default): equal after stripping surrounding whitespace;
- ``"normalized_match"``: equal after lower-casing and collapsing whitespace;
- ``"last_number"``: the last number in the prediction equals the reference's number (math answers);
- ``"package.module:function"``: any importable ``function(reference, prediction) -> bool``. With
  align_kit's quickstart tasks the reference is the prompt: ``align_kit.quickstart.tasks:verify``.

Example::

    >>> acc = evaluate.load("align_kit/metrics/verifier_accuracy")                        # doctest: +SKIP
    >>> acc.compute(predictions=["7", " abc ", "x"], references=["7", "abc", "y"])        # doctest: +SKIP
    {'accuracy': 0.6666666666666666, 'correct': 2, 'total': 3}
"""

import importlib
import re

import datasets
import evaluate

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")

_INPUTS = """
Args:
    predictions (list of str): model outputs.
    references (list of str): expected answers (or, for a custom verifier, whatever it takes first).
    verifier (str, optional): exact_match | normalized_match | last_number | module:function.
Returns:
    accuracy (float): correct / total.  correct (int), total (int).
"""


def _last_number(text):
    found = _NUMBER.findall(text.replace(",", ""))
    return float(found[-1]) if found else None


BUILTIN = {
    "exact_match": lambda ref, pred: pred.strip() == ref.strip(),
    "normalized_match": lambda ref, pred: " ".join(pred.lower().split()) == " ".join(ref.lower().split()),
    "last_number": lambda ref, pred: _last_number(pred) is not None and _last_number(pred) == _last_number(ref),
}


def resolve_verifier(spec):
    """A builtin verifier by name, a callable as given, or ``module:function`` imported."""
    if callable(spec):
        return spec
    if spec in BUILTIN:
        return BUILTIN[spec]
    module, sep, name = str(spec).partition(":")
    if not sep:
        raise ValueError(f"verifier {spec!r}: expected one of {', '.join(BUILTIN)} or module:function")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"verifier {spec!r}: cannot import it ({exc})") from None


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _INPUTS)
class VerifierAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__, citation="", inputs_description=_INPUTS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references, verifier="exact_match"):
        if not predictions:
            raise ValueError("verifier_accuracy needs at least one prediction")
        check = resolve_verifier(verifier)
        correct = sum(bool(check(ref, pred)) for pred, ref in zip(predictions, references))
        return {"accuracy": correct / len(predictions), "correct": correct, "total": len(predictions)}
