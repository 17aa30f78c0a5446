"""Settings of the training stage (``configs/models.yaml``), validated once at the entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveInt, field_validator

from journeyml.config import StrictModel, config_path, load_config

ModelName = Literal["churn", "conversion", "next_step", "next_event", "uplift"]
MODEL_NAMES: tuple[ModelName, ...] = ("churn", "conversion", "next_step", "next_event", "uplift")

LOWER_IS_BETTER = frozenset(
    {
        "ece",
        "log_loss",
        "brier",
        "ece_truth",
        "auc_gap_to_truth",
        "auc_gap_to_truth_within_cutoffs",
        "auc_gap_to_truth_between_cutoffs",
    }
)
"""Metrics whose floor is a ceiling and whose improvement is a decrease."""


class SplitSettings(StrictModel):
    """Time-based train / validation / test periods over the labelled cutoffs.

    ``validation: customers`` (default) holds out a share of the customers of the training
    window (all their cutoffs) for early stopping and calibration, so validation sits next to
    the data the model learns from; ``period`` takes the ``validation_days`` before the test
    period instead (a purge gap away from training). Either way the test period comes last,
    after a purge gap, and is seen by nothing but the final evaluation.
    """

    test_days: PositiveInt = 84
    validation_days: PositiveInt = 56
    purge: bool = True
    validation: Literal["customers", "period"] = "customers"
    validation_share: float = Field(default=0.2, gt=0.0, lt=0.5)


class FeatureReadSettings(StrictModel):
    """How training reads features from the feature store."""

    engine: Literal["duckdb", "feast"] = "duckdb"
    # Features of the decision time (training: the cutoff; serving: the request time) added to
    # the churn, conversion and next-step models' inputs, e.g. seasonality by month.
    calendar: tuple[Literal["calendar_month"], ...] = ("calendar_month",)


class DatasetSettings(StrictModel):
    """How ``journeyml train --dataset PATH`` reads a training set built elsewhere (Spark).

    A set larger than either budget is sampled by customer (every row of a kept customer, at
    every cutoff) at the rate that fits both; the rate is logged with each run.
    """

    max_rows: PositiveInt = 5_000_000
    max_memory_mb: PositiveInt = Field(
        default=4096, description="Budget for the set's uncompressed size as Parquet reports it."
    )


class TrackingSettings(StrictModel):
    """MLflow tracking; unset URIs mean the embedded SQLite store under the data folder."""

    tracking_uri: str | None = None
    artifact_location: str | None = None
    experiment: str = "journeyml"


class RegistrySettings(StrictModel):
    """Registered model names are ``<prefix><model>``."""

    prefix: str = ""


class BinaryModelSettings(StrictModel):
    """A binary journey model (churn, conversion)."""

    feature_service: str
    imbalance: Literal["none", "balanced", "sqrt"] = "balanced"
    calibration: Literal["auto", "isotonic", "platt", "beta", "none"] = "auto"
    # the calibrator is re-levelled on the held-out rows of the latest relevel_days of
    # training cutoffs when their label rate has moved (0: never)
    relevel_days: int = Field(default=28, ge=0)
    monotone_increasing: list[str] = Field(default_factory=list)
    monotone_decreasing: list[str] = Field(default_factory=list)
    max_train_rows: PositiveInt | None = None
    lightgbm: dict[str, Any] = Field(default_factory=dict)
    num_boost_round: PositiveInt = 1000
    early_stopping_rounds: PositiveInt = 50
    # when a baseline with a JSON form (logistic, BG/NBD) beats the LightGBM model on the
    # gate's metric, register that baseline (calibrated like the model) as the challenger
    register_baseline: bool = False


class NextStepSettings(StrictModel):
    """The multiclass next-step model."""

    feature_service: str = "next_step_v1"
    target: Literal["event_type", "stage"] = "event_type"
    max_classes: int = Field(default=12, ge=2)
    imbalance: Literal["none", "balanced", "sqrt"] = "sqrt"
    calibration: Literal["auto", "none"] = "auto"
    max_train_rows: PositiveInt | None = 150_000
    lightgbm: dict[str, Any] = Field(default_factory=dict)
    num_boost_round: PositiveInt = 300
    early_stopping_rounds: PositiveInt = 30


class NextEventSettings(StrictModel):
    """The next step after every event (and the session's abandonment), see
    :mod:`training.next_event`."""

    feature_service: str = "next_step_v1"
    max_classes: int = Field(default=16, ge=3)
    last_k: int = Field(default=3, ge=1, le=10)
    session_gap_minutes: PositiveInt = 30
    # event properties read as context (e.g. [platform, page]); null: inferred from the log
    properties: list[str] | None = None
    max_anchors: PositiveInt | None = 50_000
    test_share: float = Field(default=0.3, gt=0.0, lt=0.9)
    validation_share: float = Field(default=0.2, gt=0.0, lt=0.5)
    markov_strength: float = Field(default=2.0, gt=0.0)
    lightgbm: dict[str, Any] = Field(
        default_factory=lambda: {
            "learning_rate": 0.05,
            "num_leaves": 15,
            "min_data_in_leaf": 40,
            "max_bin": 63,
            "lambda_l2": 1.0,
        }
    )
    num_boost_round: PositiveInt = 500
    early_stopping_rounds: PositiveInt = 30


class UpliftSettings(StrictModel):
    """The action-uplift (doubly-robust learner) model."""

    feature_service: str = "conversion_v1"
    treatment_window_days: PositiveInt = 7
    max_train_rows: PositiveInt | None = 100_000
    max_eval_rows: PositiveInt | None = 100_000
    propensity_floor: float = Field(default=0.02, gt=0, lt=0.5)
    lightgbm: dict[str, Any] = Field(default_factory=dict)
    num_boost_round: PositiveInt = 300
    early_stopping_rounds: PositiveInt = 30


class ModelsSettings(StrictModel):
    churn: BinaryModelSettings = Field(
        default_factory=lambda: BinaryModelSettings(feature_service="churn_v1")
    )
    conversion: BinaryModelSettings = Field(
        default_factory=lambda: BinaryModelSettings(feature_service="conversion_v1")
    )
    next_step: NextStepSettings = Field(default_factory=NextStepSettings)
    next_event: NextEventSettings = Field(default_factory=NextEventSettings)
    uplift: UpliftSettings = Field(default_factory=UpliftSettings)


class GateSettings(StrictModel):
    """When a challenger may replace the champion.

    ``floors`` are absolute minimums (maximums for lower-is-better metrics such as ``ece``);
    ``metric`` is the primary metric the challenger must improve by ``champion_margin`` over the
    champion and by ``baseline_margin`` over every baseline of its own run.
    """

    metric: str
    champion_margin: float = Field(default=0.0, ge=0)
    baseline_margin: float = 0.0
    # further metrics on which the challenger must beat every baseline (e.g. log_loss)
    also_beat_baselines_on: list[str] = Field(default_factory=list)
    floors: dict[str, float] = Field(default_factory=dict)


def _default_gates() -> dict[str, GateSettings]:
    return {
        "churn": GateSettings(metric="auc", floors={"auc": 0.6}),
        "conversion": GateSettings(metric="auc", floors={"auc": 0.6}),
        "next_step": GateSettings(metric="top1_accuracy"),
        "next_event": GateSettings(metric="top3_accuracy", also_beat_baselines_on=["log_loss"]),
        "uplift": GateSettings(metric="qini_convert"),
    }


class TrainingConfig(StrictModel):
    """Everything ``journeyml train`` and ``journeyml promote`` need besides the data."""

    seed: int = 42
    num_threads: PositiveInt = 2
    split: SplitSettings = Field(default_factory=SplitSettings)
    features: FeatureReadSettings = Field(default_factory=FeatureReadSettings)
    dataset: DatasetSettings = Field(default_factory=DatasetSettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    gates: dict[str, GateSettings] = Field(default_factory=_default_gates)

    @field_validator("gates")
    @classmethod
    def _known_models(cls, gates: dict[str, GateSettings]) -> dict[str, GateSettings]:
        unknown = sorted(set(gates) - set(MODEL_NAMES))
        if unknown:
            raise ValueError(f"gates for unknown models: {', '.join(unknown)}")
        return gates

    def registered_name(self, model: str) -> str:
        """The registered model name of ``model`` (``churn`` → ``<prefix>churn``)."""
        return f"{self.registry.prefix}{model}"

    def gate(self, model: str) -> GateSettings:
        return self.gates.get(model) or _default_gates()[model]


def load_training_config(path: str | Path | None = None) -> TrainingConfig:
    """Loads ``path``, or ``models.yaml`` of the config folder (:func:`config_path`)."""
    return load_config(path or config_path("models.yaml"), TrainingConfig)
