"""Evaluation metrics shipped as ``evaluate`` modules (``<name>/<name>.py``), loadable offline.

>>> sorted(METRICS)
['reward_accuracy', 'token_perplexity', 'verifier_accuracy', 'win_rate']
>>> metric_path("win_rate").name
'win_rate'

Users' own ``evaluate`` code can load them by path: ``evaluate.load(str(metric_path("win_rate")))``.
"""

from __future__ import annotations

from pathlib import Path

from align_kit.errors import ConfigError

HERE = Path(__file__).resolve().parent
METRICS = ("token_perplexity", "reward_accuracy", "win_rate", "verifier_accuracy")


def metric_path(name: str) -> Path:
    """Folder of a shipped metric module (what ``evaluate.load`` takes)."""
    if name not in METRICS:
        raise ConfigError(f"metric {name!r}: expected one of {', '.join(METRICS)}")
    return HERE / name


def load_metric(name: str, **kwargs):
    """``evaluate.load`` of a shipped metric by its local path: no Hub access, works with HF_HUB_OFFLINE=1."""
    import evaluate

    return evaluate.load(str(metric_path(name)), **kwargs)


def compute(name: str, **inputs) -> dict:
    """Load a shipped metric and compute it in one call (inputs as the metric's ``compute`` takes them)."""
    return load_metric(name).compute(**inputs)
