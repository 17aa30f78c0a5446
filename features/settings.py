"""Settings of the feature pipeline and the online store (``configs/features.yaml``)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from journeyml.config import StrictModel, config_path, load_config

_SLUG = re.compile(r"^[a-z][a-z0-9_]*$")
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONTRACT_DIMENSIONS = frozenset({"channel"})
"""Contract columns a dimension may name; any other name is an event property."""
_CONTRACT_MEASURES = frozenset({"value"})
"""Contract columns a measure may name; any other name is an event property."""


def _column_name(column: str) -> str:
    if not _COLUMN.match(column):
        raise ValueError(
            f"{column!r} is not a column name this pipeline reads (letters, digits and _; "
            "rename the column on ingest with --map SRC=DST)"
        )
    return column


class Dimension(StrictModel):
    """An event column whose values become features (counts and shares by value in every
    window, and the latest value).

    Attributes:
        column: ``channel`` or an event property (an extra column of the log, kept by ingest).
        values: the values that get features of their own, listed so that the feature set is
            the same at training and serving time whatever values a day's data holds; any
            other value counts as ``other``. ``journeyml init`` proposes the frequent ones.
        name: prefix of the feature names (default: the column).
    """

    column: str
    values: list[str]
    name: str | None = None

    _column = field_validator("column")(_column_name)

    @field_validator("values")
    @classmethod
    def _some_values(cls, values: list[str]) -> list[str]:
        if not values:
            raise ValueError(
                "list the values that get features of their own (others count as 'other')"
            )
        if len(set(values)) != len(values):
            raise ValueError("values must be unique")
        return values

    @property
    def prefix(self) -> str:
        return self.name or self.column.lower()

    @property
    def in_contract(self) -> bool:
        return self.column in _CONTRACT_DIMENSIONS


class Measure(StrictModel):
    """A numeric event column summed and averaged over every window.

    Attributes:
        column: ``value`` or an event property holding numbers (non-numbers count as missing).
        name: prefix of the feature names (default: the column).
    """

    column: str
    name: str | None = None

    _column = field_validator("column")(_column_name)

    @property
    def prefix(self) -> str:
        return self.name or self.column.lower()

    @property
    def in_contract(self) -> bool:
        return self.column in _CONTRACT_MEASURES


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


class OfflineStoreSettings(StrictModel):
    """Feast's offline store over the snapshots: Feast's file store (embedded) or its Spark
    offline store (``SparkSource`` over the same Parquet files; ``spark_conf`` is used only
    when no Spark session is running in the process)."""

    type: Literal["file", "spark"] = "file"
    spark_conf: dict[str, str] = Field(default_factory=dict)


class StoreSettings(StrictModel):
    """The Feast store behind the features."""

    project: str = "journeyml"
    online: OnlineStoreSettings = Field(default_factory=OnlineStoreSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    offline: OfflineStoreSettings = Field(default_factory=OfflineStoreSettings)


class SparkSettings(StrictModel):
    """How the ``spark`` engine runs (``journeyml features build --engine spark``).

    ``lake`` and ``output`` may be any Hadoop-compatible URI (``hdfs://``, ``s3a://``,
    ``abfss://``, ``file://`` or a plain path); left empty they are the workspace's lake and
    snapshot folders. ``conf`` is passed to the session as it is (``spark.executor.memory``,
    ``spark.sql.shuffle.partitions``, credentials providers, ...).
    """

    master: str = "local[*]"
    app_name: str = "journeyml-features"
    conf: dict[str, str] = Field(default_factory=dict)
    lake: str | None = None
    output: str | None = None
    output_files: PositiveInt = Field(
        default=8,
        description="Parquet files the snapshots are written as, rows hashed by customer.",
    )

    @field_validator("master", "app_name")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("lake", "output")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(c in value for c in "\n\r\0")):
            raise ValueError(f"{value!r} is not a path or URI")
        return value

    @field_validator("conf")
    @classmethod
    def _spark_keys(cls, conf: dict[str, str]) -> dict[str, str]:
        for key in conf:
            if not key.startswith("spark."):
                raise ValueError(f"{key!r} is not a Spark setting (they start with 'spark.')")
        return conf


class FeatureSettings(StrictModel):
    """What the journey feature pipeline computes.

    ``count_event_types`` lists the event types that get their own window counts; when it is
    omitted, every exact (non-pattern) event type named in the journey map is counted.
    ``dimensions`` and ``measures`` turn the log's own columns into features.
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
    dimensions: list[Dimension] = Field(default_factory=list)
    measures: list[Measure] = Field(default_factory=list)
    snapshots: SnapshotSettings = Field(default_factory=SnapshotSettings)
    stale_after_hours: float = Field(default=24.0, gt=0)
    store: StoreSettings = Field(default_factory=StoreSettings)
    spark: SparkSettings = Field(default_factory=SparkSettings)

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
        prefixes = [d.prefix for d in self.dimensions] + [m.prefix for m in self.measures]
        for p in prefixes:
            if not _SLUG.match(p):
                raise ValueError(
                    f"{p!r}: a dimension or measure name must be lower case letters, digits "
                    "and _ (set name:)"
                )
        if len(set(prefixes)) != len(prefixes):
            raise ValueError("dimensions and measures need distinct names (set name:)")
        return self

    @property
    def lags_days(self) -> list[int]:
        """Every look-back, in days, at which cumulative state is read."""
        return sorted({0, *self.windows_days, self.trend_days, 2 * self.trend_days})


def load_feature_settings(path: str | None = None) -> FeatureSettings:
    """Loads ``path``, or ``features.yaml`` of the config folder (:func:`config_path`)."""
    return load_config(path or config_path("features.yaml"), FeatureSettings)
