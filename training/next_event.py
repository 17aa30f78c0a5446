"""The next step after every event: anchors, labels, inputs, baselines and the model.

Every activity event that ends its moment (:mod:`features.sequence`) is an *anchor*. Its labels:

- ``next``: the type of the next activity event when it is in the same session;
  :data:`SESSION_END` when the next event opens another session within the horizon
  (``next_step_days`` of the journey map); :data:`NO_EVENT` when nothing follows within the
  horizon. An anchor whose horizon reaches past the end of the log with no event after it is
  censored (no label).
- ``gap_seconds``: the time to the next event (empty when there is none).
- ``abandon``: the anchor's session ends without a conversion event (journey map
  ``conversions``). Unknown (censored) when the session may still go on at the end of the log.

Inputs, all as of the anchor: the journey features of the feature service (the project's one
feature query, :func:`features.pipeline.feature_query`, run with a snapshot just after the
anchor, so it sees the anchor's moment and nothing later) and the sequence features of
:mod:`features.sequence` (last-k event types and gaps, position and duration in the session,
channel and context properties, hour and weekday).

Large logs are sampled by customer (a hash of the id, so whole journeys are kept and the same
log always gives the same sample) down to ``max_anchors``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from features.catalog import FeatureCatalog
from features.definitions import SERVICE_VIEWS
from features.pipeline import (
    ENTITY,
    SNAPSHOT_TS,
    TIMESTAMP_FIELD,
    connect,
    count_bits_for,
    feature_query,
    register_inputs,
    register_snapshots,
)
from features.sequence import SequenceSpec, register_sequence, sequence_features_sql
from journeyml.config import JourneyMap

logger = logging.getLogger(__name__)

SESSION_END = "(session_end)"
NO_EVENT = "(none)"


@dataclass(frozen=True)
class AnchorData:
    """Anchors with their inputs and labels.

    Attributes:
        rows: one row per anchor: ``customer_id``, ``ts``, the labels (``next``,
            ``gap_seconds``, ``abandon``; ``next`` None and ``abandon`` NaN where censored) and
            every input of ``features``.
        features: the model's inputs, in order.
        categorical: the string inputs among them.
        journey_features: the inputs that come from the feature service.
        sequence: the sequence spec the inputs were computed with.
        sampled_share: the share of customers kept (1.0 when not sampled).
    """

    rows: pd.DataFrame
    features: list[str]
    categorical: list[str]
    journey_features: list[str]
    sequence: SequenceSpec
    sampled_share: float


def _keep_share(customers: int, anchors: int, max_anchors: int | None) -> float:
    if max_anchors is None or anchors <= max_anchors:
        return 1.0
    return max(max_anchors / anchors, 1.0 / max(customers, 1))


def customer_bucket(customer_id: str, salt: str = "anchors") -> float:
    """A fixed number in [0, 1) for a customer id (sampling and validation by customer)."""
    digest = hashlib.blake2b(f"{salt}:{customer_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def label_sql(horizon_days: int, log_end_us: int) -> str:
    """The labels of every anchor of ``seq_events``."""
    horizon_us = horizon_days * 86_400 * 1_000_000
    return f"""
WITH n AS (
    SELECT customer_id, event_id, t, seq, session_no, is_anchor,
        LEAD(event_type) OVER w AS next_type,
        LEAD(t) OVER w AS next_t,
        LEAD(session_no) OVER w AS next_session,
        MAX(is_conversion) OVER (PARTITION BY customer_id, session_no) AS session_converted,
        MAX(t) OVER (PARTITION BY customer_id, session_no) AS session_last_t,
        MAX(session_no) OVER (PARTITION BY customer_id) AS last_session
    FROM seq_events
    WINDOW w AS (PARTITION BY customer_id ORDER BY seq)
)
SELECT customer_id, event_id,
    CASE
        WHEN next_t IS NOT NULL AND next_session = session_no THEN next_type
        WHEN next_t IS NOT NULL AND next_t - t <= {horizon_us} THEN '{SESSION_END}'
        WHEN next_t IS NOT NULL THEN '{NO_EVENT}'
        WHEN {log_end_us} - t >= {horizon_us} THEN '{NO_EVENT}'
    END AS next,
    (next_t - t) / 1e6 AS gap_seconds,
    CASE
        WHEN session_no < last_session OR {log_end_us} - session_last_t >= {horizon_us}
            THEN 1.0 - session_converted
    END AS abandon
FROM n
WHERE is_anchor = 1
"""


def open_anchor_inputs(
    lake: str | Path, journey_map: JourneyMap, catalog: FeatureCatalog
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the lake's ``events``, ``roles`` and ``customers`` views, as
    the feature pipeline registers them."""
    from journeyml.events.schema import CUSTOMERS_FILE, events_glob

    lake = Path(lake)
    con = connect(memory_limit="4GB")
    glob = events_glob(lake).replace("'", "''")
    register_inputs(
        con,
        journey_map,
        f"SELECT * FROM read_parquet('{glob}', hive_partitioning = false)",
        lake / CUSTOMERS_FILE,
        catalog.settings.profile_attributes,
    )
    return con


def journey_feature_names(catalog: FeatureCatalog, feature_service: str) -> list[str]:
    """The catalog features of a feature service (its views), in catalog order."""
    try:
        views = SERVICE_VIEWS[feature_service]
    except KeyError:
        raise ValueError(
            f"unknown feature service {feature_service!r}; known: {', '.join(SERVICE_VIEWS)}"
        ) from None
    return [f.name for view in views for f in catalog.view_features(view)]


def build_anchor_data(
    con: duckdb.DuckDBPyConnection,
    journey_map: JourneyMap,
    catalog: FeatureCatalog,
    sequence: SequenceSpec,
    feature_service: str,
    max_anchors: int | None,
    journey_inputs: bool = True,
) -> AnchorData:
    """Anchors, inputs and labels from the ``events``, ``roles`` and ``customers`` views.

    Args:
        con: a connection with :func:`features.pipeline.register_inputs` done.
        max_anchors: sample customers (by a hash of the id) down to about this many anchors.
        journey_inputs: add the feature service's journey features (False: sequence only).
    """
    register_sequence(con, sequence)
    customers, anchors, log_end = con.execute(
        "SELECT COUNT(DISTINCT customer_id), SUM(is_anchor), MAX(t) FROM seq_events"
    ).fetchall()[0]
    if not anchors:
        raise ValueError("the log has no activity events to anchor on")
    share = _keep_share(int(customers), int(anchors), max_anchors)
    if share < 1.0:
        ids = [r[0] for r in con.execute("SELECT DISTINCT customer_id FROM seq_events").fetchall()]
        kept = [c for c in ids if customer_bucket(str(c)) < share]
        con.register("kept_ids", pa.table({ENTITY: pa.array(kept, pa.string())}))
        con.execute(
            "CREATE OR REPLACE TEMP TABLE seq_events AS SELECT * FROM seq_events"
            " WHERE customer_id IN (SELECT customer_id FROM kept_ids)"
        )
        con.unregister("kept_ids")
        logger.info("next step: kept %d of %d customers (share %.3f)", len(kept), len(ids), share)
    seq = con.execute(f"SELECT * FROM ({sequence_features_sql(sequence)}) WHERE is_anchor = 1").df()
    labels = con.execute(label_sql(journey_map.horizons.next_step_days, int(log_end))).df()
    rows = seq.merge(labels, on=[ENTITY, "event_id"], how="left", validate="one_to_one")
    journey: list[str] = []
    if journey_inputs:
        journey = journey_feature_names(catalog, feature_service)
        snaps = pa.table(
            {
                ENTITY: pa.array(rows[ENTITY].astype(str).tolist(), pa.string()),
                SNAPSHOT_TS: pa.array(
                    pd.to_datetime(rows["ts"], utc=True) + timedelta(microseconds=1),
                    pa.timestamp("us", "UTC"),
                ),
            }
        )
        register_snapshots(con, snaps)
        most = con.execute(
            "SELECT MAX(n) FROM (SELECT COUNT(*) AS n FROM events GROUP BY customer_id)"
        ).fetchall()[0][0]
        query = feature_query(
            catalog, journey_map.experience.score_property, count_bits_for(int(most or 1))
        )
        cols = ", ".join([ENTITY, f"EPOCH_US({TIMESTAMP_FIELD}) - 1 AS t", *journey])
        feats = con.execute(f"SELECT {cols} FROM ({query})").df()
        rows["t"] = rows["t"].astype("int64")
        rows = rows.merge(feats, on=[ENTITY, "t"], how="left", validate="many_to_one")
        if len(feats) and rows[journey[0]].isna().all():
            raise RuntimeError("journey features did not join their anchors")
    categorical = [
        *sequence.categorical,
        *(f.name for f in catalog.features if f.name in journey and f.dtype == "string"),
    ]
    features = [*sequence.features, *journey]
    rows = rows.sort_values(["t", ENTITY], kind="stable").reset_index(drop=True)
    return AnchorData(rows, features, categorical, journey, sequence, share)


def time_split(
    rows: pd.DataFrame,
    test_share: float,
    validation_share: float,
    horizon_days: int,
) -> dict[str, np.ndarray]:
    """Train / validation / test masks over the labelled anchors, split by time.

    The test period is the last ``test_share`` of the labelled anchors (by time); a training
    anchor whose label reaches into it (its next event, or its horizon when nothing follows) is
    purged. Validation is ``validation_share`` of the training customers (by a hash of the id).
    """
    labelled = rows["next"].notna().to_numpy()
    t = rows["t"].to_numpy(dtype=np.int64)
    split_t = int(np.quantile(t[labelled], 1 - test_share)) if labelled.any() else 0
    gap_us = rows["gap_seconds"].fillna(horizon_days * 86_400).to_numpy() * 1e6
    resolved_before = t + np.minimum(gap_us, horizon_days * 86_400 * 1e6) < split_t
    held = (
        rows[ENTITY].astype(str).map(lambda c: customer_bucket(c, "validation") < validation_share)
    )
    held_out = held.to_numpy(dtype=bool)
    before = labelled & (t < split_t) & resolved_before
    return {
        "train": before & ~held_out,
        "validation": before & held_out,
        "test": labelled & (t >= split_t),
    }


def _states(rows: pd.DataFrame) -> dict[str, Any]:
    """The chain's state columns, to sit beside the model inputs."""
    return {c: rows[c].to_numpy() for c in ("seq_type_0", "seq_type_1", "seq_prev_in_session")}


def markov_state_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """The states Markov baselines read (the last two event types, and in-session ones)."""
    return pd.DataFrame(
        {
            "seq_type_0": rows["seq_type_0"].astype(str).to_numpy(),
            "seq_type_1": rows["seq_type_1"].fillna("(none)").astype(str).to_numpy()
            if "seq_type_1" in rows
            else np.full(len(rows), "(none)"),
            "seq_prev_in_session": rows["seq_prev_in_session"].astype(str).to_numpy(),
        }
    )


def as_float_frame(rows: pd.DataFrame, features: list[str], categorical: list[str]) -> pd.DataFrame:
    """The model inputs of some anchors: strings as strings, the rest as floats."""
    out = {}
    cats = set(categorical)
    for f in features:
        col = rows[f]
        out[f] = (
            col.astype(object).where(col.notna(), None)
            if f in cats
            else pd.to_numeric(col, errors="coerce").astype(np.float64)
        )
    return pd.DataFrame(out, index=rows.index)


def top_k(proba: np.ndarray, classes: list[str], k: int) -> list[list[tuple[str, float]]]:
    """The ``k`` most likely classes of each row with their probabilities."""
    order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    return [[(classes[j], float(proba[i, j])) for j in order[i]] for i in range(len(proba))]


def describe(data: AnchorData, masks: dict[str, np.ndarray]) -> dict[str, Any]:
    """Counts of a dataset for logs and reports."""
    rows = data.rows
    return {
        "anchors": len(rows),
        "labelled": int(rows["next"].notna().sum()),
        **{f"{k}_rows": int(v.sum()) for k, v in masks.items()},
        "session_end_share": float((rows["next"] == SESSION_END).mean()),
        "none_share": float((rows["next"] == NO_EVENT).mean()),
        "sampled_share": data.sampled_share,
    }


@dataclass
class NextEventFit:
    """A fitted next-step model, its abandonment model, and their test-period metrics."""

    model: Any  # training.models.NextStepModel
    abandon: Any  # training.models.BinaryJourneyModel, or None without abandonment labels
    features: list[str]
    categorical: list[str]
    metrics: dict[str, float]
    baselines: dict[str, Any]
    test_proba: np.ndarray
    test_codes: np.ndarray


def fit_next_event(
    data: AnchorData,
    masks: dict[str, np.ndarray],
    max_classes: int,
    lightgbm: dict[str, Any],
    num_boost_round: int,
    early_stopping_rounds: int,
    seed: int,
    num_threads: int,
    markov_strength: float = 2.0,
) -> NextEventFit:
    """Fits the next-step and abandonment models and scores them and the Markov baselines
    on the test period (metrics named ``<metric>`` for the model, ``baseline_<name>_<metric>``
    for the baselines, ``abandon_<metric>`` for abandonment)."""
    from training.metrics import binary_metrics, multiclass_metrics
    from training.models import BackoffMarkovBaseline, BinaryJourneyModel

    rows = data.rows
    tr, va, te = masks["train"], masks["validation"], masks["test"]
    if not tr.any() or not va.any() or not te.any():
        raise ValueError(
            "too few labelled anchors to split: "
            + ", ".join(f"{k} {int(v.sum())}" for k, v in masks.items())
        )
    x = as_float_frame(rows, data.features, data.categorical)
    y = rows["next"].astype(str).to_numpy()
    model = NextEventModel(
        data.features,
        data.categorical,
        max_classes=max_classes,
        params=lightgbm,
        num_boost_round=num_boost_round,
        early_stopping_rounds=early_stopping_rounds,
        markov_strength=markov_strength,
        random_state=seed,
        num_threads=num_threads,
    )
    model.fit(
        x[tr].assign(**_states(rows[tr])),
        y[tr],
        rows.loc[tr, ENTITY].to_numpy(),
        eval_set=(x[va].assign(**_states(rows[va])), y[va]),
    )
    codes = model.encode_labels(y)
    k = len(model.classes_)
    te_known = te & (codes >= 0)
    proba = model.predict_proba(x[te_known].assign(**_states(rows[te_known])))
    metrics = multiclass_metrics(codes[te_known], proba)
    metrics["best_iteration"] = float(model.best_iteration_)
    states = markov_state_frame(rows)
    fit_rows = tr | va  # the baselines have no early stopping: they learn from both
    baselines: dict[str, Any] = {
        "markov1": BackoffMarkovBaseline(("seq_type_0",), markov_strength),
        "markov2": BackoffMarkovBaseline(("seq_type_0", "seq_type_1"), markov_strength),
    }
    for name, base in baselines.items():
        base.fit(states[fit_rows], codes[fit_rows], k)
        p = base.predict_proba(states[te_known])
        metrics.update(
            {f"baseline_{name}_{m}": v for m, v in multiclass_metrics(codes[te_known], p).items()}
        )
    prior = np.bincount(codes[fit_rows][codes[fit_rows] >= 0], minlength=k) + 1.0
    metrics.update(
        {
            f"baseline_prior_{m}": v
            for m, v in multiclass_metrics(
                codes[te_known], np.tile(prior / prior.sum(), (int(te_known.sum()), 1))
            ).items()
        }
    )
    for s, m in masks.items():
        metrics[f"{s}_rows"] = float(m.sum())
    metrics["test_unmapped_share"] = float(1 - te_known.sum() / max(te.sum(), 1))

    abandon = None
    a = rows["abandon"].to_numpy(dtype=np.float64)
    a_known = ~np.isnan(a)
    a_tr, a_va, a_te = tr & a_known, va & a_known, te & a_known
    if a_tr.any() and a_va.any() and a_te.any() and len(np.unique(a[a_tr])) == 2:
        abandon = BinaryJourneyModel(
            data.features,
            data.categorical,
            imbalance="none",
            calibration="auto",
            params=lightgbm,
            num_boost_round=num_boost_round,
            early_stopping_rounds=early_stopping_rounds,
            random_state=seed,
            num_threads=num_threads,
        ).fit(x[a_tr], a[a_tr].astype(np.int64), eval_set=(x[a_va], a[a_va].astype(np.int64)))
        p_ab = abandon.predict_proba(x[a_te])
        metrics.update(
            {f"abandon_{m}": v for m, v in binary_metrics(a[a_te].astype(np.int64), p_ab).items()}
        )
        # the plain reference: the abandonment rate of the training sessions at this position
        rate = float(a[a_tr | a_va].mean())
        metrics["abandon_baseline_rate_brier"] = float(np.mean((a[a_te] - rate) ** 2))
    return NextEventFit(
        model,
        abandon,
        data.features,
        data.categorical,
        metrics,
        baselines,
        proba,
        codes[te_known],
    )


def best_markov(metrics: dict[str, float]) -> str:
    """The Markov baseline with the lowest test log loss (the one the gate compares with)."""
    names = [n for n in ("markov1", "markov2") if f"baseline_{n}_log_loss" in metrics]
    return min(names, key=lambda n: metrics[f"baseline_{n}_log_loss"])


def beats_markov(metrics: dict[str, float]) -> bool:
    """Better top-3 accuracy and log loss than the best Markov baseline."""
    b = best_markov(metrics)
    return (
        metrics["top3_accuracy"] > metrics[f"baseline_{b}_top3_accuracy"]
        and metrics["log_loss"] < metrics[f"baseline_{b}_log_loss"]
    )


SESSION_STATES = ("seq_type_0", "seq_prev_in_session")
"""The state of the chain the model boosts from: the last event and the one before it in the
session (``(start)`` at a session's first event)."""


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class NextEventModel:
    """LightGBM multiclass model of the next step that boosts from a Markov chain.

    The chain (second order within the session, backed off to first order and the prior)
    gives each anchor its starting log-probabilities (LightGBM's ``init_score``); the trees
    learn what the chain cannot see (the customer's journey features, the session's context,
    the time). Training rows start from a chain fitted on the other customers (``folds``
    folds by customer), so the trees never learn from a chain that saw their own labels.
    Classes are the ``max_classes - 1`` most frequent labels plus ``other``; vector scaling
    on the validation rows calibrates.
    """

    def __init__(
        self,
        features: list[str],
        categorical: list[str],
        max_classes: int = 16,
        params: dict[str, Any] | None = None,
        num_boost_round: int = 500,
        early_stopping_rounds: int = 30,
        markov_strength: float = 2.0,
        folds: int = 5,
        random_state: int = 42,
        num_threads: int = 2,
    ):
        self.features = features
        self.categorical = categorical
        self.max_classes = max_classes
        self.params = params
        self.num_boost_round = num_boost_round
        self.early_stopping_rounds = early_stopping_rounds
        self.markov_strength = markov_strength
        self.folds = folds
        self.random_state = random_state
        self.num_threads = num_threads

    def encode_labels(self, y: Any) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes_)}
        fallback = index.get("other", -1)
        return np.array([index.get(str(v), fallback) for v in y], dtype=np.int64)

    def _offset(self, chain: Any, x: pd.DataFrame) -> np.ndarray:
        return np.log(np.clip(chain.predict_proba(markov_state_frame(x)), 1e-9, 1.0))

    def fit(
        self,
        x: pd.DataFrame,
        y: Any,
        customers: np.ndarray,
        eval_set: tuple[pd.DataFrame, Any],
    ) -> NextEventModel:
        import lightgbm as lgb

        from training.bundle import encode_frame
        from training.calibration import fit_vector_scaling
        from training.models import (
            BackoffMarkovBaseline,
            fit_vocabularies,
            lightgbm_params,
            train_early_stopped,
        )

        counts = pd.Series(np.asarray(y, dtype=object)).astype(str).value_counts()
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        keep = [str(c) for c, _ in ordered[: self.max_classes - 1]]
        if len(ordered) > len(keep):
            keep.append("other")
        self.classes_: list[str] = keep
        k = len(keep)
        codes = self.encode_labels(y)
        x_val, y_val = eval_set
        val_codes = self.encode_labels(y_val)
        chain = BackoffMarkovBaseline(SESSION_STATES, self.markov_strength)
        self.chain_ = chain.fit(markov_state_frame(x), codes, k)
        fold = np.array(
            [int(customer_bucket(str(c), "folds") * self.folds) for c in customers], dtype=np.int64
        )
        offset = np.zeros((len(x), k))
        for f in range(self.folds):
            held = fold == f
            if held.any():
                other = BackoffMarkovBaseline(SESSION_STATES, self.markov_strength)
                other.fit(markov_state_frame(x[~held]), codes[~held], k)
                offset[held] = self._offset(other, x[held])
        self.vocabularies_ = fit_vocabularies(x, self.categorical)
        params = lightgbm_params(
            "multiclass", self.random_state, self.num_threads, self.params or {}
        )
        params.update({"num_class": k, "metric": "multi_logloss"})
        cats = [f for f in self.features if f in set(self.categorical)]
        train = lgb.Dataset(
            encode_frame(x, self.features, self.vocabularies_),
            label=codes,
            init_score=offset,
            feature_name=list(self.features),
            categorical_feature=cats or "auto",
            free_raw_data=True,
        )
        xv = encode_frame(x_val, self.features, self.vocabularies_)
        val_offset = self._offset(self.chain_, x_val)
        valid = lgb.Dataset(xv, label=val_codes, init_score=val_offset, reference=train)
        self.best_iteration_, self.model_text_ = train_early_stopped(
            params, train, valid, self.num_boost_round, self.early_stopping_rounds
        )
        self.booster_ = lgb.Booster(model_str=self.model_text_)
        self.params_ = params
        raw_val = softmax(self._raw(xv) + val_offset)
        self.calibrator_ = fit_vector_scaling(raw_val, val_codes)
        return self

    def _raw(self, matrix: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster_.predict(matrix, raw_score=True)).reshape(
            len(matrix), len(self.classes_)
        )

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        """Calibrated class probabilities, shape (n, len(classes_))."""
        from training.bundle import apply_multiclass_calibrator, encode_frame

        matrix = encode_frame(x, self.features, self.vocabularies_)
        p = softmax(self._raw(matrix) + self._offset(self.chain_, x))
        return apply_multiclass_calibrator(self.calibrator_, p)

    def feature_importance(self) -> pd.Series:
        gain = self.booster_.feature_importance(importance_type="gain")
        return pd.Series(gain, index=list(self.features)).sort_values(ascending=False)


def fit_next_event_task(
    lake: str | Path,
    journey_map: JourneyMap,
    catalog: FeatureCatalog,
    settings: Any,  # training.config.NextEventSettings
    config: Any,  # training.config.TrainingConfig
    test_period: list[str],
) -> dict[str, Any]:
    """Builds the anchors of a lake, fits and evaluates; returns what the training pipeline
    logs: ``fit``, ``data``, ``masks``, ``manifest``, ``model_texts``, ``vocabularies``,
    ``calibrator``, ``params``."""
    from training.models import OTHER_CLASS

    con = open_anchor_inputs(lake, journey_map, catalog)
    try:
        from features.sequence import infer_context_properties

        props = (
            tuple(settings.properties)
            if settings.properties is not None
            else infer_context_properties(con)
        )
        spec = SequenceSpec(settings.last_k, settings.session_gap_minutes, props)
        data = build_anchor_data(
            con, journey_map, catalog, spec, settings.feature_service, settings.max_anchors
        )
    finally:
        con.close()
    masks = time_split(
        data.rows, settings.test_share, settings.validation_share,
        journey_map.horizons.next_step_days,
    )  # fmt: skip
    fit = fit_next_event(
        data, masks, settings.max_classes, settings.lightgbm, settings.num_boost_round,
        settings.early_stopping_rounds, config.seed, config.num_threads, settings.markov_strength,
    )  # fmt: skip
    model = fit.model
    t = pd.to_datetime(data.rows["ts"], utc=True)
    calibrator: dict[str, Any] = {
        "method": model.calibrator_.get("method", "none"),
        "next": model.calibrator_,
        "chain": model.chain_.to_json(),
    }
    texts = {"model": model.model_text_}
    if fit.abandon is not None:
        texts["abandon"] = fit.abandon.model_text_
        calibrator["abandon"] = fit.abandon.calibrator_
        calibrator["abandon_vocabularies"] = fit.abandon.vocabularies_
    manifest = {
        "model": "next_event",
        "kind": "next_event",
        "feature_service": settings.feature_service,
        "feature_service_version": settings.feature_service.rsplit("_", 1)[-1],
        "features": list(data.features),
        "categorical_features": list(data.categorical),
        "journey_features": list(data.journey_features),
        "calendar_features": [],
        "classes": list(model.classes_),
        "other_class": OTHER_CLASS if OTHER_CLASS in model.classes_ else None,
        "sequence": {
            "last_k": spec.last_k,
            "session_gap_minutes": spec.session_gap_minutes,
            "properties": list(spec.properties),
        },
        "abandon": fit.abandon is not None,
        "best_iteration": model.best_iteration_,
        "seed": config.seed,
        "test_period": [
            t[masks["test"]].min().isoformat(),
            t[masks["test"]].max().isoformat(),
        ]
        if masks["test"].any()
        else test_period,
        "trained_at": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
    }
    params = {
        "classes": ",".join(model.classes_),
        "properties": ",".join(props),
        "last_k": spec.last_k,
        "session_gap_minutes": spec.session_gap_minutes,
        "max_anchors": settings.max_anchors,
        "sampled_share": data.sampled_share,
        "best_iteration": model.best_iteration_,
        "test_share": settings.test_share,
        **{f"lgb_{k}": v for k, v in model.params_.items()},
    }
    return {
        "fit": fit, "data": data, "masks": masks, "manifest": manifest, "model_texts": texts,
        "vocabularies": model.vocabularies_, "calibrator": calibrator, "params": params,
    }  # fmt: skip
