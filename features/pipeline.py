"""The journey feature pipeline: point-in-time features per customer at snapshot times.

The whole computation is one SQL query over four relations:

- ``events``: the normalised event log (``journeyml.events.schema``);
- ``roles``: one row per event type with its stage and roles, resolved from the journey map in
  Python (so pattern semantics live in one place, ``JourneyMap``);
- ``snapshots``: (customer_id, snapshot_ts) pairs to compute;
- ``customers``: the customers table (may be empty).

Events and snapshot markers (one per snapshot and look-back) are merged into one stream ordered
by customer and time, markers first on ties so an event at exactly T is *not* seen by the
snapshot at T. Running totals and latest values are window functions over that stream. The
query uses only standard window SQL (no ASOF join, no DuckDB-only functions beyond what sqlglot
transpiles), so the same definition runs on Spark (:func:`to_spark_sql`). DuckDB runs it
out-of-core on one machine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import sqlglot

from features.catalog import FeatureCatalog
from journeyml.config import JourneyMap, matches_any

logger = logging.getLogger(__name__)

SNAPSHOT_TS = "snapshot_ts"
TIMESTAMP_FIELD = "event_timestamp"
CREATED_FIELD = "created_timestamp"
ENTITY = "customer_id"

ROLE_COLUMNS: tuple[str, ...] = (
    "is_activity",
    "is_conversion",
    "is_treatment",
    "is_response",
    "is_support",
    "is_complaint",
    "is_nps",
    "is_csat",
)


def event_roles(journey_map: JourneyMap, event_types: list[str]) -> pa.Table:
    """Resolves the journey map for the given event types into a small dimension table."""
    exp = journey_map.experience
    rows: dict[str, list[object]] = {"event_type": [], "stage_idx": []}
    for col in ROLE_COLUMNS:
        rows[col] = []
    for et in sorted(set(event_types)):
        stage = journey_map.stage_of(et)
        rows["event_type"].append(et)
        rows["stage_idx"].append(None if stage is None else journey_map.stage_index(stage))
        flags = {
            "is_activity": journey_map.is_activity(et),
            "is_conversion": journey_map.is_conversion(et),
            "is_treatment": journey_map.is_treatment(et),
            "is_response": journey_map.is_response(et),
            "is_support": matches_any(et, exp.support),
            "is_complaint": matches_any(et, exp.complaints),
            "is_nps": matches_any(et, exp.nps),
            "is_csat": matches_any(et, exp.csat),
        }
        for col in ROLE_COLUMNS:
            rows[col].append(int(flags[col]))
    schema = pa.schema(
        [("event_type", pa.string()), ("stage_idx", pa.int32())]
        + [(c, pa.int32()) for c in ROLE_COLUMNS]
    )
    return pa.Table.from_pydict(rows, schema=schema)


def feature_query(catalog: FeatureCatalog, score_property: str = "score") -> str:
    """The SQL (DuckDB dialect) that computes every catalog feature for every snapshot."""
    k = catalog.settings.last_k
    lags = sorted({lag for a in catalog.accumulators for lag in a.lags})
    last_types = ",\n        ".join(
        "CASE WHEN is_activity = 1 THEN "
        + ("event_type" if i == 1 else f"COALESCE(LAG(event_type, {i - 1}) OVER wa, 'none')")
        + f" END AS last_type_{i}"
        for i in range(1, k + 1)
    )
    prop = score_property.replace("'", "''")
    acc_cols_events = ",\n        ".join(f"{a.expr} AS {a.name}" for a in catalog.accumulators)
    acc_cols_marks = ",\n        ".join(
        f"{'0' if a.kind == 'sum' else 'NULL'} AS {a.name}" for a in catalog.accumulators
    )
    agg = {
        "sum": "SUM({})",
        "min": "MIN({})",
        "max": "MAX({})",
        "last": "LAST_VALUE({} IGNORE NULLS)",
    }
    acc_windows = ",\n        ".join(
        f"{agg[a.kind].format(a.name)} OVER w AS {a.name}" for a in catalog.accumulators
    )
    readings = ",\n        ".join(
        f"MAX(CASE WHEN lag_days = {lag} THEN {a.name} END) AS {a.name}__{lag}"
        for a in catalog.accumulators
        for lag in a.lags
    )
    lag_values = ", ".join(f"({lag})" for lag in lags)
    features = ",\n    ".join(
        f"CAST({f.sql} AS {_sql_type(f.dtype)}) AS {f.name}" for f in catalog.features
    )
    profile = ",\n        ".join(
        f"c.{attr} AS profile_{attr}" for attr in catalog.settings.profile_attributes
    )
    return f"""
WITH ev AS (
    SELECT
        e.customer_id, e.timestamp AS ts, e.event_id, e.event_type, e.channel, e.value,
        r.stage_idx, r.is_activity, r.is_conversion, r.is_treatment, r.is_response,
        r.is_support, r.is_complaint,
        CASE WHEN r.is_nps = 1 THEN
            TRY_CAST(JSON_EXTRACT_STRING(e.properties, '$.{prop}') AS DOUBLE) END AS nps_score,
        CASE WHEN r.is_csat = 1 THEN
            TRY_CAST(JSON_EXTRACT_STRING(e.properties, '$.{prop}') AS DOUBLE) END AS csat_score,
        CASE WHEN e.session_id IS NOT NULL AND r.is_activity = 1 AND ROW_NUMBER() OVER (
            PARTITION BY e.customer_id, e.session_id, r.is_activity
            ORDER BY e.timestamp, e.event_id) = 1 THEN 1 ELSE 0 END AS session_start
    FROM events AS e
    JOIN roles AS r ON r.event_type = e.event_type
    WHERE e.timestamp < (SELECT MAX(snapshot_ts) FROM snapshots)
),
staged AS (
    SELECT *,
        LAST_VALUE(stage_idx IGNORE NULLS) OVER (
            PARTITION BY customer_id ORDER BY ts, event_id
            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prior_stage
    FROM ev
),
enriched AS (
    SELECT *,
        stage_idx AS cur_stage,
        CASE WHEN stage_idx IS NOT NULL AND prior_stage IS NOT NULL
             AND stage_idx <> prior_stage THEN prior_stage END AS prev_stage,
        CASE WHEN stage_idx IS NOT NULL AND (prior_stage IS NULL OR stage_idx <> prior_stage)
             THEN ts END AS stage_since_ts,
        MAX(stage_idx) OVER we AS furthest_stage,
        SUM(CASE WHEN stage_idx < prior_stage THEN 1 ELSE 0 END) OVER we AS regressions,
        {last_types}
    FROM staged
    WINDOW
        we AS (PARTITION BY customer_id ORDER BY ts, event_id
               ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW),
        wa AS (PARTITION BY customer_id, is_activity ORDER BY ts, event_id)
),
lags AS (
    SELECT * FROM (VALUES {lag_values}) AS t(lag_days)
),
stream AS (
    SELECT customer_id, ts, 1 AS kind, event_id,
        CAST(NULL AS TIMESTAMPTZ) AS snapshot_ts, CAST(NULL AS INTEGER) AS lag_days,
        {acc_cols_events}
    FROM enriched
    UNION ALL
    SELECT s.customer_id, s.snapshot_ts - l.lag_days * INTERVAL 1 DAY AS ts, 0 AS kind,
        CAST(NULL AS VARCHAR) AS event_id, s.snapshot_ts, l.lag_days,
        {acc_cols_marks}
    FROM snapshots AS s CROSS JOIN lags AS l
),
running AS (
    SELECT customer_id, kind, snapshot_ts, lag_days,
        {acc_windows}
    FROM stream
    WINDOW w AS (PARTITION BY customer_id ORDER BY ts, kind, event_id
                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
),
readings AS (
    SELECT customer_id, snapshot_ts,
        {readings}
    FROM running
    WHERE kind = 0
    GROUP BY customer_id, snapshot_ts
),
profiled AS (
    SELECT r.*,
        {profile}
    FROM readings AS r
    LEFT JOIN customers AS c ON c.customer_id = r.customer_id
)
SELECT
    customer_id,
    snapshot_ts AS {TIMESTAMP_FIELD},
    {features}
FROM profiled
WHERE c_events__0 > 0
ORDER BY customer_id, {TIMESTAMP_FIELD}
"""


def _sql_type(dtype: str) -> str:
    return {"int64": "BIGINT", "float64": "DOUBLE", "string": "VARCHAR"}[dtype]


def to_spark_sql(query: str) -> str:
    """Transpiles the feature query to Spark SQL (for the cluster engine)."""
    return ";\n".join(sqlglot.transpile(query, read="duckdb", write="spark", pretty=True))


@dataclass(frozen=True)
class SnapshotPlan:
    """Snapshot times for a build: the regular cadence plus the "now" snapshot."""

    cutoffs: tuple[datetime, ...]
    as_of: datetime


def plan_snapshots(
    first_event: datetime,
    last_event: datetime,
    cadence_days: int,
    warmup_days: int,
    as_of: datetime | None = None,
) -> SnapshotPlan:
    """Regular cutoffs at midnight UTC from first event + warm-up, then the as-of snapshot.

    The as-of snapshot defaults to just after the last event, so it sees the whole log.
    """
    as_of = as_of or (last_event + timedelta(microseconds=1))
    start = datetime(first_event.year, first_event.month, first_event.day, tzinfo=UTC)
    start += timedelta(days=max(warmup_days, 1))
    cutoffs = []
    t = start
    while t < as_of:
        cutoffs.append(t)
        t += timedelta(days=cadence_days)
    return SnapshotPlan(tuple(cutoffs), as_of)


def register_inputs(
    con: duckdb.DuckDBPyConnection,
    journey_map: JourneyMap,
    events_sql: str,
    customers_path: str | Path | None,
    profile_attributes: list[str],
) -> None:
    """Creates the ``events``, ``roles`` and ``customers`` views the feature query reads."""
    con.execute(f"CREATE OR REPLACE TEMP VIEW events AS {events_sql}")
    types = [r[0] for r in con.execute("SELECT DISTINCT event_type FROM events").fetchall()]
    roles = event_roles(journey_map, types)
    con.register("roles_arrow", roles)
    con.execute("CREATE OR REPLACE TEMP TABLE roles AS SELECT * FROM roles_arrow")
    con.unregister("roles_arrow")
    if customers_path is not None and Path(customers_path).exists():
        path = str(customers_path).replace("'", "''")
        present = {
            r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{path}')").fetchall()
        }
        cols = ", ".join(
            (f"CAST({a} AS VARCHAR) AS {a}" if a in present else f"CAST(NULL AS VARCHAR) AS {a}")
            for a in profile_attributes
        )
        con.execute(
            "CREATE OR REPLACE TEMP VIEW customers AS "
            f"SELECT customer_id{', ' + cols if cols else ''} FROM read_parquet('{path}')"
        )
    else:
        cols = ", ".join(f"CAST(NULL AS VARCHAR) AS {a}" for a in profile_attributes)
        con.execute(
            "CREATE OR REPLACE TEMP VIEW customers AS "
            f"SELECT CAST(NULL AS VARCHAR) AS customer_id{', ' + cols if cols else ''} WHERE FALSE"
        )


def register_snapshots_for_cutoffs(con: duckdb.DuckDBPyConnection, cutoffs: list[datetime]) -> None:
    """Snapshots = every customer seen before a cutoff, at that cutoff."""
    con.register(
        "cutoffs_arrow", pa.table({"snapshot_ts": pa.array(cutoffs, pa.timestamp("us", tz="UTC"))})
    )
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE snapshots AS
        SELECT f.customer_id, c.snapshot_ts
        FROM (
            SELECT e.customer_id, MIN(e.timestamp) AS first_ts
            FROM events AS e JOIN roles AS r ON r.event_type = e.event_type
            WHERE r.is_activity = 1
            GROUP BY e.customer_id
        ) AS f
        JOIN cutoffs_arrow AS c ON f.first_ts < c.snapshot_ts
        """
    )
    con.unregister("cutoffs_arrow")


def register_snapshots(con: duckdb.DuckDBPyConnection, entity_frame: pa.Table) -> None:
    """Snapshots given explicitly as (customer_id, snapshot_ts) rows."""
    con.register("snap_arrow", entity_frame.select([ENTITY, SNAPSHOT_TS]))
    con.execute(
        "CREATE OR REPLACE TEMP TABLE snapshots AS "
        "SELECT CAST(customer_id AS VARCHAR) AS customer_id, "
        "CAST(snapshot_ts AS TIMESTAMPTZ) AS snapshot_ts FROM snap_arrow"
    )
    con.unregister("snap_arrow")


@dataclass(frozen=True)
class BuildReport:
    """What ``build_snapshots`` wrote."""

    path: Path
    rows: int
    customers: int
    snapshots: int
    first_snapshot: datetime | None
    as_of: datetime
    features: int
    seconds: float


def connect(
    memory_limit: str = "4GB", temp_dir: str | Path | None = None
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection set up for the pipeline: UTC, bounded memory, spill to disk."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute("SET preserve_insertion_order = false")
    if temp_dir is not None:
        con.execute(f"SET temp_directory = '{Path(temp_dir).as_posix()}'")
    return con


def build_snapshots(
    lake: str | Path,
    out_dir: str | Path,
    journey_map: JourneyMap,
    catalog: FeatureCatalog,
    as_of: datetime | None = None,
) -> BuildReport:
    """Computes feature snapshots for every customer at every cutoff and writes them.

    Snapshots are taken every ``cadence_days`` from the first event plus the warm-up, and once
    more at ``as_of`` (default: just after the last event). The output folder is replaced
    atomically: a failure leaves the previous snapshots in place.

    Raises:
        FeatureBuildError: the lake has no events or ``as_of`` is before the first event.
    """
    import shutil
    import time

    from journeyml.events.schema import CUSTOMERS_FILE, EVENTS_DIR, events_glob

    started = time.perf_counter()
    lake = Path(lake)
    out_dir = Path(out_dir)
    glob = events_glob(lake)
    events_dir = lake / EVENTS_DIR
    if not events_dir.is_dir() or not any(events_dir.rglob("*.parquet")):
        raise FeatureBuildError(
            f"no ingested events under {events_dir}: run `journeyml events ingest` first"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    con = connect(temp_dir=out_dir.parent / ".duckdb_tmp")
    try:
        register_inputs(
            con,
            journey_map,
            f"SELECT * FROM read_parquet('{_quote(glob)}', hive_partitioning = false)",
            lake / CUSTOMERS_FILE,
            catalog.settings.profile_attributes,
        )
        first, last = con.execute(
            "SELECT MIN(e.timestamp), MAX(e.timestamp) FROM events e "
            "JOIN roles r ON r.event_type = e.event_type WHERE r.is_activity = 1"
        ).fetchall()[0]
        if first is None or last is None:
            raise FeatureBuildError(f"the lake at {lake} has no customer activity events")
        if as_of is not None and as_of <= first:
            raise FeatureBuildError(
                f"--as-of {as_of.isoformat()} is before the first event ({first.isoformat()})"
            )
        snaps = catalog.settings.snapshots
        plan = plan_snapshots(first, last, snaps.cadence_days, snaps.warmup_days, as_of)
        register_snapshots_for_cutoffs(con, [*plan.cutoffs, plan.as_of])
        tmp.mkdir(parents=True)
        query = feature_query(catalog, journey_map.experience.score_property)
        con.execute(
            f"COPY ({query}) TO '{_quote(str(tmp / 'part-0.parquet'))}' "
            "(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 100000)"
        )
        rows, customers, n_snap = con.execute(
            f"SELECT COUNT(*), COUNT(DISTINCT customer_id), COUNT(DISTINCT {TIMESTAMP_FIELD}) "
            f"FROM read_parquet('{_quote(str(tmp / 'part-0.parquet'))}')"
        ).fetchall()[0]
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        con.close()
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out_dir)
    report = BuildReport(
        path=out_dir,
        rows=int(rows),
        customers=int(customers),
        snapshots=int(n_snap),
        first_snapshot=plan.cutoffs[0] if plan.cutoffs else None,
        as_of=plan.as_of,
        features=len(catalog.features),
        seconds=time.perf_counter() - started,
    )
    logger.info(
        "built %d snapshot rows (%d customers x %d snapshots, %d features) in %.1f s",
        report.rows,
        report.customers,
        report.snapshots,
        report.features,
        report.seconds,
    )
    return report


class FeatureBuildError(RuntimeError):
    """The feature pipeline cannot run on this input; the message says why."""


def _quote(value: str) -> str:
    return value.replace("'", "''")
