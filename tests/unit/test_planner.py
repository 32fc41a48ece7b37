"""Scaling-law planner: Chinchilla Table 3, approach-3 closed form, Kaplan, fitting, and `align-kit plan`."""

from __future__ import annotations

import math

import numpy as np
import pytest

from align_kit.cli import main
from align_kit.planner import (
    CHINCHILLA_APPROACH3,
    CHINCHILLA_TABLE3,
    PF_DAY,
    Approach1,
    Kaplan,
    ParametricLaw,
    fit_parametric,
)


@pytest.mark.parametrize("params, flops, tokens", CHINCHILLA_TABLE3)
def test_approach1_reproduces_table3_within_10_percent(params, flops, tokens):
    law = Approach1()
    from_c = law.plan(compute=flops)
    assert from_c.params == pytest.approx(params, rel=0.10) and from_c.tokens == pytest.approx(tokens, rel=0.10)
    from_n = law.plan(params=params)
    assert from_n.flops == pytest.approx(flops, rel=0.10) and from_n.tokens == pytest.approx(tokens, rel=0.10)
    assert law.plan(tokens=tokens).params == pytest.approx(params, rel=0.10)


def test_approach1_exponents_match_the_paper():
    law = Approach1()
    assert law.a == pytest.approx(0.50, abs=0.01) and law.b == pytest.approx(0.50, abs=0.01)
    # about 20 tokens per parameter across the range
    assert 19 < law.plan(compute=1e21).tokens_per_param < 22


def test_approach3_closed_form_is_the_constrained_minimum():
    law = CHINCHILLA_APPROACH3
    assert (round(law.a, 3), round(law.b, 3)) == (0.452, 0.548)
    for c in (1e20, 5.76e23, 1e26):
        best = law.plan(compute=c)
        assert best.flops == pytest.approx(6 * best.params * best.tokens, rel=1e-9)
        # any other split of the same compute has a higher loss
        for factor in (0.8, 1.25):
            n = best.params * factor
            assert law.loss(n, c / (6 * n)) > best.loss
        # and planning from its own N or D gives back the same allocation
        assert law.plan(params=best.params).flops == pytest.approx(c, rel=1e-9)
        assert law.plan(tokens=best.tokens).flops == pytest.approx(c, rel=1e-9)
    assert law.loss(1e30, 1e30) == pytest.approx(1.69, abs=1e-3)


def test_kaplan_constants_and_allocation():
    k = Kaplan()
    assert k.loss_n(8.8e13) == pytest.approx(1.0) and k.loss_d(5.4e13) == pytest.approx(1.0)
    small, big = k.plan(compute=PF_DAY), k.plan(compute=1000 * PF_DAY)
    assert small.params == pytest.approx(1.3e9)
    assert math.log(big.params / small.params, 1000) == pytest.approx(0.73)
    assert math.log(big.tokens / small.tokens, 1000) == pytest.approx(0.27)
    # Kaplan spends most of extra compute on parameters, Chinchilla splits it about evenly
    assert big.tokens_per_param < Approach1().plan(compute=big.flops).tokens_per_param / 10


def test_fit_recovers_known_constants_from_synthetic_runs():
    true = ParametricLaw(E=1.8, A=520.0, B=1500.0, alpha=0.36, beta=0.30)
    rng = np.random.default_rng(0)
    n, d = (g.ravel() for g in np.meshgrid(np.logspace(7, 10, 6), np.logspace(9, 12, 6)))
    loss = np.array([true.loss(a, b) for a, b in zip(n, d)]) * np.exp(rng.normal(0, 0.002, n.size))
    fit = fit_parametric(n, d, loss)
    assert fit.alpha == pytest.approx(true.alpha, rel=0.03) and fit.beta == pytest.approx(true.beta, rel=0.03)
    assert fit.E == pytest.approx(true.E, rel=0.02)
    plan, ref = fit.plan(compute=1e22), true.plan(compute=1e22)
    assert plan.params == pytest.approx(ref.params, rel=0.15) and plan.loss == pytest.approx(ref.loss, rel=0.01)


def test_plan_command(tmp_path, capsys):
    assert main(["plan", "--params", "1B", "--gpus", "8", "--tokens-per-sec", "50000"]) == 0
    out = capsys.readouterr().out
    approach1 = next(line for line in out.splitlines() if line.startswith("chinchilla-approach-1"))
    assert "1.00B" in approach1 and "20.2B" in approach1 and "1.21e+20" in approach1 and "14.0 h" in approach1
    assert "kaplan" in out and "chinchilla-approach-3" in out
    true = ParametricLaw(E=2.0, A=300.0, B=900.0, alpha=0.3, beta=0.32)
    rows = ["params,tokens,loss"] + [f"{n:.6g},{d:.6g},{true.loss(n, d):.6f}"
                                     for n in np.logspace(7, 9, 4) for d in np.logspace(9, 11, 4)]
    (tmp_path / "runs.csv").write_text("\n".join(rows) + "\n")
    assert main(["plan", "--compute", "1e21", "--fit", str(tmp_path / "runs.csv")]) == 0
    out = capsys.readouterr().out
    assert "fitted to 16 runs" in out and "alpha=0.300" in out and any(
        line.startswith("fitted") for line in out.splitlines())
    assert main(["plan", "--compute", "1e21", "--params", "1B"]) == 2
    (tmp_path / "bad.csv").write_text("params,tokens,loss\n1e9,2e10,-1\n")
    assert main(["plan", "--compute", "1e21", "--fit", str(tmp_path / "bad.csv")]) == 2
    assert "bad.csv: row 2: field 'loss'" in capsys.readouterr().err
