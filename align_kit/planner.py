"""Scaling-law planner: how many parameters and tokens a compute budget should buy, and what loss to expect.

Three laws, kept apart because they answer different questions:

- **Chinchilla approach 1** (Hoffmann et al. 2022, Table 3): compute-optimal allocation measured from the
  minimum of training curves. We store Table 3 and fit ``N_opt = G * C^a`` through it (a = 0.50, the paper's
  approach-1 exponent); ``D_opt = C / (6 N_opt)``. It predicts no loss.
- **Chinchilla approach 3**: the parametric loss ``L(N, D) = E + A/N^alpha + B/D^beta`` with E=1.69,
  A=406.4, B=410.7, alpha=0.34, beta=0.28 (MassiveText, nats/token). Minimising it under ``C = 6 N D`` gives
  ``N_opt = G (C/6)^a``, ``D_opt = (C/6)^b / G`` with ``G = (alpha A / (beta B))^(1/(alpha+beta))``,
  ``a = beta/(alpha+beta)`` (0.45), ``b = alpha/(alpha+beta)`` (0.55) (the paper's equation 4).
- **Kaplan et al. 2020** (KM): ``L(N) = (N_c/N)^alpha_N`` with N_c = 8.8e13, alpha_N = 0.076;
  ``L(D) = (D_c/D)^alpha_D`` with D_c = 5.4e13, alpha_D = 0.095; jointly
  ``L(N, D) = ((N_c/N)^(alpha_N/alpha_D) + D_c/D)^alpha_D`` (their equation 1.5); compute-efficient size
  ``N_opt = 1.3e9 * (C / 1 PF-day)^0.73`` (their section 6.1, Figure 14; 1 PF-day = 8.64e19 FLOPs), so
  ``D = C / (6 N) ∝ C^0.27``. Kaplan's N excludes embeddings and its loss is on WebText2 with a different
  tokenizer: compare its losses with each other, not with Chinchilla's.

Training FLOPs ``C ≈ 6 N D`` throughout (forward 2ND + backward 4ND).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PF_DAY = 1e15 * 86400  # FLOPs in one petaflop/s-day

# Hoffmann et al. 2022, Table 3 (approach 1): parameters, FLOPs, tokens.
CHINCHILLA_TABLE3 = (
    (400e6, 1.92e19, 8.0e9),
    (1e9, 1.21e20, 20.2e9),
    (10e9, 1.23e22, 205.1e9),
    (67e9, 5.76e23, 1.5e12),
    (175e9, 3.85e24, 3.7e12),
    (280e9, 9.90e24, 5.9e12),
    (520e9, 3.43e25, 11.0e12),
    (1e12, 1.27e26, 21.2e12),
    (10e12, 1.30e28, 216.2e12),
)


def fit_power_law(x: list[float], y: list[float]) -> tuple[float, float]:
    """Least-squares fit of ``y = g * x^a`` in log space; returns ``(g, a)``.

    >>> g, a = fit_power_law([1, 10, 100], [3, 30, 300]); round(g, 6), round(a, 6)
    (3.0, 1.0)
    """
    a, log_g = np.polyfit(np.log(x), np.log(y), 1)
    return float(math.exp(log_g)), float(a)


@dataclass(frozen=True)
class Allocation:
    """A plan: parameters, tokens, training FLOPs and (when the law has one) the predicted loss."""

    law: str
    params: float
    tokens: float
    flops: float
    loss: float | None = None

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params


def _from_one(n_of_c, c_of_n, c_of_d, compute=None, params=None, tokens=None) -> tuple[float, float, float]:
    """Solve an allocation law for (N, D, C) from whichever one of C, N, D is given (C = 6 N D)."""
    if compute is not None:
        n = n_of_c(compute)
        return n, compute / (6 * n), compute
    if params is not None:
        c = c_of_n(params)
        return params, c / (6 * params), c
    c = c_of_d(tokens)
    return c / (6 * tokens), tokens, c


class Approach1:
    """Chinchilla approach 1: ``N_opt = G C^a`` fitted through Table 3.

    >>> law = Approach1(); round(law.a, 3), round(law.b, 3)
    (0.498, 0.502)
    >>> p = law.plan(compute=1.21e20); round(p.params / 1e9, 2), round(p.tokens / 1e9, 1)
    (1.0, 20.2)
    """

    name = "chinchilla-approach-1"

    def __init__(self, table=CHINCHILLA_TABLE3):
        n, c, d = (np.array(col) for col in zip(*table))
        self.g, self.a = fit_power_law(c, n)
        self.g_d, self.b = fit_power_law(c, d)  # reported only: D follows from C = 6 N D

    def plan(self, compute=None, params=None, tokens=None) -> Allocation:
        n, d, c = _from_one(
            lambda c: self.g * c ** self.a,
            lambda n: (n / self.g) ** (1 / self.a),
            # D = C / (6 g C^a) = C^(1-a) / (6 g)  =>  C = (6 g D)^(1/(1-a))
            lambda d: (6 * self.g * d) ** (1 / (1 - self.a)),
            compute, params, tokens)
        return Allocation(self.name, n, d, c, CHINCHILLA_APPROACH3.loss(n, d))


@dataclass(frozen=True)
class ParametricLaw:
    """``L(N, D) = E + A/N^alpha + B/D^beta`` and its closed-form compute-optimal allocation.

    >>> law = CHINCHILLA_APPROACH3; round(law.a, 3), round(law.b, 3), round(law.loss(70e9, 1.4e12), 3)
    (0.452, 0.548, 1.937)
    """

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    name: str = "chinchilla-approach-3"

    @property
    def a(self) -> float:
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self) -> float:
        return (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))

    def loss(self, params: float, tokens: float) -> float:
        return self.E + self.A / params ** self.alpha + self.B / tokens ** self.beta

    def plan(self, compute=None, params=None, tokens=None) -> Allocation:
        n, d, c = _from_one(
            lambda c: self.G * (c / 6) ** self.a,
            lambda n: 6 * (n / self.G) ** (1 / self.a),
            lambda d: 6 * (d * self.G) ** (1 / self.b),
            compute, params, tokens)
        return Allocation(self.name, n, d, c, self.loss(n, d))


CHINCHILLA_APPROACH3 = ParametricLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


@dataclass(frozen=True)
class Kaplan:
    """Kaplan et al. 2020 laws and compute-efficient size.

    >>> k = Kaplan(); round(k.loss_n(1e9), 3), round(k.loss_d(1e11), 3)
    (2.376, 1.818)
    >>> p = k.plan(compute=PF_DAY); round(p.params / 1e9, 2)
    1.3
    """

    n_c: float = 8.8e13
    alpha_n: float = 0.076
    d_c: float = 5.4e13
    alpha_d: float = 0.095
    n_opt_coef: float = 1.3e9  # parameters at C = 1 PF-day
    n_opt_exp: float = 0.73
    name: str = "kaplan"

    def loss_n(self, params: float) -> float:
        return (self.n_c / params) ** self.alpha_n

    def loss_d(self, tokens: float) -> float:
        return (self.d_c / tokens) ** self.alpha_d

    def loss(self, params: float, tokens: float) -> float:
        return ((self.n_c / params) ** (self.alpha_n / self.alpha_d) + self.d_c / tokens) ** self.alpha_d

    def plan(self, compute=None, params=None, tokens=None) -> Allocation:
        k, e = self.n_opt_coef, self.n_opt_exp
        n, d, c = _from_one(
            lambda c: k * (c / PF_DAY) ** e,
            lambda n: PF_DAY * (n / k) ** (1 / e),
            # D = C / (6 k (C/P)^e) => C^(1-e) = 6 k D P^-e => C = (6 k D P^-e)^(1/(1-e))
            lambda d: (6 * k * d * PF_DAY ** -e) ** (1 / (1 - e)),
            compute, params, tokens)
        return Allocation(self.name, n, d, c, self.loss(n, d))


def training_seconds(alloc: Allocation, gpus: int = 1, tokens_per_sec: float | None = None,
                     flops_per_sec: float | None = None, mfu: float = 0.4) -> float | None:
    """Wall-clock seconds: tokens / (gpus x measured tokens/s), or FLOPs / (gpus x peak FLOP/s x MFU).

    >>> training_seconds(Allocation("x", 1e9, 2e10, 1.2e20), gpus=8, tokens_per_sec=5e4)
    50000.0
    >>> training_seconds(Allocation("x", 1e9, 2e10, 1.2e20), gpus=8, flops_per_sec=1e15, mfu=0.5)
    30000.0
    """
    if tokens_per_sec:
        return alloc.tokens / (gpus * tokens_per_sec)
    if flops_per_sec:
        return alloc.flops / (gpus * flops_per_sec * mfu)
    return None


def _grid_start(log_n, log_d, loss, top: int) -> list[tuple[float, float, float, float, float]]:
    """For fixed exponents the law is linear in (E, A, B): solve those by least squares on a grid of
    (alpha, beta) and keep the ``top`` starts with the smallest log-loss error (all coefficients positive)."""
    starts = []
    for alpha in np.linspace(0.05, 1.0, 20):
        for beta in np.linspace(0.05, 1.0, 20):
            x = np.stack([np.ones_like(loss), np.exp(-alpha * log_n), np.exp(-beta * log_d)], axis=1)
            coef, *_ = np.linalg.lstsq(x, loss, rcond=None)
            if (coef <= 0).any():
                continue
            err = float(np.mean((np.log(x @ coef) - np.log(loss)) ** 2))
            starts.append((err, math.log(coef[1]), math.log(coef[2]), math.log(coef[0]), alpha, beta))
    starts.sort()
    return [s[1:] for s in starts[:top]]


def fit_parametric(params, tokens, losses, delta: float = 1e-3, starts: int = 4) -> ParametricLaw:
    """Fit ``L = E + A/N^alpha + B/D^beta`` to runs as Chinchilla's approach 3 does: Huber loss (delta 1e-3)
    between ``log L`` and ``logsumexp(a - alpha log N, b - beta log D, e)`` (A = e^a, B = e^b, E = e^e),
    minimised with L-BFGS from the best starts of a least-squares grid. Needs at least 5 runs."""
    import torch

    log_n, log_d, loss = (np.log(np.asarray(v, dtype=float)) for v in (params, tokens, losses))
    loss = np.exp(loss)
    tn, td, tl = (torch.tensor(v, dtype=torch.float64) for v in (log_n, log_d, np.log(loss)))
    inits = _grid_start(log_n, log_d, loss, starts) or [(6.0, 6.0, 0.5, 0.3, 0.3)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 5 parameters and a few dozen runs: thread hand-offs cost more than they save
    try:
        best = min((_lbfgs(init, tn, td, tl, delta) for init in inits), key=lambda r: r[0])[1]
    finally:
        torch.set_num_threads(threads)
    a, b, e, alpha, beta = best
    return ParametricLaw(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta, name="fitted")


def _lbfgs(init, tn, td, tl, delta: float) -> tuple[float, list[float]]:
    """One L-BFGS run from ``init = (log A, log B, log E, alpha, beta)``; returns (objective, parameters)."""
    import torch

    theta = torch.tensor(init, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=200, max_eval=400, tolerance_grad=1e-10,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def value():
        a, b, e, alpha, beta = theta
        pred = torch.logsumexp(torch.stack([a - alpha * tn, b - beta * td, e.expand_as(tn)]), dim=0)
        return torch.nn.functional.huber_loss(pred, tl, delta=delta, reduction="sum")

    def closure():
        opt.zero_grad()
        obj = value()
        obj.backward()
        return obj

    opt.step(closure)
    with torch.no_grad():
        obj = float(value())
    return (obj if math.isfinite(obj) else math.inf), theta.detach().tolist()


def read_runs(path) -> tuple[list[float], list[float], list[float]]:
    """``(N, D, loss)`` from a csv/tsv/jsonl table with columns params|N, tokens|D and loss."""
    from align_kit.data.io import read_records
    from align_kit.errors import DataError, describe

    aliases = {"params": ("params", "parameters", "N", "n"), "tokens": ("tokens", "D", "d"),
               "loss": ("loss", "final_loss", "L")}
    cols: tuple[list[float], list[float], list[float]] = ([], [], [])
    for row, rec in read_records(path):
        for out, (key, names) in zip(cols, aliases.items()):
            name = next((n for n in names if n in rec), None)
            if name is None:
                raise DataError(str(path), row, key, f"columns {sorted(rec)}", f"a column named one of {names}")
            try:
                value = float(rec[name])
            except (TypeError, ValueError):
                value = math.nan
            if not value > 0:
                raise DataError(str(path), row, name, describe(rec[name]), "a positive number")
            out.append(value)
    if len(cols[0]) < 5:
        raise DataError(str(path), None, None, f"{len(cols[0])} runs", "at least 5 runs to fit 5 constants")
    return cols
