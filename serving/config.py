"""Serving settings (``configs/serving.yaml``): where models, features and state live, the
decision policy's knobs (deadline, exploration, holdout, risk bands) and the request limits.

Unset locations resolve inside the workspace folder, so ``journeyml serve`` runs on the
embedded defaults with no server: the MLflow SQLite registry ``<data>/mlflow/mlflow.db``, the
Feast repository of ``journeyml features``, and ``<data>/serving/state.db`` and
``<data>/serving/events.db`` for decisions, contacts, feedback and online events.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator

from journeyml.config import REPO_ROOT, StrictModel, config_path, load_config

MODEL_ROLES = ("churn", "conversion", "next_step", "uplift")


class ModelSettings(StrictModel):
    """Which registered models serve, by alias, and how often the alias is re-read."""

    alias: str = "champion"
    prefix: str = ""  # registered names are <prefix><role>, as in configs/models.yaml
    required: tuple[Literal["churn", "conversion", "next_step", "next_event", "uplift"], ...] = (
        "churn",
        "conversion",
    )
    optional: tuple[Literal["churn", "conversion", "next_step", "next_event", "uplift"], ...] = (
        "next_step",
        "next_event",
        "uplift",
    )
    refresh_seconds: PositiveFloat = 15.0
    tracking_uri: str | None = None  # default: sqlite:///<data>/mlflow/mlflow.db

    def registered_name(self, role: str) -> str:
        return f"{self.prefix}{role}"


class ExplorationSettings(StrictModel):
    """Epsilon-greedy exploration over the candidates that passed every rule."""

    method: Literal["none", "epsilon"] = "none"
    epsilon: float = Field(default=0.05, ge=0.0, le=1.0)


class HoldoutSettings(StrictModel):
    """A fixed share of customers, chosen by a salted hash of the id, gets the control action."""

    share: float = Field(default=0.05, ge=0.0, le=1.0)
    salt: str = "journeyml-holdout-1"


class LimitSettings(StrictModel):
    """Request limits: larger bodies get 413, larger batches 400."""

    max_body_bytes: PositiveInt = 65_536
    max_customers: PositiveInt = 100
    max_events: PositiveInt = 200
    body_timeout_seconds: PositiveFloat = 5.0  # a body not complete by then gets 408


class RequestIdSettings(StrictModel):
    """How long a next-best-action ``request_id`` is remembered: a retry within this time gets
    the first answer again and no second contact."""

    keep_hours: PositiveFloat = 24.0


class AuthSettings(StrictModel):
    """API keys, stored as sha256 hashes with scopes (see :mod:`serving.auth`)."""

    enabled: bool = True
    keys_env: str = "JOURNEYML_API_KEYS"
    keys_file: str | None = None  # default: <data>/serving/api_keys.json


class TargetGroupSettings(StrictModel):
    """Thresholds of a list's ``target_group`` (:func:`serving.engine.target_groups`): the
    uplift thresholds are probability points on the action's objective (0.01 = one point of
    conversion gained or churn avoided), the risk threshold a calibrated churn risk."""

    persuadable_uplift: float = Field(default=0.01, gt=0.0, le=1.0)
    do_not_disturb_uplift: float = Field(default=-0.01, ge=-1.0, lt=0.0)
    lost_cause_risk: float = Field(default=0.5, gt=0.0, lt=1.0)


class ServingSettings(StrictModel):
    """Everything ``journeyml serve`` reads; see ``configs/serving.yaml``."""

    data_dir: str = "data"
    # unset: the files of the config folder (journeyml.config.config_path), read at load time
    actions: str = Field(default_factory=lambda: str(config_path("actions.yaml")))
    features: str = Field(default_factory=lambda: str(config_path("features.yaml")))
    journeys: str = Field(default_factory=lambda: str(config_path("journeys.yaml")))
    events: str = Field(default_factory=lambda: str(config_path("events.yaml")))
    segment_column: str = Field(default="segment", pattern=r"^[a-z][a-z0-9_]*$")
    state_url: str | None = None
    event_store_url: str | None = None
    deadline_ms: PositiveFloat = 50.0
    # /v1/events: keep each customer's journey state and update it per event ("incremental"),
    # or recompute the customer's whole history with the batch query per request ("recompute")
    event_state: Literal["incremental", "recompute"] = "incremental"
    state_timeout_ms: PositiveFloat = 500.0
    risk_bands: dict[str, float] = Field(default_factory=lambda: {"high": 0.5, "medium": 0.2})
    next_steps_top_k: PositiveInt = 3
    reasons_top_k: PositiveInt = 3
    cold_start_propensity: NonNegativeFloat = 0.05
    arbitration: Literal["auto", "propensity", "uplift"] = "auto"
    target_groups: TargetGroupSettings = TargetGroupSettings()
    models: ModelSettings = ModelSettings()
    exploration: ExplorationSettings = ExplorationSettings()
    holdout: HoldoutSettings = HoldoutSettings()
    limits: LimitSettings = LimitSettings()
    request_ids: RequestIdSettings = RequestIdSettings()
    auth: AuthSettings = AuthSettings()

    @model_validator(mode="after")
    def _bands_descend(self) -> ServingSettings:
        values = list(self.risk_bands.values())
        if not values or any(not 0.0 < v < 1.0 for v in values):
            raise ValueError("risk_bands: thresholds must be between 0 and 1, e.g. {high: 0.5}")
        if values != sorted(values, reverse=True):
            raise ValueError("risk_bands: list the bands from the highest threshold down")
        return self

    def workspace(self) -> Path:
        return Path(self.data_dir)

    def resolved_state_url(self) -> str:
        return self.state_url or f"sqlite:///{self.workspace().resolve() / 'serving' / 'state.db'}"

    def resolved_event_store_url(self) -> str:
        return (
            self.event_store_url
            or f"sqlite:///{self.workspace().resolve() / 'serving' / 'events.db'}"
        )

    def resolved_tracking_uri(self) -> str:
        return (
            self.models.tracking_uri
            or f"sqlite:///{self.workspace().resolve() / 'mlflow' / 'mlflow.db'}"
        )

    def risk_band(self, risk: float) -> str:
        for band, threshold in self.risk_bands.items():
            if risk >= threshold:
                return band
        return "low"


def load_serving_settings(
    path: str | Path | None = None, data_dir: str | Path | None = None
) -> ServingSettings:
    """Reads and validates the serving settings (``serving.yaml`` of the config folder by
    default); ``data_dir`` overrides the file's."""
    settings = load_config(path or config_path("serving.yaml"), ServingSettings)
    update: dict[str, str] = {}
    if data_dir is not None:
        update["data_dir"] = str(data_dir)
    # relative: to the repository, if not here
    for key in ("actions", "features", "journeys", "events"):
        value = Path(getattr(settings, key))
        if not value.is_absolute() and not value.exists() and (REPO_ROOT / value).exists():
            update[key] = str(REPO_ROOT / value)
    return settings.model_copy(update=update) if update else settings
