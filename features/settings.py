"""Settings of the feature pipeline and the online store (``configs/features.yaml``)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from journeyml.config import StrictModel, config_path, load_config

_SLUG = re.compile(r"^[a-z][a-z0-9_]*$")


class SnapshotSettings(StrictModel):
    """When feature snapshots are taken: every ``cadence_days`` at midnight UTC, plus "now"."""

    cadence_days: PositiveInt = 7
    warmup_days: int = Field(default=28, ge=0)


class OnlineStoreSettings(StrictModel):
    """Where online features live: SQLite (embedded) or Redis (production)."""

    type: Literal["sqlite", "redis"] = "sqlite"
    connection_string: str = "127.0.0.1:6379"


class RegistrySettings(StrictModel):
    """Where Feast keeps its registry: a local file (embedded) or PostgreSQL (production)."""

    type: Literal["file", "sql"] = "file"
    url: str | None = None

    @model_validator(mode="after")
    def _sql_needs_url(self) -> RegistrySettings:
        if self.type == "sql" and not self.url:
            raise ValueError("registry type 'sql' needs a url (postgresql+psycopg://...)")
        return self


class StoreSettings(StrictModel):
    """The Feast store behind the features."""

    project: str = "journeyml"
    online: OnlineStoreSettings = Field(default_factory=OnlineStoreSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)


class FeatureSettings(StrictModel):
    """What the journey feature pipeline computes.

    ``count_event_types`` lists the event types that get their own window counts; when it is
    omitted, every exact (non-pattern) event type named in the journey map is counted.
    """

    windows_days: list[PositiveInt] = Field(default_factory=lambda: [7, 30, 90])
    trend_days: PositiveInt = 30
    last_k: int = Field(default=5, ge=1, le=10)
    count_event_types: list[str] | None = None
    channels: list[str] = Field(
        default_factory=lambda: ["web", "app", "email", "phone", "chat", "store"]
    )
    profile_attributes: list[str] = Field(
        default_factory=lambda: ["segment", "plan", "region", "marketing_opt_out"]
    )
    snapshots: SnapshotSettings = Field(default_factory=SnapshotSettings)
    stale_after_hours: float = Field(default=24.0, gt=0)
    store: StoreSettings = Field(default_factory=StoreSettings)

    @field_validator("windows_days")
    @classmethod
    def _windows_sorted(cls, windows: list[int]) -> list[int]:
        if not windows:
            raise ValueError("list at least one window")
        if len(set(windows)) != len(windows):
            raise ValueError("windows must be unique")
        return sorted(windows)

    @field_validator("channels", "profile_attributes")
    @classmethod
    def _slugs(cls, names: list[str]) -> list[str]:
        for n in names:
            if not _SLUG.match(n):
                raise ValueError(f"{n!r} must be lower case letters, digits and _")
        return names

    @model_validator(mode="after")
    def _no_duplicate_names(self) -> FeatureSettings:
        if len(set(self.channels)) != len(self.channels):
            raise ValueError("channels must be unique")
        return self

    @property
    def lags_days(self) -> list[int]:
        """Every look-back, in days, at which cumulative state is read."""
        return sorted({0, *self.windows_days, self.trend_days, 2 * self.trend_days})


def load_feature_settings(path: str | None = None) -> FeatureSettings:
    """Loads ``path``, or ``features.yaml`` of the config folder (:func:`config_path`)."""
    return load_config(path or config_path("features.yaml"), FeatureSettings)
