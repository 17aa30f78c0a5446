"""The BG/NBD model of repeat purchases (Fader, Hardie & Lee 2005), as a baseline.

"Counting your customers the easy way": while alive a customer buys as a Poisson process with
rate λ ~ Gamma(r, α); after each repeat purchase they drop out with probability
p ~ Beta(a, b). A customer's history is summarised by ``x`` (repeat purchases), ``t_x`` (the
time of the last one since the first purchase) and ``age`` (the time since the first purchase).
The functions here are the paper's closed forms: the likelihood (its equation 6), the
probability of being alive, and the probability of at least one purchase in the next ``h``
time units given the history. :class:`BGNBDBaseline` fits it on a journey log's features and
scores purchase (conversion) and no-purchase (churn) within a horizon, like the models.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import betaln, gammaln

from training.bundle import (
    BGNBD_INPUTS,
    bgnbd_histories,
    bgnbd_p_alive,
    bgnbd_p_purchase,
    bgnbd_probability,
)

logger = logging.getLogger(__name__)

INPUTS = BGNBD_INPUTS
"""The journey features a BG/NBD baseline reads (purchases, tenure, days since a purchase)."""
COUNT, AGE, RECENCY = INPUTS


@dataclass(frozen=True)
class BGNBDParams:
    """Population parameters: purchase rate λ ~ Gamma(r, α), drop-out p ~ Beta(a, b)."""

    r: float
    alpha: float
    a: float
    b: float


def _arrays(*values: Any) -> list[np.ndarray]:
    return [np.asarray(v, dtype=np.float64) for v in values]


def bgnbd_log_likelihood(
    params: BGNBDParams, x: np.ndarray, t_x: np.ndarray, age: np.ndarray
) -> np.ndarray:
    """Each customer's log-likelihood (FHL 2005, equation 6)."""
    x, t_x, age = _arrays(x, t_x, age)
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    common = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    alive = betaln(a, b + x) - betaln(a, b) - (r + x) * np.log(alpha + age)
    dropped = np.full_like(x, -np.inf)
    repeat = x > 0
    dropped[repeat] = (
        betaln(a + 1, b + x[repeat] - 1)
        - betaln(a, b)
        - (r + x[repeat]) * np.log(alpha + t_x[repeat])
    )
    return np.asarray(common + np.logaddexp(alive, dropped))


def fit_bgnbd(
    x: np.ndarray, t_x: np.ndarray, age: np.ndarray, weights: np.ndarray | None = None
) -> BGNBDParams:
    """Maximum-likelihood estimates (L-BFGS-B on the log parameters).

    Raises:
        ValueError: empty input, or a history that is not a history (x < 0, t_x > age).
    """
    x, t_x, age = _arrays(x, t_x, age)
    if len(x) == 0:
        raise ValueError("BG/NBD: no customers to fit")
    if (x < 0).any() or (t_x < 0).any() or (t_x > age + 1e-9).any():
        raise ValueError("BG/NBD: histories need 0 <= x and 0 <= t_x <= age")
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
    scale = max(float(np.mean(age)), 1e-9)  # fit in units of the mean age: better conditioned
    ts, ages = t_x / scale, age / scale

    def loss(theta: np.ndarray) -> float:
        r, alpha, a, b = np.exp(np.clip(theta, -20, 20))
        ll = bgnbd_log_likelihood(BGNBDParams(r, alpha, a, b), x, ts, ages)
        return float(-np.sum(w * ll) / np.sum(w))

    best = None
    for start in ([0.0, 0.0, 0.0, 0.0], [-1.0, 0.0, -0.5, 1.0]):
        result = minimize(loss, np.array(start), method="L-BFGS-B")
        if best is None or result.fun < best.fun:
            best = result
    assert best is not None
    r, alpha, a, b = (float(v) for v in np.exp(np.clip(best.x, -20, 20)))
    return BGNBDParams(r, alpha * scale, a, b)


def p_alive(params: BGNBDParams, x: np.ndarray, t_x: np.ndarray, age: np.ndarray) -> np.ndarray:
    """P(alive at age | x, t_x, age) (serving's closed form, :func:`bgnbd_p_alive`)."""
    xs, ts, ages = _arrays(x, t_x, age)
    return bgnbd_p_alive(params.r, params.alpha, params.a, params.b, xs, ts, ages)


def p_purchase_within(
    params: BGNBDParams, x: np.ndarray, t_x: np.ndarray, age: np.ndarray, h: float
) -> np.ndarray:
    """P(at least one purchase in (age, age + h] | x, t_x, age) (:func:`bgnbd_p_purchase`)."""
    xs, ts, ages = _arrays(x, t_x, age)
    return bgnbd_p_purchase(params.r, params.alpha, params.a, params.b, xs, ts, ages, h)


def histories(frame: pd.DataFrame, birth: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, t_x, age) in days from the journey features :data:`INPUTS` (see
    :func:`bgnbd_histories` for ``birth``)."""
    count, age, since = (
        pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=np.float64) for c in INPUTS
    )
    return bgnbd_histories(count, age, since, birth)


class BGNBDBaseline:
    """BG/NBD fitted on every customer's history at one cutoff (one row per customer,
    active or not: the drop-outs are what the model learns its drop-out rate from).

    Scores P(purchase within ``horizon_days``) (``outcome="purchase"``, the conversion
    question) or its complement (``outcome="no_purchase"``, churn on a purchase log).

    Args:
        horizon_days: the label horizon.
        outcome: ``purchase`` or ``no_purchase``.
        birth: ``auto`` (``first_conversion`` when every training customer has bought,
            else ``first_event``), ``first_conversion`` or ``first_event``.
    """

    def __init__(self, horizon_days: float, outcome: str = "purchase", birth: str = "auto"):
        self.horizon_days = horizon_days
        self.outcome = outcome
        self.birth = birth

    def fit(self, x: pd.DataFrame, y: np.ndarray | None = None) -> BGNBDBaseline:
        """Fits the population parameters on the rows of ``x`` (one per customer)."""
        missing = [c for c in INPUTS if c not in x.columns]
        if missing:
            raise ValueError(f"BG/NBD needs the features {', '.join(missing)}")
        birth = self.birth
        if birth == "auto":
            counts = pd.to_numeric(x[COUNT], errors="coerce").fillna(0.0)
            birth = "first_conversion" if bool((counts >= 1).all()) else "first_event"
        self.birth_ = birth
        self.params_ = fit_bgnbd(*histories(x, birth))
        self.reference_ = np.nanmedian(self._matrix(x), axis=0)
        self.reference_ = np.where(np.isfinite(self.reference_), self.reference_, 0.0)
        logger.info("BG/NBD fitted (%s): %s", birth, asdict(self.params_))
        return self

    def scorer(self) -> dict[str, Any]:
        """The fitted model as a bundle's scorer spec (JSON; see
        :func:`training.bundle.bgnbd_probability`), with the fit population's median history
        as the reference its explanations are measured from."""
        return {
            "kind": "bgnbd",
            **asdict(self.params_),
            "horizon_days": float(self.horizon_days),
            "outcome": self.outcome,
            "birth": self.birth_,
            "reference": [float(v) for v in self.reference_],
        }

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        return bgnbd_probability(self.scorer(), self._matrix(x))

    @staticmethod
    def _matrix(x: pd.DataFrame) -> np.ndarray:
        return np.column_stack(
            [pd.to_numeric(x[c], errors="coerce").to_numpy(dtype=np.float64) for c in INPUTS]
        )
