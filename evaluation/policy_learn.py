"""A next-best-action policy learned from the logging policy's own decision log.

The learned policy is what a team could build from the log alone, so it must never read the
simulator's latent truth (``Observation.latent``). It is learned on the *choosing* seed:

1. **Record.** The world's logging policy runs in the simulator, wrapped in a
   :class:`RecordingPolicy` that keeps, per decision, the action it took and its propensity, and
   what the policy sees of the customer: by default (``features="journey"``) the product's
   journey features from the log before the decision's day — the feature catalog's query, as
   ``journeyml features build`` runs it (:mod:`evaluation.policy_features`); or the
   simulator's observation columns (:func:`observable_features`) with summaries of the
   customer's earlier observations (:class:`ObservationHistory`).
2. **Reward.** A decision's reward is the customer's net value in the ``horizon_days`` after
   it: the revenue of their purchases in the run's event log minus the cost of the action
   sent, as :mod:`evaluation.policy` builds it from ``truth/decisions.parquet`` and the lake.
   The logging run lasts longer than the evaluated runs, so every decision's horizon is whole.
3. **Effects.** A doubly-robust (DR) learner on LightGBM, the meta-learner of
   ``training/uplift.py``, estimates each action's effect on the reward versus no action
   (:class:`DoublyRobustValue`). Its estimator class cannot be reused: it models binary
   conversion and churn, and the reward here is an amount of money. The logged propensities
   are exact, so the pseudo-outcomes are unbiased whatever the outcome model's errors.
4. **Policy.** Per decision, the eligible action with the highest predicted net effect, or no
   action when none is predicted positive (:class:`LearnedPolicy`).

Its true value is then measured like every other policy's, on another seed
(:func:`evaluation.policy_sim.true_policy_values` with ``learner=LearnerSettings()``).

What it reaches, against the best single action and the hidden-state ceiling, and what was
tried: ``benchmarks/README.md`` (``benchmarks/policy_share.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import Field

from evaluation.policy_features import JourneyFeatures, encode_features
from features.settings import FeatureSettings, load_feature_settings
from journeyml.config import SIMULATOR_CONFIG_DIR, JourneyMap, StrictModel, matches_any
from journeyml.simulate.engine import NONE
from journeyml.simulate.policy import Array, DistributionPolicy, Observation, sample_from
from journeyml.simulate.run import simulate
from journeyml.simulate.world import World

logger = logging.getLogger(__name__)

SNAPSHOT_FEATURES: tuple[str, ...] = (
    "tenure_days",
    "observed_days",
    "premium",
    "marketing_opt_out",
    "purchases",
    "purchase_rate",
    "days_since_activity",
    "days_since_purchase",
    "days_since_complaint",
    "days_since_failure",
    "days_since_action",
    "recent_complaints",
    "recent_failures",
    "recent_sessions",
    "segment",
    "region",
)
HISTORY_FEATURES: tuple[str, ...] = (
    "h_decisions",
    "h_sessions",
    "h_active_share",
    "h_purchase_share",
    "h_complaint_share",
    "h_failure_share",
    "h_actions_share",
    "last_option",
)
CATEGORICAL_FEATURES: tuple[str, ...] = ("segment", "region", "last_option")
# Features that record what the policy did rather than what the customer did. The customer
# value model leaves them out: under the logging policy they mark who it chose to target, so
# a value model reading them would charge every action for its targets' prospects.
ACTION_FEATURES: tuple[str, ...] = ("days_since_action", "h_actions_share", "last_option")


class LearnerSettings(StrictModel):
    """How the learned policy is learned (validated once, where the evaluation starts).

    Attributes:
        features: what the policy sees: ``journey``, the product's journey features from the
            log before the decision's day (:mod:`evaluation.policy_features`), or
            ``observation``, the simulator's observation columns (and their history).
        hidden: also give the learner the simulator's hidden persona and state (the ceiling
            that the log allows, never a policy a team could build).
        horizon_days: days after a decision whose realised net value enters its reward
            (rounded up to whole decision intervals).
        value_days: the reward adds the customer's expected revenue in the ``value_days``
            after the horizon, predicted from what the log shows at its end (0: none). This
            carries the long-run cost of a lost customer into the reward without the noise
            of a long realised window.
        history: also give the model summaries of the customer's earlier observations.
        effect_start: where the DR final stage starts (see :class:`DoublyRobustValue`).
        log_customers_factor: customers of the logging run on the choosing seed, as a multiple
            of the evaluated runs' (more log, less noise in the effects).
        propensity_floor: smallest propensity in a pseudo-outcome (bounds the weights).
        min_data_in_leaf: LightGBM's leaf size; large, because DR pseudo-outcomes are noisy.
        num_boost_round: most trees per model (early stopping picks fewer).
        n_folds: cross-fitting folds of the outcome and value models.
        random_state: seed of the folds and of LightGBM.
        num_threads: LightGBM threads.
    """

    features: Literal["journey", "observation"] = "journey"
    hidden: bool = False
    horizon_days: int = Field(default=14, gt=0, le=365)
    value_days: int = Field(default=0, ge=0, le=730)
    history: bool = True
    effect_start: Literal["average", "outcome"] = "outcome"
    log_customers_factor: float = Field(default=1.0, gt=0, le=20)
    propensity_floor: float = Field(default=0.02, gt=0, lt=1)
    min_data_in_leaf: int = Field(default=400, gt=0)
    num_boost_round: int = Field(default=300, gt=0)
    n_folds: int = Field(default=2, ge=2, le=10)
    random_state: int = 0
    num_threads: int = Field(default=2, gt=0)


# -- what a learned policy may see ---------------------------------------------------------------


def observable_features(obs: Observation) -> pd.DataFrame:
    """The model's snapshot inputs for each customer of an observation; never reads
    ``obs.latent``.

    Besides the observation's columns: ``observed_days``, how long the log has seen the
    customer (the run's start or their signup, whichever is later; purchases are counted from
    then), and ``purchase_rate``, purchases per observed day — a customer's habit, which says
    more about how they respond than a count that grows with time.
    """
    observed = np.minimum(obs.tenure_days, obs.day).astype(np.float64)
    return pd.DataFrame(
        {
            "tenure_days": obs.tenure_days.astype(np.float64),
            "observed_days": observed,
            "premium": obs.premium.astype(np.float64),
            "marketing_opt_out": obs.marketing_opt_out.astype(np.float64),
            "purchases": obs.purchases.astype(np.float64),
            "purchase_rate": obs.purchases / np.maximum(observed, 1.0),
            "days_since_activity": obs.days_since_activity,
            "days_since_purchase": obs.days_since_purchase,
            "days_since_complaint": obs.days_since_complaint,
            "days_since_failure": obs.days_since_failure,
            "days_since_action": obs.days_since_action,
            "recent_complaints": obs.recent_complaints.astype(np.float64),
            "recent_failures": obs.recent_failures.astype(np.float64),
            "recent_sessions": obs.recent_sessions.astype(np.float64),
            "segment": obs.segment.astype(np.float64),
            "region": obs.region.astype(np.float64),
        },
        columns=list(SNAPSHOT_FEATURES),
    )


class ObservationHistory:
    """Per-customer summaries of the observations a policy has seen so far in one run.

    An observation shows recent behaviour (sessions decay within days, complaints within
    weeks); a customer's habits — how often they visit, buy or complain week after week — are
    what tells customers who respond differently apart, and only the sequence shows them.
    Everything here comes from earlier observations and the policy's own decisions, never
    from latent state. Customers are the run's positions (``Observation.customers``).
    """

    _SUMS = ("decisions", "sessions", "active", "purchase", "complaint", "failure", "actions")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forgets every customer (a new run)."""
        self.sums: dict[str, Array] = {k: np.zeros(0) for k in self._SUMS}
        self.last_day = np.zeros(0)
        self.last_option = np.zeros(0)
        self.latest = -1

    def _grow(self, size: int) -> None:
        old = len(self.last_day)
        if size <= old:
            return
        for k, v in self.sums.items():
            self.sums[k] = np.concatenate([v, np.zeros(size - old)])
        self.last_day = np.concatenate([self.last_day, np.full(size - old, -np.inf)])
        self.last_option = np.concatenate([self.last_option, np.full(size - old, np.nan)])

    def _events(self, obs: Observation) -> dict[str, Array]:
        """Whether each kind of event happened since the customer's previous observation."""
        self._grow(int(obs.customers.max(initial=-1)) + 1)
        gap = obs.day - self.last_day[obs.customers]

        def since(days: Array) -> Array:
            return np.asarray(np.nan_to_num(days, nan=np.inf) < gap, dtype=np.float64)

        return {
            "decisions": np.ones(len(obs)),
            "sessions": obs.recent_sessions.astype(np.float64),
            "active": since(obs.days_since_activity),
            "purchase": since(obs.days_since_purchase),
            "complaint": since(obs.days_since_complaint),
            "failure": since(obs.days_since_failure),
        }

    def features(self, obs: Observation) -> pd.DataFrame:
        """The history columns for ``obs``, its own observation included (changes nothing)."""
        now = self._events(obs)
        who = obs.customers
        n = self.sums["decisions"][who] + 1
        share = {k: (self.sums[k][who] + now[k]) / n for k in now if k != "decisions"}
        return pd.DataFrame(
            {
                "h_decisions": n,
                "h_sessions": share["sessions"],
                "h_active_share": share["active"],
                "h_purchase_share": share["purchase"],
                "h_complaint_share": share["complaint"],
                "h_failure_share": share["failure"],
                "h_actions_share": self.sums["actions"][who] / n,
                "last_option": self.last_option[who],
            },
            columns=list(HISTORY_FEATURES),
        )

    def update(self, obs: Observation, actions: Array) -> None:
        """Adds ``obs`` and the actions decided on it; a day before the latest starts a new run."""
        if obs.day <= self.latest:
            self.reset()
        self.latest = obs.day
        now = self._events(obs)
        who = obs.customers
        for k, v in now.items():
            self.sums[k][who] += v
        self.sums["actions"][who] += np.asarray(actions) != NONE
        self.last_day[who] = obs.day
        self.last_option[who] = np.asarray(actions) + 1


HIDDEN_FEATURES: tuple[str, ...] = (
    "hidden_persona",
    "hidden_stage",
    "hidden_engagement",
    "hidden_satisfaction",
)


def hidden_features(obs: Observation) -> pd.DataFrame:
    """The simulator's hidden persona and state: only for the ceiling, never a real policy."""
    latent = obs.latent
    return pd.DataFrame(
        {
            "hidden_persona": np.asarray(latent.persona, dtype=np.float64),
            "hidden_stage": np.asarray(latent.stage, dtype=np.float64),
            "hidden_engagement": np.asarray(latent.engagement, dtype=np.float64),
            "hidden_satisfaction": np.asarray(latent.satisfaction, dtype=np.float64),
        }
    )


def decision_features(obs: Observation, history: ObservationHistory | None) -> pd.DataFrame:
    """The model's inputs for a decision: the snapshot, and the history when kept."""
    snapshot = observable_features(obs)
    if history is None:
        return snapshot
    return pd.concat([snapshot, history.features(obs)], axis=1)


# -- the decision log ----------------------------------------------------------------------------


@dataclass
class DecisionLog:
    """Logged decisions: features, the option taken (0 = none, 1 + action index), its
    propensity, the customer (position in the run), the day and eligibility."""

    features: pd.DataFrame
    options: Array
    propensities: Array
    customers: Array
    days: Array
    eligible: Array  # (n, actions)
    rewards: Array | None = None
    categories: dict[str, list[str]] | None = None  # vocabularies of coded text features

    def __len__(self) -> int:
        return len(self.options)

    def take(self, rows: Array) -> DecisionLog:
        return DecisionLog(
            self.features.iloc[rows].reset_index(drop=True),
            self.options[rows],
            self.propensities[rows],
            self.customers[rows],
            self.days[rows],
            self.eligible[rows],
            None if self.rewards is None else self.rewards[rows],
            self.categories,
        )


class RecordingPolicy:
    """A policy that decides like ``policy`` and keeps every decision it makes, with the
    features a learned policy would have seen (one recorder per run)."""

    def __init__(self, policy: DistributionPolicy, history: bool = True, hidden: bool = False):
        self.policy = policy
        self.history = ObservationHistory() if history else None
        self.hidden = hidden
        self.parts: list[DecisionLog] = []

    def probabilities(self, obs: Observation) -> Array:
        return self.policy.probabilities(obs)

    def __call__(self, obs: Observation, u: Array) -> tuple[Array, Array]:
        actions, propensities = self.policy(obs, u)
        features = decision_features(obs, self.history)
        if self.hidden:
            features = pd.concat([features, hidden_features(obs)], axis=1)
        self.parts.append(
            DecisionLog(
                features,
                np.asarray(actions) + 1,
                np.asarray(propensities, dtype=np.float64),
                np.asarray(obs.customers),
                np.full(len(obs), obs.day),
                obs.eligible.copy(),
            )
        )
        if self.history is not None:
            self.history.update(obs, actions)
        return actions, propensities

    def log(self) -> DecisionLog:
        """Every recorded decision, in the order they were made."""
        if not self.parts:
            raise ValueError("the recording policy has made no decision yet")
        return DecisionLog(
            pd.concat([p.features for p in self.parts], ignore_index=True),
            np.concatenate([p.options for p in self.parts]),
            np.concatenate([p.propensities for p in self.parts]),
            np.concatenate([p.customers for p in self.parts]),
            np.concatenate([p.days for p in self.parts]),
            np.vstack([p.eligible for p in self.parts]),
        )


def daily_revenue(
    events: pd.DataFrame, journey: JourneyMap, customers: int, days: int, start: date
) -> Array:
    """(customers, days) revenue of conversion events, from a run's in-memory event log.

    Customers are the positions of ``C%07d`` ids (the customers table's rows).
    """
    types = [t for t in events["event_type"].unique() if matches_any(str(t), journey.conversions)]
    conv = events[events["event_type"].isin(types) & events["value"].notna()]
    day = (conv["timestamp"] - pd.Timestamp(start, tz="UTC")).dt.days.to_numpy()
    who = conv["customer_id"].str.slice(1).astype(np.int64).to_numpy()
    inside = (day >= 0) & (day < days) & (who >= 0) & (who < customers)
    out = np.zeros((customers, days))
    np.add.at(out, (who[inside], day[inside]), conv["value"].to_numpy(np.float64)[inside])
    return out


def window_revenue(revenue: Array, customers: Array, first: Array, days: int) -> Array:
    """Revenue of each (customer, first day) in ``[first, first + days)``, cut at the run's end."""
    cumulative = np.concatenate([np.zeros((len(revenue), 1)), np.cumsum(revenue, axis=1)], axis=1)
    end = np.minimum(first + days, revenue.shape[1])
    return np.asarray(cumulative[customers, end] - cumulative[customers, np.minimum(first, end)])


# -- models --------------------------------------------------------------------------------------


def customer_folds(customers: Array, n_folds: int, random_state: int) -> Array:
    """A fold per row, the same for all rows of a customer (seeded)."""
    unique, inverse = np.unique(customers, return_inverse=True)
    rng = np.random.default_rng(random_state)
    return np.asarray(rng.integers(0, n_folds, len(unique))[inverse])


@dataclass(frozen=True)
class Boosting:
    """LightGBM settings shared by the value, outcome and effect models."""

    min_data_in_leaf: int = 400
    num_boost_round: int = 300
    early_stopping_rounds: int = 30
    random_state: int = 0
    num_threads: int = 2

    def params(self, **extra: Any) -> dict[str, Any]:
        return {
            "objective": "regression",
            "metric": "l2",
            "learning_rate": 0.05,
            "num_leaves": 15,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": 0.8,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "lambda_l2": 1.0,
            "max_bin": 127,
            "verbose": -1,
            "seed": self.random_state,
            "deterministic": True,
            "force_col_wise": True,
            "num_threads": self.num_threads,
            **extra,
        }

    def train(
        self,
        train: tuple[Array, Array],
        valid: tuple[Array, Array],
        names: list[str],
        init: float | tuple[Array, Array] = 0.0,
        **extra: Any,
    ) -> lgb.Booster:
        """A regression early-stopped on ``valid``; predictions leave out ``init`` (a constant,
        or per-row starting scores of the training and validation rows)."""
        cats = [n for n in names if n in CATEGORICAL_FEATURES or n == "option"]
        (x, y), (x_val, y_val) = train, valid
        start, start_val = init if isinstance(init, tuple) else (init, init)
        data = lgb.Dataset(
            x, label=y, feature_name=names, categorical_feature=cats,
            init_score=np.broadcast_to(start, (len(y),)).astype(np.float64),
        )  # fmt: skip
        held = lgb.Dataset(
            x_val, label=y_val, reference=data,
            init_score=np.broadcast_to(start_val, (len(y_val),)).astype(np.float64),
        )  # fmt: skip
        booster = lgb.train(
            self.params(boost_from_average=False, **extra),
            data,
            num_boost_round=self.num_boost_round,
            valid_sets=[held],
            callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
        )
        best = int(booster.best_iteration or booster.current_iteration())
        return lgb.Booster(model_str=booster.model_to_string(num_iteration=best))


def early_stopping_rows(customers: Array, random_state: int) -> Array:
    """A fifth of the customers, held out of fitting to stop the boosting early."""
    return customer_folds(customers, 5, random_state + 1) == 0


def fit_customer_values(
    log: DecisionLog, targets: Array, usable: Array, n_folds: int, boosting: Boosting
) -> Array:
    """Cross-fitted prediction of ``targets`` from each row's customer features (not the
    :data:`ACTION_FEATURES`), for every row.

    Fitted on the ``usable`` rows of the other customer folds, so a row's own future never
    enters its prediction.
    """
    names = [c for c in log.features.columns if c not in ACTION_FEATURES]
    x = log.features[names].to_numpy(np.float64)
    folds = customer_folds(log.customers, n_folds, boosting.random_state)
    stop = early_stopping_rows(log.customers, boosting.random_state)
    out = np.zeros(len(x))
    for f in range(n_folds):
        fit_rows, stop_rows = usable & (folds != f) & ~stop, usable & (folds != f) & stop
        if not fit_rows.any() or not stop_rows.any():
            raise ValueError(
                "too few decisions to fit the customer value model: simulate more customers or "
                "days, or set value_days to 0"
            )
        mean = float(targets[fit_rows].mean())
        model = boosting.train(
            (x[fit_rows], targets[fit_rows]), (x[stop_rows], targets[stop_rows]), names, mean
        )
        out[folds == f] = mean + np.asarray(model.predict(x[folds == f]))
    return out


class DoublyRobustValue:
    """DR-learner of each action's effect on a continuous reward, on LightGBM.

    Nuisance: an outcome model μ(x, option) (one regression with the option as a categorical
    input, as ``training/uplift.py`` does), cross-fitted over customer folds. Pseudo-outcome of
    action a for a decision with option A, reward Y and logged propensity e:
    ``ψ_a = μ_a − μ_0 + 1[A=a](Y − μ_a)/e − 1[A=none](Y − μ_0)/e``. Final stage: per action a
    regression of ψ_a on x over the decisions the action was allowed for, early-stopped on
    held-out customers, so trees add only what holds out of sample. It starts from the action's
    mean pseudo-outcome (the AIPW average effect, ``start="average"``, as ``training/uplift.py``)
    or from the outcome model's effect μ_a(x) − μ_0(x) (``start="outcome"``): then the trees
    are DR corrections of the outcome model's heterogeneity instead of having to find it again
    in the noisy pseudo-outcomes, and prediction averages the cross-fitted outcome models.
    """

    def __init__(
        self,
        start: Literal["average", "outcome"] = "outcome",
        propensity_floor: float = 0.02,
        min_data_in_leaf: int = 400,
        num_boost_round: int = 300,
        early_stopping_rounds: int = 30,
        n_folds: int = 2,
        random_state: int = 0,
        num_threads: int = 2,
    ):
        self.start = start
        self.propensity_floor = propensity_floor
        self.min_data_in_leaf = min_data_in_leaf
        self.num_boost_round = num_boost_round
        self.early_stopping_rounds = early_stopping_rounds
        self.n_folds = n_folds
        self.random_state = random_state
        self.num_threads = num_threads

    def _boosting(self) -> Boosting:
        return Boosting(
            self.min_data_in_leaf,
            self.num_boost_round,
            self.early_stopping_rounds,
            self.random_state,
            self.num_threads,
        )

    @staticmethod
    def _with_option(x: Array, option: int | Array) -> Array:
        column = np.broadcast_to(np.asarray(option, dtype=np.float64), (len(x),))
        return np.column_stack([x, column])

    def outcome_predictions(self, log: DecisionLog) -> Array:
        """Cross-fitted μ(x, option) for every row and option, (n, 1 + actions)."""
        assert log.rewards is not None
        boosting = self._boosting()
        x, a, y = log.features.to_numpy(np.float64), log.options, log.rewards
        names = [*log.features.columns, "option"]
        folds = customer_folds(log.customers, self.n_folds, self.random_state)
        stop = early_stopping_rows(log.customers, self.random_state)
        mu = np.zeros((len(x), log.eligible.shape[1] + 1))
        self.outcome_models_: list[tuple[float, lgb.Booster]] = []
        for f in range(self.n_folds):
            fit_rows, stop_rows, out_rows = (folds != f) & ~stop, (folds != f) & stop, folds == f
            mean = float(y[fit_rows].mean())
            model = boosting.train(
                (self._with_option(x[fit_rows], a[fit_rows]), y[fit_rows]),
                (self._with_option(x[stop_rows], a[stop_rows]), y[stop_rows]),
                names,
                mean,
            )
            self.outcome_models_.append((mean, model))
            for option in range(mu.shape[1]):
                predicted = model.predict(self._with_option(x[out_rows], option))
                mu[out_rows, option] = mean + np.asarray(predicted)
        return mu

    def pseudo_outcomes(self, log: DecisionLog, mu: Array) -> Array:
        """DR pseudo-outcomes (n, actions) of every row, from cross-fitted ``mu``."""
        assert log.rewards is not None
        a, k = log.options, log.eligible.shape[1]
        e = np.maximum(log.propensities, self.propensity_floor)
        resid = (log.rewards - mu[np.arange(len(a)), a]) / e
        psi = mu[:, 1:] - mu[:, [0]]
        psi += np.where(a[:, None] == np.arange(1, k + 1)[None, :], resid[:, None], 0.0)
        psi -= np.where(a == 0, resid, 0.0)[:, None]
        return np.asarray(psi)

    def fit(self, log: DecisionLog) -> DoublyRobustValue:
        """Fits the cross-fitted outcome model, the pseudo-outcomes and the effect models."""
        if log.rewards is None:
            raise ValueError("the decision log has no rewards: record it with record_logging_run")
        if not ((log.propensities > 0) & (log.propensities <= 1)).all():
            raise ValueError("logged propensities must be in (0, 1]")
        if len(np.unique(log.customers)) < 10:
            raise ValueError(f"{len(np.unique(log.customers))} customers are too few to learn from")
        self.features_ = list(log.features.columns)
        self.n_actions_ = log.eligible.shape[1]
        mu = self.outcome_predictions(log)
        psi = self.pseudo_outcomes(log, mu)
        x = log.features.to_numpy(np.float64)
        stop = early_stopping_rows(log.customers, self.random_state)
        boosting = self._boosting()
        self.base_effects_ = np.zeros(self.n_actions_)
        self.effect_models_: list[lgb.Booster | None] = []
        for j in range(self.n_actions_):
            ok = log.eligible[:, j]
            fit_rows, stop_rows = ok & ~stop, ok & stop
            self.base_effects_[j] = float(psi[fit_rows, j].mean()) if fit_rows.any() else 0.0
            if fit_rows.sum() < 2 * self.min_data_in_leaf or not stop_rows.any():
                self.effect_models_.append(None)
                continue
            start: float | tuple[Array, Array] = self.base_effects_[j]
            if self.start == "outcome":
                effect = mu[:, j + 1] - mu[:, 0]
                start = (effect[fit_rows], effect[stop_rows])
            self.effect_models_.append(
                boosting.train(
                    (x[fit_rows], psi[fit_rows, j]),
                    (x[stop_rows], psi[stop_rows, j]),
                    self.features_,
                    start,
                )
            )
        return self

    def _outcome_effects(self, x: Array) -> Array:
        """μ_a(x) − μ_0(x), (n, actions), averaged over the cross-fitted outcome models."""
        out = np.zeros((len(x), self.n_actions_))
        for _, model in self.outcome_models_:
            none = np.asarray(model.predict(self._with_option(x, 0)))
            for j in range(self.n_actions_):
                out[:, j] += np.asarray(model.predict(self._with_option(x, j + 1))) - none
        return out / len(self.outcome_models_)

    def predict_effects(self, features: pd.DataFrame) -> Array:
        """(n, actions) predicted effect on the reward of each action versus no action."""
        x = features[self.features_].to_numpy(np.float64)
        if self.start == "outcome":
            out = self._outcome_effects(x)
        else:
            out = np.tile(self.base_effects_, (len(x), 1))
        for j, model in enumerate(self.effect_models_):
            if model is None:  # too few decisions for trees: the average effect
                out[:, j] = self.base_effects_[j]
            else:
                out[:, j] += np.asarray(model.predict(x))
        return out


# -- learning from the logging policy's run ------------------------------------------------------


def decision_rewards(
    log: DecisionLog,
    revenue: Array,
    costs: Array,
    horizon_days: int,
    end_values: Array | None = None,
) -> Array:
    """Net value of each decision: revenue from its day through the next ``horizon_days - 1``
    (actions arrive before the day's purchases) minus the cost of the action sent, plus
    ``end_values`` of the customer's decision ``horizon_days`` later (none if they cancelled).
    """
    gained = window_revenue(revenue, log.customers, log.days, horizon_days)
    reward = gained - np.concatenate([[0.0], costs])[log.options]
    if end_values is not None:
        width = int(log.days.max()) + horizon_days + 1
        keys = pd.Index(log.customers.astype(np.int64) * width + log.days)
        later = keys.get_indexer(pd.Index(keys + horizon_days))
        reward = reward + np.where(later >= 0, end_values[later], 0.0)
    return np.asarray(reward)


def record_logging_run(
    world: World,
    journey: JourneyMap,
    policy: DistributionPolicy,
    customers: int,
    days: int,
    seed: int,
    start: date,
    settings: LearnerSettings,
) -> DecisionLog:
    """Runs ``policy`` on ``seed`` and returns its decisions of the first ``days`` days with
    their rewards (see :class:`LearnerSettings`).

    The run lasts ``horizon_days + value_days`` longer than ``days``, so every returned
    decision's reward is complete.
    """
    every = world.policy.every_days
    horizon = -(-settings.horizon_days // every) * every  # whole decision intervals
    total = days + horizon + settings.value_days
    recorder = RecordingPolicy(policy, history=settings.history, hidden=settings.hidden)
    _, outcomes = simulate(
        world, journey, customers, total, seed=seed, start=start, out=None, truth=None,
        policy=recorder, keep_log=True,
    )  # fmt: skip
    if outcomes.log is None:
        raise RuntimeError("the simulator kept no log of the logging run")
    log = recorder.log()
    if settings.features == "journey":
        view = JourneyFeatures(journey, simulator_feature_settings())
        try:
            view.add(
                pa.Table.from_pandas(outcomes.log.events, preserve_index=False),
                pa.Table.from_pandas(outcomes.log.customers, preserve_index=False),
            )
            frame = view.at(customer_id_strings(log.customers), decision_times(start, log.days))
        finally:
            view.close()
        encoded, log.categories = encode_features(frame)
        if settings.hidden:
            encoded = pd.concat([encoded, log.features[list(HIDDEN_FEATURES)]], axis=1)
        log.features = encoded
    revenue = daily_revenue(outcomes.log.events, journey, customers, total, start)
    end_values = None
    if settings.value_days:
        future = window_revenue(revenue, log.customers, log.days, settings.value_days)
        boosting = Boosting(
            settings.min_data_in_leaf, settings.num_boost_round, 30, settings.random_state,
            settings.num_threads,
        )  # fmt: skip
        usable = log.days + settings.value_days <= total
        end_values = fit_customer_values(log, future, usable, settings.n_folds, boosting)
    costs = np.array([a.cost for a in world.actions])
    rewards = decision_rewards(log, revenue, costs, horizon, end_values)
    kept = np.flatnonzero(log.days < days)
    log.rewards = rewards
    log = log.take(kept)
    logger.info(
        "recorded %d decisions of %d customers (mean reward %.2f: %d days realised, %d valued)",
        len(log), customers, float(np.mean(rewards[kept])), horizon, settings.value_days,
    )  # fmt: skip
    return log


class LearnedPolicy:
    """The eligible action with the highest predicted net effect, or none if none is positive.

    It keeps what it needs of the run it decides in — the history of the observations, or the
    run's events for journey features (handed over by the simulator through
    :meth:`observe_events`) — and a run that starts again at an earlier day starts afresh, so
    one instance serves one run at a time, without ground truth roll-outs
    (``simulate(..., truth=None)``).
    """

    def __init__(
        self,
        model: DoublyRobustValue,
        history: bool = True,
        *,
        journey: JourneyMap | None = None,
        categories: dict[str, list[str]] | None = None,
        start: date = date(2025, 1, 1),
        hidden: bool = False,
    ):
        self.model = model
        self.journey_view = (
            JourneyFeatures(journey, simulator_feature_settings()) if journey is not None else None
        )
        self.history = ObservationHistory() if history and journey is None else None
        self.categories = categories
        self.start = start
        self.hidden = hidden
        self._latest_event: pd.Timestamp | None = None

    def observe_events(self, events: pa.Table, customers: pa.Table) -> None:
        """Adds a day of the run's log (journey features read it at the next decision)."""
        if self.journey_view is None:
            return
        times = events.column("timestamp").to_pandas()
        if self._latest_event is not None and times.min() < self._latest_event - pd.Timedelta(
            days=1
        ):
            self.journey_view.reset()  # a new run
        self._latest_event = times.max()
        self.journey_view.add(events, customers)

    def inputs(self, obs: Observation) -> pd.DataFrame:
        """What the model reads for the observed customers."""
        if self.journey_view is not None:
            if obs.day == 0:
                self.journey_view.reset()
                self._latest_event = None
            ids = [f"C{c:0{obs.id_width}d}" for c in obs.customer_index]
            when = decision_times(self.start, np.full(len(obs), obs.day))
            frame = self.journey_view.at(ids, when)
            features, _ = encode_features(frame, self.categories)
        else:
            if self.history is not None and obs.day <= self.history.latest:
                self.history.reset()
            features = decision_features(obs, self.history)
        if self.hidden:
            features = pd.concat([features, hidden_features(obs)], axis=1)
        return features

    def effects(self, obs: Observation) -> Array:
        """(customers, actions) predicted net effects; -inf where an action is not allowed."""
        predicted = self.model.predict_effects(self.inputs(obs))
        return np.where(obs.eligible, predicted, -np.inf)

    def probabilities(self, obs: Observation) -> Array:
        effects = self.effects(obs)
        rows = np.arange(len(obs))
        best = np.argmax(effects, axis=1) if effects.shape[1] else np.zeros(len(obs), int)
        positive = effects[rows, best] > 0 if effects.shape[1] else np.zeros(len(obs), bool)
        p = np.zeros((len(obs), obs.eligible.shape[1] + 1))
        p[rows, np.where(positive, best + 1, 0)] = 1.0
        return p

    def __call__(self, obs: Observation, u: Array) -> tuple[Array, Array]:
        actions, propensities = sample_from(self.probabilities(obs), u)
        if self.history is not None:
            self.history.update(obs, actions)
        return actions, propensities


def learn_policy(
    world: World,
    journey: JourneyMap,
    logging: DistributionPolicy,
    customers: int,
    days: int,
    seed: int,
    start: date,
    settings: LearnerSettings,
) -> LearnedPolicy:
    """Records ``logging`` on ``seed`` and learns a policy from its decisions alone."""
    log = record_logging_run(
        world, journey, logging, max(round(customers * settings.log_customers_factor), 1),
        days, seed, start, settings,
    )  # fmt: skip
    model = DoublyRobustValue(
        start=settings.effect_start,
        propensity_floor=settings.propensity_floor,
        min_data_in_leaf=settings.min_data_in_leaf,
        num_boost_round=settings.num_boost_round,
        n_folds=settings.n_folds,
        random_state=settings.random_state,
        num_threads=settings.num_threads,
    ).fit(log)
    logger.info(
        "learned policy: average effects %s",
        {a: round(float(e), 2) for a, e in zip(world.action_ids, model.base_effects_, strict=True)},
    )
    if settings.features == "journey":
        return LearnedPolicy(
            model, journey=journey, categories=log.categories, start=start, hidden=settings.hidden
        )
    return LearnedPolicy(model, history=settings.history, hidden=settings.hidden)


def simulator_feature_settings() -> FeatureSettings:
    """The simulator's feature settings (its config set's ``features.yaml``)."""
    return load_feature_settings(str(SIMULATOR_CONFIG_DIR / "features.yaml"))


def customer_id_strings(customers: Array, width: int = 7) -> list[str]:
    """The customers table's ids of run positions (``C%0{width}d``)."""
    return [f"C{int(c):0{width}d}" for c in customers]


def decision_times(start: date, days: Array) -> pd.Series:
    """Midnight UTC of each decision's day: its journey features read the log before it."""
    base = pd.Timestamp(start, tz="UTC")
    return pd.Series(base + pd.to_timedelta(np.asarray(days, dtype=np.int64), unit="D"))
