"""Online journey features for a decision, read through Feast within a deadline.

:class:`OnlineFeatures` reads the four feature views of a customer with Feast's online store
(``provider.online_read``, the call ``get_online_features`` makes after its registry and
request-plumbing work, which costs ~0.5 ms a call), with the feature views resolved once and
refreshed with the models. Recency features are advanced by the age of their row and every
view's age is returned, like :func:`features.realtime.read_online`.

The deadline is enforced by the store itself, not by handing the read to another thread (a
thread hop cost 1-3 ms a call on this busy 2-core machine, more than the read): the Redis
client gets socket timeouts of the deadline (see :func:`with_deadline`), SQLite a busy
timeout, and a read that still finishes late is reported as :class:`FeatureTimeoutError`, so
the engine answers with its fallback; a store error gives :class:`FeatureStoreDownError`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from feast.type_map import feast_value_type_to_python_type

from features.catalog import VIEWS, FeatureCatalog
from features.realtime import _entity_keys
from features.settings import StoreSettings

if TYPE_CHECKING:
    from feast import FeatureStore


class FeatureStoreDownError(RuntimeError):
    """The online store raised an error."""


class FeatureTimeoutError(RuntimeError):
    """The online store did not answer within the deadline."""


@dataclass(frozen=True)
class CustomerFeatures:
    """One customer's online features (empty ``values`` when the customer is unknown)."""

    values: dict[str, Any]
    found: bool
    age_seconds: float | None  # of the oldest view row
    stale: bool
    snapshot_at: datetime | None  # the oldest view row's feature timestamp


class OnlineFeatures:
    """Reads customers' journey features from the online store."""

    def __init__(self, store: FeatureStore, catalog: FeatureCatalog):
        self.store = store
        self.catalog = catalog
        self._budget = catalog.settings.stale_after_hours * 3600.0
        self._specs = {view: {f.name: f for f in catalog.view_features(view)} for view in VIEWS}
        self._ageing = {f.name for f in catalog.features if f.ages_with_time}
        self._lock = threading.Lock()
        self.refresh_views()

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.catalog.features]

    def refresh_views(self) -> None:
        """Re-reads the feature view definitions from the registry."""
        views = {view: self.store.get_feature_view(view) for view in VIEWS}
        with self._lock:
            self._views = views
            self._provider = self.store._get_provider()

    def read(
        self, customer_ids: list[str], now: datetime | None = None, deadline_ms: float | None = None
    ) -> list[CustomerFeatures]:
        """The customers' features; raises FeatureTimeoutError or FeatureStoreDownError."""
        now = now or datetime.now(UTC)
        started = time.perf_counter()
        rows = self._read(customer_ids, now)
        if deadline_ms is not None and (time.perf_counter() - started) * 1000 > deadline_ms:
            raise FeatureTimeoutError(f"online store slower than {deadline_ms:g} ms")
        return rows

    def _read(self, customer_ids: list[str], now: datetime) -> list[CustomerFeatures]:
        keys = _entity_keys(customer_ids)
        views, provider = self._views, self._provider
        values: list[dict[str, Any]] = [{} for _ in customer_ids]
        ages: list[list[float]] = [[] for _ in customer_ids]
        stamps: list[list[datetime]] = [[] for _ in customer_ids]
        try:
            for view, table in views.items():
                specs = self._specs[view]
                for i, (ts, row) in enumerate(provider.online_read(self.store.config, table, keys)):
                    if ts is None or row is None:
                        for name in specs:
                            values[i][name] = None
                        continue
                    if ts.tzinfo is None:
                        ts = ts.replace(tzinfo=UTC)
                    age = max((now - ts).total_seconds(), 0.0)
                    ages[i].append(age)
                    stamps[i].append(ts)
                    for name, proto in row.items():
                        value = feast_value_type_to_python_type(proto)
                        if name in self._ageing and value is not None:
                            value = float(value) + age / 86400.0
                        values[i][name] = value
        except Exception as exc:
            if "timeout" in type(exc).__name__.lower():
                raise FeatureTimeoutError(f"online store timed out: {type(exc).__name__}") from exc
            raise FeatureStoreDownError(f"online store error: {type(exc).__name__}") from exc
        out = []
        for i in range(len(customer_ids)):
            found = bool(ages[i])
            oldest = max(ages[i]) if found else None
            out.append(
                CustomerFeatures(
                    values=values[i],
                    found=found,
                    age_seconds=oldest,
                    stale=(not found) or len(ages[i]) < len(views) or (oldest or 0) > self._budget,
                    snapshot_at=min(stamps[i]) if found else None,
                )
            )
        return out

    def close(self) -> None:
        """Nothing to release: the store's connections belong to the Feast store."""


def with_deadline(settings: StoreSettings, deadline_ms: float) -> StoreSettings:
    """Store settings whose Redis client gives up after ``deadline_ms`` (connect and read)."""
    online = settings.online
    if online.type != "redis":
        return settings
    seconds = f"{deadline_ms / 1000.0:g}"
    extra = f",socket_timeout={seconds},socket_connect_timeout={seconds}"
    updated = online.model_copy(update={"connection_string": online.connection_string + extra})
    return settings.model_copy(update={"online": updated})


def set_sqlite_busy_timeout(store: FeatureStore, deadline_ms: float) -> None:
    """Makes the SQLite online store wait at most ``deadline_ms`` for a write lock."""
    online = store._get_provider().online_store
    get_conn = getattr(online, "_get_conn", None)
    if get_conn is not None and type(online).__name__ == "SqliteOnlineStore":
        get_conn(store.config).execute(f"PRAGMA busy_timeout = {int(deadline_ms)}")
