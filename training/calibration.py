"""Fitting probability calibrators on validation data; they are stored as JSON specs.

The specs are applied by :mod:`training.bundle` (``apply_binary_calibrator``,
``apply_multiclass_calibrator``), the code serving runs, so training and serving share one
implementation.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import brentq, minimize
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from training.bundle import apply_binary_calibrator, apply_multiclass_calibrator

logger = logging.getLogger(__name__)


def fit_isotonic(p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Isotonic regression of labels on scores, kept strictly increasing.

    The fitted step function is stored as one knot per block of pooled scores (the block's
    mean raw log-odds → its label rate in log-odds), and applied by linear interpolation
    between knots and extension beyond them (:func:`training.bundle.apply_binary_calibrator`).
    Consecutive blocks have strictly increasing rates, so distinct raw scores keep distinct
    probabilities: the ranking of customers is the model's, not the calibrator's ties.
    """
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    z = _logit(p)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True)
    fitted = iso.fit_transform(z, y)
    frame = pd.DataFrame({"z": z, "q": fitted})
    blocks = frame.groupby("q", sort=True)["z"].agg(["mean", "size"]).reset_index()
    if len(blocks) < 2:
        return fit_platt(p, y)
    # rates of 0 or 1 are pulled in by half an observation (finite log-odds)
    floor = 0.5 / len(y)
    rate = np.clip(blocks["q"].to_numpy(), floor, 1 - floor)
    knots_z = blocks["mean"].to_numpy()
    knots_q = _logit(rate)
    knots_q = _strictly_increasing(knots_q)
    keep = np.concatenate([[True], np.diff(knots_z) > 0])
    return {
        "method": "isotonic_interpolated",
        "z": [float(v) for v in knots_z[keep]],
        "q": [float(v) for v in knots_q[keep]],
    }


def _strictly_increasing(v: np.ndarray, step: float = 1e-6) -> np.ndarray:
    out = np.array(v, dtype=np.float64)
    for i in range(1, len(out)):
        out[i] = max(out[i], out[i - 1] + step)
    return out


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.asarray(np.log(p) - np.log1p(-p))


def fit_platt(p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Platt scaling: a logistic regression on the score's log-odds (slope kept positive)."""
    z = _logit(p)[:, None]
    lr = LogisticRegression(C=1e6, max_iter=1000)
    lr.fit(z, np.asarray(y, dtype=np.int64))
    a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    if a <= 0:
        logger.warning("Platt slope %.3f is not positive: the scores do not rank; using none", a)
        return {"method": "none"}
    return {"method": "platt", "a": a, "b": b}


def fit_beta(p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Beta calibration (Kull, Silva Filho & Flach 2017): logit q = a ln p − b ln(1 − p) + c
    with a, b ≥ 0 (a slope that comes out negative is dropped and the rest refitted)."""
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    cols = np.column_stack([np.log(q), -np.log1p(-q)])
    yy = np.asarray(y, dtype=np.int64)
    use = [0, 1]
    while use:
        lr = LogisticRegression(C=1e6, max_iter=1000).fit(cols[:, use], yy)
        coef = dict(zip(use, lr.coef_[0], strict=True))
        negative = [j for j, v in coef.items() if v < 0]
        if not negative:
            a, b = float(coef.get(0, 0.0)), float(coef.get(1, 0.0))
            if a + b <= 0:
                break
            return {"method": "beta", "a": a, "b": b, "c": float(lr.intercept_[0])}
        use = [j for j in use if j != min(negative, key=lambda j: coef[j])]
    logger.warning("beta calibration found no increasing map: the scores do not rank")
    return {"method": "none"}


def _brier(spec: dict[str, Any], p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((apply_binary_calibrator(spec, p) - y) ** 2))


FITTERS = {"isotonic": fit_isotonic, "platt": fit_platt, "beta": fit_beta}


def fit_binary_calibrator(
    p: np.ndarray, y: np.ndarray, method: str = "auto", random_state: int = 0
) -> dict[str, Any]:
    """Fits the configured calibrator on held-out scores ``p`` and labels ``y``.

    ``auto`` cross-fits isotonic, beta and Platt on two halves of the held-out data and keeps
    the one with the lowest held-out Brier score, then refits it on all of it. Every choice is
    strictly increasing (see :func:`fit_isotonic`).
    """
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if method == "none" or len(np.unique(y)) < 2:
        return {"method": "none"}
    if method in FITTERS:
        return FITTERS[method](p, y)
    rng = np.random.default_rng(random_state)
    half = rng.random(len(p)) < 0.5
    scores = dict.fromkeys(FITTERS, 0.0)
    for fit_mask in (half, ~half):
        test_mask = ~fit_mask
        if len(np.unique(y[fit_mask])) < 2 or not test_mask.any():
            return fit_platt(p, y)
        for name, fitter in FITTERS.items():
            spec = fitter(p[fit_mask], y[fit_mask])
            scores[name] += _brier(spec, p[test_mask], y[test_mask])
    best = min(scores, key=lambda k: scores[k])
    spec = FITTERS[best](p, y)
    spec["selected_by"] = "cross-fitted held-out Brier score"
    return spec


def fit_shift(p: np.ndarray, y: np.ndarray) -> float:
    """The log-odds offset that makes the mean of ``p`` the rate of ``y`` (re-levelling)."""
    p = np.asarray(p, dtype=np.float64)
    target = float(np.mean(y))
    if len(p) == 0 or not 0.0 < target < 1.0:
        return 0.0
    z = _logit(p)
    return float(brentq(lambda s: float(np.mean(1 / (1 + np.exp(-(z + s))))) - target, -20, 20))


def relevel(
    spec: dict[str, Any],
    p_recent: np.ndarray,
    y_recent: np.ndarray,
    p_reference: np.ndarray,
    y_reference: np.ndarray,
    z_threshold: float = 3.0,
) -> dict[str, Any]:
    """The calibrator re-levelled on the latest matured labels when the base rate has moved.

    When the label rate of the recent rows differs from that of the reference rows (those
    the calibrator was fitted on) by more than ``z_threshold`` standard errors, the spec gets
    a log-odds ``shift`` that brings the mean calibrated probability of the recent rows to
    their label rate (seasons, a changed market); otherwise it is returned unchanged.
    """
    spec = dict(spec)
    y_recent = np.asarray(y_recent, dtype=np.float64)
    y_reference = np.asarray(y_reference, dtype=np.float64)
    if len(y_recent) < 50 or len(y_reference) < 50:
        return spec
    r1, r0 = y_recent.mean(), y_reference.mean()
    pooled = (y_recent.sum() + y_reference.sum()) / (len(y_recent) + len(y_reference))
    se = np.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / len(y_recent) + 1 / len(y_reference)))
    spec["relevel_rate_recent"] = float(r1)
    spec["relevel_rate_reference"] = float(r0)
    if abs(r1 - r0) <= z_threshold * se:
        return spec
    calibrated = apply_binary_calibrator({**spec, "shift": 0.0}, p_recent)
    spec["shift"] = fit_shift(calibrated, y_recent)
    return spec


def fit_vector_scaling(proba: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Multiclass calibration: a temperature and one bias per class, by validation log loss.

    Args:
        proba: raw class probabilities (n, k).
        y: class indices (n,).
    """
    proba = np.clip(np.asarray(proba, dtype=np.float64), 1e-12, 1)
    y = np.asarray(y, dtype=np.int64)
    logp = np.log(proba)
    k = proba.shape[1]

    def loss(theta: np.ndarray) -> float:
        t = np.exp(theta[0])
        z = logp / t + theta[1:]
        z -= z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))
        return float(np.mean(lse - z[np.arange(len(y)), y]))

    result = minimize(loss, np.zeros(k + 1), method="L-BFGS-B")
    theta = result.x
    spec = {
        "method": "vector_scaling",
        "temperature": float(np.exp(theta[0])),
        "bias": [float(b) for b in theta[1:]],
    }
    before = loss(np.zeros(k + 1))
    if loss(theta) > before:
        return {"method": "none"}
    return spec


__all__ = [
    "apply_binary_calibrator",
    "apply_multiclass_calibrator",
    "fit_beta",
    "fit_binary_calibrator",
    "fit_isotonic",
    "fit_platt",
    "fit_shift",
    "fit_vector_scaling",
    "relevel",
]
