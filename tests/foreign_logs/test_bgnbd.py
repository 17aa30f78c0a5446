"""The BG/NBD closed forms against direct integration and Monte Carlo runs of the process, and
the likelihood maximiser against the parameters that generated a purchase log."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

from tests.foreign_logs.bgnbd import (
    BGNBDParams,
    bgnbd_log_likelihood,
    fit_bgnbd,
    p_alive,
    p_purchase_within,
    simulate_bgnbd,
    summarise_history,
)
from tests.foreign_logs.purchase import DEFAULT_PARAMS, generate_purchase_log, observed_history

PARAMS = BGNBDParams(r=0.8, alpha=40.0, a=0.9, b=2.0)


def _individual_likelihood(lam: float, p: float, x: float, t_x: float, big_t: float) -> float:
    """FHL 2005 eq. (3): the likelihood of a history given the customer's own λ and p."""
    alive = (1 - p) ** x * lam**x * math.exp(-lam * big_t)
    dropped = p * (1 - p) ** (x - 1) * lam**x * math.exp(-lam * t_x) if x > 0 else 0.0
    return alive + dropped


@pytest.mark.parametrize(
    ("x", "t_x", "big_t"), [(0, 0, 30), (0, 0, 200), (1, 20, 100), (4, 90, 150)]
)
def test_likelihood_equals_the_mixture_integrated_numerically(
    x: int, t_x: float, big_t: float
) -> None:
    r, alpha, a, b = PARAMS.r, PARAMS.alpha, PARAMS.a, PARAMS.b
    log_gamma_norm = r * math.log(alpha) - math.lgamma(r)
    log_beta_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)

    def density(p: float, lam: float) -> float:
        if lam <= 0 or not 0 < p < 1:
            return 0.0
        prior = math.exp(
            log_gamma_norm + (r - 1) * math.log(lam) - alpha * lam
            + log_beta_norm + (a - 1) * math.log(p) + (b - 1) * math.log1p(-p)
        )  # fmt: skip
        return _individual_likelihood(lam, p, x, t_x, big_t) * prior

    value, _ = integrate.dblquad(density, 0, 2.0, 0, 1, epsabs=1e-12)
    closed = bgnbd_log_likelihood(PARAMS, x, t_x, big_t)
    assert closed == pytest.approx(np.log(value), abs=2e-3)


def test_probabilities_match_monte_carlo_runs_of_the_process() -> None:
    rng = np.random.default_rng(11)
    n, horizon = 200_000, 60.0
    big_t = rng.uniform(30, 300, n)
    draw = simulate_bgnbd(rng, PARAMS, big_t + horizon)
    x, t_x, _ = summarise_history(draw.owner, draw.times, n, big_t)
    alive = draw.dropout > big_t
    later = (draw.times > big_t[draw.owner]) & (draw.times <= big_t[draw.owner] + horizon)
    bought = np.bincount(draw.owner[later], minlength=n) > 0

    pa = p_alive(x, t_x, big_t, PARAMS)
    pp = p_purchase_within(horizon, x, t_x, big_t, PARAMS)
    for predicted, observed in ((pa, alive), (pp, bought)):
        assert predicted.mean() == pytest.approx(observed.mean(), abs=0.005)
        edges = np.quantile(predicted, np.linspace(0, 1, 11))
        bins = np.clip(np.searchsorted(edges, predicted, side="right") - 1, 0, 9)
        for b in range(10):
            sel = bins == b
            if sel.sum() < 1000:
                continue
            mean_p = predicted[sel].mean()
            se = np.sqrt(max(mean_p * (1 - mean_p), 1e-4) / sel.sum())
            assert observed[sel].mean() == pytest.approx(mean_p, abs=4 * se + 0.005), b
    # customers without a repeat purchase are alive for sure: drop-out follows a purchase
    assert np.all(pa[x == 0] == 1.0) and np.all(alive[x == 0])


def test_purchase_probability_is_alive_times_the_gamma_poisson_term() -> None:
    x, t_x, big_t = np.array([0.0, 3.0, 3.0]), np.array([0.0, 50.0, 150.0]), np.array([200.0] * 3)
    pa = p_alive(x, t_x, big_t, PARAMS)
    assert pa[0] == 1.0 and pa[1] < pa[2] < 1.0
    p = p_purchase_within(30, x, t_x, big_t, PARAMS)
    expected = pa * (1 - ((PARAMS.alpha + 200) / (PARAMS.alpha + 230)) ** (PARAMS.r + x))
    np.testing.assert_allclose(p, expected)
    assert p_purchase_within(0, x, t_x, big_t, PARAMS) == pytest.approx(np.zeros(3))
    with pytest.raises(ValueError, match="t_x <= T"):
        p_alive(1, 20, 10, PARAMS)


def test_fit_recovers_the_parameters_of_a_generated_log(tmp_path: Path) -> None:
    log = generate_purchase_log(tmp_path, n_customers=4000, seed=5)
    history = observed_history(pd.read_csv(log.events_csv), log.end)
    x, t_x, big_t = (history[c].to_numpy() for c in ("x", "t_x", "T"))
    fitted = fit_bgnbd(x, t_x, big_t)
    gain = 2 * (
        bgnbd_log_likelihood(fitted, x, t_x, big_t).sum()
        - bgnbd_log_likelihood(DEFAULT_PARAMS, x, t_x, big_t).sum()
    )
    # the maximum, and the truth inside its 99.9 % likelihood-ratio region
    assert 0 <= gain < stats.chi2(4).ppf(0.999)
    assert fitted.r == pytest.approx(DEFAULT_PARAMS.r, rel=0.15)
    assert fitted.alpha == pytest.approx(DEFAULT_PARAMS.alpha, rel=0.15)
    mean_p = fitted.a / (fitted.a + fitted.b)
    assert mean_p == pytest.approx(
        DEFAULT_PARAMS.a / (DEFAULT_PARAMS.a + DEFAULT_PARAMS.b), rel=0.15
    )
