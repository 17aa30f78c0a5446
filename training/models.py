"""The journey models and their baselines, with scikit-learn conventions.

Hyperparameters go to ``__init__`` (no logic there), learned state ends with ``_``, ``fit``
returns ``self`` and every source of randomness takes ``random_state``. The LightGBM models
are trained through ``lightgbm.train`` on a Booster, so they save as LightGBM's text model
(never a pickle), with string features as integer codes of a JSON vocabulary.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from training.bundle import (
    apply_binary_calibrator,
    apply_multiclass_calibrator,
    encode_frame,
    linear_terms,
    signed_log1p,
)
from training.calibration import fit_binary_calibrator, fit_vector_scaling, relevel

logger = logging.getLogger(__name__)

OTHER_CLASS = "other"


def fit_vocabularies(frame: pd.DataFrame, categorical: Sequence[str]) -> dict[str, list[str]]:
    """Vocabulary of each string feature: values by descending frequency, then by name."""
    vocab = {}
    for name in categorical:
        counts = frame[name].dropna().astype(str).value_counts()
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        vocab[name] = [str(value) for value, _ in ordered]
    return vocab


def monotone_vector(
    features: Sequence[str],
    increasing: Sequence[str],
    decreasing: Sequence[str],
    categorical: Sequence[str] = (),
) -> list[int]:
    """LightGBM monotone constraints (+1, -1, 0) for features matching the patterns."""
    cats = set(categorical)
    out = []
    for f in features:
        if f in cats:
            out.append(0)
        elif any(fnmatchcase(f, p) for p in increasing):
            out.append(1)
        elif any(fnmatchcase(f, p) for p in decreasing):
            out.append(-1)
        else:
            out.append(0)
    return out


def train_early_stopped(
    params: dict[str, Any],
    train: lgb.Dataset,
    valid: lgb.Dataset,
    num_boost_round: int,
    early_stopping_rounds: int,
) -> tuple[int, str]:
    """Boosts on ``train`` until ``valid`` stops improving; returns the best iteration and the
    text model cut at it (the model serving loads, byte for byte)."""
    booster = lgb.train(
        params,
        train,
        num_boost_round=num_boost_round,
        valid_sets=[valid],
        valid_names=["validation"],
        callbacks=[lgb.early_stopping(early_stopping_rounds, verbose=False)],
    )
    best = int(booster.best_iteration or booster.current_iteration())
    return best, booster.model_to_string(num_iteration=best)


def lightgbm_params(
    objective: str, random_state: int, num_threads: int, overrides: dict[str, Any]
) -> dict[str, Any]:
    """Defaults for journey data (deterministic for a seed and thread count), then overrides."""
    params: dict[str, Any] = {
        "objective": objective,
        "learning_rate": 0.05,
        "num_leaves": 31,
        "min_data_in_leaf": 100,
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "max_bin": 127,
        "cat_smooth": 10.0,
        "verbose": -1,
        "seed": random_state,
        "deterministic": True,
        "force_col_wise": True,
        "num_threads": num_threads,
    }
    params.update(overrides)
    return params


def class_weights(counts: np.ndarray, imbalance: str) -> np.ndarray:
    """Per-class training weights (mean 1 over rows) for ``none``, ``balanced`` or ``sqrt``."""
    counts = np.asarray(counts, dtype=np.float64)
    if imbalance == "none":
        return np.ones_like(counts)
    safe = np.maximum(counts, 1.0)
    w = counts.sum() / (len(counts) * safe)
    if imbalance == "sqrt":
        w = np.sqrt(w)
    return w / (w * counts).sum() * counts.sum()


def calibrate(
    raw: np.ndarray,
    y: np.ndarray,
    method: str,
    random_state: int,
    recent: np.ndarray | None = None,
) -> dict[str, Any]:
    """A binary calibrator fitted on held-out raw scores, re-levelled on the ``recent`` rows
    (the latest matured cutoffs) when their label rate has moved (see
    :func:`training.calibration.relevel`). Every model and registered baseline calibrates so."""
    raw, y = np.asarray(raw, dtype=np.float64), np.asarray(y, dtype=np.int64)
    spec = fit_binary_calibrator(raw, y, method, random_state)
    if recent is not None and spec["method"] != "none":
        recent = np.asarray(recent, dtype=bool)
        spec = relevel(spec, raw[recent], y[recent], raw, y)
    return spec


class BinaryJourneyModel:
    """LightGBM binary classifier with native categoricals, imbalance weights and calibration.

    Early stopping watches the validation period; the calibrator is then fitted on the
    validation period's raw scores. Class imbalance is handled with a positive-class weight
    during training only: boosting then spends its splits on the rare class, and the
    calibrator maps the shifted scores back to probabilities.

    Args:
        features: input feature names, in order.
        categorical: the string features among them.
        imbalance: ``none``, ``balanced`` (positive weight = negatives / positives) or
            ``sqrt`` (its square root).
        calibration: ``auto``, ``isotonic``, ``platt`` or ``none``.
        monotone_increasing: feature patterns the probability may only rise with.
        monotone_decreasing: feature patterns the probability may only fall with.
        params: LightGBM parameter overrides.
        num_boost_round: maximum boosting rounds.
        early_stopping_rounds: rounds without validation improvement before stopping.
        random_state: seed of LightGBM and of the calibrator selection.
        num_threads: LightGBM threads (part of the reproducibility contract).
    """

    kind = "binary"

    def __init__(
        self,
        features: Sequence[str],
        categorical: Sequence[str] = (),
        imbalance: str = "balanced",
        calibration: str = "auto",
        monotone_increasing: Sequence[str] = (),
        monotone_decreasing: Sequence[str] = (),
        params: dict[str, Any] | None = None,
        num_boost_round: int = 1000,
        early_stopping_rounds: int = 50,
        random_state: int = 42,
        num_threads: int = 2,
    ):
        self.features = features
        self.categorical = categorical
        self.imbalance = imbalance
        self.calibration = calibration
        self.monotone_increasing = monotone_increasing
        self.monotone_decreasing = monotone_decreasing
        self.params = params
        self.num_boost_round = num_boost_round
        self.early_stopping_rounds = early_stopping_rounds
        self.random_state = random_state
        self.num_threads = num_threads

    def _weights(self, y: np.ndarray) -> np.ndarray:
        counts = np.bincount(y.astype(np.int64), minlength=2)
        return class_weights(counts, self.imbalance)[y.astype(np.int64)]

    def fit(
        self,
        x: pd.DataFrame,
        y: np.ndarray,
        eval_set: tuple[pd.DataFrame, np.ndarray],
        recent: np.ndarray | None = None,
    ) -> BinaryJourneyModel:
        """Trains on (x, y), early-stops and calibrates on ``eval_set`` (held-out rows).

        Args:
            recent: which rows of ``eval_set`` are the latest matured cutoffs; the calibrator
                is re-levelled on them when their label rate has moved (see
                :func:`training.calibration.relevel`).
        """
        features = list(self.features)
        y = np.asarray(y, dtype=np.int64)
        frame_val, y_val = eval_set[0], np.asarray(eval_set[1], dtype=np.int64)
        self.vocabularies_ = fit_vocabularies(x, self.categorical)
        self.monotone_constraints_ = monotone_vector(
            features, self.monotone_increasing, self.monotone_decreasing, self.categorical
        )
        params = lightgbm_params("binary", self.random_state, self.num_threads, self.params or {})
        params["metric"] = "binary_logloss"
        if any(self.monotone_constraints_):
            params["monotone_constraints"] = self.monotone_constraints_
            params.setdefault("monotone_constraints_method", "intermediate")
        cats = [f for f in features if f in set(self.categorical)]
        train = lgb.Dataset(
            encode_frame(x, features, self.vocabularies_),
            label=y,
            weight=self._weights(y),
            feature_name=features,
            categorical_feature=cats or "auto",
            free_raw_data=True,
        )
        x_val = encode_frame(frame_val, features, self.vocabularies_)
        valid = lgb.Dataset(x_val, label=y_val, weight=self._weights(y_val), reference=train)
        self.best_iteration_, self.model_text_ = train_early_stopped(
            params, train, valid, self.num_boost_round, self.early_stopping_rounds
        )
        self.booster_ = lgb.Booster(model_str=self.model_text_)
        self.params_ = params
        raw_val = np.asarray(self.booster_.predict(x_val))
        self.calibrator_ = calibrate(raw_val, y_val, self.calibration, self.random_state, recent)
        return self

    def predict_raw(self, x: pd.DataFrame) -> np.ndarray:
        """Uncalibrated scores."""
        return np.asarray(
            self.booster_.predict(encode_frame(x, list(self.features), self.vocabularies_))
        )

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        """Calibrated probability of the positive label, shape (n,)."""
        return apply_binary_calibrator(self.calibrator_, self.predict_raw(x))

    def feature_importance(self) -> pd.Series:
        """Total gain of each feature's splits, largest first."""
        gain = self.booster_.feature_importance(importance_type="gain")
        return pd.Series(gain, index=list(self.features)).sort_values(ascending=False)


class NextStepModel:
    """LightGBM multiclass model of the next step (event type or stage) after a cutoff.

    Classes are the ``max_classes - 1`` most frequent next steps in training plus ``other``
    (when training has rarer ones); ``none`` (nothing within the horizon) is a class like any
    other. Class weights handle imbalance; vector scaling on the validation period calibrates.
    """

    kind = "multiclass"

    def __init__(
        self,
        features: Sequence[str],
        categorical: Sequence[str] = (),
        max_classes: int = 12,
        imbalance: str = "sqrt",
        calibration: str = "auto",
        params: dict[str, Any] | None = None,
        num_boost_round: int = 300,
        early_stopping_rounds: int = 30,
        random_state: int = 42,
        num_threads: int = 2,
    ):
        self.features = features
        self.categorical = categorical
        self.max_classes = max_classes
        self.imbalance = imbalance
        self.calibration = calibration
        self.params = params
        self.num_boost_round = num_boost_round
        self.early_stopping_rounds = early_stopping_rounds
        self.random_state = random_state
        self.num_threads = num_threads

    def encode_labels(self, y: Sequence[str] | np.ndarray) -> np.ndarray:
        """Class index of each label; rare labels are ``other``, -1 when there is no ``other``."""
        index = {c: i for i, c in enumerate(self.classes_)}
        fallback = index.get(OTHER_CLASS, -1)
        return np.array([index.get(str(v), fallback) for v in y], dtype=np.int64)

    def fit(
        self,
        x: pd.DataFrame,
        y: Sequence[str] | np.ndarray,
        eval_set: tuple[pd.DataFrame, Sequence[str] | np.ndarray],
    ) -> NextStepModel:
        features = list(self.features)
        counts = pd.Series(np.asarray(y, dtype=object)).astype(str).value_counts()
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        keep = [str(c) for c, _ in ordered[: self.max_classes - 1]]
        if len(ordered) > len(keep):
            keep.append(OTHER_CLASS)
        self.classes_: list[str] = keep
        codes = self.encode_labels(y)
        frame_val, y_val = eval_set
        val_codes = self.encode_labels(y_val)
        val_mask = val_codes >= 0
        self.vocabularies_ = fit_vocabularies(x, self.categorical)
        k = len(self.classes_)
        weights = class_weights(np.bincount(codes, minlength=k), self.imbalance)
        params = lightgbm_params(
            "multiclass", self.random_state, self.num_threads, self.params or {}
        )
        params.update({"num_class": k, "metric": "multi_logloss"})
        cats = [f for f in features if f in set(self.categorical)]
        train = lgb.Dataset(
            encode_frame(x, features, self.vocabularies_),
            label=codes,
            weight=weights[codes],
            feature_name=features,
            categorical_feature=cats or "auto",
            free_raw_data=True,
        )
        x_val = encode_frame(frame_val, features, self.vocabularies_)[val_mask]
        valid = lgb.Dataset(
            x_val,
            label=val_codes[val_mask],
            weight=weights[val_codes[val_mask]],
            reference=train,
        )
        self.best_iteration_, self.model_text_ = train_early_stopped(
            params, train, valid, self.num_boost_round, self.early_stopping_rounds
        )
        self.booster_ = lgb.Booster(model_str=self.model_text_)
        self.params_ = params
        if self.calibration == "none":
            self.calibrator_: dict[str, Any] = {"method": "none"}
        else:
            self.calibrator_ = fit_vector_scaling(
                np.asarray(self.booster_.predict(x_val)), val_codes[val_mask]
            )
        return self

    def predict_raw(self, x: pd.DataFrame) -> np.ndarray:
        return np.asarray(
            self.booster_.predict(encode_frame(x, list(self.features), self.vocabularies_))
        )

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        """Calibrated class probabilities, shape (n, len(classes_))."""
        return apply_multiclass_calibrator(self.calibrator_, self.predict_raw(x))

    def feature_importance(self) -> pd.Series:
        gain = self.booster_.feature_importance(importance_type="gain")
        return pd.Series(gain, index=list(self.features)).sort_values(ascending=False)


# -- baselines -------------------------------------------------------------------------------


class LogisticBaseline:
    """Logistic regression on signed-log, standardised numbers and one-hot categories.

    Numbers are imputed with their training median, transformed by sign(x)·ln(1 + |x|) and
    standardised; each string value seen at least ``min_frequency`` times gets its own
    indicator, rarer and unseen values share one, missing values have their own. The fitted
    model is a JSON scorer (:meth:`scorer`, scored by :func:`training.bundle.linear_terms`), so
    it can be registered and served like any model, with the same predictions.

    Args:
        features: input features.
        categorical: the string features among them.
        max_rows: fit on at most this many training rows (a seeded sample).
        c: inverse regularisation strength.
        min_frequency: the fewest rows a string value needs for an indicator of its own.
        random_state: seed of the sample.
    """

    def __init__(
        self,
        features: Sequence[str],
        categorical: Sequence[str] = (),
        max_rows: int = 50_000,
        c: float = 1.0,
        min_frequency: int = 20,
        random_state: int = 42,
    ):
        self.features = features
        self.categorical = categorical
        self.max_rows = max_rows
        self.c = c
        self.min_frequency = min_frequency
        self.random_state = random_state

    def fit(self, x: pd.DataFrame, y: np.ndarray) -> LogisticBaseline:
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(y, dtype=np.int64)
        if len(x) > self.max_rows:
            rng = np.random.default_rng(self.random_state)
            take = np.sort(rng.choice(len(x), self.max_rows, replace=False))
            x, y = x.iloc[take], y[take]
        features = list(self.features)
        self.vocabularies_ = fit_vocabularies(x, self.categorical)
        m = encode_frame(x, features, self.vocabularies_)
        columns: list[np.ndarray] = []
        layout: list[dict[str, Any]] = []  # per feature: how its design columns were built
        for j, name in enumerate(features):
            v = m[:, j]
            if name not in self.vocabularies_:
                finite = v[np.isfinite(v)]
                median = float(np.median(finite)) if len(finite) else 0.0
                z = signed_log1p(np.where(np.isnan(v), median, v))
                mean, scale = float(z.mean()), float(z.std())
                scale = scale if scale > 0 else 1.0
                layout.append(
                    {"type": "numeric", "median": median, "mean": mean, "scale": scale,
                     "first": len(columns)}
                )  # fmt: skip
                columns.append((z - mean) / scale)
                continue
            size = len(self.vocabularies_[name])
            codes = np.where(np.isnan(v), -1, v).astype(np.intp)
            counts = np.bincount(codes[codes >= 0], minlength=size + 1)
            frequent = [c for c in range(size) if counts[c] >= self.min_frequency]
            first = len(columns)
            for c in frequent:
                columns.append((codes == c).astype(np.float64))
            rare = (codes >= 0) & ~np.isin(codes, frequent)
            columns.append(rare.astype(np.float64))  # rare and unseen values
            columns.append((codes < 0).astype(np.float64))  # missing
            layout.append(
                {"type": "categorical", "first": first, "frequent": frequent, "size": size}
            )
        design = np.column_stack(columns) if columns else np.zeros((len(y), 0))
        model = LogisticRegression(C=self.c, max_iter=300).fit(design, y)
        coef = model.coef_[0]
        terms: list[dict[str, Any]] = []
        for term in layout:
            if term["type"] == "numeric":
                first = term.pop("first")
                terms.append({**term, "coef": float(coef[first])})
                continue
            first, frequent, size = term["first"], term["frequent"], term["size"]
            shared = float(coef[first + len(frequent)])
            table = [shared] * (size + 1)
            for i, c in enumerate(frequent):
                table[c] = float(coef[first + i])
            terms.append(
                {
                    "type": "categorical",
                    "codes": table,
                    "missing": float(coef[first + len(frequent) + 1]),
                }
            )
        self.scorer_ = {"kind": "logistic", "intercept": float(model.intercept_[0]), "terms": terms}
        return self

    def scorer(self) -> dict[str, Any]:
        """The fitted model as a bundle's scorer spec (JSON)."""
        return self.scorer_

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        terms = linear_terms(self.scorer_, encode_frame(x, list(self.features), self.vocabularies_))
        return np.asarray(1.0 / (1.0 + np.exp(-terms.sum(axis=1))))


class RandomForestBaseline:
    """A random forest on the same features (strings as their vocabulary codes, missing
    values as −1), fitted on a seeded sample of the training rows.

    Args:
        features: input features.
        categorical: the string features among them.
        max_rows: fit on at most this many training rows.
        n_estimators: trees.
        min_samples_leaf: the smallest leaf (keeps the forest's probabilities smooth).
        random_state: seed of the sample and of the forest.
        num_threads: worker threads.
    """

    def __init__(
        self,
        features: Sequence[str],
        categorical: Sequence[str] = (),
        max_rows: int = 20_000,
        n_estimators: int = 100,
        min_samples_leaf: int = 50,
        random_state: int = 42,
        num_threads: int = 2,
    ):
        self.features = features
        self.categorical = categorical
        self.max_rows = max_rows
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.random_state = random_state
        self.num_threads = num_threads

    def _matrix(self, x: pd.DataFrame) -> np.ndarray:
        m = encode_frame(x, list(self.features), self.vocabularies_)
        return np.where(np.isnan(m), -1.0, m)

    def fit(self, x: pd.DataFrame, y: np.ndarray) -> RandomForestBaseline:
        from sklearn.ensemble import RandomForestClassifier

        y = np.asarray(y, dtype=np.int64)
        if len(x) > self.max_rows:
            rng = np.random.default_rng(self.random_state)
            take = np.sort(rng.choice(len(x), self.max_rows, replace=False))
            x, y = x.iloc[take], y[take]
        self.vocabularies_ = fit_vocabularies(x, self.categorical)
        self.forest_ = RandomForestClassifier(
            n_estimators=self.n_estimators,
            min_samples_leaf=self.min_samples_leaf,
            max_features="sqrt",
            n_jobs=self.num_threads,
            random_state=self.random_state,
        ).fit(self._matrix(x), y)
        # Trees are grown in parallel (deterministic by random_state), but a parallel predict
        # adds the trees' probabilities in thread order: the last bits would change from run
        # to run. One thread predicts in a fixed order.
        self.forest_.set_params(n_jobs=1)
        return self

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.forest_.predict_proba(self._matrix(x))[:, 1])


class RecencyFrequencyBaseline:
    """The observed label rate in each cell of a recency × frequency grid (RFM-style).

    Cells are quantile bins of the training data; each cell's rate is shrunk towards the
    overall rate with ``prior_strength`` pseudo-observations.
    """

    def __init__(self, recency: str, frequency: str, bins: int = 10, prior_strength: float = 20.0):
        self.recency = recency
        self.frequency = frequency
        self.bins = bins
        self.prior_strength = prior_strength

    def _cells(self, x: pd.DataFrame) -> np.ndarray:
        r = np.digitize(x[self.recency].fillna(np.inf).to_numpy(), self.recency_edges_)
        f = np.digitize(x[self.frequency].fillna(0).to_numpy(), self.frequency_edges_)
        return np.asarray(r * (len(self.frequency_edges_) + 1) + f)

    def fit(self, x: pd.DataFrame, y: np.ndarray) -> RecencyFrequencyBaseline:
        q = np.linspace(0, 1, self.bins + 1)[1:-1]
        self.recency_edges_ = np.unique(np.nanquantile(x[self.recency].to_numpy(), q))
        self.frequency_edges_ = np.unique(np.nanquantile(x[self.frequency].to_numpy(), q))
        y = np.asarray(y, dtype=np.float64)
        self.prior_ = float(y.mean())
        cells = self._cells(x)
        size = (len(self.recency_edges_) + 1) * (len(self.frequency_edges_) + 1)
        n = np.bincount(cells, minlength=size)
        pos = np.bincount(cells, weights=y, minlength=size)
        self.rates_ = (pos + self.prior_strength * self.prior_) / (n + self.prior_strength)
        return self

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.rates_[self._cells(x)])


class MarkovBaseline:
    """First-order Markov model of the next step: P(next | latest event type), smoothed.

    ``alpha`` pseudo-counts spread the overall class distribution into every row, so an
    unseen latest event type predicts the overall distribution.
    """

    def __init__(self, state: str = "last_event_1", alpha: float = 1.0):
        self.state = state
        self.alpha = alpha

    def fit(self, x: pd.DataFrame, codes: np.ndarray, n_classes: int) -> MarkovBaseline:
        states = x[self.state].astype(str).to_numpy()
        codes = np.asarray(codes, dtype=np.int64)
        keep = codes >= 0
        self.marginal_ = np.bincount(codes[keep], minlength=n_classes) + self.alpha
        self.marginal_ = self.marginal_ / self.marginal_.sum()
        frame = pd.DataFrame({"s": states[keep], "c": codes[keep]})
        counts = frame.groupby(["s", "c"]).size().unstack(fill_value=0)
        counts = counts.reindex(columns=range(n_classes), fill_value=0)
        table = counts.to_numpy(dtype=np.float64) + self.alpha * n_classes * self.marginal_
        self.states_ = {s: i for i, s in enumerate(counts.index)}
        self.table_ = table / table.sum(axis=1, keepdims=True)
        return self

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        idx = np.array([self.states_.get(s, -1) for s in x[self.state].astype(str)], dtype=np.int64)
        out = np.tile(self.marginal_, (len(idx), 1))
        known = idx >= 0
        out[known] = self.table_[idx[known]]
        return out


class BackoffMarkovBaseline:
    """Markov chain of order ``len(states)`` over events, backed off to lower orders.

    P(next | s_1..s_n) is smoothed towards P(next | s_1..s_{n-1}) with ``strength``
    pseudo-counts (interpolated Dirichlet backoff), down to the class prior; an unseen state
    therefore predicts what its shorter history predicts. ``states`` are column names, the
    most recent first (e.g. ``("last_type_0", "last_type_1")`` for a second-order chain).
    """

    def __init__(self, states: Sequence[str] = ("seq_type_0",), strength: float = 2.0):
        self.states = states
        self.strength = strength

    def _keys(self, x: pd.DataFrame, order: int) -> list[tuple[str, ...]]:
        cols = [x[c].astype(str).to_numpy() for c in list(self.states)[:order]]
        return list(zip(*cols, strict=True)) if cols else [()] * len(x)

    def fit(self, x: pd.DataFrame, codes: np.ndarray, n_classes: int) -> BackoffMarkovBaseline:
        codes = np.asarray(codes, dtype=np.int64)
        keep = codes >= 0
        self.n_classes_ = n_classes
        self.prior_ = (np.bincount(codes[keep], minlength=n_classes) + 1.0) / (
            keep.sum() + n_classes
        )
        self.counts_: list[dict[tuple[str, ...], np.ndarray]] = []
        for order in range(1, len(self.states) + 1):
            table: dict[tuple[str, ...], np.ndarray] = {}
            for key, c in zip(self._keys(x[keep], order), codes[keep], strict=True):
                row = table.get(key)
                if row is None:
                    row = table[key] = np.zeros(n_classes)
                row[c] += 1.0
            self.counts_.append(table)
        return self

    def to_json(self) -> dict[str, Any]:
        """The fitted chain as JSON (states joined with a tab)."""
        return {
            "states": list(self.states),
            "strength": self.strength,
            "prior": self.prior_.tolist(),
            "counts": [
                {"\t".join(k): v.tolist() for k, v in table.items()} for table in self.counts_
            ],
        }

    @classmethod
    def from_json(cls, spec: dict[str, Any]) -> BackoffMarkovBaseline:
        chain = cls(tuple(spec["states"]), float(spec["strength"]))
        chain.prior_ = np.asarray(spec["prior"], dtype=np.float64)
        chain.n_classes_ = len(chain.prior_)
        chain.counts_ = [
            {tuple(k.split("\t")): np.asarray(v, dtype=np.float64) for k, v in table.items()}
            for table in spec["counts"]
        ]
        return chain

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        out = np.tile(self.prior_, (len(x), 1))
        for order, table in enumerate(self.counts_, start=1):
            for i, key in enumerate(self._keys(x, order)):
                row = table.get(key)
                if row is not None:
                    out[i] = (row + self.strength * out[i]) / (row.sum() + self.strength)
        return out
