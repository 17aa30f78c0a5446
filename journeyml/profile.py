"""Profiling an event log out of core: what ``journeyml init`` infers a config set from.

The log (CSV or Parquet, one file or a folder) is read by DuckDB with aggregate queries only;
nothing is loaded into Python but the summaries. Columns are renamed through the same column
map as ``journeyml events ingest`` and parsed the same way (timestamps as ISO-8601 text or typed
timestamps, naive ones UTC; values as numbers).

The profile holds: the columns with their roles, types, cardinality and most frequent values;
the event vocabulary with counts, customers and how often each type carries a value; the time
span and whether timestamps have a time of day; the *return gaps* (days between consecutive
active days of a customer, each returning customer weighted once); the gaps between
consecutive events of a customer; sessions; and the candidate segment columns (low-cardinality
text columns such as platform, device or channel).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from journeyml.events.schema import CONTRACT_EVENT_COLUMNS, REQUIRED_EVENT_COLUMNS
from journeyml.events.sources import (
    clean_text,
    discover,
    number_exprs,
    sql_name,
    sql_string,
    timestamp_exprs,
)

logger = logging.getLogger(__name__)

#: A text column with at most this many distinct values is a segment candidate ...
SEGMENT_MAX_VALUES = 12
#: ... when at least this share of rows has a value.
SEGMENT_MIN_COVERAGE = 0.9
#: Most frequent values kept per low-cardinality column.
TOP_VALUES = 20
GAP_QUANTILES: tuple[float, ...] = (0.5, 0.75, 0.9, 0.95)


class ProfileError(ValueError):
    """The log cannot be profiled (no file, a required column missing after the map)."""


@dataclass(frozen=True)
class ColumnProfile:
    """One input column.

    Attributes:
        name: the column's name in the log.
        role: the contract column it is mapped to (``customer_id``...), or None for an extra.
        kind: ``text``, ``number`` or ``timestamp`` (from the values, not the file's type).
        non_null: rows with a value.
        distinct: distinct values (approximate beyond a few thousand).
        top_values: the most frequent values with their counts (low-cardinality columns).
    """

    name: str
    role: str | None
    kind: str
    non_null: int
    distinct: int
    top_values: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class EventTypeProfile:
    """One event type: its rows, customers, and rows carrying a positive value."""

    name: str
    events: int
    customers: int
    valued: int


@dataclass(frozen=True)
class LogProfile:
    """What an event log holds (see the module docstring)."""

    source: str
    fmt: str
    files: int
    rows: int
    customers: int
    column_map: dict[str, str]
    columns: tuple[ColumnProfile, ...]
    first_event: datetime
    last_event: datetime
    unparsed_timestamps: int
    date_only: bool
    event_types: tuple[EventTypeProfile, ...]
    value_column: str | None
    valued_rows: int
    channel_values: tuple[tuple[str, int], ...]
    segment_columns: tuple[str, ...]
    returning_customers: int
    return_gap_days: dict[str, float] = field(default_factory=dict)
    event_gap_seconds: dict[str, float] = field(default_factory=dict)
    sessions: int = 0
    events_per_session: float | None = None

    @property
    def span_days(self) -> float:
        """Days from the first to the last event."""
        return (self.last_event - self.first_event).total_seconds() / 86400.0

    def column(self, name: str) -> ColumnProfile:
        """The profile of the input column ``name``."""
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (times as ISO-8601)."""
        data = asdict(self)
        data["first_event"] = self.first_event.isoformat()
        data["last_event"] = self.last_event.isoformat()
        data["span_days"] = round(self.span_days, 2)
        return data


def _connect(memory_limit: str) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = {sql_string(memory_limit)}")
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET enable_progress_bar = false")
    return con


def _reader(fmt: str, files: list[Path]) -> str:
    listing = "[" + ", ".join(sql_string(f) for f in files) + "]"
    if fmt == "parquet":
        return f"read_parquet({listing}, union_by_name = true)"
    return f"read_csv({listing}, all_varchar = true, header = true, union_by_name = true)"


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[Any, ...]:
    rows = con.execute(sql).fetchall()
    return tuple(rows[0]) if rows else ()


def profile_log(
    path: str | Path,
    column_map: Mapping[str, str] | None = None,
    memory_limit: str = "4GB",
) -> LogProfile:
    """Profiles the event log at ``path`` (a CSV or Parquet file, or a folder of them).

    Args:
        path: the log.
        column_map: input column -> contract column, as ``--map`` gives it to ingest.
        memory_limit: DuckDB's memory limit; beyond it DuckDB spills to disk.

    Raises:
        ProfileError: no readable file, a map naming an unknown column, a required contract
            column missing, or no parseable timestamp.
    """
    from journeyml.events.problems import EventLogError

    mapping = dict(column_map or {})
    try:
        fmt, files = discover(path)
    except EventLogError as exc:
        raise ProfileError(f"{path}: {exc.headline()}") from None
    con = _connect(memory_limit)
    try:
        # CSV is parsed once into a temporary table (DuckDB keeps it compressed and spills it
        # to disk beyond the memory limit); Parquet is cheap to scan again.
        kind = "TABLE" if fmt == "csv" else "VIEW"
        con.execute(f"CREATE TEMP {kind} raw AS SELECT * FROM {_reader(fmt, files)}")
        described = con.execute("DESCRIBE raw").fetchall()
        types = {str(r[0]): str(r[1]) for r in described}
        unknown = [src for src in mapping if src not in types]
        if unknown:
            raise ProfileError(
                f"{path}: the column map names {', '.join(map(repr, unknown))}, which the log "
                f"does not have; its columns: {', '.join(types)}"
            )
        role_of = {c: mapping.get(c) or (c if c in CONTRACT_EVENT_COLUMNS else None) for c in types}
        by_role = {r: c for c, r in role_of.items() if r in CONTRACT_EVENT_COLUMNS}
        missing = [r for r in REQUIRED_EVENT_COLUMNS if r not in by_role]
        if missing:
            raise ProfileError(
                f"{path}: no column is mapped to {', '.join(missing)} (columns: "
                f"{', '.join(types)}); map them with --map SRC=DST, e.g. --map "
                f"{next(iter(types))}={missing[0]}"
            )
        ts_expr, _ = timestamp_exprs(by_role["timestamp"], types[by_role["timestamp"]])
        value_src = by_role.get("value")
        value_expr, _ = number_exprs(value_src, types[value_src] if value_src else None)
        opt = {
            r: clean_text(sql_name(by_role[r])) if r in by_role else "CAST(NULL AS VARCHAR)"
            for r in ("channel", "session_id")
        }
        con.execute(
            "CREATE TEMP TABLE ev AS SELECT "
            f"{clean_text(sql_name(by_role['customer_id']))} AS customer_id, "
            f"{ts_expr} AS ts, "
            f"{clean_text(sql_name(by_role['event_type']))} AS event_type, "
            f"{value_expr} AS value, lower({opt['channel']}) AS channel, "
            f"{opt['session_id']} AS session_id FROM raw"
        )
        rows, customers, first, last, unparsed, timed, valued = _one(
            con,
            "SELECT count(*), count(DISTINCT customer_id), min(ts), max(ts), "
            "count(*) FILTER (WHERE ts IS NULL), "
            "count(*) FILTER (WHERE ts IS NOT NULL AND date_trunc('day', ts) <> ts), "
            "count(*) FILTER (WHERE value IS NOT NULL AND value > 0) FROM ev",
        )
        if first is None:
            raise ProfileError(
                f"{path}: no timestamp in column {by_role['timestamp']!r} could be read as "
                "ISO-8601 (e.g. 2024-05-01 or 2024-05-01T12:00:00Z)"
            )
        event_types = tuple(
            EventTypeProfile(str(name), int(n), int(c), int(v))
            for name, n, c, v in con.execute(
                "SELECT event_type, count(*), count(DISTINCT customer_id), "
                "count(*) FILTER (WHERE value IS NOT NULL AND value > 0) FROM ev "
                "WHERE event_type IS NOT NULL GROUP BY event_type ORDER BY 2 DESC, 1"
            ).fetchall()
        )
        columns = tuple(_column(con, name, types[name], role_of[name], int(rows)) for name in types)
        channel_values: tuple[tuple[str, int], ...] = ()
        if "channel" in by_role:
            channel_values = tuple(
                (str(v), int(n))
                for v, n in con.execute(
                    "SELECT channel, count(*) FROM ev WHERE channel IS NOT NULL "
                    f"GROUP BY 1 ORDER BY 2 DESC LIMIT {TOP_VALUES}"
                ).fetchall()
            )
        segments = tuple(
            c.name
            for c in columns
            if c.role in (None, "channel")
            and c.kind == "text"
            and 2 <= c.distinct <= SEGMENT_MAX_VALUES
            and c.non_null >= SEGMENT_MIN_COVERAGE * rows
        )
        returning, gaps = _return_gaps(con)
        event_gaps = _event_gaps(con)
        sessions, per_session = 0, None
        if "session_id" in by_role:
            sessions, per_session = _one(
                con,
                "SELECT count(DISTINCT session_id), count(session_id) / "
                "greatest(count(DISTINCT session_id), 1) FROM ev",
            )
    finally:
        con.close()
    logger.info("profiled %s: %d rows, %d customers", path, rows, customers)
    return LogProfile(
        source=str(path),
        fmt=fmt,
        files=len(files),
        rows=int(rows),
        customers=int(customers),
        column_map=mapping,
        columns=columns,
        first_event=first,
        last_event=last,
        unparsed_timestamps=int(unparsed),
        date_only=int(timed) == 0,
        event_types=event_types,
        value_column=value_src,
        valued_rows=int(valued),
        channel_values=channel_values,
        segment_columns=segments,
        returning_customers=returning,
        return_gap_days=gaps,
        event_gap_seconds=event_gaps,
        sessions=int(sessions or 0),
        events_per_session=float(per_session) if per_session is not None else None,
    )


def _column(
    con: duckdb.DuckDBPyConnection, name: str, duck_type: str, role: str | None, rows: int
) -> ColumnProfile:
    col = sql_name(name)
    text = clean_text(col)
    non_null, distinct, numbers, stamps = _one(
        con,
        f"SELECT count({text}), approx_count_distinct({text}), "
        f"count(TRY_CAST({text} AS DOUBLE)), "
        f"count(*) FILTER (WHERE regexp_matches({text}, '^[0-9]{{4}}-[0-9]{{1,2}}-[0-9]{{1,2}}') "
        f"AND TRY_CAST({text} AS TIMESTAMPTZ) IS NOT NULL) FROM raw",
    )
    non_null, distinct = int(non_null), int(distinct)
    if non_null and stamps == non_null:
        kind = "timestamp"
    elif non_null and numbers == non_null:
        kind = "number"
    else:
        kind = "text"
    top: tuple[tuple[str, int], ...] = ()
    if kind == "text" and distinct <= TOP_VALUES * 2:
        top = tuple(
            (str(v), int(n))
            for v, n in con.execute(
                f"SELECT {text} AS v, count(*) FROM raw WHERE v IS NOT NULL "
                f"GROUP BY v ORDER BY 2 DESC, 1 LIMIT {TOP_VALUES}"
            ).fetchall()
        )
        if len(top) < TOP_VALUES:
            distinct = len(top)  # exact for small cardinalities
    return ColumnProfile(name, role, kind, non_null, distinct, top)


def _return_gaps(con: duckdb.DuckDBPyConnection) -> tuple[int, dict[str, float]]:
    """Returning customers and the quantiles of days between their consecutive active days,
    each returning customer weighted once (a frequent visitor does not outweigh the rest)."""
    con.execute(
        """
        CREATE TEMP TABLE gaps AS
        WITH days AS (
            SELECT DISTINCT customer_id, CAST(ts AS DATE) AS day FROM ev
            WHERE ts IS NOT NULL AND customer_id IS NOT NULL
        ),
        g AS (
            SELECT customer_id,
                day - lag(day) OVER (PARTITION BY customer_id ORDER BY day) AS gap
            FROM days
        )
        SELECT gap, 1.0 / count(*) OVER (PARTITION BY customer_id) AS w, customer_id
        FROM g WHERE gap IS NOT NULL
        """
    )
    returning = int(_one(con, "SELECT count(DISTINCT customer_id) FROM gaps")[0])
    if not returning:
        return 0, {}
    cdf = con.execute(
        "SELECT gap, sum(sw) OVER (ORDER BY gap) / sum(sw) OVER () AS cum "
        "FROM (SELECT gap, sum(w) AS sw FROM gaps GROUP BY gap) ORDER BY gap"
    ).fetchall()
    out: dict[str, float] = {}
    for q in GAP_QUANTILES:
        out[f"p{round(q * 100)}"] = float(next(g for g, c in cdf if c >= q - 1e-12))
    out["mean"] = round(float(_one(con, "SELECT sum(gap * w) / sum(w) FROM gaps")[0]), 2)
    return returning, out


def _event_gaps(con: duckdb.DuckDBPyConnection) -> dict[str, float]:
    """Quantiles of seconds between consecutive events of a customer."""
    row = _one(
        con,
        """
        WITH g AS (
            SELECT epoch(ts) - epoch(lag(ts) OVER (PARTITION BY customer_id ORDER BY ts)) AS s
            FROM ev WHERE ts IS NOT NULL
        )
        SELECT quantile_cont(s, 0.5), quantile_cont(s, 0.9),
            avg(CASE WHEN s < 1800 THEN 1.0 ELSE 0.0 END)
        FROM g WHERE s IS NOT NULL
        """,
    )
    if not row or row[0] is None:
        return {}
    return {"p50": float(row[0]), "p90": float(row[1]), "share_within_30min": float(row[2])}
