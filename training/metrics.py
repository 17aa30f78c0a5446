"""Evaluation metrics for binary, multiclass and uplift models (pure functions)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    roc_auc_score,
)

_CLIP = 1e-7


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """ECE with equal-width probability bins: Σ_b (n_b / n) · |mean(y_b) − mean(p_b)|."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if len(y) == 0:
        return float("nan")
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = idx == b
        if mask.any():
            total += mask.mean() * abs(y[mask].mean() - p[mask].mean())
    return float(total)


def top_decile_lift(y: np.ndarray, p: np.ndarray) -> float:
    """Positive rate among the 10 % highest scores divided by the overall positive rate."""
    y = np.asarray(y, dtype=np.float64)
    base = y.mean()
    if len(y) == 0 or base == 0:
        return float("nan")
    k = max(1, int(np.ceil(0.1 * len(y))))
    order = np.argsort(-np.asarray(p), kind="stable")[:k]
    return float(y[order].mean() / base)


def binary_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """AUC, PR-AUC, log loss, Brier, ECE, top-decile lift and the rates behind them."""
    y = np.asarray(y, dtype=np.int64)
    p = np.clip(np.asarray(p, dtype=np.float64), _CLIP, 1 - _CLIP)
    both = len(np.unique(y)) == 2
    return {
        "auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "ece": expected_calibration_error(y, p),
        "top_decile_lift": top_decile_lift(y, p),
        "positive_rate": float(y.mean()),
        "mean_prediction": float(p.mean()),
    }


def multiclass_metrics(codes: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Top-1 and top-3 accuracy, log loss and macro-F1 for class indices ``codes``."""
    codes = np.asarray(codes, dtype=np.int64)
    proba = np.clip(np.asarray(proba, dtype=np.float64), 1e-12, 1)
    proba = proba / proba.sum(axis=1, keepdims=True)
    labels = list(range(proba.shape[1]))
    top = np.argsort(-proba, axis=1, kind="stable")
    k = min(3, proba.shape[1])
    return {
        "top1_accuracy": float((top[:, 0] == codes).mean()),
        "top3_accuracy": float((top[:, :k] == codes[:, None]).any(axis=1).mean()),
        "log_loss": float(log_loss(codes, proba, labels=labels)),
        "macro_f1": float(
            f1_score(codes, top[:, 0], average="macro", labels=labels, zero_division=0)
        ),
    }


def uplift_curve(
    score: np.ndarray,
    treated: np.ndarray,
    y: np.ndarray,
    weight: np.ndarray,
    points: int = 20,
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-propensity-weighted incremental gains of targeting the top fraction by score.

    Among the units with the highest ``score`` (fraction φ of all), the gain is
    ``(ȳ_treated − ȳ_control) · n_φ / n`` with means weighted by ``weight`` (1 / propensity
    of the arm received), i.e. incremental outcomes per customer of the whole population.

    Returns:
        (fractions, gains), with ``fractions`` from 1/points to 1.
    """
    order = np.argsort(-np.asarray(score), kind="stable")
    t = np.asarray(treated, dtype=bool)[order]
    yy = np.asarray(y, dtype=np.float64)[order]
    w = np.asarray(weight, dtype=np.float64)[order]
    n = len(yy)
    cw_t = np.cumsum(w * t)
    cw_c = np.cumsum(w * ~t)
    cy_t = np.cumsum(w * t * yy)
    cy_c = np.cumsum(w * ~t * yy)
    fractions = np.arange(1, points + 1) / points
    gains = np.zeros(points)
    for i, f in enumerate(fractions):
        k = max(1, round(f * n)) - 1
        if cw_t[k] > 0 and cw_c[k] > 0:
            gains[i] = (cy_t[k] / cw_t[k] - cy_c[k] / cw_c[k]) * (k + 1) / n
    return fractions, gains


def qini_coefficient(
    score: np.ndarray, treated: np.ndarray, y: np.ndarray, weight: np.ndarray, points: int = 20
) -> tuple[float, float]:
    """(Qini coefficient, AUUC): mean gain above the random-targeting line, and mean gain.

    Both are in outcomes per customer; the Qini coefficient is 0 for a random ranking and
    positive when the score puts the customers who respond most first.
    """
    if len(score) == 0 or not np.any(treated) or np.all(treated):
        return float("nan"), float("nan")
    fractions, gains = uplift_curve(score, treated, y, weight, points)
    random_line = fractions * gains[-1]
    return float(np.mean(gains - random_line)), float(np.mean(gains))
