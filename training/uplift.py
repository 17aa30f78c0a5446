"""Action uplift for next-best-action: each action's incremental effect per customer.

**Meta-learner: a doubly-robust (DR) learner** (Kennedy 2020) on LightGBM, with cross-fitting.

Why DR rather than S/T/X:

- The log comes from a *randomised logging policy that records its propensities*. DR uses
  them directly: its pseudo-outcome is unbiased for the effect when either the propensities
  or the outcome model are right, and here the propensities are right by construction. An
  S-learner can shrink a weak treatment feature's effect to zero (regularisation bias); a
  T-learner fits one model per arm and differences two noisy fits, which is poor for arms with
  a tenth of the data each; an X-learner also needs propensities but is defined for one
  treatment versus control, while DR extends to many actions sharing one control arm.
- Cross-fitting (nuisance models fitted on the other fold) keeps the outcome model's
  over-fitting out of the pseudo-outcomes.

Steps, for arms ``none`` + actions, outcomes *convert* and *churn*:

1. Nuisances, cross-fitted over customer folds: an outcome model μ(x, arm) per outcome
   (LightGBM binary, arm as a categorical feature) and a propensity model e(arm | x)
   (LightGBM multiclass). A recorded propensity (``treatments.propensity_property``) replaces
   the estimate for the arm the customer received; logs without one use the estimate.
2. Pseudo-outcome per unit and action a:
   ``ψ_a = μ_a − μ_0 + 1[A=a](Y − μ_a)/e_a − 1[A=none](Y − μ_0)/e_none``, propensities
   floored at ``propensity_floor``.
3. Final stage: one LightGBM regression per outcome on the units stacked once per action
   (action code as a categorical input), starting from each action's mean pseudo-outcome
   (its AIPW average effect) and early-stopped on the validation period's pseudo-outcomes,
   so trees add only heterogeneity that holds out of sample. Its prediction is
   τ_a(x) = P(Y | do(a), x) − P(Y | do(none), x).

Units and confounding: with a decision log (every decision, "none" included, with its
propensity) the units are the decisions. From events alone, every active customer at a cutoff
is a unit and "no action event" is the control arm; that is only unconfounded when the policy
decided for every such customer. A policy that skips customers it knows to be gone (the
simulator's does: it sees its latent "alive" state) puts them all in the control arm and
biases every effect upwards; pass the decision log in that case.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa

from journeyml.config import JourneyMap
from training.bundle import ACTION_FEATURE, encode_frame
from training.metrics import qini_coefficient
from training.models import fit_vocabularies, lightgbm_params, train_early_stopped

logger = logging.getLogger(__name__)

CONTROL = "none"
OUTCOMES: tuple[str, ...] = ("convert", "churn")


def assign_treatments(
    con: duckdb.DuckDBPyConnection,
    journey_map: JourneyMap,
    entities: pd.DataFrame,
    window_days: int,
) -> pd.DataFrame:
    """The first marketing action in ``[cutoff, cutoff + window_days)`` of each unit.

    Needs the ``events`` and ``roles`` relations of ``features.pipeline.register_inputs``.

    Returns:
        customer_id, cutoff, ``arm`` (the action id, or ``none``) and ``propensity`` (the
        recorded probability of that action, NaN when the log has none or for ``none``).
    """
    t = journey_map.treatments
    action_prop = t.action_property.replace("'", "''")
    prop_prop = t.propensity_property.replace("'", "''")
    frame = pa.table(
        {
            "customer_id": pa.array(entities["customer_id"].astype(str), pa.string()),
            "cutoff": pa.array(
                pd.to_datetime(entities["cutoff"], utc=True), pa.timestamp("us", tz="UTC")
            ),
        }
    )
    con.register("units_arrow", frame)
    try:
        return con.execute(
            f"""
            WITH actions AS (
                SELECT e.customer_id, e.timestamp AS ts, e.event_id,
                    COALESCE(JSON_EXTRACT_STRING(e.properties, '$.{action_prop}'),
                             e.event_type) AS action_id,
                    TRY_CAST(JSON_EXTRACT_STRING(e.properties, '$.{prop_prop}') AS DOUBLE)
                        AS propensity
                FROM events AS e JOIN roles AS r ON r.event_type = e.event_type
                WHERE r.is_treatment = 1
            ),
            firsts AS (
                SELECT u.customer_id, u.cutoff,
                    FIRST(a.action_id ORDER BY a.ts, a.event_id) AS action_id,
                    FIRST(a.propensity ORDER BY a.ts, a.event_id) AS propensity
                FROM units_arrow AS u
                JOIN actions AS a ON a.customer_id = u.customer_id
                    AND a.ts >= u.cutoff AND a.ts < u.cutoff + INTERVAL {int(window_days)} DAY
                GROUP BY u.customer_id, u.cutoff
            )
            SELECT u.customer_id, u.cutoff,
                COALESCE(f.action_id, '{CONTROL}') AS arm,
                f.propensity
            FROM units_arrow AS u
            LEFT JOIN firsts AS f ON f.customer_id = u.customer_id AND f.cutoff = u.cutoff
            """
        ).df()
    finally:
        con.unregister("units_arrow")


def customer_folds(
    customer_ids: Sequence[str] | np.ndarray, n_folds: int, random_state: int
) -> np.ndarray:
    """A fold per row, the same for every row of a customer (seeded)."""
    ids = pd.Series(np.asarray(customer_ids, dtype=object)).astype(str)
    unique = np.sort(ids.unique())
    rng = np.random.default_rng(random_state)
    fold_of = dict(zip(unique, rng.integers(0, n_folds, len(unique)), strict=True))
    return ids.map(fold_of).to_numpy(dtype=np.int64)


@dataclass
class UpliftData:
    """Units of the uplift model: features, the arm received, its propensity, outcomes."""

    frame: pd.DataFrame
    arm: np.ndarray
    propensity: np.ndarray
    outcomes: dict[str, np.ndarray]
    customers: np.ndarray

    def take(self, mask: np.ndarray) -> UpliftData:
        return UpliftData(
            self.frame[mask],
            self.arm[mask],
            self.propensity[mask],
            {k: v[mask] for k, v in self.outcomes.items()},
            self.customers[mask],
        )


class DoublyRobustUplift:
    """DR-learner of every action's effect on conversion and churn (see the module docstring).

    Args:
        features: input features.
        categorical: the string features among them.
        propensity_floor: smallest propensity used in a pseudo-outcome (bounds the weights).
        params: LightGBM overrides for every model.
        num_boost_round: maximum rounds of every model.
        early_stopping_rounds: rounds without validation improvement before stopping.
        n_folds: cross-fitting folds.
        random_state: seed of the folds and of LightGBM.
        num_threads: LightGBM threads.
    """

    kind = "uplift"

    def __init__(
        self,
        features: Sequence[str],
        categorical: Sequence[str] = (),
        propensity_floor: float = 0.02,
        params: dict[str, Any] | None = None,
        num_boost_round: int = 300,
        early_stopping_rounds: int = 30,
        n_folds: int = 2,
        random_state: int = 42,
        num_threads: int = 2,
    ):
        self.features = features
        self.categorical = categorical
        self.propensity_floor = propensity_floor
        self.params = params
        self.num_boost_round = num_boost_round
        self.early_stopping_rounds = early_stopping_rounds
        self.n_folds = n_folds
        self.random_state = random_state
        self.num_threads = num_threads

    # -- helpers -------------------------------------------------------------------------

    def _params(self, objective: str, **extra: Any) -> dict[str, Any]:
        p = lightgbm_params(objective, self.random_state, self.num_threads, self.params or {})
        p.update(extra)
        return p

    def _train(
        self,
        params: dict[str, Any],
        x: np.ndarray,
        y: np.ndarray,
        x_val: np.ndarray,
        y_val: np.ndarray,
        names: list[str],
        cats: list[str],
        init_score: np.ndarray | None = None,
        init_score_val: np.ndarray | None = None,
    ) -> lgb.Booster:
        train = lgb.Dataset(
            x,
            label=y,
            feature_name=names,
            categorical_feature=cats or "auto",
            init_score=init_score,
        )
        valid = lgb.Dataset(x_val, label=y_val, reference=train, init_score=init_score_val)
        _, text = train_early_stopped(
            params, train, valid, self.num_boost_round, self.early_stopping_rounds
        )
        return lgb.Booster(model_str=text)

    def _with_arm(self, x: np.ndarray, arm_codes: np.ndarray) -> np.ndarray:
        return np.hstack([x, arm_codes.astype(np.float32)[:, None]])

    def _arm_codes(self, arms: np.ndarray) -> np.ndarray:
        index = {a: i for i, a in enumerate(self.arms_)}
        return np.array([index.get(str(a), -1) for a in arms], dtype=np.int64)

    def _all_arms(self, booster: lgb.Booster, x: np.ndarray) -> np.ndarray:
        """μ(x, arm) for every arm, shape (n, arms)."""
        return np.column_stack(
            [booster.predict(self._with_arm(x, np.full(len(x), i))) for i in range(len(self.arms_))]
        )

    def propensities(
        self, x_encoded: np.ndarray, arm_codes: np.ndarray, recorded: np.ndarray
    ) -> np.ndarray:
        """Propensity of the arm each unit received: recorded when known, else estimated.

        Without a propensity model (every training unit had a recorded propensity), missing
        ones fall back to the arm's share of the training units.
        """
        rec = np.asarray(recorded, dtype=np.float64)
        known = np.isfinite(rec) & (rec > 0)
        if known.all():
            return np.asarray(np.maximum(rec, self.propensity_floor))
        if self.propensity_models_:
            est = np.mean([m.predict(x_encoded) for m in self.propensity_models_], axis=0)
            mine = est[np.arange(len(arm_codes)), arm_codes]
        else:
            mine = np.asarray(self.arm_shares_)[arm_codes]
        return np.asarray(np.maximum(np.where(known, rec, mine), self.propensity_floor))

    def _pseudo(
        self, mu: np.ndarray, arm_codes: np.ndarray, y: np.ndarray, e: np.ndarray
    ) -> np.ndarray:
        """Pseudo-outcomes (n, actions) of the DR-learner."""
        n = len(y)
        rows = np.arange(n)
        resid = (y - mu[rows, arm_codes]) / e
        out = mu[:, 1:] - mu[:, [0]]
        for a in range(1, len(self.arms_)):
            out[:, a - 1] += np.where(arm_codes == a, resid, 0.0)
        out -= np.where(arm_codes == 0, resid, 0.0)[:, None]
        return np.asarray(out)

    # -- fit / predict -------------------------------------------------------------------

    def fit(self, data: UpliftData, eval_set: UpliftData) -> DoublyRobustUplift:
        """Fits nuisances (cross-fitted), pseudo-outcomes and the final effect models."""
        features = list(self.features)
        cats = [f for f in features if f in set(self.categorical)]
        self.actions_ = sorted({str(a) for a in data.arm} - {CONTROL})
        if not self.actions_:
            raise ValueError("the log has no marketing actions in the training period")
        self.arms_ = [CONTROL, *self.actions_]
        self.vocabularies_ = fit_vocabularies(data.frame, self.categorical)
        x = encode_frame(data.frame, features, self.vocabularies_).astype(np.float32)
        xv = encode_frame(eval_set.frame, features, self.vocabularies_).astype(np.float32)
        a = self._arm_codes(data.arm)
        av = self._arm_codes(eval_set.arm)
        keep_v = av >= 0
        folds = customer_folds(data.customers, self.n_folds, self.random_state)
        k = len(self.arms_)
        arm_names = [*features, ACTION_FEATURE]
        arm_cats = [*cats, ACTION_FEATURE]

        self.propensity_models_: list[lgb.Booster] = []
        self.arm_shares_ = [float(v) for v in np.bincount(a, minlength=k) / len(a)]
        # a log that records every propensity (a decision log) needs no propensity model
        recorded = np.concatenate([data.propensity, eval_set.propensity])
        need_propensity = not bool(np.all(np.isfinite(recorded) & (recorded > 0)))
        mu = {o: np.zeros((len(x), k)) for o in OUTCOMES}
        mu_val = {o: np.zeros((len(xv), k)) for o in OUTCOMES}
        prop_params = self._params("multiclass", num_class=k, metric="multi_logloss")
        for f in range(self.n_folds):
            fit_rows = folds != f
            out_rows = folds == f
            if not out_rows.any() or not fit_rows.any():
                continue
            if need_propensity:
                model = self._train(
                    prop_params, x[fit_rows], a[fit_rows], xv[keep_v], av[keep_v], features, cats
                )
                self.propensity_models_.append(model)
            for o in OUTCOMES:
                booster = self._train(
                    self._params("binary", metric="binary_logloss"),
                    self._with_arm(x[fit_rows], a[fit_rows]),
                    data.outcomes[o][fit_rows],
                    self._with_arm(xv[keep_v], av[keep_v]),
                    eval_set.outcomes[o][keep_v],
                    arm_names,
                    arm_cats,
                )
                mu[o][out_rows] = self._all_arms(booster, x[out_rows])
                mu_val[o] += self._all_arms(booster, xv) / self.n_folds
        e = self.propensities(x, a, data.propensity)
        ev = self.propensities(xv[keep_v], av[keep_v], eval_set.propensity[keep_v])

        n_act = len(self.actions_)
        stacked = np.vstack([self._with_arm(x, np.full(len(x), j)) for j in range(n_act)])
        stacked_v = np.vstack(
            [self._with_arm(xv[keep_v], np.full(int(keep_v.sum()), j)) for j in range(n_act)]
        )
        self.effect_models_: dict[str, lgb.Booster] = {}
        self.base_effects_: dict[str, list[float]] = {}
        n_v = int(keep_v.sum())
        for o in OUTCOMES:
            psi = self._pseudo(mu[o], a, data.outcomes[o].astype(np.float64), e)
            psi_v = self._pseudo(
                mu_val[o][keep_v], av[keep_v], eval_set.outcomes[o][keep_v].astype(float), ev
            )
            # The mean pseudo-outcome of an action is its AIPW average effect; the trees start
            # from it and add only the heterogeneity the validation period confirms.
            base = psi.mean(axis=0)
            self.base_effects_[o] = [float(v) for v in base]
            self.effect_models_[o] = self._train(
                self._params("regression", metric="l2", boost_from_average=False),
                stacked,
                psi.T.reshape(-1),
                stacked_v,
                psi_v.T.reshape(-1),
                arm_names,
                arm_cats,
                init_score=np.repeat(base, len(x)),
                init_score_val=np.repeat(base, n_v),
            )
        return self

    def predict_effects(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """τ_a(x) per outcome: (n, actions) differences in probability versus no action."""
        x = encode_frame(frame, list(self.features), self.vocabularies_)
        n, k = len(x), len(self.actions_)
        stacked = np.hstack(
            [np.repeat(x, k, axis=0), np.tile(np.arange(k, dtype=np.float64), n)[:, None]]
        )
        return {
            o: np.asarray(m.predict(stacked)).reshape(n, k) + np.asarray(self.base_effects_[o])
            for o, m in self.effect_models_.items()
        }

    def model_texts(self) -> dict[str, str]:
        """LightGBM text models of the bundle (the final-stage effect models)."""
        return {f"effect_{o}": m.model_to_string() for o, m in self.effect_models_.items()}

    def feature_importance(self) -> pd.Series:
        gain = sum(
            m.feature_importance(importance_type="gain") for m in self.effect_models_.values()
        )
        names = [*self.features, ACTION_FEATURE]
        return pd.Series(gain, index=names).sort_values(ascending=False)


def evaluate_uplift(
    model: DoublyRobustUplift, data: UpliftData, effects: Mapping[str, np.ndarray] | None = None
) -> dict[str, float]:
    """Qini coefficient and AUUC per action and outcome on held-out units.

    For each action, units that received it or no action are ranked by the predicted effect
    (conversion: highest first; churn: most negative first) and weighted by the inverse
    propensity of the arm they received.
    """
    x = encode_frame(data.frame, list(model.features), model.vocabularies_)
    codes = model._arm_codes(data.arm)
    known = codes >= 0
    e = np.full(len(codes), np.nan)
    e[known] = model.propensities(x[known], codes[known], data.propensity[known])
    effects = effects or model.predict_effects(data.frame)
    out: dict[str, float] = {}
    for outcome in OUTCOMES:
        sign = 1.0 if outcome == "convert" else -1.0
        y = data.outcomes[outcome].astype(np.float64)
        y_good = y if outcome == "convert" else 1.0 - y
        qinis, auucs = [], []
        for j, action in enumerate(model.actions_):
            rows = known & ((codes == j + 1) | (codes == 0))
            if rows.sum() < 20:
                continue
            q, auuc = qini_coefficient(
                sign * effects[outcome][rows, j], codes[rows] == j + 1, y_good[rows], 1 / e[rows]
            )
            out[f"qini_{outcome}_{action}"] = q
            out[f"auuc_{outcome}_{action}"] = auuc
            qinis.append(q)
            auucs.append(auuc)
        out[f"qini_{outcome}"] = float(np.nanmean(qinis)) if qinis else float("nan")
        out[f"auuc_{outcome}"] = float(np.nanmean(auucs)) if auucs else float("nan")
    out["treated_share"] = float((codes > 0).mean())
    return out
