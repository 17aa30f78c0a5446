"""The training pipeline: labels → features (Feast) → models and baselines → MLflow → registry.

:func:`train_models` is what ``journeyml train`` runs. Each model gets one MLflow run with its
parameters, data window, row counts, feature service, git commit, test-period metrics of the
model and of every baseline (and of the current champion, scored on the same test period),
plots, and the model version (LightGBM text model + JSON bundle) registered as ``challenger``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.settings import FeatureSettings
from journeyml.config import JourneyMap
from training import plots
from training.btyd import INPUTS as BGNBD_INPUTS
from training.btyd import BGNBDBaseline
from training.bundle import (
    ACTION_FEATURE,
    CALENDAR_FEATURES,
    MANIFEST_TAG,
    apply_binary_calibrator,
    bgnbd_contributions,
    calendar_values,
    encode_frame,
    linear_terms,
    load_model_bundle,
)
from training.config import LOWER_IS_BETTER, BinaryModelSettings, TrainingConfig
from training.dataset import (
    ServiceSpec,
    describe_service,
    entity_frame,
    normalise_features,
    read_features,
)
from training.labels import (
    LABEL_COLUMNS,
    LabelSet,
    SplitPlan,
    assign_splits,
    build_labels,
    compute_labels,
    max_horizon_days,
    open_lake,
    plan_splits,
)
from training.metrics import binary_metrics, multiclass_metrics, uplift_curve
from training.models import (
    BinaryJourneyModel,
    LogisticBaseline,
    MarkovBaseline,
    NextStepModel,
    RandomForestBaseline,
    RecencyFrequencyBaseline,
    calibrate,
)
from training.registry import BASELINES
from training.tracking import (
    CHAMPION,
    LoggedVersion,
    TrackingTarget,
    current_version,
    ensure_experiment,
    git_commit,
    log_and_register,
    use_tracking,
)
from training.training_set import (
    CUTOFF,
    KEY_COLUMNS,
    LOG_END,
    TrainingSetSample,
    read_training_set,
)
from training.truth import Truth, compare_effects_with_truth, compare_with_truth, load_truth
from training.uplift import (
    CONTROL,
    OUTCOMES,
    DoublyRobustUplift,
    UpliftData,
    assign_treatments,
    evaluate_uplift,
)

if TYPE_CHECKING:
    from feast import FeatureStore
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

LABEL_OF = {"churn": "churn", "conversion": "conversion"}
SPLITS = ("train", "validation", "test")


class TrainingError(RuntimeError):
    """Training cannot run on this input; the message says why and what to do."""


class NoActionsError(TrainingError):
    """The log has no marketing actions to learn uplift from."""


@dataclass
class TaskResult:
    """A fitted model with its evaluation, ready to be logged."""

    model: str
    kind: str
    fitted: Any
    spec: ServiceSpec
    metrics: dict[str, float]
    params: dict[str, Any]
    manifest: dict[str, Any]
    model_texts: dict[str, str]
    primary_booster: Any
    input_example: pd.DataFrame
    output_example: np.ndarray
    plot_data: dict[str, Any]
    champion_scorer: Callable[[Any], dict[str, float]]
    fit_seconds: float
    extra_artifacts: dict[str, Any] = field(default_factory=dict)
    baseline: str | None = None  # set when the fitted model is a baseline (logreg, bgnbd)
    verdict: str | None = None  # "the X baseline beats the LightGBM model ..." when it does
    baseline_challenger: TaskResult | None = None  # that baseline, ready to register


@dataclass(frozen=True)
class TrainedModel:
    """What ``journeyml train`` reports for one model."""

    model: str
    registered_name: str
    version: str
    run_id: str
    metrics: dict[str, float]
    fit_seconds: float
    log_seconds: float
    champion_version: str | None
    baseline: str | None = None  # the baseline this version is, if it is one
    verdict: str | None = None


@dataclass(frozen=True)
class PreparedData:
    """Labels split by time, plus the feature store to read features from."""

    labels: LabelSet
    plan: SplitPlan
    rows: pd.DataFrame  # active customers at cutoffs of a split, with a ``split`` column
    store: FeatureStore
    prepare_seconds: float
    # with ``journeyml train --dataset``: the set's features, row by row with ``rows``
    dataset: pd.DataFrame | None = None
    sample: TrainingSetSample | None = None
    cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


def prepare_data(
    data_dir: str | Path,
    journey_map: JourneyMap,
    feature_settings: FeatureSettings,
    config: TrainingConfig,
    dataset: str | Path | None = None,
) -> PreparedData:
    """Labels the lake, splits by time and opens the feature store of the workspace.

    With ``dataset`` (a training set, :mod:`training.training_set`), the labels and features
    are that set's, sampled by customer over the ``dataset`` budget of the config; the feature
    store still names each model's features (its FeatureService).

    The feature definitions of this journey map and these feature settings are registered in
    Feast first (as ``journeyml features apply`` does; applying the same definitions again
    changes nothing), so training never depends on a separate apply step having been run with
    the same configuration.
    """
    from features.catalog import build_catalog
    from features.store import Workspace, apply_definitions, open_store

    started = time.perf_counter()
    ws = Workspace(data_dir)
    sample = None
    if dataset is not None:
        sample = read_training_set(dataset, config.dataset.max_rows, config.dataset.max_memory_mb)
        cutoffs = sorted({t.to_pydatetime() for t in sample.frame[CUTOFF].unique()})
        log_end = pd.Timestamp(sample.frame[LOG_END].iloc[0]).to_pydatetime()
        labels = LabelSet(sample.frame, tuple(cutoffs), log_end)
    else:
        labels = build_labels(ws.lake, journey_map, feature_settings)
    plan = plan_splits(list(labels.cutoffs), config.split, max_horizon_days(journey_map))
    # the set read for this run is ours to extend; the lake's labels are copied
    frame = labels.frame if sample is not None else labels.frame.copy()
    frame["split"] = assign_splits(frame, plan)
    rows = frame[frame["split"].notna() & frame["active"]].reset_index(drop=True)
    if rows.empty:
        raise TrainingError("no active customers at the labelled cutoffs")
    store = open_store(feature_settings.store, ws)
    apply_definitions(store, build_catalog(journey_map, feature_settings), ws)
    if sample is not None:
        features = rows
        rows = rows[[*KEY_COLUMNS, *LABEL_COLUMNS, "split"]]
        return PreparedData(
            labels, plan, rows, store, time.perf_counter() - started, features, sample
        )
    return PreparedData(labels, plan, rows, store, time.perf_counter() - started)


def read_model_features(
    data: PreparedData, service: str, config: TrainingConfig, cache: dict[str, pd.DataFrame]
) -> tuple[ServiceSpec, pd.DataFrame]:
    """The service's features for every row (read once per service)."""
    try:
        spec = describe_service(data.store, service)
    except Exception as exc:
        raise TrainingError(
            f"feature service {service!r} could not be read from the Feast registry ({exc})"
        ) from None
    if data.dataset is not None:
        missing = [f for f in spec.features if f not in data.dataset.columns]
        if missing:
            raise TrainingError(
                f"the training set has no column for {len(missing)} features of {service} "
                f"({', '.join(missing[:5])}): rebuild it from snapshots of these feature settings"
            )
        frame = entity_frame(data.dataset).join(data.dataset[list(spec.features)])
        return spec, normalise_features(frame, spec)
    # services with the same views and features (churn_v1, conversion_v1) are read once
    key = repr((spec.features, [(v.name, v.source_path, v.ttl) for v in spec.views]))
    if key not in cache:
        started = time.perf_counter()
        cache[key] = read_features(
            data.store, spec, entity_frame(data.rows), config.features.engine
        )
        logger.info(
            "read %d rows of %s with the %s engine in %.1f s",
            len(data.rows),
            service,
            config.features.engine,
            time.perf_counter() - started,
        )
    return spec, cache[key]


def with_calendar(
    spec: ServiceSpec, x: pd.DataFrame, rows: pd.DataFrame, names: Sequence[str]
) -> tuple[ServiceSpec, pd.DataFrame]:
    """Adds the calendar features of each row's cutoff to the model's inputs."""
    if not names:
        return spec, x
    values = calendar_values(list(names), rows["cutoff"].reset_index(drop=True))
    x = x.reset_index(drop=True).assign(**values)
    return replace(spec, features=(*spec.features, *names)), x


def binary_model(
    features: Sequence[str],
    categorical: Sequence[str],
    settings: BinaryModelSettings,
    config: TrainingConfig,
) -> BinaryJourneyModel:
    """The churn or conversion model as configured, not yet fitted."""
    return BinaryJourneyModel(
        list(features),
        list(categorical),
        imbalance=settings.imbalance,
        calibration=settings.calibration,
        monotone_increasing=settings.monotone_increasing,
        monotone_decreasing=settings.monotone_decreasing,
        params=settings.lightgbm,
        num_boost_round=settings.num_boost_round,
        early_stopping_rounds=settings.early_stopping_rounds,
        random_state=config.seed,
        num_threads=config.num_threads,
    )


def _split_masks(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    return {s: (rows["split"] == s).to_numpy() for s in SPLITS}


def _subsample(mask: np.ndarray, max_rows: int | None, seed: int) -> np.ndarray:
    if max_rows is None or mask.sum() <= max_rows:
        return mask
    idx = np.flatnonzero(mask)
    keep = np.random.default_rng(seed).choice(idx, max_rows, replace=False)
    out = np.zeros_like(mask)
    out[keep] = True
    return out


def _window_params(rows: pd.DataFrame, masks: dict[str, np.ndarray]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for s in SPLITS:
        cut = pd.to_datetime(rows.loc[masks[s], "cutoff"], utc=True)
        params[f"{s}_cutoffs"] = int(cut.nunique())
        params[f"{s}_from"] = cut.min().isoformat() if len(cut) else ""
        params[f"{s}_to"] = cut.max().isoformat() if len(cut) else ""
    return params


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}{k}": v for k, v in metrics.items()}


def _importance_frame(series: pd.Series) -> dict[str, float]:
    return {str(k): float(v) for k, v in series.items()}


def labels_are_complements(rows: pd.DataFrame, tolerance: float = 0.001) -> bool:
    """Whether churn and conversion are one fact (churn = no purchase within the horizon),
    as on a purchase log: they sum to one on all but ``tolerance`` of the labelled rows."""
    if rows.empty or not {"churn", "conversion"} <= set(rows.columns):
        return False
    total = rows["churn"].to_numpy(dtype=np.float64) + rows["conversion"].to_numpy(dtype=np.float64)
    return bool(np.mean(total != 1.0) <= tolerance)


def mirror_of_churn(
    churn: BinaryModelSettings, conversion: BinaryModelSettings
) -> BinaryModelSettings:
    """The conversion model's settings where conversion is the complement of churn: churn's
    settings with the directions of its monotone constraints swapped (the conversion
    service's features), so the two fits are mirror images and answer the fact alike."""
    return churn.model_copy(
        update={
            "feature_service": conversion.feature_service,
            "monotone_increasing": list(churn.monotone_decreasing),
            "monotone_decreasing": list(churn.monotone_increasing),
        }
    )


def check_complements(
    churn: TaskResult, conversion: TaskResult, resamples: int = 100, seed: int = 0
) -> dict[str, float]:
    """Churn and conversion scores of one fact must agree: the AUC of churn's score and of
    one minus conversion's score, on the churn label of the same test rows, may differ only
    by noise (3 bootstrap standard deviations of the paired difference, at least 0.002).

    Raises:
        TrainingError: they disagree beyond noise (the run registers neither).
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(churn.plot_data["y"])
    p_churn = np.asarray(churn.plot_data["scores"]["lightgbm"])
    p_stay = 1.0 - np.asarray(conversion.plot_data["scores"]["lightgbm"])
    gap = float(roc_auc_score(y, p_churn) - roc_auc_score(y, p_stay))
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        i = rng.integers(0, len(y), min(len(y), 20_000))
        if len(np.unique(y[i])) == 2:
            diffs.append(roc_auc_score(y[i], p_churn[i]) - roc_auc_score(y[i], p_stay[i]))
    noise = max(3.0 * float(np.std(diffs)) if diffs else 0.0, 0.002)
    out = {
        "complement_auc_gap": gap,
        "complement_auc_noise": noise,
        "complement_mean_abs_gap": float(np.mean(np.abs(p_churn - p_stay))),
    }
    if abs(gap) > noise:
        stay = float(roc_auc_score(y, p_stay))
        raise TrainingError(
            f"churn and conversion are complements on this log (churn = no conversion within "
            f"the horizon), but their scores disagree: churn AUC {gap + stay:.4f} against "
            f"{stay:.4f} for 1 - conversion (gap {gap:+.4f}, noise {noise:.4f}); give both "
            "models the same settings in configs/models.yaml"
        )
    return out


def latest_cutoffs(cutoffs: pd.Series, days: int) -> np.ndarray | None:
    """Rows whose cutoff is within ``days`` of the latest one (None when ``days`` is 0)."""
    if days <= 0 or cutoffs.empty:
        return None
    ts = pd.to_datetime(cutoffs, utc=True)
    return (ts > ts.max() - pd.Timedelta(days=days)).to_numpy()


def relevel_metrics(calibrator: dict[str, Any], raw: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The re-levelling's log-odds shift and the test ECE without it (``ece`` is with it)."""
    shift = float(calibrator.get("shift", 0.0))
    unshifted = apply_binary_calibrator({**calibrator, "shift": 0.0}, raw)
    out = {"relevel_shift": shift, "ece_before_relevel": binary_metrics(y, unshifted)["ece"]}
    for key in ("relevel_rate_recent", "relevel_rate_reference"):
        if key in calibrator:
            out[key] = float(calibrator[key])
    return out


def read_histories(data: PreparedData, spec: ServiceSpec, config: TrainingConfig) -> pd.DataFrame:
    """Every customer's features at the first cutoff of the test period, active or not.

    BG/NBD is a model of the whole customer base: its population parameters come from every
    history, including the customers who stopped buying long ago (fitted on the active ones
    only, the drop-out probability is biased low). The histories at the first test cutoff use
    what is known by then, as the LightGBM model's matured training labels do, and no label of
    the test period. Read once per feature service.
    """
    key = f"histories:{spec.name}"
    spec = replace(spec, features=tuple(f for f in spec.features if f not in CALENDAR_FEATURES))
    if key not in data.cache:
        first = pd.Timestamp(data.plan.test[0])
        frame = data.labels.frame
        at = frame[pd.to_datetime(frame["cutoff"], utc=True) == first].reset_index(drop=True)
        if data.dataset is not None and set(spec.features) <= set(at.columns):
            # a training set holds every row's features, the inactive customers' too
            data.cache[key] = at[[*spec.features, "active"]].astype({"active": bool})
            return data.cache[key]
        data.cache[key] = (
            read_features(data.store, spec, entity_frame(at), config.features.engine)
            .reset_index(drop=True)
            .assign(active=at["active"].to_numpy(dtype=bool))
        )
    return data.cache[key]


def fit_binary_task(
    name: str,
    data: PreparedData,
    spec: ServiceSpec,
    x: pd.DataFrame,
    settings: BinaryModelSettings,
    config: TrainingConfig,
    feature_settings: FeatureSettings,
    truth: Truth | None,
    horizon_days: int | None = None,
) -> TaskResult:
    """Churn or conversion: LightGBM with baselines, evaluated on the test period.

    Baselines: logistic regression, a random forest, the recency-frequency grid and, given
    the label's ``horizon_days``, BG/NBD (conversion; churn too where churn is no purchase
    within the horizon, see :func:`labels_are_complements`).
    """
    started = time.perf_counter()
    rows = data.rows
    label = LABEL_OF[name]
    y = rows[label].to_numpy(dtype=np.int64)
    masks = _split_masks(rows)
    tr = _subsample(masks["train"], settings.max_train_rows, config.seed)
    va, te = masks["validation"], masks["test"]
    for s, m in (("train", tr), ("validation", va), ("test", te)):
        if len(np.unique(y[m])) < 2:
            raise TrainingError(f"{name}: the {s} period has only one label value")
    features = list(spec.features)
    recent = latest_cutoffs(rows.loc[va, "cutoff"], settings.relevel_days)
    model = binary_model(features, spec.categorical, settings, config).fit(
        x[tr], y[tr], eval_set=(x[va], y[va]), recent=recent
    )
    raw_test = model.predict_raw(x[te])
    p_test = apply_binary_calibrator(model.calibrator_, raw_test)
    metrics = binary_metrics(y[te], p_test)
    metrics.update(_prefixed("validation_", binary_metrics(y[va], model.predict_proba(x[va]))))
    metrics.update(relevel_metrics(model.calibrator_, raw_test, y[te]))
    metrics["test_distinct_score_share"] = float(len(np.unique(p_test)) / max(len(p_test), 1))
    scores = {"lightgbm": p_test}

    logreg = LogisticBaseline(features, spec.categorical, random_state=config.seed)
    scores["logreg"] = logreg.fit(x[tr], y[tr]).predict_proba(x[te])
    exportable: dict[str, Any] = {"logreg": logreg}
    w = max(feature_settings.windows_days)
    recency, frequency = (
        ("days_since_last_event", f"events_{w}d")
        if name == "churn"
        else ("days_since_last_conversion", f"conversions_{w}d")
    )
    if recency in features and frequency in features:
        rf = RecencyFrequencyBaseline(recency, frequency).fit(x[tr], y[tr])
        scores["recency_frequency"] = rf.predict_proba(x[te])
    forest = RandomForestBaseline(
        features, spec.categorical, random_state=config.seed, num_threads=config.num_threads
    )
    scores["random_forest"] = forest.fit(x[tr], y[tr]).predict_proba(x[te])
    purchase_outcome = name == "conversion" or labels_are_complements(rows)
    if horizon_days and purchase_outcome and all(c in x.columns for c in BGNBD_INPUTS):
        outcome = "purchase" if name == "conversion" else "no_purchase"
        try:
            histories = read_histories(data, spec, config)
            bgnbd = BGNBDBaseline(horizon_days, outcome).fit(histories)
            scores["bgnbd"] = bgnbd.predict_proba(x[te])  # the model's own test rows
            exportable["bgnbd"] = bgnbd
            metrics["bgnbd_fit_customers"] = float(len(histories))
            metrics["bgnbd_fit_active_share"] = float(histories["active"].mean())
            metrics.update(_prefixed("bgnbd_", asdict(bgnbd.params_)))
        except ValueError as exc:
            logger.warning("%s: no BG/NBD baseline: %s", name, exc)
    for base in ("logreg", "random_forest", "recency_frequency", "bgnbd"):
        if base in scores:
            metrics.update(_prefixed(f"baseline_{base}_", binary_metrics(y[te], scores[base])))
    verdict, best = baseline_verdict(name, metrics, config, exportable)
    if verdict:
        logger.warning("%s", verdict)
    if truth is not None:
        metrics.update(compare_with_truth(rows[te], p_test, y[te], truth, label))

    x_example = pd.DataFrame(
        encode_frame(x[te].head(5), features, model.vocabularies_), columns=features
    )
    manifest = _manifest(name, "binary", spec, data, config, model.best_iteration_)
    manifest["label"] = label
    manifest["positive_class"] = 1
    manifest["monotone_constraints"] = dict(zip(features, model.monotone_constraints_, strict=True))
    params = {
        **_window_params(rows, {"train": tr, "validation": va, "test": te}),
        "label": label,
        "imbalance": settings.imbalance,
        "calibration": model.calibrator_["method"],
        "best_iteration": model.best_iteration_,
        "monotone_features": sum(1 for c in model.monotone_constraints_ if c),
        **{f"lgb_{k}": v for k, v in model.params_.items() if k != "monotone_constraints"},
    }
    for s, m in (("train", tr), ("validation", va), ("test", te)):
        metrics[f"{s}_rows"] = float(m.sum())
        metrics[f"{s}_positive_rate"] = float(y[m].mean())

    def champion_scorer(bundle: Any) -> dict[str, float]:
        return binary_metrics(y[te], bundle.predict_proba(x[te]))

    challenger = None
    if best is not None:
        challenger = fit_baseline_challenger(
            BaselineFit(name, best, exportable[best], spec, x, y, tr, va, te, recent),
            data, settings, config, metrics, scores, truth, champion_scorer,
        )  # fmt: skip
    return TaskResult(
        verdict=verdict,
        baseline_challenger=challenger,
        model=name,
        kind="binary",
        fitted=model,
        spec=spec,
        metrics=metrics,
        params=params,
        manifest=manifest,
        model_texts={"model": model.model_text_},
        primary_booster=model.booster_,
        input_example=x_example,
        output_example=np.asarray(model.booster_.predict(x_example.to_numpy())),
        plot_data={"y": y[te], "scores": scores, "importance": model.feature_importance()},
        champion_scorer=champion_scorer,
        fit_seconds=time.perf_counter() - started,
        extra_artifacts={
            "vocabularies": model.vocabularies_,
            "calibrator": model.calibrator_,
        },
    )


EXPORTABLE_BASELINES = {"logreg": "logistic", "bgnbd": "bgnbd"}
"""Baselines with a JSON form a bundle can hold (the random forest and the recency grid
have none)."""


def baseline_verdict(
    name: str, metrics: dict[str, float], config: TrainingConfig, exportable: dict[str, Any]
) -> tuple[str | None, str | None]:
    """What to tell the user when baselines beat the LightGBM model on the gate's metric, and
    the best of them that can be registered in its place (None when none can)."""
    metric = config.gate(name).metric
    value = metrics.get(metric)
    if value is None:
        return None, None
    lower = metric in LOWER_IS_BETTER
    beaten = {
        b: v
        for b in BASELINES
        if (v := metrics.get(f"baseline_{b}_{metric}")) is not None
        and (v < value if lower else v > value)
    }
    if not beaten:
        return None, None
    pick = min if lower else max
    top = pick(beaten, key=lambda b: beaten[b])
    registrable = [b for b in beaten if b in exportable]
    best = pick(registrable, key=lambda b: beaten[b]) if registrable else None
    text = (
        f"{name}: the {top} baseline beats the LightGBM model on {metric} by "
        f"{abs(beaten[top] - value):.4f} ({beaten[top]:.4f} against {value:.4f})"
    )
    if best is None:
        text += f"; {top} has no bundle form, so the LightGBM model stays the challenger"
    elif best != top:
        text += (
            f"; the best baseline with a bundle form is {best} "
            f"({beaten[best]:.4f}, by {abs(beaten[best] - value):.4f})"
        )
    return text, best


@dataclass(frozen=True)
class BaselineFit:
    """A fitted baseline and the rows of the task it was fitted in."""

    model: str
    baseline: str
    fitted: Any
    spec: ServiceSpec
    x: pd.DataFrame
    y: np.ndarray
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    recent: np.ndarray | None


def fit_baseline_challenger(
    fit: BaselineFit,
    data: PreparedData,
    settings: BinaryModelSettings,
    config: TrainingConfig,
    model_metrics: dict[str, float],
    scores: dict[str, np.ndarray],
    truth: Truth | None,
    champion_scorer: Callable[[Any], dict[str, float]],
) -> TaskResult:
    """A baseline as a model to register: calibrated on the held-out customers as the
    LightGBM model is, evaluated on the same test rows, with the LightGBM model and the
    other baselines as the baselines it is gated against."""
    started = time.perf_counter()
    name, base, fitted, x, y = fit.model, fit.baseline, fit.fitted, fit.x, fit.y
    tr, va, te = fit.train, fit.validation, fit.test
    scorer = fitted.scorer()
    if scorer["kind"] == "bgnbd":
        features = list(BGNBD_INPUTS)
        spec = replace(fit.spec, features=tuple(features), categorical=())
        vocabularies: dict[str, list[str]] = {}
        bundle_features = features
    else:
        spec = fit.spec
        features = list(spec.features)
        vocabularies = fitted.vocabularies_
        bundle_features = features
    calibrator = calibrate(
        fitted.predict_proba(x[va]), y[va], settings.calibration, config.seed, fit.recent
    )
    raw_test = fitted.predict_proba(x[te])
    p_test = apply_binary_calibrator(calibrator, raw_test)
    metrics = binary_metrics(y[te], p_test)
    p_val = apply_binary_calibrator(calibrator, fitted.predict_proba(x[va]))
    metrics.update(_prefixed("validation_", binary_metrics(y[va], p_val)))
    metrics.update(relevel_metrics(calibrator, raw_test, y[te]))
    metrics["test_distinct_score_share"] = float(len(np.unique(p_test)) / max(len(p_test), 1))
    metrics.update(_prefixed("baseline_lightgbm_", binary_metrics(y[te], scores["lightgbm"])))
    for key, v in model_metrics.items():
        keep = key.startswith("baseline_") and not key.startswith(f"baseline_{base}_")
        if keep or key.startswith(("train_", "test_rows", "test_positive", "validation_rows")):
            metrics.setdefault(key, v)
    label = LABEL_OF[name]
    if truth is not None:
        metrics.update(compare_with_truth(data.rows[te], p_test, y[te], truth, label))
    encoded = encode_frame(x[te], bundle_features, vocabularies)
    if scorer["kind"] == "bgnbd":
        terms = bgnbd_contributions(scorer, encoded[:5000])
    else:
        terms = linear_terms(scorer, encoded[:5000])
    importance = pd.Series(np.abs(terms[:, :-1]).mean(axis=0), index=bundle_features)
    manifest = _manifest(name, "binary", spec, data, config, 0)
    manifest.update(
        {
            "label": label,
            "positive_class": 1,
            "baseline": base,
            "features": bundle_features,
            "categorical_features": [f for f in bundle_features if f in vocabularies],
            "calendar_features": [f for f in bundle_features if f in CALENDAR_FEATURES],
        }
    )
    params = {
        **_window_params(data.rows, {"train": tr, "validation": va, "test": te}),
        "label": label,
        "baseline": base,
        "scorer": scorer["kind"],
        "calibration": calibrator["method"],
    }
    example = pd.DataFrame(encoded[:5], columns=bundle_features)
    return TaskResult(
        model=name,
        kind="binary",
        fitted=fitted,
        spec=spec,
        metrics=metrics,
        params=params,
        manifest=manifest,
        model_texts={},
        primary_booster=None,
        input_example=example,
        output_example=p_test[:5],
        plot_data={
            "y": y[te],
            "scores": {base: p_test, "lightgbm": scores["lightgbm"]},
            "importance": importance.sort_values(ascending=False),
        },
        champion_scorer=champion_scorer,
        fit_seconds=time.perf_counter() - started,
        extra_artifacts={"vocabularies": vocabularies, "calibrator": calibrator, "scorer": scorer},
        baseline=base,
    )


def fit_next_step_task(
    data: PreparedData,
    spec: ServiceSpec,
    x: pd.DataFrame,
    config: TrainingConfig,
) -> TaskResult:
    """Next step (event type or stage): multiclass LightGBM against a first-order Markov model."""
    started = time.perf_counter()
    settings = config.models.next_step
    rows = data.rows
    target = "next_event_type" if settings.target == "event_type" else "next_stage"
    y = rows[target].astype(str).to_numpy()
    masks = _split_masks(rows)
    tr = _subsample(masks["train"], settings.max_train_rows, config.seed)
    va, te = masks["validation"], masks["test"]
    features = list(spec.features)
    model = NextStepModel(
        features,
        spec.categorical,
        max_classes=settings.max_classes,
        imbalance=settings.imbalance,
        calibration=settings.calibration,
        params=settings.lightgbm,
        num_boost_round=settings.num_boost_round,
        early_stopping_rounds=settings.early_stopping_rounds,
        random_state=config.seed,
        num_threads=config.num_threads,
    ).fit(x[tr], y[tr], eval_set=(x[va], y[va]))
    codes = model.encode_labels(y)
    te_known = te & (codes >= 0)
    proba = model.predict_proba(x[te_known])
    metrics = multiclass_metrics(codes[te_known], proba)
    va_known = va & (codes >= 0)
    metrics.update(
        _prefixed(
            "validation_", multiclass_metrics(codes[va_known], model.predict_proba(x[va_known]))
        )
    )
    k = len(model.classes_)
    if "last_event_1" in features:
        markov = MarkovBaseline("last_event_1").fit(x[tr], codes[tr], k)
        metrics.update(
            _prefixed(
                "baseline_markov_",
                multiclass_metrics(codes[te_known], markov.predict_proba(x[te_known])),
            )
        )
    prior = np.bincount(codes[tr][codes[tr] >= 0], minlength=k) + 1.0
    metrics.update(
        _prefixed(
            "baseline_prior_",
            multiclass_metrics(codes[te_known], np.tile(prior / prior.sum(), (te_known.sum(), 1))),
        )
    )
    for s, m in (("train", tr), ("validation", va), ("test", te)):
        metrics[f"{s}_rows"] = float(m.sum())
    metrics["test_unmapped_share"] = float(1 - te_known.sum() / max(te.sum(), 1))
    x_example = pd.DataFrame(
        encode_frame(x[te].head(5), features, model.vocabularies_), columns=features
    )
    manifest = _manifest("next_step", "multiclass", spec, data, config, model.best_iteration_)
    manifest["classes"] = list(model.classes_)
    manifest["target"] = target
    params = {
        **_window_params(rows, {"train": tr, "validation": va, "test": te}),
        "target": target,
        "classes": ",".join(model.classes_),
        "imbalance": settings.imbalance,
        "calibration": model.calibrator_["method"],
        "best_iteration": model.best_iteration_,
        **{f"lgb_{k_}": v for k_, v in model.params_.items()},
    }
    y_test_labels = y[te]

    def champion_scorer(bundle: Any) -> dict[str, float]:
        index = {c: i for i, c in enumerate(bundle.classes)}
        other = index.get("other", -1)
        champ_codes = np.array([index.get(v, other) for v in y_test_labels])
        ok = champ_codes >= 0
        p = bundle.predict_proba(x[te][ok])
        return multiclass_metrics(champ_codes[ok], p)

    return TaskResult(
        model="next_step",
        kind="multiclass",
        fitted=model,
        spec=spec,
        metrics=metrics,
        params=params,
        manifest=manifest,
        model_texts={"model": model.model_text_},
        primary_booster=model.booster_,
        input_example=x_example,
        output_example=np.asarray(model.booster_.predict(x_example.to_numpy())),
        plot_data={
            "codes": codes[te_known],
            "predicted": proba.argmax(axis=1),
            "classes": model.classes_,
            "importance": model.feature_importance(),
        },
        champion_scorer=champion_scorer,
        fit_seconds=time.perf_counter() - started,
        extra_artifacts={"vocabularies": model.vocabularies_, "calibrator": model.calibrator_},
    )


def next_event_result(
    lake: Path,
    data: PreparedData,
    journey_map: JourneyMap,
    feature_settings: FeatureSettings,
    config: TrainingConfig,
) -> TaskResult:
    """The next step after every event (:mod:`training.next_event`) as a loggable task: the
    Markov-1 / Markov-2 baselines and the abandonment metrics sit in the same run."""
    from features.catalog import build_catalog
    from training.bundle import NextEventScorer
    from training.next_event import as_float_frame, fit_next_event_task

    started = time.perf_counter()
    settings = config.models.next_event
    catalog = build_catalog(journey_map, feature_settings)
    out = fit_next_event_task(
        lake, journey_map, catalog, settings, config,
        [data.plan.test[0].isoformat(), data.plan.test[-1].isoformat()],
    )  # fmt: skip
    fit, anchors, masks = out["fit"], out["data"], out["masks"]
    model = fit.model
    features = list(anchors.features)
    spec = ServiceSpec(settings.feature_service, tuple(features), tuple(anchors.categorical), ())
    rows = anchors.rows
    te = masks["test"]
    x_example = pd.DataFrame(
        encode_frame(
            as_float_frame(rows[te].head(5), features, anchors.categorical),
            features,
            model.vocabularies_,
        ),
        columns=features,
    )
    test_rows = rows[te]
    test_labels = test_rows["next"].astype(str).to_numpy()

    def champion_scorer(bundle: Any) -> dict[str, float]:
        scorer = NextEventScorer(bundle)
        index = {c: i for i, c in enumerate(bundle.classes)}
        other = index.get("other", -1)
        codes = np.array([index.get(v, other) for v in test_labels])
        ok = codes >= 0
        records = test_rows[ok].to_dict("records")
        proba, _ = scorer.predict(records)
        return multiclass_metrics(codes[ok], proba)

    return TaskResult(
        model="next_event",
        kind="multiclass",
        fitted=model,
        spec=spec,
        metrics=dict(fit.metrics),
        params=dict(out["params"]),
        manifest=out["manifest"],
        model_texts=out["model_texts"],
        primary_booster=model.booster_,
        input_example=x_example,
        output_example=np.asarray(model.booster_.predict(x_example.to_numpy())),
        plot_data={
            "codes": fit.test_codes,
            "predicted": fit.test_proba.argmax(axis=1),
            "classes": model.classes_,
            "importance": model.feature_importance(),
        },
        champion_scorer=champion_scorer,
        fit_seconds=time.perf_counter() - started,
        extra_artifacts={"vocabularies": out["vocabularies"], "calibrator": out["calibrator"]},
    )


def uplift_units_from_events(
    data: PreparedData, x: pd.DataFrame, journey_map: JourneyMap, window_days: int, lake: Path
) -> tuple[UpliftData, np.ndarray]:
    """Every labelled active customer-cutoff is a unit; its arm is the first action after.

    Returns:
        The units and the split of each.
    """
    con = open_lake(lake, journey_map)
    try:
        arms = assign_treatments(con, journey_map, data.rows, window_days)
    finally:
        con.close()
    arms["cutoff"] = pd.to_datetime(arms["cutoff"], utc=True)
    keys = data.rows[["customer_id", "cutoff"]].copy()
    keys["cutoff"] = pd.to_datetime(keys["cutoff"], utc=True)
    merged = keys.merge(arms, on=["customer_id", "cutoff"], how="left", validate="one_to_one")
    units = UpliftData(
        frame=x,
        arm=merged["arm"].fillna(CONTROL).astype(str).to_numpy(),
        propensity=merged["propensity"].to_numpy(dtype=np.float64),
        outcomes={
            "convert": data.rows["conversion"].to_numpy(dtype=np.int64),
            "churn": data.rows["churn"].to_numpy(dtype=np.int64),
        },
        customers=data.rows["customer_id"].astype(str).to_numpy(),
    )
    return units, data.rows["split"].to_numpy()


def read_decision_log(path: str | Path) -> pd.DataFrame:
    """A decision log: customer_id, timestamp, action_id (``none`` for no action), propensity.

    Raises:
        TrainingError: the file is missing or lacks a column.
    """
    path = Path(path)
    if not path.exists():
        raise TrainingError(f"decision log {path} not found")
    log = pd.read_parquet(path)
    missing = {"customer_id", "timestamp", "action_id", "propensity"} - set(log.columns)
    if missing:
        raise TrainingError(f"decision log {path} lacks columns: {', '.join(sorted(missing))}")
    log = log[["customer_id", "timestamp", "action_id", "propensity"]].copy()
    log["customer_id"] = log["customer_id"].astype(str)
    log["timestamp"] = pd.to_datetime(log["timestamp"], utc=True).astype("datetime64[us, UTC]")
    return log


def uplift_units_from_decisions(
    data: PreparedData,
    spec: ServiceSpec,
    decisions: pd.DataFrame,
    journey_map: JourneyMap,
    config: TrainingConfig,
    lake: Path,
) -> tuple[UpliftData, np.ndarray]:
    """Every logged decision of an active customer is a unit, with its arm and propensity.

    A decision belongs to the split of the latest labelled cutoff at or before it; its
    features are read as of the decision (Feast point-in-time), its outcomes are the labels
    computed at the decision time.
    """
    cutoffs = sorted({*data.plan.train, *data.plan.validation, *data.plan.test})
    grid = pd.DataFrame({"cutoff": pd.to_datetime(cutoffs, utc=True)})
    grid["cutoff"] = grid["cutoff"].astype("datetime64[us, UTC]")
    cadence = pd.Timedelta(days=7)
    if len(grid) > 1:
        cadence = grid["cutoff"].diff().dropna().min()
    log = decisions.sort_values("timestamp")
    log = log[
        (log["timestamp"] >= grid["cutoff"].iloc[0])
        & (log["timestamp"] < grid["cutoff"].iloc[-1] + cadence)
    ]
    log = pd.merge_asof(log, grid, left_on="timestamp", right_on="cutoff", direction="backward")
    log["split"] = assign_splits(log, data.plan).to_numpy()
    log = log[log["split"].notna() & (log["timestamp"] - log["cutoff"] < cadence)]
    settings = config.models.uplift
    caps = {
        "train": settings.max_train_rows,
        "validation": settings.max_eval_rows,
        "test": settings.max_eval_rows,
    }
    parts = []
    for split_name, part in log.groupby("split", sort=True):
        cap = caps[str(split_name)]
        parts.append(
            part.sample(n=cap, random_state=config.seed)
            if cap is not None and len(part) > cap
            else part
        )
    log = pd.concat(parts)
    con = open_lake(lake, journey_map)
    try:
        labels = compute_labels(
            con,
            journey_map,
            pd.DataFrame({"customer_id": log["customer_id"], "cutoff": log["timestamp"]}),
        )
    finally:
        con.close()
    labels["cutoff"] = pd.to_datetime(labels["cutoff"], utc=True).astype("datetime64[us, UTC]")
    log = log.merge(
        labels.rename(columns={"cutoff": "timestamp"}),
        on=["customer_id", "timestamp"],
        how="inner",
        validate="many_to_one",
    )
    log = log[log["active"]].sort_values(["timestamp", "customer_id"]).reset_index(drop=True)
    if log.empty:
        raise TrainingError("no decision of the log falls on an active customer in the periods")
    x = read_features(
        data.store, spec, entity_frame(log, time_column="timestamp"), config.features.engine
    )
    units = UpliftData(
        frame=x,
        arm=log["action_id"].astype(str).to_numpy(),
        propensity=log["propensity"].to_numpy(dtype=np.float64),
        outcomes={
            "convert": log["conversion"].to_numpy(dtype=np.int64),
            "churn": log["churn"].to_numpy(dtype=np.int64),
        },
        customers=log["customer_id"].to_numpy(),
    )
    return units, log["split"].to_numpy()


def fit_uplift_task(
    data: PreparedData,
    spec: ServiceSpec,
    x: pd.DataFrame,
    journey_map: JourneyMap,
    config: TrainingConfig,
    lake: Path,
    truth: Truth | None,
    decisions: pd.DataFrame | None = None,
) -> TaskResult:
    """Action uplift with the DR-learner; Qini/AUUC on the test period, effects vs truth.

    Units come from the decision log when one is given, else from the event log's actions.
    """
    started = time.perf_counter()
    settings = config.models.uplift
    if decisions is not None:
        units, split = uplift_units_from_decisions(data, spec, decisions, journey_map, config, lake)
    else:
        units, split = uplift_units_from_events(
            data, x, journey_map, settings.treatment_window_days, lake
        )
    masks = {s: split == s for s in SPLITS}
    masks["validation"] = _subsample(masks["validation"], settings.max_eval_rows, config.seed)
    masks["test"] = _subsample(masks["test"], settings.max_eval_rows, config.seed)
    if not (units.arm[masks["train"]] != CONTROL).any():
        raise NoActionsError(
            "uplift: the training period has no marketing actions (treatments in the journey "
            "map); nothing to learn uplift from"
        )
    tr = _subsample(masks["train"], settings.max_train_rows, config.seed)
    va, te = masks["validation"], masks["test"]
    features = list(spec.features)
    model = DoublyRobustUplift(
        features,
        spec.categorical,
        propensity_floor=settings.propensity_floor,
        params=settings.lightgbm,
        num_boost_round=settings.num_boost_round,
        early_stopping_rounds=settings.early_stopping_rounds,
        random_state=config.seed,
        num_threads=config.num_threads,
    ).fit(units.take(tr), units.take(va))
    test = units.take(te)
    effects = model.predict_effects(test.frame)
    metrics = evaluate_uplift(model, test, effects)
    metrics["baseline_random_qini_convert"] = 0.0
    metrics["baseline_random_qini_churn"] = 0.0
    recorded = np.isfinite(units.propensity) & (units.arm != CONTROL)
    metrics["recorded_propensity_share"] = float(
        recorded.sum() / max((units.arm != CONTROL).sum(), 1)
    )
    for s, m in (("train", tr), ("validation", va), ("test", te)):
        metrics[f"{s}_rows"] = float(m.sum())
        metrics[f"{s}_treated_share"] = float((units.arm[m] != CONTROL).mean())
    if truth is not None and truth.effects is not None:
        test_cutoffs = {pd.Timestamp(t) for t in data.plan.test}
        keys = truth.effects[["customer_id", "cutoff"]].drop_duplicates()
        keys = keys[keys["cutoff"].isin(test_cutoffs)].reset_index(drop=True)
        if not keys.empty:
            tx = read_features(data.store, spec, entity_frame(keys), config.features.engine)
            metrics.update(
                compare_effects_with_truth(
                    keys, model.predict_effects(tx), list(model.actions_), truth
                )
            )
    curves = {}
    x_codes = model._arm_codes(test.arm)
    known = x_codes >= 0
    x_test = encode_frame(test.frame, features, model.vocabularies_)
    e = np.full(len(x_codes), np.nan)
    e[known] = model.propensities(x_test[known], x_codes[known], test.propensity[known])
    for j, action in enumerate(model.actions_):
        rows = known & ((x_codes == j + 1) | (x_codes == 0))
        if rows.sum() >= 20:
            curves[action] = uplift_curve(
                effects["convert"][rows, j],
                x_codes[rows] == j + 1,
                test.outcomes["convert"][rows],
                1 / e[rows],
            )
    stacked_example = np.hstack(
        [
            encode_frame(test.frame.head(5), features, model.vocabularies_),
            np.zeros((min(5, len(test.frame)), 1)),
        ]
    )
    x_example = pd.DataFrame(stacked_example, columns=[*features, ACTION_FEATURE])
    manifest = _manifest("uplift", "uplift", spec, data, config, 0)
    manifest["actions"] = list(model.actions_)
    manifest["outcomes"] = list(OUTCOMES)
    manifest["meta_learner"] = "doubly-robust (DR) learner, cross-fitted, LightGBM"
    manifest["base_effects"] = model.base_effects_
    params = {
        "units": "decision log" if decisions is not None else "event log",
        "meta_learner": "dr_learner",
        "actions": ",".join(model.actions_),
        "treatment_window_days": settings.treatment_window_days,
        "propensity_floor": settings.propensity_floor,
        "cross_fitting_folds": model.n_folds,
        **{f"best_iteration_{o}": m.current_iteration() for o, m in model.effect_models_.items()},
    }

    def champion_scorer(bundle: Any) -> dict[str, float]:
        champ = bundle.predict_effects(test.frame)
        aligned = {
            o: np.column_stack(
                [
                    champ[o][a].to_numpy() if a in champ[o].columns else np.zeros(len(test.frame))
                    for a in model.actions_
                ]
            )
            for o in OUTCOMES
        }
        return evaluate_uplift(model, test, aligned)

    return TaskResult(
        model="uplift",
        kind="uplift",
        fitted=model,
        spec=spec,
        metrics=metrics,
        params=params,
        manifest=manifest,
        model_texts=model.model_texts(),
        primary_booster=model.effect_models_["convert"],
        input_example=x_example,
        output_example=np.asarray(model.effect_models_["convert"].predict(x_example.to_numpy())),
        plot_data={"curves": curves, "importance": model.feature_importance()},
        champion_scorer=champion_scorer,
        fit_seconds=time.perf_counter() - started,
        extra_artifacts={"vocabularies": model.vocabularies_, "calibrator": {"method": "none"}},
    )


def _manifest(
    name: str,
    kind: str,
    spec: ServiceSpec,
    data: PreparedData,
    config: TrainingConfig,
    best_iteration: int,
) -> dict[str, Any]:
    return {
        "model": name,
        "kind": kind,
        "feature_service": spec.name,
        "feature_service_version": spec.version,
        "features": list(spec.features),
        "categorical_features": list(spec.categorical),
        "calendar_features": [f for f in spec.features if f in CALENDAR_FEATURES],
        "best_iteration": best_iteration,
        "seed": config.seed,
        "test_period": [data.plan.test[0].isoformat(), data.plan.test[-1].isoformat()],
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def write_plots(result: TaskResult, folder: Path) -> list[Path]:
    """The run's evaluation plots (PNG)."""
    d = result.plot_data
    title = result.model
    out = [plots.plot_importance(d["importance"], folder / "feature_importance.png", title)]
    if result.kind == "binary":
        y = d["y"]
        out.append(plots.plot_roc(y, d["scores"], folder / "roc.png", title))
        out.append(plots.plot_calibration(y, d["scores"], folder / "calibration.png", title))
        out.append(plots.plot_gains(y, d["scores"], folder / "gains.png", title))
    elif result.kind == "multiclass":
        out.append(
            plots.plot_confusion(
                d["codes"], d["predicted"], d["classes"], folder / "confusion.png", title
            )
        )
    elif d["curves"]:
        out.append(plots.plot_qini(d["curves"], folder / "qini_convert.png", title))
    return out


def score_champion(
    client: MlflowClient, registered_name: str, result: TaskResult
) -> tuple[dict[str, float], str | None]:
    """The current champion's metrics on this run's test period (empty when there is none)."""
    version = current_version(client, registered_name, CHAMPION)
    if version is None:
        return {}, None
    try:
        with tempfile.TemporaryDirectory(prefix="champion-") as tmp:
            bundle = load_model_bundle(
                f"models:/{registered_name}@{CHAMPION}",
                expected_manifest_sha256=version.tags.get(MANIFEST_TAG),
                dst_path=tmp,
            )
        missing = [f for f in bundle.features if f not in result.spec.features]
        if missing:
            logger.warning(
                "champion v%s needs features this run does not read (%s): not compared",
                version.version,
                ", ".join(missing[:5]),
            )
            return {}, str(version.version)
        return _prefixed("champion_", result.champion_scorer(bundle)), str(version.version)
    except Exception as exc:  # a broken champion must not stop training a challenger
        logger.warning("could not score champion v%s: %s", version.version, exc)
        return {}, str(version.version)


def _clean(metrics: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}


def log_task(
    client: MlflowClient,
    experiment_id: str,
    config: TrainingConfig,
    result: TaskResult,
    data: PreparedData,
    batch: str,
) -> tuple[LoggedVersion, dict[str, float], str | None, float]:
    """One MLflow run for a fitted model: params, metrics, plots, bundle, challenger alias."""
    import mlflow

    started = time.perf_counter()
    name = config.registered_name(result.model)
    champion_metrics, champion_version = score_champion(client, name, result)
    commit, dirty = git_commit()
    metrics = _clean({**result.metrics, **champion_metrics})
    metrics["fit_seconds"] = result.fit_seconds
    run_name = f"{result.model}-{result.baseline + '-' if result.baseline else ''}{batch}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name):
        mlflow.set_tags(
            {
                "baseline": result.baseline or "",
                "model": result.model,
                "registered_model": name,
                "feature_service": result.spec.name,
                "feature_service_version": result.spec.version,
                "git_commit": commit,
                "git_dirty": str(dirty).lower(),
                "train_batch": batch,
                "champion_version_compared": champion_version or "",
                "mlflow.source.git.commit": commit,
            }
        )
        params = {
            **result.params,
            "feature_service": result.spec.name,
            "feature_count": len(result.spec.features),
            "seed": config.seed,
            "num_threads": config.num_threads,
            "feature_engine": config.features.engine,
            "log_end": data.labels.log_end.isoformat(),
            **(data.sample.params() if data.sample is not None else {}),
            "split_test_days": config.split.test_days,
            "split_validation_days": config.split.validation_days,
            "split_purge": config.split.purge,
            "split_validation": config.split.validation,
            "split_validation_share": config.split.validation_share,
        }
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        with tempfile.TemporaryDirectory(prefix="plots-") as tmp:
            write_plots(result, Path(tmp))
            mlflow.log_artifacts(tmp, "plots")
        mlflow.log_dict(
            _importance_frame(result.plot_data["importance"]), "feature_importance.json"
        )
        mlflow.log_dict(
            {"features": list(result.spec.features), "categorical": list(result.spec.categorical)},
            "features.json",
        )
        logged = log_and_register(
            client,
            name,
            result.primary_booster,
            result.input_example,
            np.asarray(result.output_example),
            result.manifest,
            result.model_texts,
            result.extra_artifacts["vocabularies"],
            result.extra_artifacts["calibrator"],
            result.extra_artifacts.get("scorer"),
        )
        log_seconds = time.perf_counter() - started
        metrics["log_seconds"] = log_seconds
        mlflow.log_metrics(metrics)
    return logged, metrics, champion_version, log_seconds


def train_models(
    data_dir: str | Path,
    models: Sequence[str],
    journey_map: JourneyMap,
    feature_settings: FeatureSettings,
    config: TrainingConfig,
    target: TrackingTarget,
    truth_dir: str | Path | None = None,
    decisions_path: str | Path | None = None,
    skip_without_actions: bool = False,
    dataset: str | Path | None = None,
    register_baseline: bool | None = None,
) -> list[TrainedModel]:
    """Trains, evaluates, logs and registers (as ``challenger``) each requested model.

    When a baseline with a bundle form beats the churn or conversion LightGBM model on the
    gate's metric and ``register_baseline`` (default: the model's ``register_baseline``
    setting) is on, that baseline is registered after the LightGBM model and becomes the
    challenger; both are in the returned list, the baseline's with ``baseline`` set.

    Raises:
        TrainingError: the data cannot train a model (the message says why). With
            ``skip_without_actions``, a log without marketing actions skips the uplift model.
        LabelError: the log is too short for the configured horizons and periods.
    """
    from features.store import Workspace

    if dataset is not None and "uplift" in models:
        if not skip_without_actions:
            raise TrainingError(
                "the uplift model learns from the lake's events or the decision log, not from "
                "a training set: train it without --dataset"
            )
        logger.warning("uplift: skipped (it does not train from a training set)")
        models = [m for m in models if m != "uplift"]
    if dataset is not None and "next_event" in models:
        if not skip_without_actions:
            raise TrainingError(
                "the next_event model learns from every event of the lake, not from a "
                "training set of cutoffs: train it without --dataset"
            )
        logger.warning("next_event: skipped (it does not train from a training set)")
        models = [m for m in models if m != "next_event"]
    data = prepare_data(data_dir, journey_map, feature_settings, config, dataset)
    truth = load_truth(truth_dir) if truth_dir is not None else None
    client = use_tracking(target)
    experiment_id = ensure_experiment(client, target)
    batch = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    cache: dict[str, pd.DataFrame] = {}
    complements = labels_are_complements(data.rows)
    fitted: list[TaskResult] = []
    for name in models:
        if name in ("churn", "conversion"):
            settings = getattr(config.models, name)
            if name == "conversion" and complements:
                settings = mirror_of_churn(config.models.churn, settings)
            spec, x = read_model_features(data, settings.feature_service, config, cache)
            spec, x = with_calendar(spec, x, data.rows, config.features.calendar)
            horizon = getattr(journey_map.horizons, f"{name}_days")
            result = fit_binary_task(
                name, data, spec, x, settings, config, feature_settings, truth, horizon
            )
            result.params["mirrors_churn"] = name == "conversion" and complements
        elif name == "next_step":
            spec, x = read_model_features(
                data, config.models.next_step.feature_service, config, cache
            )
            spec, x = with_calendar(spec, x, data.rows, config.features.calendar)
            result = fit_next_step_task(data, spec, x, config)
        elif name == "next_event":
            try:
                result = next_event_result(
                    Workspace(data_dir).lake, data, journey_map, feature_settings, config
                )
            except ValueError as exc:  # too few events to anchor, split and evaluate
                if not skip_without_actions:
                    raise TrainingError(f"next_event: {exc}") from exc
                logger.warning("next_event: skipped: %s", exc)
                continue
        elif name == "uplift":
            spec, x = read_model_features(data, config.models.uplift.feature_service, config, cache)
            decisions = read_decision_log(decisions_path) if decisions_path else None
            try:
                result = fit_uplift_task(
                    data, spec, x, journey_map, config, Workspace(data_dir).lake, truth, decisions
                )
            except NoActionsError as exc:
                if not skip_without_actions:
                    raise
                logger.warning("%s: skipped", exc)
                continue
        else:
            raise TrainingError(f"unknown model {name!r}")
        fitted.append(result)
    by_name = {r.model: r for r in fitted}
    if complements and {"churn", "conversion"} <= set(by_name):
        agreement = check_complements(by_name["churn"], by_name["conversion"])
        for r in (by_name["churn"], by_name["conversion"]):
            r.metrics.update(agreement)
    out = []
    for result in fitted:
        chain = [result]
        settings = getattr(config.models, result.model, None)
        wanted = (
            register_baseline
            if register_baseline is not None
            else bool(getattr(settings, "register_baseline", False))
        )
        if result.baseline_challenger is not None and wanted:
            chain.append(result.baseline_challenger)
        for task in chain:
            logged, metrics, champion, log_seconds = log_task(
                client, experiment_id, config, task, data, batch
            )
            out.append(
                TrainedModel(
                    model=task.model,
                    registered_name=logged.registered_name,
                    version=logged.version,
                    run_id=logged.run_id,
                    metrics=metrics,
                    fit_seconds=task.fit_seconds,
                    log_seconds=log_seconds,
                    champion_version=champion,
                    baseline=task.baseline,
                    verdict=task.verdict,
                )
            )
    return out
