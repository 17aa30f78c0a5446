"""Real-time feature updates and fresh online reads.

When new events arrive for a customer, :class:`RealtimeUpdater` stores them (idempotently, keyed
by ``event_id``) in the operational :class:`EventStore`, recomputes that customer's features
with the **same** feature query the batch pipeline runs (over the customer's whole history: the
ingested lake plus the event store) as of now, and writes them through Feast's
``write_to_online_store``. Parity with the batch pipeline therefore holds by construction, and
an old event arriving late is simply part of the history of the next recomputation.

:func:`read_online` reads features back with each view's age: recency features are advanced by
the age of the row, and a row older than the freshness budget is flagged stale (Feast applies no
TTL to online reads).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import sqlalchemy as sa
from feast import FeatureStore
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import feast_value_type_to_python_type

from features.catalog import FeatureCatalog
from features.pipeline import (
    DEFAULT_COUNT_BITS,
    ENTITY,
    SNAPSHOT_TS,
    TIMESTAMP_FIELD,
    connect,
    count_bits_for,
    feature_query,
    register_inputs,
    register_snapshots,
)
from journeyml.config import JourneyMap
from journeyml.events.bounds import TimeBounds
from journeyml.events.schema import CUSTOMERS_FILE, NORMALISED_EVENT_SCHEMA, events_glob

logger = logging.getLogger(__name__)

_EVENT_COLUMNS = NORMALISED_EVENT_SCHEMA.names


class EventStore:
    """The operational store of events received online, keyed by ``event_id``.

    SQLite for the embedded default, PostgreSQL in production (any SQLAlchemy URL). Events are
    immutable: adding an event whose id is already stored does nothing.
    """

    def __init__(self, url: str, table: str = "journey_events"):
        self.engine = sa.create_engine(url, pool_pre_ping=True)
        self._meta = sa.MetaData()
        self.table = sa.Table(
            table,
            self._meta,
            sa.Column("event_id", sa.String(128), primary_key=True),
            sa.Column("customer_id", sa.String(128), nullable=False, index=True),
            sa.Column("ts_us", sa.BigInteger, nullable=False),
            sa.Column("event_type", sa.String(128), nullable=False),
            sa.Column("channel", sa.String(64)),
            sa.Column("value", sa.Float),
            sa.Column("session_id", sa.String(128)),
            sa.Column("properties", sa.Text),
        )
        self._meta.create_all(self.engine)

    def add(self, events: pa.Table) -> int:
        """Stores new events; returns how many were not already stored."""
        if events.num_rows == 0:
            return 0
        rows = _to_rows(events)
        insert = _insert_ignore(self.engine, self.table).returning(self.table.c.event_id)
        with self.engine.begin() as conn:
            added = conn.execute(insert, rows).all()
        return len(added)

    def customer_events(self, customer_ids: Sequence[str]) -> pa.Table:
        """Every stored event of the given customers, in the normalised schema."""
        t = self.table
        with self.engine.connect() as conn:
            rows = (
                conn.execute(sa.select(t).where(t.c.customer_id.in_(list(customer_ids))))
                .mappings()
                .all()
            )
        return _from_rows([dict(r) for r in rows])


def _insert_ignore(engine: sa.Engine, table: sa.Table) -> sa.Insert:
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing(index_elements=["event_id"])
    if engine.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing(index_elements=["event_id"])
    raise ValueError(f"event store: unsupported database {engine.dialect.name!r}")


def _to_rows(events: pa.Table) -> list[dict[str, object]]:
    events = events.select(_EVENT_COLUMNS).cast(NORMALISED_EVENT_SCHEMA)
    ts = events.column("timestamp").cast(pa.int64()).to_pylist()
    cols = {name: events.column(name).to_pylist() for name in _EVENT_COLUMNS if name != "timestamp"}
    return [
        {"ts_us": ts[i], **{name: values[i] for name, values in cols.items()}}
        for i in range(events.num_rows)
    ]


def _from_rows(rows: list[dict[str, object]]) -> pa.Table:
    data: dict[str, list[object]] = {name: [] for name in _EVENT_COLUMNS}
    for r in rows:
        for name in _EVENT_COLUMNS:
            data[name].append(r["ts_us"] if name == "timestamp" else r[name])
    arrays = [
        pa.array(data["timestamp"], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
        if name == "timestamp"
        else pa.array(data[name], NORMALISED_EVENT_SCHEMA.field(name).type)
        for name in _EVENT_COLUMNS
    ]
    return pa.Table.from_arrays(arrays, schema=NORMALISED_EVENT_SCHEMA)


class EventTimeError(ValueError):
    """Events dated outside the accepted window; none of the batch was stored."""


@dataclass
class UpdateReport:
    """What one real-time update did."""

    received: int
    stored: int
    customers: list[str] = field(default_factory=list)
    as_of: datetime | None = None
    skipped_views: int = 0


class RealtimeUpdater:
    """Applies new events to the online features of their customers at once.

    Args:
        store: the Feast store whose online store is updated.
        catalog: the feature catalog (the same the batch pipeline uses).
        journey_map: stages and event roles.
        event_store: where events received online are kept.
        lake: the ingested event lake (the history before the online events), if any.
        bounds: the window event times must fall in (the event contract's: no later than
            now plus its future tolerance, no earlier than the lake's first event minus its
            margin); a batch with an event outside it is refused whole. None: any time.
    """

    def __init__(
        self,
        store: FeatureStore,
        catalog: FeatureCatalog,
        journey_map: JourneyMap,
        event_store: EventStore,
        lake: str | Path | None = None,
        bounds: TimeBounds | None = None,
    ):
        self.store = store
        self.bounds = bounds
        self.catalog = catalog
        self.journey_map = journey_map
        self.event_store = event_store
        self.lake = Path(lake) if lake is not None else None
        self._queries: dict[int, str] = {}
        self._lock = threading.RLock()
        self._con: duckdb.DuckDBPyConnection | None = None
        # Registry lookups are slow (protobuf parsing); views change only on `features apply`.
        self._views = {view: store.get_feature_view(view) for view in catalog.views}

    def refresh_views(self) -> None:
        """Re-reads the feature views from the registry (after ``journeyml features apply``)."""
        with self._lock:
            self._views = {view: self.store.get_feature_view(view) for view in self.catalog.views}

    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            self._con = connect(memory_limit="1GB")
        return self._con

    def history(self, customer_ids: Sequence[str]) -> pa.Table:
        """The full event history of some customers: the lake plus the event store."""
        online = self.event_store.customer_events(customer_ids)
        if self.lake is None or not (self.lake / "events").is_dir():
            return online
        glob = events_glob(self.lake).replace("'", "''")
        cols = ", ".join(_EVENT_COLUMNS)
        with self._lock:
            con = self._connection()
            con.register("ids", pa.table({ENTITY: pa.array(list(customer_ids), pa.string())}))
            con.register("online", online)
            return (
                con.sql(
                    f"""
                    SELECT {cols} FROM (
                        SELECT {cols},
                            ROW_NUMBER() OVER (PARTITION BY event_id ORDER BY src) AS rn
                        FROM (
                            SELECT {cols}, 0 AS src
                            FROM read_parquet('{glob}', hive_partitioning = false)
                            WHERE customer_id IN (SELECT customer_id FROM ids)
                            UNION ALL
                            SELECT {cols}, 1 AS src FROM online
                        )
                    ) WHERE rn = 1
                    """
                )
                .to_arrow_table()
                .cast(NORMALISED_EVENT_SCHEMA)
            )

    def compute(self, customer_ids: Sequence[str], as_of: datetime) -> pd.DataFrame:
        """Features of some customers as of ``as_of`` from their full history."""
        with self._lock:
            history = self.history(customer_ids)
            con = self._connection()
            con.register("history", history)
            customers = self.lake / CUSTOMERS_FILE if self.lake is not None else None
            register_inputs(
                con,
                self.journey_map,
                "SELECT * FROM history",
                customers,
                self.catalog.settings.profile_attributes,
            )
            snaps = pa.table(
                {
                    ENTITY: pa.array(list(customer_ids), pa.string()),
                    SNAPSHOT_TS: pa.array([as_of] * len(customer_ids), pa.timestamp("us", "UTC")),
                }
            )
            register_snapshots(con, snaps)
            return con.execute(self._query(history.num_rows)).df()

    def _query(self, events: int) -> str:
        """The feature query, its packed counts wide enough for ``events`` events."""
        bits = max(DEFAULT_COUNT_BITS, count_bits_for(events))
        if bits not in self._queries:
            self._queries[bits] = feature_query(
                self.catalog, self.journey_map.experience.score_property, bits
            )
        return self._queries[bits]

    def apply(self, events: pa.Table, as_of: datetime | None = None) -> UpdateReport:
        """Stores new events and refreshes the online features of their customers.

        Replays are idempotent (an ``event_id`` already stored is not stored again, and the
        recomputation from the same history gives the same features), and the features are
        recomputed from the whole history, so an event that arrives after a newer one is placed
        where it belongs in time. A replay still recomputes: if an earlier attempt stored the
        events but failed before writing features, the retry repairs it.

        Raises:
            EventTimeError: an event is dated outside ``bounds`` (nothing is stored: a far
                future event would otherwise move the customer's feature clock for good).
        """
        self.check_times(events)
        received = events.num_rows
        stored = self.event_store.add(events)
        report = UpdateReport(received=received, stored=stored)
        if received == 0:
            return report
        customers = sorted(set(events.column(ENTITY).to_pylist()))
        latest = pa.compute.max(events.column("timestamp")).as_py()
        with self._lock:
            online_ts = self._stored_timestamps(customers)
            newest_stored = max(
                (ts for per_view in online_ts.values() for ts in per_view if ts is not None),
                default=None,
            )
            # The snapshot time only moves forward for a customer: a recomputation from the
            # whole history is always the newest state (the Redis store also refuses a write
            # that is not strictly newer). Events are seen strictly before the snapshot.
            candidates = [as_of or datetime.now(UTC), latest + timedelta(microseconds=1)]
            if newest_stored is not None:
                candidates.append(newest_stored + timedelta(microseconds=1))
            as_of_ts = max(candidates)
            frame = self.compute(customers, as_of_ts)
            report.skipped_views = self.write_features(frame, as_of_ts)
        report.customers = customers
        report.as_of = as_of_ts
        return report

    def check_times(self, events: pa.Table) -> None:
        """Raises EventTimeError naming the first few events dated outside ``bounds``."""
        if self.bounds is None or events.num_rows == 0:
            return
        now = datetime.now(UTC)
        times = events.column("timestamp")
        earliest, latest, _ = self.bounds.window(now)
        low, high = pa.compute.min_max(times).values()
        if low.as_py() >= earliest and high.as_py() <= latest:
            return
        problems = []
        for i, t in enumerate(times.to_pylist()):
            problem = self.bounds.problem(t, f"events[{i}].timestamp", now)
            if problem is not None:
                problems.append(problem)
        shown = "; ".join(problems[:3])
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise EventTimeError(f"{shown}{more}; no event of this request was stored")

    def write_features(self, frame: pd.DataFrame, as_of: datetime) -> int:
        """Writes computed features through Feast, view by view, unless newer state is stored.

        Returns the number of (customer, view) rows skipped because the online store already
        held a row computed as of a later time (another worker won the race).
        """
        if frame.empty:
            return 0
        stored_ts = self._stored_timestamps(list(frame[ENTITY]))
        provider = self.store._get_provider()
        skipped = 0
        for view in self.catalog.views:
            newer = [ts is not None and ts > as_of for ts in stored_ts[view]]
            keep = frame.loc[[not n for n in newer]]
            skipped += sum(newer)
            if keep.empty:
                continue
            cols = [ENTITY, TIMESTAMP_FIELD, *(f.name for f in self.catalog.view_features(view))]
            # Feast's write path (what write_to_online_store calls after its registry lookups)
            provider.ingest_df(self._views[view], keep[cols].reset_index(drop=True))
        return skipped

    def _stored_timestamps(self, customer_ids: Sequence[str]) -> dict[str, list[datetime | None]]:
        provider = self.store._get_provider()
        keys = _entity_keys(customer_ids)
        return {
            view: [ts for ts, _ in provider.online_read(self.store.config, table, keys)]
            for view, table in self._views.items()
        }


def _entity_keys(customer_ids: Sequence[str]) -> list[EntityKeyProto]:
    return [
        EntityKeyProto(join_keys=[ENTITY], entity_values=[ValueProto(string_val=c)])
        for c in customer_ids
    ]


@dataclass(frozen=True)
class OnlineRow:
    """One customer's online features with their freshness."""

    customer_id: str
    values: dict[str, object]
    age_seconds: dict[str, float | None]
    stale: dict[str, bool]
    found: bool

    @property
    def any_stale(self) -> bool:
        return any(self.stale.values())


def read_online(
    store: FeatureStore,
    catalog: FeatureCatalog,
    customer_ids: Sequence[str],
    now: datetime | None = None,
    views: Sequence[str] | None = None,
) -> list[OnlineRow]:
    """Reads online features with each view's age and a stale flag.

    Recency features (``ages_with_time``) are advanced by the age of their row, so they are
    right at read time. A view missing for a customer is reported with age None and stale.
    """
    now = now or datetime.now(UTC)
    budget = catalog.settings.stale_after_hours * 3600.0
    provider = store._get_provider()
    keys = _entity_keys(customer_ids)
    rows = [OnlineRow(cid, {}, {}, {}, False) for cid in customer_ids]
    for view in catalog.views if views is None else views:
        table = store.get_feature_view(view)
        specs = {f.name: f for f in catalog.view_features(view)}
        read = provider.online_read(store.config, table, keys)
        for i, (ts, values) in enumerate(read):
            row = rows[i]
            if ts is None or values is None:
                row.age_seconds[view] = None
                row.stale[view] = True
                continue
            rows[i] = row = replace(row, found=True)
            age = max((now - ts).total_seconds(), 0.0)
            row.age_seconds[view] = age
            row.stale[view] = age > budget
            for name, proto in values.items():
                value = feast_value_type_to_python_type(proto)
                spec = specs.get(name)
                if spec is not None and spec.ages_with_time and value is not None:
                    value = float(value) + age / 86400.0
                row.values[name] = value
    return rows
