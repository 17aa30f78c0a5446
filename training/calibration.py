"""Fitting probability calibrators on validation data; they are stored as JSON specs.

The specs are applied by :mod:`training.bundle` (``apply_binary_calibrator``,
``apply_multiclass_calibrator``), the code serving runs, so training and serving share one
implementation.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy.optimize import minimize
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from training.bundle import apply_binary_calibrator, apply_multiclass_calibrator

logger = logging.getLogger(__name__)

_EPS = 1e-6


def fit_isotonic(p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Isotonic regression of labels on scores; stored as its breakpoints."""
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True)
    iso.fit(np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64))
    return {
        "method": "isotonic",
        "x": [float(v) for v in iso.X_thresholds_],
        "y": [float(v) for v in iso.y_thresholds_],
    }


def fit_platt(p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Platt scaling: a logistic regression on the score's log-odds (slope kept positive)."""
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    z = np.log(p / (1 - p))[:, None]
    lr = LogisticRegression(C=1e6, max_iter=1000)
    lr.fit(z, np.asarray(y, dtype=np.int64))
    a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    if a <= 0:
        logger.warning("Platt slope %.3f is not positive: the scores do not rank; using none", a)
        return {"method": "none"}
    return {"method": "platt", "a": a, "b": b}


def _brier(spec: dict[str, Any], p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((apply_binary_calibrator(spec, p) - y) ** 2))


def fit_binary_calibrator(
    p: np.ndarray, y: np.ndarray, method: str = "auto", random_state: int = 0
) -> dict[str, Any]:
    """Fits the configured calibrator on validation scores ``p`` and labels ``y``.

    ``auto`` cross-fits isotonic and Platt on two halves of the validation data and keeps the
    one with the lower held-out Brier score (isotonic needs more data to beat Platt), then
    refits it on all of it.
    """
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if method == "none" or len(np.unique(y)) < 2:
        return {"method": "none"}
    if method == "isotonic":
        return fit_isotonic(p, y)
    if method == "platt":
        return fit_platt(p, y)
    rng = np.random.default_rng(random_state)
    half = rng.random(len(p)) < 0.5
    scores = {"isotonic": 0.0, "platt": 0.0}
    for fit_mask in (half, ~half):
        test_mask = ~fit_mask
        if len(np.unique(y[fit_mask])) < 2 or not test_mask.any():
            return fit_platt(p, y)
        scores["isotonic"] += _brier(
            fit_isotonic(p[fit_mask], y[fit_mask]), p[test_mask], y[test_mask]
        )
        scores["platt"] += _brier(fit_platt(p[fit_mask], y[fit_mask]), p[test_mask], y[test_mask])
    best = min(scores, key=lambda k: scores[k])
    spec = fit_isotonic(p, y) if best == "isotonic" else fit_platt(p, y)
    spec["selected_by"] = "cross-fitted validation Brier score"
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
    "fit_binary_calibrator",
    "fit_isotonic",
    "fit_platt",
    "fit_vector_scaling",
]
