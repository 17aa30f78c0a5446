"""Feast objects for the journey features, built from the feature catalog.

The Feast repository files in ``features/repo/`` and journeyml's own commands both call
:func:`feast_objects`, so ``feast apply`` and ``journeyml features apply`` register the same
entity, source, views and services.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from feast import Entity, FeatureService, FeatureView, Field, FileSource
from feast.data_source import DataSource
from feast.types import Float64, Int64, String
from feast.value_type import ValueType

from features.catalog import (
    VIEW_ACTIVITY,
    VIEW_EXPERIENCE,
    VIEW_PROFILE,
    VIEW_STATE,
    FeatureCatalog,
)
from features.pipeline import ENTITY, TIMESTAMP_FIELD

_FEAST_TYPES = {"int64": Int64, "float64": Float64, "string": String}

SOURCE_NAME = "journey_features_source"

# One FeatureService per model version; training and serving both ask for these by name.
SERVICE_VIEWS: dict[str, tuple[str, ...]] = {
    "churn_v1": (VIEW_ACTIVITY, VIEW_STATE, VIEW_EXPERIENCE, VIEW_PROFILE),
    "conversion_v1": (VIEW_ACTIVITY, VIEW_STATE, VIEW_EXPERIENCE, VIEW_PROFILE),
    "next_step_v1": (VIEW_STATE, VIEW_ACTIVITY, VIEW_PROFILE),
}


@dataclass(frozen=True)
class FeastObjects:
    """Everything the journey feature repository registers."""

    customer: Entity
    source: DataSource
    views: dict[str, FeatureView]
    services: dict[str, FeatureService]

    def all(self) -> list[object]:
        return [self.customer, self.source, *self.views.values(), *self.services.values()]


def feast_objects(
    catalog: FeatureCatalog, source_path: str, offline: Literal["file", "spark"] = "file"
) -> FeastObjects:
    """Builds the entity, snapshot source, feature views and feature services.

    Args:
        catalog: the feature catalog (names, types, views).
        source_path: the Parquet snapshots written by ``journeyml features build``.
        offline: the offline store the source is for: a ``FileSource`` for Feast's file
            store, a ``SparkSource`` over the same Parquet files for its Spark store.
    """
    customer = Entity(
        name="customer",
        join_keys=[ENTITY],
        value_type=ValueType.STRING,
        description="A customer of the journey log (the log's customer_id).",
    )
    description = "Point-in-time journey feature snapshots (journeyml features build)."
    source: DataSource
    if offline == "spark":
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import (
            SparkSource,
        )

        source = SparkSource(
            name=SOURCE_NAME,
            path=source_path,
            file_format="parquet",
            timestamp_field=TIMESTAMP_FIELD,
            description=description,
        )
    else:
        source = FileSource(
            name=SOURCE_NAME,
            path=source_path,
            timestamp_field=TIMESTAMP_FIELD,
            description=description,
        )
    # A snapshot row stays valid until the next regular snapshot replaces it.
    ttl = timedelta(days=catalog.settings.snapshots.cadence_days * 2)
    views = {
        view: FeatureView(
            name=view,
            entities=[customer],
            ttl=ttl,
            schema=[
                Field(name=f.name, dtype=_FEAST_TYPES[f.dtype], description=f.description)
                for f in catalog.view_features(view)
            ],
            source=source,
            online=True,
            tags={"owner": "journeyml"},
        )
        for view in catalog.views
    }
    services = {
        name: FeatureService(name=name, features=[views[v] for v in view_names if v in views])
        for name, view_names in SERVICE_VIEWS.items()
    }
    return FeastObjects(customer, source, views, services)
