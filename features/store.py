"""Opening the Feast feature store and registering the journey feature definitions."""

from __future__ import annotations

import logging
from pathlib import Path

from feast import FeatureStore, RepoConfig

from features.catalog import FeatureCatalog
from features.definitions import FeastObjects, feast_objects
from features.settings import StoreSettings

logger = logging.getLogger(__name__)


class Workspace:
    """Where journeyml keeps its data for one project (``data/`` by default).

    Layout: ``lake/`` (ingested events), ``features/journey_features/`` (snapshots),
    ``feast/`` (registry and SQLite online store).
    """

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    @property
    def lake(self) -> Path:
        return self.root / "lake"

    @property
    def snapshots(self) -> Path:
        return self.root / "features" / "journey_features"

    @property
    def feast(self) -> Path:
        return self.root / "feast"


def repo_config(settings: StoreSettings, workspace: Workspace) -> RepoConfig:
    """The Feast configuration for the embedded or the production store."""
    workspace.feast.mkdir(parents=True, exist_ok=True)
    if settings.registry.type == "sql":
        registry: dict[str, object] = {
            "registry_type": "sql",
            "path": settings.registry.url,
            "cache_ttl_seconds": 60,
            "sqlalchemy_config_kwargs": {"echo": False, "pool_pre_ping": True},
        }
    else:
        registry = {"registry_type": "file", "path": str(workspace.feast / "registry.db")}
    if settings.online.type == "redis":
        online: dict[str, object] = {
            "type": "redis",
            "connection_string": settings.online.connection_string,
        }
    else:
        online = {"type": "sqlite", "path": str(workspace.feast / "online.db")}
    offline: dict[str, object] = {"type": settings.offline.type}
    if settings.offline.type == "spark":
        offline["spark_conf"] = dict(settings.offline.spark_conf)
    return RepoConfig(
        project=settings.project,
        provider="local",
        registry=registry,
        online_store=online,
        offline_store=offline,
        entity_key_serialization_version=3,
        repo_path=workspace.feast,
    )


def open_store(settings: StoreSettings, workspace: Workspace) -> FeatureStore:
    """Opens the feature store (does not register anything)."""
    return FeatureStore(config=repo_config(settings, workspace))


def apply_definitions(
    store: FeatureStore, catalog: FeatureCatalog, workspace: Workspace
) -> FeastObjects:
    """Registers the entity, source, views and services, as ``feast apply`` would."""
    spark = store.config.offline_store.type == "spark"
    objects = feast_objects(catalog, str(workspace.snapshots), "spark" if spark else "file")
    store.apply(objects.all())  # type: ignore[arg-type]
    logger.info(
        "registered %d feature views and %d feature services in project %s",
        len(objects.views),
        len(objects.services),
        store.project,
    )
    return objects
