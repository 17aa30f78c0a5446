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
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

import duckdb
import pandas as pd
import pyarrow as pa
import sqlalchemy as sa
from feast import FeatureStore
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values
from feast.value_type import ValueType

from features.catalog import FeatureCatalog
from features.journey_state import CustomerJourney, JourneyProgram, epoch_us, rows_of
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
from features.sql_eval import UnsupportedExpressionError, to_text
from journeyml.config import JourneyMap
from journeyml.events.bounds import TimeBounds
from journeyml.events.schema import (
    CUSTOMERS_FILE,
    MANIFEST_FILE,
    NORMALISED_EVENT_SCHEMA,
    events_glob,
)

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_EVENT_COLUMNS = NORMALISED_EVENT_SCHEMA.names


STORE_ERRORS: tuple[type[BaseException], ...] = (
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
    sa.exc.TimeoutError,
)
"""What the event store raises when it is down, locked or slower than its timeout."""


class Breaker(Protocol):
    """What the event store needs of a circuit breaker (``serving.breaker.CircuitBreaker``)."""

    def check(self) -> None: ...

    def trip(self, exc: BaseException) -> None: ...


class EventStore:
    """The operational store of events received online, keyed by ``event_id``.

    SQLite for the embedded default, PostgreSQL in production (any SQLAlchemy URL). Events are
    immutable: adding an event whose id is already stored does nothing.

    Args:
        timeout_ms: the longest a statement waits (SQLite's busy timeout, PostgreSQL's
            statement and lock timeouts); None: the drivers' defaults.
        breaker: a circuit breaker: a store error (:data:`STORE_ERRORS`) opens it, and while
            it is open calls fail at once with its error instead of waiting for the store.
    """

    def __init__(
        self,
        url: str,
        table: str = "journey_events",
        timeout_ms: float | None = None,
        breaker: Breaker | None = None,
    ):
        self.breaker = breaker
        self.engine = _create_engine(url, timeout_ms)
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
        return len(self.add_new(events))

    def add_new(self, events: pa.Table) -> set[str]:
        """Stores new events; returns the ids of those that were not already stored."""
        if events.num_rows == 0:
            return set()
        rows = _to_rows(events)
        insert = _insert_ignore(self.engine, self.table).returning(self.table.c.event_id)

        def run() -> set[str]:
            with self.engine.begin() as conn:
                return {r[0] for r in conn.execute(insert, rows).all()}

        return self._guarded(run)

    def customer_events(self, customer_ids: Sequence[str]) -> pa.Table:
        """Every stored event of the given customers, in the normalised schema."""
        t = self.table

        def run() -> list[dict[str, object]]:
            with self.engine.connect() as conn:
                query = sa.select(t).where(t.c.customer_id.in_(list(customer_ids)))
                return [dict(r) for r in conn.execute(query).mappings().all()]

        return _from_rows(self._guarded(run))

    def counts(self, customer_ids: Sequence[str]) -> dict[str, int]:
        """How many events each customer has in the store (0 for none)."""
        t = self.table

        def run() -> dict[str, int]:
            with self.engine.connect() as conn:
                query = (
                    sa.select(t.c.customer_id, sa.func.count())
                    .where(t.c.customer_id.in_(list(customer_ids)))
                    .group_by(t.c.customer_id)
                )
                return {r[0]: int(r[1]) for r in conn.execute(query).all()}

        found = self._guarded(run)
        return {c: found.get(c, 0) for c in customer_ids}

    def ping(self) -> None:
        """Raises while the store cannot be read (the breaker's probe, readiness)."""
        with self.engine.connect() as conn:
            conn.execute(sa.select(self.table.c.event_id).limit(1)).all()

    def _guarded(self, call: Callable[[], _T]) -> _T:
        if self.breaker is not None:
            self.breaker.check()
        try:
            return call()
        except STORE_ERRORS as exc:
            if self.breaker is not None:
                self.breaker.trip(exc)
            raise


def _create_engine(url: str, timeout_ms: float | None) -> sa.Engine:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        args: dict[str, Any] = {} if timeout_ms is None else {"timeout": timeout_ms / 1000}
        engine = sa.create_engine(parsed, hide_parameters=True, connect_args=args)
        # WAL: readers beside the writer, and a commit is not an fsync (synchronous=NORMAL
        # stays durable across process crashes), as the state store does
        sa.event.listen(engine, "connect", _sqlite_wal)
        return engine
    args = {}
    if timeout_ms is not None:
        wait = int(timeout_ms)
        args["connect_timeout"] = max(1, math.ceil(wait / 1000))
        args["options"] = f"-c statement_timeout={wait} -c lock_timeout={wait}"
    # hide_parameters: an error's text never carries the events' values (customer ids)
    return sa.create_engine(parsed, pool_pre_ping=True, hide_parameters=True, connect_args=args)


def _sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


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


@dataclass(frozen=True)
class JourneyView:
    """A customer's latest raw events (oldest first) and current features, as of ``as_of``
    (None: the customer has no activity event yet, or no history at all)."""

    customer_id: str
    recent_events: list[dict[str, Any]]
    features: dict[str, Any] | None
    as_of: datetime


class RealtimeUpdater:
    """Applies new events to the online features of their customers at once.

    By default each customer's journey state (:mod:`features.journey_state`) is kept in memory
    (at most ``max_customers``, least recently used first out), loaded once from the lake and
    the event store, and updated with each new event; its features are written to the online
    store. The state follows the event store: when another worker stored events of a customer
    (the store holds more than the state has seen) or the lake was re-ingested, the customer is
    loaded again. ``incremental=False``, or a catalog whose SQL the evaluator lacks, recomputes
    each customer's whole history with the batch feature query instead (:meth:`compute`).

    Args:
        store: the Feast store whose online store is updated.
        catalog: the feature catalog (the same the batch pipeline uses).
        journey_map: stages and event roles.
        event_store: where events received online are kept.
        lake: the ingested event lake (the history before the online events), if any.
        bounds: the window event times must fall in (the event contract's: no later than
            now plus its future tolerance, no earlier than the lake's first event minus its
            margin); a batch with an event outside it is refused whole. None: any time.
        incremental: keep journey states (True) or recompute histories (False).
        max_customers: the most journey states kept in memory.
    """

    def __init__(
        self,
        store: FeatureStore,
        catalog: FeatureCatalog,
        journey_map: JourneyMap,
        event_store: EventStore,
        lake: str | Path | None = None,
        bounds: TimeBounds | None = None,
        incremental: bool = True,
        max_customers: int = 10_000,
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
        self.program: JourneyProgram | None = None
        if incremental:
            try:
                self.program = JourneyProgram(catalog, journey_map)
            except UnsupportedExpressionError as exc:
                logger.warning("journey state off, every update recomputes the history: %s", exc)
        self.max_customers = max_customers
        self._journeys: OrderedDict[str, CustomerJourney] = OrderedDict()
        self._profiles: dict[str, dict[str, Any]] | None = None
        self._lake_version: tuple[int, int] | None = None
        self._view_types = {
            view: [(f.name, f.dtype.to_value_type()) for f in fv.features]
            for view, fv in self._views.items()
        }

    def refresh_views(self) -> None:
        """Re-reads the feature views from the registry (after ``journeyml features apply``)."""
        with self._lock:
            self._views = {view: self.store.get_feature_view(view) for view in self.catalog.views}
            self._view_types = {
                view: [(f.name, f.dtype.to_value_type()) for f in fv.features]
                for view, fv in self._views.items()
            }

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
        if self.program is not None:
            return self._apply_incremental(events, as_of)
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

    # -- the incremental path --------------------------------------------------------------

    def _apply_incremental(self, events: pa.Table, as_of: datetime | None) -> UpdateReport:
        received = events.num_rows
        new_ids = self.event_store.add_new(events)
        report = UpdateReport(received=received, stored=len(new_ids))
        if received == 0:
            return report
        by_customer: dict[str, list[dict[str, Any]]] = {}
        for row in rows_of(events):
            if row["event_id"] in new_ids:
                by_customer.setdefault(row[ENTITY], []).append(row)
        customers = sorted(set(events.column(ENTITY).to_pylist()))
        latest = pa.compute.max(events.column("timestamp")).as_py()
        with self._lock:
            counts = self.event_store.counts(customers)
            journeys: dict[str, CustomerJourney] = {}
            for c in customers:
                fresh = by_customer.get(c, [])
                journey = self._journeys.get(c) if self._lake_current() else None
                if journey is not None and journey.online_events + len(fresh) == counts[c]:
                    try:
                        journey.add(fresh)
                    except Exception:
                        self._journeys.pop(c, None)  # reloaded from the stores next time
                        raise
                    journey.online_events += len(fresh)
                else:  # unknown, or another worker stored events of this customer meanwhile
                    journey = self._load([c])[c]
                self._journeys.move_to_end(c)  # least recently used goes first
                journeys[c] = journey
            stored_ts = self._stored_timestamps(customers)
            newest_stored = max(
                (ts for per_view in stored_ts.values() for ts in per_view if ts is not None),
                default=None,
            )
            candidates = [as_of or datetime.now(UTC), latest + timedelta(microseconds=1)]
            if newest_stored is not None:
                candidates.append(newest_stored + timedelta(microseconds=1))
            as_of_ts = max(candidates)
            for j in journeys.values():  # a state may hold an event later than this batch's
                if j.latest_ts is not None and j.latest_ts >= epoch_us(as_of_ts):
                    as_of_ts = datetime.fromtimestamp(0, UTC) + timedelta(
                        microseconds=j.latest_ts + 1
                    )
            t_us = epoch_us(as_of_ts)
            rows = {c: j.features(t_us) for c, j in journeys.items()}
            report.skipped_views = self._write_rows(rows, as_of_ts, stored_ts, customers)
        report.customers = customers
        report.as_of = as_of_ts
        return report

    def journey(self, customer_id: str, as_of: datetime | None = None) -> JourneyView:
        """A customer's latest events (oldest first) and features as of ``as_of`` (default:
        now, or just after the customer's latest event when that is later), from the state
        the online updates keep: what a per-event model reads after each event."""
        with self._lock:
            if self.program is None:
                history = self.history([customer_id])
                rows = sorted(rows_of(history), key=lambda r: (r["ts"], r["event_id"]))
                latest = rows[-1]["ts"] if rows else None
                at = self._after(as_of, latest)
                frame = self.compute([customer_id], at) if rows else pd.DataFrame()
                features = None
                if not frame.empty:
                    features = {
                        f.name: _plain(frame.iloc[0][f.name]) for f in self.catalog.features
                    }
                recent = [
                    {k: r[k] for k in ("event_id", "event_type", "channel", "value", "session_id")}
                    | {"timestamp": _from_us(r["ts"]), "properties": r["properties"]}
                    for r in rows[-50:]
                ]
                return JourneyView(customer_id, recent, features, at)
            journey = self._journeys.get(customer_id) if self._lake_current() else None
            if journey is None:
                journey = self._load([customer_id])[customer_id]
            at = self._after(as_of, journey.latest_ts)
            return JourneyView(
                customer_id, list(journey.recent), journey.features(epoch_us(at)), at
            )

    def warm(self, customer_ids: Sequence[str]) -> int:
        """Loads the journey states of some customers in one read of the stores (a server
        start or a benchmark's warm-up); returns how many were loaded."""
        if self.program is None:
            return 0
        with self._lock:
            self._lake_current()
            return len(self._load(list(customer_ids)))

    @staticmethod
    def _after(as_of: datetime | None, latest_us: int | None) -> datetime:
        at = as_of or datetime.now(UTC)
        if latest_us is not None and epoch_us(at) <= latest_us:
            at = _from_us(latest_us + 1)
        return at

    def _lake_current(self) -> bool:
        """Whether the cached states still match the lake; drops them when it was replaced."""
        version = None
        if self.lake is not None:
            try:
                st = (self.lake / MANIFEST_FILE).stat()
                version = (st.st_ino, st.st_mtime_ns)
            except OSError:
                version = None
        if version != self._lake_version:
            self._journeys.clear()
            self._profiles = None
            self._lake_version = version
            return False
        return True

    def _load(self, customer_ids: list[str]) -> dict[str, CustomerJourney]:
        """Builds customers' states from their whole history (lake and event store)."""
        assert self.program is not None
        counts = self.event_store.counts(customer_ids)
        history = self.history(customer_ids)
        by_customer: dict[str, list[dict[str, Any]]] = {c: [] for c in customer_ids}
        for row in rows_of(history):
            by_customer[row[ENTITY]].append(row)
        profiles = self._customer_profiles()
        out = {}
        for c in customer_ids:
            journey = CustomerJourney(self.program, profile=profiles.get(c, {}))
            journey.add(by_customer[c])
            journey.online_events = counts[c]
            self._journeys[c] = journey
            self._journeys.move_to_end(c)
            out[c] = journey
        while len(self._journeys) > self.max_customers:
            self._journeys.popitem(last=False)
        return out

    def _customer_profiles(self) -> dict[str, dict[str, Any]]:
        """The customers table's profile attributes by customer (as text, like the query)."""
        if self._profiles is None:
            attrs = list(self.catalog.settings.profile_attributes)
            path = self.lake / CUSTOMERS_FILE if self.lake is not None else None
            profiles: dict[str, dict[str, Any]] = {}
            if path is not None and path.exists() and attrs:
                import pyarrow.parquet as pq

                present = [a for a in attrs if a in pq.read_schema(path).names]
                table = pq.read_table(path, columns=[ENTITY, *present])
                for row in table.to_pylist():
                    profiles[str(row[ENTITY])] = {a: to_text(row[a]) for a in present}
            self._profiles = profiles
        return self._profiles

    def _write_rows(
        self,
        rows: dict[str, dict[str, Any] | None],
        as_of: datetime,
        stored_ts: dict[str, list[datetime | None]],
        customers: list[str],
    ) -> int:
        """Writes features straight to the online store (Feast's write call, without the
        DataFrame round trip of ``ingest_df``), unless a newer row is stored."""
        provider = self.store._get_provider()
        position = {c: i for i, c in enumerate(customers)}
        skipped = 0
        for view, fields in self._view_types.items():
            batch: list[tuple[EntityKeyProto, dict[str, ValueProto], datetime, datetime | None]]
            batch = []
            for c, values in rows.items():
                if values is None:
                    continue
                ts = stored_ts[view][position[c]]
                if ts is not None and ts > as_of:
                    skipped += 1
                    continue
                protos = {name: _value_proto(values[name], vtype) for name, vtype in fields}
                batch.append((_entity_keys([c])[0], protos, as_of, None))
            if batch:
                provider.online_write_batch(self.store.config, self._views[view], batch, None)
        return skipped

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


def _value_proto(value: Any, vtype: ValueType) -> ValueProto:
    """Feast's proto of one feature value (as ``python_values_to_proto_values`` makes it:
    None and NaN are empty), built directly for the catalog's three types."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ValueProto()
    if vtype == ValueType.INT64:
        return ValueProto(int64_val=int(value))
    if vtype == ValueType.DOUBLE:
        return ValueProto(double_val=float(value))
    if vtype == ValueType.STRING:
        return ValueProto(string_val=str(value))
    return python_values_to_proto_values([value], vtype)[0]


def _from_us(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


def _plain(value: Any) -> Any:
    """A DataFrame cell as a plain Python value (None for missing)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    return value.item() if hasattr(value, "item") else value


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
