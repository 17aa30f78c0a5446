"""The BG/NBD baseline against the paper's published estimates on CDNOW (Fader, Hardie & Lee
2005: r = 0.243, α = 4.414, a = 0.793, b = 2.426, log-likelihood −9582.4, weeks) and on
histories drawn from known parameters."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from training.btyd import (
    BGNBDBaseline,
    BGNBDParams,
    bgnbd_log_likelihood,
    fit_bgnbd,
    p_alive,
    p_purchase_within,
)

PAPER = BGNBDParams(r=0.243, alpha=4.414, a=0.793, b=2.426)


def cdnow_summary() -> pd.DataFrame:
    """CDNOW's calibration-period summary (2,357 customers) as the ``lifetimes`` package ships
    it (a test dependency; read as a file, the package's own loader needs setuptools)."""
    spec = importlib.util.find_spec("lifetimes")
    assert spec is not None and spec.submodule_search_locations, "lifetimes is a dev dependency"
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets"
    return pd.read_csv(path / "cdnow_customers_summary.csv")


def test_the_fit_on_cdnow_finds_the_published_estimates() -> None:
    d = cdnow_summary()
    assert len(d) == 2357
    fitted = fit_bgnbd(d["frequency"], d["recency"], d["T"])
    assert fitted.r == pytest.approx(PAPER.r, abs=0.001)
    assert fitted.alpha == pytest.approx(PAPER.alpha, abs=0.01)
    assert fitted.a == pytest.approx(PAPER.a, abs=0.002)
    assert fitted.b == pytest.approx(PAPER.b, abs=0.01)
    ll = bgnbd_log_likelihood(fitted, d["frequency"], d["recency"], d["T"]).sum()
    assert ll == pytest.approx(-9582.4, abs=0.1)


def draw(params: BGNBDParams, n: int, age: float, h: float, seed: int) -> pd.DataFrame:
    """Histories over [0, age] and whether each customer buys in (age, age + h]."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(params.r, 1 / params.alpha, n)
    p = rng.beta(params.a, params.b, n)
    rows = []
    for i in range(n):
        t, x, t_x, alive = 0.0, 0, 0.0, True
        bought_later = False
        while alive:
            t += rng.exponential(1 / lam[i])
            if t > age + h:
                break
            if t <= age:
                x, t_x = x + 1, t
            else:
                bought_later = True
                break
            alive = rng.random() >= p[i]
        rows.append((x, t_x, age, bought_later))
    return pd.DataFrame(rows, columns=["x", "t_x", "age", "later"])


def test_the_fit_recovers_known_parameters_and_its_scores_rank() -> None:
    d = draw(PAPER, 6000, age=39.0, h=13.0, seed=3)
    fitted = fit_bgnbd(d["x"], d["t_x"], d["age"])
    assert fitted.r == pytest.approx(PAPER.r, rel=0.2)
    assert fitted.alpha == pytest.approx(PAPER.alpha, rel=0.3)
    assert fitted.a == pytest.approx(PAPER.a, rel=0.4)
    assert fitted.b == pytest.approx(PAPER.b, rel=0.5)
    best = p_purchase_within(PAPER, d["x"], d["t_x"], d["age"], 13.0)
    ours = p_purchase_within(fitted, d["x"], d["t_x"], d["age"], 13.0)
    y = d["later"].to_numpy()
    assert roc_auc_score(y, ours) >= 0.99 * roc_auc_score(y, best)
    assert abs(ours.mean() - y.mean()) < 0.02  # calibrated in the mean


def test_closed_forms_at_their_limits() -> None:
    x, t_x, age = np.array([0.0, 3.0, 3.0]), np.array([0.0, 10.0, 30.0]), np.array([30.0] * 3)
    alive = p_alive(PAPER, x, t_x, age)
    assert alive[0] == 1.0  # no repeat purchase: no chance to drop out yet
    assert alive[1] < alive[2] < 1.0  # a recent purchase makes being alive likelier
    within = p_purchase_within(PAPER, x, t_x, age, 1e-9)
    assert np.all(within < 1e-6)
    longer = p_purchase_within(PAPER, x, t_x, age, 52.0)
    assert np.all(longer > p_purchase_within(PAPER, x, t_x, age, 13.0))
    assert np.all(longer <= alive)


def test_the_baseline_reads_journey_features() -> None:
    d = draw(PAPER, 3000, age=39.0, h=13.0, seed=5)
    days = 7.0
    frame = pd.DataFrame(
        {  # a purchase log: the first order is the birth, tenure counts from it
            "conversions_total": d["x"] + 1.0,
            "tenure_days": d["age"] * days,
            "days_since_last_conversion": (d["age"] - d["t_x"]) * days,
        }
    )
    base = BGNBDBaseline(horizon_days=13 * days).fit(frame)
    assert base.birth_ == "first_conversion"
    assert base.params_.r == pytest.approx(PAPER.r, rel=0.25)
    assert base.params_.alpha == pytest.approx(PAPER.alpha * days, rel=0.35)
    p = base.predict_proba(frame)
    churn = BGNBDBaseline(horizon_days=13 * days, outcome="no_purchase").fit(frame)
    np.testing.assert_allclose(churn.predict_proba(frame), 1 - p)
    y = d["later"].to_numpy()
    assert roc_auc_score(y, p) > 0.75
    with pytest.raises(ValueError, match="tenure_days"):
        BGNBDBaseline(13.0).fit(frame.drop(columns=["tenure_days"]))


def test_agrees_with_the_foreign_log_suites_own_implementation() -> None:
    from tests.foreign_logs import bgnbd as other

    d = draw(PAPER, 500, age=39.0, h=13.0, seed=9)
    theirs = other.BGNBDParams(PAPER.r, PAPER.alpha, PAPER.a, PAPER.b)
    np.testing.assert_allclose(
        p_purchase_within(PAPER, d["x"], d["t_x"], d["age"], 13.0),
        other.p_purchase_within(13.0, d["x"], d["t_x"], d["age"], theirs),
        rtol=1e-9,
    )
    np.testing.assert_allclose(
        bgnbd_log_likelihood(PAPER, d["x"], d["t_x"], d["age"]),
        other.bgnbd_log_likelihood(theirs, d["x"], d["t_x"], d["age"]),
        rtol=1e-9,
    )
