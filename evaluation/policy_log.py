"""Policy evaluation and learning from the service's own decision log.

The input is the state store's decision log (``journeyml decisions export``, or read from the
store directly): per decision the action chosen, the probability the engine had of choosing it
(1 when nothing was random; ``1 − ε + ε/k`` and ``ε/k`` under epsilon-greedy exploration; 1 for a
holdout customer's no action), the candidates with the rule or contact limit that removed each,
the online features and scores read at decision time, and the feedback outcomes received.

A decision's **reward** is the value of the outcomes received within ``horizon_days`` of it
minus the cost of the action sent (``configs/actions.yaml``). By default a ``converted``
outcome is worth the catalog's average ``value`` of its convert actions; other outcomes are worth
nothing unless given (``outcome_values``). Outcomes must be reported for every decision,
no action and holdout included, for the no-action arm to be measured: a conversion nobody
reports counts as none. Decisions whose horizon has not passed at ``as_of`` are left out.

The compared policies act where the engine would have let them: "always X" sends X where X was a
candidate that no rule or contact limit removed, and nothing elsewhere; the learned policy sends
the allowed action with the highest predicted net effect. Off-policy values are per decision
(IPS, self-normalised IPS and doubly robust, :mod:`evaluation.ope`); the logging policy's is its
on-policy mean.

The **learned policy** is a doubly-robust learner (:class:`evaluation.policy_learn.
DoublyRobustValue`) on the features the engine read at decision time — the product's journey
features and scores, point in time by construction. Its value is estimated with cross-fitting:
the rows of each customer fold are decided by a policy learned on the other folds, so no
decision is scored by a policy that saw its outcome. Its gate: the lower end of its 95 %
interval above the logging policy's value, and its estimate above the best single action's.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from evaluation.ope import (
    Z95,
    BanditLog,
    Estimate,
    evaluate_policy,
    fit_reward_model,
    greedy_policy,
)
from evaluation.policy_features import encode_features
from evaluation.policy_learn import DecisionLog, DoublyRobustValue, customer_folds
from serving.actions import ActionsCatalog

logger = logging.getLogger(__name__)

NONE = "none"
SCORE_COLUMNS: tuple[str, ...] = ("churn_risk", "conversion_propensity")


class DecisionLogError(ValueError):
    """The decision log cannot be evaluated (the message says why)."""


@dataclass(frozen=True)
class ServiceLog:
    """A service decision log ready for evaluation.

    ``eligible`` is (decisions, catalog actions): the action was a candidate that no rule or
    contact limit removed. ``features`` are the numeric inputs of the learner (categorical
    features as codes of ``categories``).
    """

    bandit: BanditLog
    frame: pd.DataFrame
    eligible: np.ndarray
    features: pd.DataFrame
    categories: dict[str, list[str]]
    immature: int
    as_of: datetime


def conversion_value(catalog: ActionsCatalog) -> float:
    """What a reported conversion is worth by default: the mean value of the convert actions
    (of every action when none converts)."""
    convert = [a.value for a in catalog.actions if a.objective == "convert"]
    values = convert or [a.value for a in catalog.actions]
    return float(np.mean(values))


def _json_column(values: pd.Series) -> list[Any]:
    out: list[Any] = []
    for v in values:
        out.append(json.loads(v) if isinstance(v, str) and v else {})
    return out


def learner_features(
    frame: pd.DataFrame, categories: Mapping[str, list[str]] | None = None
) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """The learner's inputs from the logged features and scores (JSON columns).

    Numbers stay numbers (missing: NaN, which LightGBM routes on its own); text becomes the
    code of its value in ``categories`` (learned here when not given; unknown values: NaN).
    """
    feats = pd.DataFrame.from_records(_json_column(frame["features"]), index=frame.index)
    requests = _json_column(frame["request"])
    for name in SCORE_COLUMNS:
        feats[f"score_{name}"] = [
            (r.get("scores") or {}).get(name) if isinstance(r.get("scores"), dict) else None
            for r in requests
        ]
    return encode_features(feats, categories)


def read_service_log(
    decisions: pd.DataFrame,
    catalog: ActionsCatalog,
    horizon_days: int = 7,
    outcome_values: Mapping[str, float] | None = None,
    as_of: datetime | None = None,
) -> ServiceLog:
    """The exported decision log (:mod:`serving.decision_log`) as a logged bandit.

    Raises:
        DecisionLogError: no decision has a complete horizon, or the log names actions the
            catalog does not have.
    """
    as_of = (as_of or datetime.now(UTC)).astimezone(UTC)
    values = dict(outcome_values or {"converted": conversion_value(catalog)})
    action_ids = [NONE, *catalog.ids]
    frame = decisions.copy()
    if "mode" in frame.columns:
        frame = frame[frame["mode"] != "preview"]
    frame["decided_at"] = pd.to_datetime(frame["decided_at"], utc=True)
    horizon = pd.Timedelta(days=horizon_days)
    mature = frame["decided_at"] + horizon <= pd.Timestamp(as_of)
    immature = int((~mature).sum())
    frame = frame[mature].sort_values(["decided_at", "decision_id"]).reset_index(drop=True)
    if frame.empty:
        raise DecisionLogError(
            f"no logged decision has a complete {horizon_days}-day outcome window before "
            f"{as_of:%Y-%m-%d %H:%M} UTC ({immature} are newer): wait, or pass a shorter "
            "--horizon-days or a later --as-of"
        )
    unknown = sorted(set(frame["chosen_action"]) - set(action_ids))
    if unknown:
        raise DecisionLogError(
            f"the decision log names actions the catalog does not have: {', '.join(unknown)} "
            f"(catalog {catalog.version}: {', '.join(catalog.ids)}); evaluate with the catalog "
            "the decisions were made under (--actions)"
        )
    for outcome in values:
        if f"{outcome}_at" not in frame.columns:
            raise DecisionLogError(f"outcome_values: the log has no outcome {outcome!r}")
    gained = np.zeros(len(frame))
    for outcome, value in values.items():
        at = pd.to_datetime(frame[f"{outcome}_at"], utc=True)
        inside = at.notna() & (at >= frame["decided_at"]) & (at < frame["decided_at"] + horizon)
        gained += np.where(inside.to_numpy(), float(value), 0.0)
    costs = {NONE: 0.0, **{a.id: float(a.cost) for a in catalog.actions}}
    sent = frame["contacted"].astype(bool).to_numpy() if "contacted" in frame else None
    cost = frame["chosen_action"].map(costs).to_numpy(float)
    if sent is not None:
        cost = np.where(sent | (frame["chosen_action"] == NONE).to_numpy(), cost, 0.0)
    frame["reward"] = gained - cost
    if "converted_at" in frame.columns:
        converted = pd.to_datetime(frame["converted_at"], utc=True)
        frame["converted"] = (
            converted.notna() & (converted >= frame["decided_at"])
            & (converted < frame["decided_at"] + horizon)
        ).astype(float)  # fmt: skip
    else:
        frame["converted"] = np.nan
    requests = _json_column(frame["request"])
    for name in SCORE_COLUMNS:
        frame[name] = [
            (r.get("scores") or {}).get(name) if isinstance(r, dict) else None for r in requests
        ]
        frame[name] = pd.to_numeric(frame[name], errors="coerce")
    eligible = np.zeros((len(frame), len(catalog.ids)), dtype=bool)
    index = {a: j for j, a in enumerate(catalog.ids)}
    expected = np.zeros(len(frame))  # the engine's expected incremental value of its choice
    for i, candidates in enumerate(_json_column(frame["candidates"]) if len(frame) else []):
        listed: list[dict[str, Any]] = candidates if isinstance(candidates, list) else []
        for c in listed:
            j = index.get(str(c.get("action")))
            if j is not None and c.get("removed_by") is None:
                eligible[i, j] = True
            if c.get("action") == frame.at[i, "chosen_action"]:
                expected[i] = float(c.get("expected_value") or 0.0)
    frame["expected_value"] = expected
    features, categories = learner_features(frame)
    bandit = BanditLog(
        action_ids,
        frame["chosen_action"].map(action_ids.index).to_numpy(),
        frame["propensity"].to_numpy(float),
        frame["reward"].to_numpy(float),
        frame["customer_id"].to_numpy(),
        features,
    )
    return ServiceLog(bandit, frame, eligible, features, categories, immature, as_of)


def allowed_policy(log: ServiceLog, action: str) -> np.ndarray:
    """Target probabilities of sending ``action`` wherever it was allowed (else nothing)."""
    k = len(log.bandit.action_ids)
    target = np.zeros((len(log.bandit), k))
    if action == NONE:
        target[:, 0] = 1.0
        return target
    j = log.bandit.action_ids.index(action)
    ok = log.eligible[:, j - 1]
    target[ok, j] = 1.0
    target[~ok, 0] = 1.0
    return target


def decision_log(log: ServiceLog) -> DecisionLog:
    """The learner's view of a service log."""
    customers = pd.factorize(log.bandit.groups)[0]
    t0 = log.frame["decided_at"].min()
    days = ((log.frame["decided_at"] - t0).dt.total_seconds() // 86400).to_numpy(np.int64)
    return DecisionLog(
        log.features,
        log.bandit.actions.astype(np.int64),
        log.bandit.propensities,
        customers,
        days,
        log.eligible,
        log.bandit.rewards,
    )


@dataclass(frozen=True)
class LearnedSettings:
    """The learner on a service log (smaller leaves than on the simulator: logs are short)."""

    n_folds: int = 2
    min_data_in_leaf: int = 50
    num_boost_round: int = 200
    random_state: int = 0
    num_threads: int = 2


def _learner(settings: LearnedSettings) -> DoublyRobustValue:
    return DoublyRobustValue(
        min_data_in_leaf=settings.min_data_in_leaf,
        num_boost_round=settings.num_boost_round,
        n_folds=2,
        random_state=settings.random_state,
        num_threads=settings.num_threads,
    )


def greedy_effects(effects: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Target probabilities: the allowed action with the highest positive effect, else none."""
    scores = np.column_stack([np.zeros(len(effects)), np.where(eligible, effects, -np.inf)])
    return greedy_policy(scores)


def cross_fitted_learned_policy(
    log: ServiceLog, settings: LearnedSettings = LearnedSettings()
) -> np.ndarray:
    """Target probabilities of the learned policy, each customer fold decided by a policy
    learned on the other folds."""
    data = decision_log(log)
    folds = customer_folds(data.customers, settings.n_folds, settings.random_state + 7)
    target = np.zeros((len(data), len(log.bandit.action_ids)))
    for f in range(settings.n_folds):
        train, score = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        if len(score) == 0:
            continue
        model = _learner(settings).fit(data.take(train))
        effects = model.predict_effects(log.features.iloc[score])
        target[score] = greedy_effects(effects, log.eligible[score])
    return target


@dataclass(frozen=True)
class Gate:
    """The learned policy's promotion check against the logging policy and single actions."""

    passed: bool
    learned: float
    learned_low: float
    learned_high: float
    logging: float
    best_single: float
    best_single_policy: str
    reasons: list[str] = field(default_factory=list)


def learned_policy_gate(estimates: pd.DataFrame) -> Gate:
    """Passes when the learned policy's 95 % DR interval lies above the logging policy's value
    and its DR estimate is above the best single action's."""
    dr = estimates[estimates["estimator"] == "dr"].set_index("policy")
    value = {str(p): float(v) for p, v in dr["value"].items()}
    low = {str(p): float(v) for p, v in dr["low"].items()}
    high = {str(p): float(v) for p, v in dr["high"].items()}
    logging_value = float(estimates.loc[estimates["policy"] == "logging policy", "value"].iloc[0])
    singles = {p: v for p, v in value.items() if p.startswith("always ")}
    best = max(singles, key=lambda p: singles[p])
    learned = "learned policy"
    reasons = []
    if not low[learned] > logging_value:
        reasons.append(
            f"its 95 % interval starts at {low[learned]:.2f}, not above the logging "
            f"policy's {logging_value:.2f}"
        )
    if not value[learned] > singles[best]:
        reasons.append(f"its value {value[learned]:.2f} is not above {best}'s {singles[best]:.2f}")
    return Gate(
        not reasons,
        value[learned],
        low[learned],
        high[learned],
        logging_value,
        singles[best],
        best,
        reasons,
    )


def on_policy_value(log: BanditLog) -> tuple[float, float, float]:
    """The logging policy's mean reward per decision with a customer-clustered 95 % interval."""
    r = log.rewards
    n = len(r)
    sums = pd.Series(r - r.mean()).groupby(log.groups).sum().to_numpy()
    g = len(sums)
    se = math.sqrt((g / (g - 1) if g > 1 else 1.0) * float(np.sum(sums**2))) / n
    return float(r.mean()), float(r.mean() - Z95 * se), float(r.mean() + Z95 * se)


def estimate_rows(name: str, estimates: Mapping[str, Estimate]) -> list[dict[str, object]]:
    return [
        {
            "policy": name,
            "estimator": e.estimator,
            "value": e.value,
            "low": e.low,
            "high": e.high,
            "effective_sample_size": e.effective_sample_size,
            "max_weight": e.max_weight,
        }
        for e in estimates.values()
    ]


def evaluate_service_log(
    log: ServiceLog, learn: bool = True, settings: LearnedSettings = LearnedSettings()
) -> tuple[pd.DataFrame, Gate | None, np.ndarray | None]:
    """Off-policy estimates of no action, each single action (where allowed), uniformly random
    over the allowed actions, the learned policy, and the logging policy's on-policy value;
    with ``learn``, also the learned policy's gate and its (cross-fitted) choice per decision."""
    b = log.bandit
    q = fit_reward_model(b)
    mean, low, high = on_policy_value(b)
    rows: list[dict[str, object]] = [
        {"policy": "logging policy", "estimator": "on-policy mean", "value": mean, "low": low,
         "high": high, "effective_sample_size": float(len(b)), "max_weight": 1.0}
    ]  # fmt: skip
    for action in b.action_ids:
        name = "no action" if action == NONE else f"always {action}"
        rows += estimate_rows(name, evaluate_policy(b, allowed_policy(log, action), q))
    allowed = np.column_stack([np.ones(len(b)), log.eligible]).astype(float)
    random = allowed / allowed.sum(axis=1, keepdims=True)
    rows += estimate_rows("random", evaluate_policy(b, random, q))
    gate, chosen = None, None
    if learn:
        target = cross_fitted_learned_policy(log, settings)
        rows += estimate_rows("learned policy", evaluate_policy(b, target, q))
        chosen = np.asarray(b.action_ids, dtype=object)[target.argmax(axis=1)]
    estimates = pd.DataFrame(rows)
    if learn:
        gate = learned_policy_gate(estimates)
    return estimates, gate, chosen


def log_facts(log: ServiceLog, horizon_days: int) -> dict[str, object]:
    f = log.frame
    return {
        "source": "service decision log",
        "decisions": len(f),
        "customers": int(f["customer_id"].nunique()),
        "horizon_days": horizon_days,
        "first_decision": str(f["decided_at"].min()),
        "last_decision": str(f["decided_at"].max()),
        "holdout_decisions": int(f["holdout"].sum()) if "holdout" in f else 0,
        "explored_decisions": int(f["explored"].sum()) if "explored" in f else 0,
        "immature_decisions": log.immature,
        "as_of": log.as_of.isoformat(),
        "features": len(log.features.columns),
    }
