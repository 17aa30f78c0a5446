"""Per-event sequence features: the last events, their gaps, the session, the time of day.

One definition for training and serving. :func:`register_sequence` turns the ``events`` and
``roles`` views (:func:`features.pipeline.register_inputs`) into ``seq_events``: every activity
event of every customer in order (timestamp, then ``event_id``, as the feature query orders
them), with its session. :func:`sequence_features_sql` reads the features of each event as of
that event from it; the training labels (``training.next_event``) read the next event from
the same table, and serving runs the same query over a customer's recent events and takes
the last row.

Sessions are the log's own ``session_id`` where it has one; without it (or where it is
empty) a new session starts after ``session_gap_minutes`` without an activity event, so a
log with date-only timestamps has one session per active day. Events that share a
timestamp are one moment: only the last of them (in order) is an *anchor*, so nothing about
an anchor is computed from an event that a caller could not yet have sent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from journeyml.config import JourneyMap

START_TYPE = "(start)"
"""The previous event type in the session of a session's first event."""

PROPERTY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True)
class SequenceSpec:
    """What the sequence features read: how many past events, how sessions are cut, which
    event properties are context (e.g. ``platform``, ``page``)."""

    last_k: int = 3
    session_gap_minutes: int = 30
    properties: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.last_k <= 10:
            raise ValueError(f"last_k must be between 1 and 10, not {self.last_k}")
        if self.session_gap_minutes < 1:
            raise ValueError("session_gap_minutes must be at least 1")
        bad = [p for p in self.properties if not PROPERTY_NAME.match(p)]
        if bad:
            raise ValueError(f"event property names must be identifiers: {', '.join(bad)}")

    @property
    def categorical(self) -> list[str]:
        return [
            *(f"seq_type_{i}" for i in range(self.last_k)),
            "seq_prev_in_session",
            "seq_last_two",
            "seq_channel",
            *(f"seq_prop_{p}" for p in self.properties),
        ]

    @property
    def numeric(self) -> list[str]:
        return [
            *(f"seq_gap_{i}" for i in range(1, self.last_k)),
            "seq_position",
            "seq_session_seconds",
            "seq_session_converted",
            "seq_seconds_since_previous_session",
            "seq_hour",
            "seq_weekday",
        ]

    @property
    def features(self) -> list[str]:
        return [*self.categorical, *self.numeric]


def register_sequence(con: duckdb.DuckDBPyConnection, spec: SequenceSpec) -> None:
    """Creates the ``seq_events`` table from the ``events`` and ``roles`` views."""
    gap_us = spec.session_gap_minutes * 60 * 1_000_000
    props = "".join(
        f",\n            JSON_EXTRACT_STRING(e.properties, '$.{p}') AS prop_{p}"
        for p in spec.properties
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE seq_events AS
        WITH ordered AS (
            SELECT e.customer_id, e.event_id, e.event_type, e.timestamp AS ts,
                EPOCH_US(e.timestamp) AS t, NULLIF(e.session_id, '') AS session_id,
                e.channel, r.is_conversion{props},
                ROW_NUMBER() OVER w AS seq,
                LAG(EPOCH_US(e.timestamp)) OVER w AS prev_t,
                LAG(NULLIF(e.session_id, '')) OVER w AS prev_session_id,
                LEAD(EPOCH_US(e.timestamp)) OVER w AS next_t
            FROM events AS e JOIN roles AS r ON r.event_type = e.event_type
            WHERE r.is_activity = 1
            WINDOW w AS (PARTITION BY e.customer_id ORDER BY e.timestamp, e.event_id)
        ),
        cut AS (
            SELECT *,
                CASE
                    WHEN prev_t IS NULL THEN 1
                    WHEN session_id IS NOT NULL AND prev_session_id IS NOT NULL
                        THEN CAST(session_id <> prev_session_id AS INTEGER)
                    ELSE CAST(t - prev_t > {gap_us} AS INTEGER)
                END AS new_session
            FROM ordered
        )
        SELECT *,
            SUM(new_session) OVER (PARTITION BY customer_id ORDER BY seq) AS session_no,
            -- the last event of its moment (events sharing a timestamp are one moment)
            CAST(next_t IS NULL OR next_t > t AS INTEGER) AS is_anchor
        FROM cut
        """
    )


def sequence_features_sql(spec: SequenceSpec) -> str:
    """Every event of ``seq_events`` with its sequence features as of that event.

    Columns: ``customer_id``, ``event_id``, ``ts``, ``t``, ``seq``, ``session_no``,
    ``is_anchor``, ``is_conversion`` and :attr:`SequenceSpec.features`.
    """
    k = spec.last_k
    types = [
        "event_type AS seq_type_0",
        *(f"LAG(event_type, {i}) OVER w AS seq_type_{i}" for i in range(1, k)),
    ]
    gaps = [
        f"(LAG(t, {i - 1}) OVER w - LAG(t, {i}) OVER w) / 1e6 AS seq_gap_{i}"
        if i > 1
        else "(t - LAG(t) OVER w) / 1e6 AS seq_gap_1"
        for i in range(1, k)
    ]
    props = [f"prop_{p} AS seq_prop_{p}" for p in spec.properties]
    return f"""
WITH s AS (
    SELECT *,
        ROW_NUMBER() OVER ws AS seq_position,
        (t - MIN(t) OVER ws) / 1e6 AS seq_session_seconds,
        CAST(MAX(is_conversion) OVER ws AS INTEGER) AS seq_session_converted,
        (t - FIRST_VALUE(prev_t) OVER ws) / 1e6 - (t - MIN(t) OVER ws) / 1e6
            AS since_previous_session
    FROM seq_events
    WINDOW ws AS (PARTITION BY customer_id, session_no ORDER BY seq
        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
)
SELECT customer_id, event_id, ts, t, seq, session_no, is_anchor, is_conversion,
    {", ".join(types)},
    CASE WHEN seq_position > 1 THEN LAG(event_type) OVER w ELSE '{START_TYPE}' END
        AS seq_prev_in_session,
    CASE WHEN seq_position > 1 THEN LAG(event_type) OVER w ELSE '{START_TYPE}' END
        || ' > ' || event_type AS seq_last_two,
    COALESCE(channel, '') AS seq_channel,
    {"".join(f"{p}, " for p in props)}{"".join(f"{g}, " for g in gaps)}
    seq_position, seq_session_seconds, seq_session_converted,
    since_previous_session AS seq_seconds_since_previous_session,
    HOUR(ts) AS seq_hour,
    ISODOW(ts) - 1 AS seq_weekday
FROM s
WINDOW w AS (PARTITION BY customer_id ORDER BY seq)
"""


def infer_context_properties(
    con: duckdb.DuckDBPyConnection,
    max_distinct: int = 50,
    min_share: float = 0.05,
    limit: int = 4,
) -> tuple[str, ...]:
    """Event properties worth reading as context: set on at least ``min_share`` of the
    activity events, with at most ``max_distinct`` values (``platform``, ``page``; not ids)."""
    rows = con.execute(
        """
        WITH p AS (
            SELECT UNNEST(JSON_KEYS(e.properties)) AS key, e.properties
            FROM events AS e JOIN roles AS r ON r.event_type = e.event_type
            WHERE r.is_activity = 1 AND e.properties IS NOT NULL
                AND JSON_VALID(e.properties) AND JSON_TYPE(e.properties) = 'OBJECT'
        )
        SELECT key, COUNT(*) AS n,
            COUNT(DISTINCT JSON_EXTRACT_STRING(properties, '$.' || key)) AS d
        FROM p GROUP BY key
        """
    ).fetchall()
    total = con.execute(
        "SELECT COUNT(*) FROM events AS e JOIN roles AS r ON r.event_type = e.event_type"
        " WHERE r.is_activity = 1"
    ).fetchall()[0][0]
    kept = sorted(
        (str(key), int(n))
        for key, n, d in rows
        if PROPERTY_NAME.match(str(key)) and n >= min_share * max(total, 1) and d <= max_distinct
    )
    kept.sort(key=lambda kv: -kv[1])
    return tuple(sorted(key for key, _ in kept[:limit]))


def sequence_rows(
    con: duckdb.DuckDBPyConnection, spec: SequenceSpec, customers: Sequence[str] | None = None
) -> duckdb.DuckDBPyRelation:
    """The sequence features of every event (of some customers) as a relation."""
    register_sequence(con, spec)
    rel = con.sql(sequence_features_sql(spec))
    if customers is not None:
        ids = ", ".join("'" + c.replace("'", "''") + "'" for c in customers)
        rel = rel.filter(f"customer_id IN ({ids})")
    return rel


def latest_sequence_rows(
    events: pa.Table, journey_map: JourneyMap, spec: SequenceSpec
) -> dict[str, dict[str, object]]:
    """The sequence features of each customer's latest event (what serving scores after an
    event): the same query as training, over the customers' events (the normalised event
    schema). Customers without an activity event are left out."""
    from features.pipeline import connect, register_inputs

    con = connect(memory_limit="256MB")
    try:
        con.register("recent_events", events)
        register_inputs(con, journey_map, "SELECT * FROM recent_events", None, [])
        register_sequence(con, spec)
        cols = ", ".join(["customer_id", *spec.features])
        cursor = con.execute(
            f"SELECT {cols} FROM ({sequence_features_sql(spec)})"
            " QUALIFY ROW_NUMBER() OVER (PARTITION BY customer_id ORDER BY seq DESC) = 1"
        )
        names = [d[0] for d in cursor.description]
        return {str(r[0]): dict(zip(names[1:], r[1:], strict=True)) for r in cursor.fetchall()}
    finally:
        con.close()
