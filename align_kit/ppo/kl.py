"""KL to the reference policy: per-token estimators and the KL-coefficient controllers.

Shapes: ``B`` responses in a batch, ``T`` response tokens. Log-probabilities are those of the
sampled response tokens, ``logprobs[b, t] = log pi(y_t | x, y_<t)``.

The three estimators follow Schulman, "Approximating KL divergence" (2020). With samples drawn
from the policy ``p`` and the reference ``q`` (``log r = log q - log p``):

- ``k1 = log p - log q``: unbiased for KL(p||q), high variance, can be negative per token;
- ``k2 = 0.5 * (log p - log q)^2``: biased, low variance, always >= 0;
- ``k3 = (r - 1) - log r``: unbiased and always >= 0 (the one to log and to limit on).
"""

from __future__ import annotations

import math

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL(policy || reference) estimate.

    Args:
        logprobs: ``(B, T)`` policy log-probs of the sampled tokens.
        ref_logprobs: ``(B, T)`` reference log-probs of the same tokens.
        estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (see the module docstring).

    Returns:
        ``(B, T)`` estimates; padded positions are whatever the inputs hold there, so mask them.

    >>> lp, ref = torch.tensor([[-1.0]]), torch.tensor([[-1.5]])
    >>> kl_per_token(lp, ref, "k1").item(), kl_per_token(lp, ref, "k2").item()
    (0.5, 0.125)
    >>> round(kl_per_token(lp, ref, "k3").item(), 6)  # r = e^-0.5: (0.606531 - 1) + 0.5
    0.106531
    """
    log_ratio = logprobs - ref_logprobs  # log p - log q
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        log_r = -log_ratio  # log(q/p)
        # expm1 keeps precision when r is close to 1, where (r - 1) - log r is a tiny difference.
        return torch.expm1(log_r) - log_r
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}")


class FixedKLController:
    """A constant KL coefficient ``beta``.

    >>> c = FixedKLController(0.05); c.update(10.0, 64); c.kl_coef
    0.05
    """

    def __init__(self, kl_coef: float):
        self.kl_coef = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Does nothing: the coefficient is fixed."""

    def state_dict(self) -> dict:
        return {"kind": "fixed", "kl_coef": self.kl_coef}

    def load_state_dict(self, state: dict) -> None:
        self.kl_coef = float(state["kl_coef"])


class AdaptiveKLController:
    """Proportional controller of Ziegler et al. 2019 ("Fine-tuning LMs from human preferences", eq. 2).

    ``error = clip(KL / target - 1, -0.2, 0.2)`` and ``beta *= 1 + error * n_steps / horizon``, where
    ``n_steps`` is the number of episodes (responses) seen since the last update. The clip keeps one
    noisy batch from moving beta by more than 20% of ``n_steps / horizon``.

    >>> c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    >>> c.update(9.0, 256); round(c.kl_coef, 8)   # error = min(9/6 - 1, 0.2) = 0.2 -> 0.1 * (1 + 0.2*256/1e4)
    0.100512
    >>> c.update(6.0, 256); round(c.kl_coef, 8)   # on target: unchanged
    0.100512
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"KL target and horizon must be positive, got {target} and {horizon}")
        self.kl_coef = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move ``kl_coef`` towards the value that keeps ``current_kl`` at ``target``."""
        if not math.isfinite(current_kl):
            return  # the NaN guard in the loop reports this; never poison the coefficient
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.kl_coef *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"kind": "adaptive", "kl_coef": self.kl_coef, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.kl_coef = float(state["kl_coef"])
        self.target = float(state["target"])
        self.horizon = float(state["horizon"])
