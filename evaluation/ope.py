"""Off-policy evaluation: the value of a decision policy estimated from a logged bandit.

A logged bandit is one row per decision: the action the logging policy took, the probability
it had of taking it (the decision record's propensity), and the reward that followed (e.g. the
net value in the days after the decision). A *target* policy is given as its probability of
each action for each logged row. Three estimators, each with a 95 % interval:

- **IPS** (inverse propensity scoring): ``mean(w * r)`` with ``w = pi(A|x) / mu(A|x)``;
  unbiased when every propensity is right and positive, high variance when weights are large;
- **SNIPS** (self-normalised IPS): ``sum(w * r) / sum(w)``; a little bias, much less variance;
- **DR** (doubly robust): ``mean(sum_a pi(a|x) q(x, a) + w * (r - q(x, A)))`` with a reward
  model ``q`` fitted on *other* customers than the rows it scores (cross-fitting), unbiased if
  either the propensities or the reward model are right.

Intervals use the estimators' influence terms, summed per customer first (a customer's
decisions are not independent), then a normal approximation. Diagnostics: the effective
sample size of the weights and the largest weight, with a warning when they say the estimate
rests on a few rows.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

Z95 = 1.959963984540054


class PropensityError(ValueError):
    """A logged propensity is missing, not positive or above 1."""


@dataclass(frozen=True)
class BanditLog:
    """Logged decisions: ``actions`` index into ``action_ids``; ``groups`` are customers."""

    action_ids: list[str]
    actions: np.ndarray  # (n,) int
    propensities: np.ndarray  # (n,) float, probability the logging policy took that action
    rewards: np.ndarray  # (n,) float
    groups: np.ndarray  # (n,) customer of each decision (intervals are clustered on it)
    contexts: pd.DataFrame | None = None  # features for the reward model

    def __post_init__(self) -> None:
        n = len(self.actions)
        for name in ("propensities", "rewards", "groups"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, actions {n}")
        bad = ~np.isfinite(self.propensities) | (self.propensities <= 0) | (self.propensities > 1)
        if bad.any():
            rows = np.flatnonzero(bad)
            raise PropensityError(
                f"{bad.sum()} logged propensities are missing, not positive or above 1 (first "
                f"rows: {', '.join(map(str, rows[:5]))}): IPS needs the probability with which "
                "the logging policy chose each action"
            )
        if (self.actions < 0).any() or (self.actions >= len(self.action_ids)).any():
            raise ValueError("actions must index action_ids")
        if not np.isfinite(self.rewards).all():
            raise ValueError("rewards must be finite")

    def __len__(self) -> int:
        return len(self.actions)


@dataclass(frozen=True)
class Estimate:
    """A policy value with its 95 % interval and the weights' diagnostics."""

    estimator: str
    value: float
    low: float
    high: float
    std_error: float
    effective_sample_size: float
    max_weight: float

    def covers(self, truth: float) -> bool:
        return self.low <= truth <= self.high


def _clustered_se(terms: np.ndarray, groups: np.ndarray) -> float:
    """Standard error of ``mean(terms)`` with terms summed per group (cluster-robust)."""
    n = len(terms)
    centred = terms - terms.mean()
    sums = pd.Series(centred).groupby(groups).sum().to_numpy()
    g = len(sums)
    scale = g / (g - 1) if g > 1 else 1.0
    return float(math.sqrt(scale * np.sum(sums**2)) / n)


def _estimate(
    name: str, value: float, terms: np.ndarray, log: BanditLog, w: np.ndarray
) -> Estimate:
    se = _clustered_se(terms, log.groups)
    ess = float(w.sum() ** 2 / np.sum(w**2)) if np.any(w > 0) else 0.0
    return Estimate(name, value, value - Z95 * se, value + Z95 * se, se, ess, float(w.max()))


def evaluate_policy(
    log: BanditLog,
    target: np.ndarray,
    reward_model: np.ndarray | None = None,
    clip: float | None = None,
) -> dict[str, Estimate]:
    """IPS, SNIPS and (with a reward model) DR estimates of a target policy's value.

    Args:
        target: (n, actions) probabilities of the target policy for each logged row.
        reward_model: (n, actions) predicted reward of each action for each row, fitted out
            of fold (see :func:`fit_reward_model`).
        clip: cap the importance weights at this value (less variance, some bias; off by
            default).
    """
    n, k = len(log), len(log.action_ids)
    if target.shape != (n, k):
        raise ValueError(f"target has shape {target.shape}, expected {(n, k)}")
    if not np.allclose(target.sum(axis=1), 1.0, atol=1e-6) or (target < 0).any():
        raise ValueError("each row of target must be a probability distribution over actions")
    rows = np.arange(n)
    w = target[rows, log.actions] / log.propensities
    if clip is not None:
        w = np.minimum(w, clip)
    r = log.rewards
    out: dict[str, Estimate] = {}
    ips_terms = w * r
    out["ips"] = _estimate("ips", float(ips_terms.mean()), ips_terms, log, w)
    mean_w = w.mean()
    snips = float(np.sum(w * r) / np.sum(w)) if np.sum(w) > 0 else float("nan")
    out["snips"] = _estimate("snips", snips, w * (r - snips) / mean_w + snips, log, w)
    if reward_model is not None:
        if reward_model.shape != (n, k):
            raise ValueError(f"reward_model has shape {reward_model.shape}, expected {(n, k)}")
        dm = np.sum(target * reward_model, axis=1)
        dr_terms = dm + w * (r - reward_model[rows, log.actions])
        out["dr"] = _estimate("dr", float(dr_terms.mean()), dr_terms, log, w)
    ess = out["ips"].effective_sample_size
    if ess < 0.01 * n or ess < 30:
        logger.warning(
            "the target policy is far from the logging policy: effective sample size %.0f of "
            "%d rows (largest weight %.1f); the estimates rest on few decisions",
            ess,
            n,
            out["ips"].max_weight,
        )
    return out


def fit_reward_model(log: BanditLog, folds: int = 2, seed: int = 0) -> np.ndarray:
    """Cross-fitted reward predictions (n, actions): each row scored by models of other customers.

    One ridge regression per action on the log's contexts (standardised), fitted on the rows of
    the other folds; customers are assigned to folds by a hash of their id, so a customer's
    decisions never help predict their own rewards. Without contexts: the per-action mean.
    """
    from sklearn.linear_model import Ridge

    n, k = len(log), len(log.action_ids)
    x = (
        np.zeros((n, 0))
        if log.contexts is None
        else log.contexts.to_numpy(dtype=float, na_value=0.0)
    )
    if x.shape[1]:
        x = (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
    fold = np.array(
        [
            int(hashlib.sha256(f"{seed}:{g}".encode()).hexdigest()[:8], 16) % folds
            for g in log.groups
        ]
    )
    out = np.zeros((n, k))
    overall = float(log.rewards.mean())
    for f in range(folds):
        train, score = fold != f, fold == f
        for a in range(k):
            rows = train & (log.actions == a)
            if rows.sum() < max(20, 2 * x.shape[1]):
                out[score, a] = log.rewards[rows].mean() if rows.any() else overall
                continue
            if x.shape[1] == 0:
                out[score, a] = log.rewards[rows].mean()
                continue
            model = Ridge(alpha=1.0).fit(x[rows], log.rewards[rows])
            out[score, a] = model.predict(x[score])
    return out


def fixed_policy(log: BanditLog, action: str) -> np.ndarray:
    """The target probabilities of always taking ``action``."""
    if action not in log.action_ids:
        raise ValueError(f"unknown action {action!r}; known: {', '.join(log.action_ids)}")
    target = np.zeros((len(log), len(log.action_ids)))
    target[:, log.action_ids.index(action)] = 1.0
    return target


def uniform_policy(log: BanditLog) -> np.ndarray:
    """The target probabilities of choosing uniformly at random."""
    k = len(log.action_ids)
    return np.full((len(log), k), 1.0 / k)


def greedy_policy(scores: np.ndarray) -> np.ndarray:
    """The target probabilities of taking the best-scored action of each row (ties: first)."""
    target = np.zeros_like(scores, dtype=float)
    target[np.arange(len(scores)), np.argmax(scores, axis=1)] = 1.0
    return target


@dataclass(frozen=True)
class Lift:
    """Mean reward of the treated minus the holdout's, with a 95 % interval (Welch)."""

    treated_mean: float
    holdout_mean: float
    difference: float
    low: float
    high: float
    treated: int
    holdout: int


def holdout_lift(treated: Sequence[float], holdout: Sequence[float]) -> Lift:
    """The lift of the policy over the control group (customers held out by hash)."""
    t, h = np.asarray(treated, dtype=float), np.asarray(holdout, dtype=float)
    if len(t) < 2 or len(h) < 2:
        raise ValueError(
            f"a lift needs at least two treated and two holdout outcomes ({len(t)}, {len(h)})"
        )
    diff = float(t.mean() - h.mean())
    se = math.sqrt(t.var(ddof=1) / len(t) + h.var(ddof=1) / len(h))
    return Lift(
        float(t.mean()), float(h.mean()), diff, diff - Z95 * se, diff + Z95 * se, len(t), len(h)
    )
