"""The journey feature pipeline: point-in-time features per customer at snapshot times.

The whole computation is one SQL query over four relations:

- ``events``: the normalised event log (``journeyml.events.schema``);
- ``roles``: one row per event type with its stage and roles, resolved from the journey map in
  Python (so pattern semantics live in one place, ``JourneyMap``);
- ``snapshots``: (customer_id, snapshot_ts) pairs to compute;
- ``customers``: the customers table (may be empty).

Only events strictly before a snapshot time T count. The query never runs a window aggregate
over the events (in DuckDB each one costs a sort-and-tree pass per column); instead:

1. *Cells*: each customer's events are grouped into cells, one per day, or one per instant on
   the few days that a look-back boundary (T - W days) splits. Every counter of the catalog is
   summed per cell by one hash aggregation; the counts are bit-packed, several to a BIGINT
   (``count_bits`` bits each, sized from the data), so a handful of columns carries them all.
2. What depends on the order of events (the latest event types, stage changes, the latest
   survey answers) comes from one sort of the events by customer, time and event id, using only
   ``ROW_NUMBER``/``LAG``, reduced to the same cells (a cell's latest value is the
   ``ARG_MAX`` by position of the rows that set it).
3. One window pass over the cells keeps running totals of the packed counts and carries the
   latest values forward.
4. ``ASOF JOIN`` reads the running state of the last cell before T and, stacked in a second
   one, before each T - W (pivoted back to one row per snapshot by one aggregation); a window
   count is the difference of two readings (field by field: counts never borrow).

The rows come out in no particular order: a final sort of the wide rows cost a third of the
build at 10M events (it held every row in memory before the first could be written).

:func:`to_spark_sql` transpiles the query to Spark SQL, writing each ``ASOF JOIN`` as a range
join on the cell's validity interval, so the same definition runs on a cluster. DuckDB runs it
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
from sqlglot import exp

from features.catalog import US_PER_DAY, Counter, FeatureCatalog
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

DEFAULT_COUNT_BITS = 21
"""Bits of one running count in a packed column: exact while no customer has 2**21
(2,097,152) events. :func:`build_snapshots` sizes it from the data."""

TYPE_CODE_BITS = 12
"""Bits of one event-type code in the packed latest event types."""

MAX_EVENT_TYPES = (1 << TYPE_CODE_BITS) - 1
"""The most distinct event types a log may have (code 0 means "no event")."""

MAX_STAGES = 255
"""The most journey stages the stage state can hold."""


def event_roles(journey_map: JourneyMap, event_types: list[str]) -> pa.Table:
    """Resolves the journey map for the given event types into a small dimension table."""
    exp = journey_map.experience
    rows: dict[str, list[object]] = {"event_type": [], "stage_idx": [], "back_idx": []}
    for col in ROLE_COLUMNS:
        rows[col] = []
    for et in sorted(set(event_types)):
        stage = journey_map.stage_of(et)
        rows["event_type"].append(et)
        rows["stage_idx"].append(None if stage is None else journey_map.stage_index(stage))
        back = journey_map.regression_to(et)
        rows["back_idx"].append(None if back is None else journey_map.stage_index(back))
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
        [("event_type", pa.string()), ("stage_idx", pa.int32()), ("back_idx", pa.int32())]
        + [(c, pa.int32()) for c in ROLE_COLUMNS]
    )
    return pa.Table.from_pydict(rows, schema=schema)


def stage_machine(source: str, partition: str, order: str, extra: tuple[str, ...] = ()) -> str:
    """The journey stage of every event's customer, before and after the event: the one
    definition of the stage machine (features, journey analytics and labels all use it).

    ``source`` is a relation with ``stage_idx`` (the stage an event moves a customer forward
    to) and ``back_idx`` (the stage a regression event sends a customer back to), from
    :func:`event_roles`. A stage event moves the customer to its stage when that is later than
    the current one; a regression event puts the customer at its stage; nothing else moves
    anyone. So after the latest regression event (or from the start), the stage is the
    furthest of the regression's stage and every later stage event's. Each event gets the key
    ``(regression events so far << 8) + its stage``: keys of a later segment are larger, so a
    running maximum of the keys is the latest segment's furthest stage in its low byte. Two
    window passes in the customer's event order, no recursion: it transpiles to Spark.

    Returns:
        ``SELECT`` of every column of ``source`` plus ``stage_now`` (the stage after the event,
        NULL before any) and ``stage_prior`` (before it), and the ``extra`` expressions, which
        may use the window ``w`` (the customer's events in order).
    """
    window = f"PARTITION BY {partition} ORDER BY {order}"
    extras = "".join(f",\n        {x}" for x in extra)
    return f"""SELECT *,
    stage_key_prior & 255 AS stage_prior,
    GREATEST(stage_key_prior, stage_key) & 255 AS stage_now
FROM (
    SELECT *,
        MAX(stage_key) OVER (
            {window} ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS stage_key_prior{extras}
    FROM (
        SELECT *,
            (COUNT(back_idx) OVER ({window} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
                << 8) + COALESCE(back_idx, stage_idx) AS stage_key
        FROM ({source}) AS stage_in
    ) AS stage_seg
    WINDOW w AS ({window})
) AS stage_run"""


_MAX_BIGINT = 9_223_372_036_854_775_807
_DAY = US_PER_DAY
_TYPE_LEVEL = frozenset({"event_type", "stage_idx", "back_idx", *ROLE_COLUMNS})
"""Columns a counter may use to be evaluated once per event type instead of once per event."""
_ORDERED = frozenset({"stage_prior", "stage_now"})
"""Per-event columns that exist only once events are in order."""
_SESSION = "session_start"


@dataclass(frozen=True)
class _Slot:
    """Where a count lives: bits ``shift`` upwards of packed column ``p<pack>``."""

    pack: int
    shift: int


def count_bits_for(max_events_per_customer: int) -> int:
    """The packed-count width that holds ``max_events_per_customer`` exactly."""
    return max(1, int(max_events_per_customer).bit_length())


def _columns(sql: str) -> set[str]:
    return {c.name for c in sqlglot.parse_one(sql, read="duckdb").find_all(exp.Column)}


def _scope(counter: Counter) -> str:
    """Where a counter is evaluated: per event type, per event, on ordered events, per session."""
    cols = _columns(counter.expr)
    if _SESSION in cols:
        return "session"
    if cols & _ORDERED:
        return "ordered"
    if not counter.amount and cols <= _TYPE_LEVEL:
        return "type"
    return "event"


def _day_start(ts: str) -> str:
    return f"{ts} - (({ts} % {_DAY}) + {_DAY}) % {_DAY}"


def _list(items: list[str], indent: int = 8) -> str:
    return (",\n" + " " * indent).join(items)


def feature_query(
    catalog: FeatureCatalog, score_property: str = "score", count_bits: int = DEFAULT_COUNT_BITS
) -> str:
    """The SQL (DuckDB dialect) that computes every catalog feature for every snapshot.

    Args:
        catalog: the readings and features.
        score_property: the event property that holds survey scores.
        count_bits: bits per packed count; counts are exact while no customer has
            ``2**count_bits`` events (:func:`count_bits_for`).
    """
    if not 1 <= count_bits <= 62:
        raise ValueError(f"count_bits must be between 1 and 62, not {count_bits}")
    k = catalog.settings.last_k
    prop = score_property.replace("'", "''")
    counts = [c for c in catalog.counters if not c.amount]
    amounts = [c for c in catalog.counters if c.amount]
    per_pack = 63 // count_bits  # the sign bit stays clear: sums never overflow
    slot = {c.name: _Slot(i // per_pack, (i % per_pack) * count_bits) for i, c in enumerate(counts)}
    n_packs = (len(counts) + per_pack - 1) // per_pack
    mask = (1 << count_bits) - 1
    scope = {c.name: _scope(c) for c in catalog.counters}
    lags = sorted({w for c in catalog.counters for w in c.windows})
    codes_per_pack = 63 // TYPE_CODE_BITS
    n_type_packs = (k + codes_per_pack - 1) // codes_per_pack
    cell = (
        f"CASE WHEN {_day_start('ts')} IN (SELECT day_start FROM split_days) THEN ts"
        f" ELSE {_day_start('ts')} END AS r"
    )

    def packed(pack: int, where: str, session: bool = False) -> str:
        terms = [
            f"(COALESCE(CAST({'1' if session else c.expr} AS BIGINT), 0) << {slot[c.name].shift})"
            for c in counts
            if scope[c.name] == where and slot[c.name].pack == pack
        ]
        return " + ".join(terms) or "0"

    ordered_packs = [i for i in range(n_packs) if packed(i, "ordered") != "0"]

    # -- A: counts, amounts and latest times, per cell (a hash aggregation, no ordering) ----
    type_packs = _list([f"{packed(i, 'type')} AS tp{i}" for i in range(n_packs)])
    a_cols = [
        *(f"tp{i} + {packed(i, 'event')} AS p{i}" for i in range(n_packs)),
        *(f"COALESCE(CAST({c.expr} AS DOUBLE), 0) AS {c.name}" for c in amounts),
        "CASE WHEN is_activity = 1 THEN ts END AS first_act",
        *(f"CASE WHEN {lt.condition} THEN ts END AS {lt.name}" for lt in catalog.last_times),
    ]
    a_session_cols = [
        *(f"{packed(i, 'session', session=True)} AS p{i}" for i in range(n_packs)),
        *(f"0 AS {c.name}" for c in amounts),
        "NULL AS first_act",
        *(f"NULL AS {lt.name}" for lt in catalog.last_times),
    ]
    a_aggs = [
        *(f"SUM(p{i}) AS p{i}" for i in range(n_packs)),
        *(f"SUM({c.name}) AS {c.name}" for c in amounts),
        "MIN(first_act) AS first_act",
        *(f"MAX({lt.name}) AS {lt.name}" for lt in catalog.last_times),
    ]

    # -- B: what depends on the order of events, per cell -----------------------------------
    act_code = "CASE WHEN is_activity = 1 THEN code END"
    latest_codes = [
        act_code if i == 0 else f"LAG({act_code}, {i} IGNORE NULLS) OVER w" for i in range(k)
    ]
    type_packs_sql = [
        " + ".join(
            f"(COALESCE({latest_codes[i]}, 0) << {(i % codes_per_pack) * TYPE_CODE_BITS})"
            for i in range(j * codes_per_pack, min(k, (j + 1) * codes_per_pack))
        )
        + f" AS types{j}"
        for j in range(n_type_packs)
    ]
    change = "stage_now IS NOT NULL AND (stage_prior IS NULL OR stage_now <> stage_prior)"
    b_cols = [
        *(f"{packed(i, 'ordered')} AS q{i}" for i in ordered_packs),
        *(lv.name for lv in catalog.last_values),
        *(f"types{j}" for j in range(n_type_packs)),
        "is_activity",
        "seq",
        # a stage change, as (position among the customer's events, stage, previous + 1)
        f"CASE WHEN {change} THEN (seq << 16) + (stage_now << 8)"
        " + COALESCE(stage_prior + 1, 0) END AS stage_code",
        f"CASE WHEN {change} THEN ts END AS stage_since",
        "stage_now",
    ]
    b_aggs = [
        *(f"SUM(q{i}) AS q{i}" for i in ordered_packs),
        # the latest value in the cell: that of the last row (by seq) where it is set
        *(
            f"ARG_MAX({lv.name}, seq) FILTER (WHERE {lv.name} IS NOT NULL) AS {lv.name}"
            for lv in catalog.last_values
        ),
        *(
            f"ARG_MAX(types{j}, seq) FILTER (WHERE is_activity = 1) AS types{j}"
            for j in range(n_type_packs)
        ),
        "MAX(stage_code) AS stage_code",
        "MAX(stage_since) AS stage_since",
        "MAX(stage_now) AS furthest_stage",
    ]
    cell_cols = [
        *(
            f"a.p{i} + COALESCE(b.q{i}, 0) AS p{i}" if i in ordered_packs else f"a.p{i}"
            for i in range(n_packs)
        ),
        *(f"a.{c.name}" for c in amounts),
        "a.first_act",
        *(f"a.{lt.name}" for lt in catalog.last_times),
        *(f"b.{lv.name}" for lv in catalog.last_values),
        *(f"b.types{j}" for j in range(n_type_packs)),
        "b.stage_code",
        "b.stage_since",
        "b.furthest_stage",
    ]

    # -- running state per cell, read at T and at each T - W --------------------------------
    latest = [
        *(lt.name for lt in catalog.last_times),
        *(lv.name for lv in catalog.last_values),
        *(f"types{j}" for j in range(n_type_packs)),
        "stage_code",
        "stage_since",
    ]
    running = [
        *(f"CAST(SUM(p{i}) OVER w AS BIGINT) AS p{i}" for i in range(n_packs)),
        *(f"SUM({c.name}) OVER w AS {c.name}" for c in amounts),
        "FIRST_VALUE(first_act IGNORE NULLS) OVER w AS first_ts",
        *(f"LAST_VALUE({name} IGNORE NULLS) OVER w AS {name}" for name in latest),
        "MAX(furthest_stage) OVER w AS furthest_stage",
        "LEAD(r) OVER w AS next_r",
    ]
    lagged = [
        *(
            f"p{i}"
            for i in range(n_packs)
            if any(c.windows and slot[c.name].pack == i for c in counts)
        ),
        *(c.name for c in amounts if c.windows),
    ]
    # one row per snapshot with every look-back reading side by side (a pivot of the stacked
    # ASOF readings: one aggregation is cheaper than a join per look-back, and MAX(CASE ...)
    # about a third cheaper than MAX(...) FILTER in DuckDB)
    lookback = [
        f"MAX(CASE WHEN lag_days = {w} THEN {col} END) AS w{w}_{col}"
        for w in lags
        for col in lagged
    ]
    readings = ["a.customer_id", "a.cid", "a.snapshot_ts", "a.t AS snapshot_us"]
    for c in catalog.counters:
        sl = slot.get(c.name)
        for w in c.windows:
            if sl is None:
                readings.append(f"a.{c.name} - COALESCE(b.w{w}_{c.name}, 0) AS {c.name}__w{w}")
            else:
                readings.append(
                    f"((a.p{sl.pack} - COALESCE(b.w{w}_p{sl.pack}, 0)) >> {sl.shift}) & {mask}"
                    f" AS {c.name}__w{w}"
                )
        if c.total:
            readings.append(
                f"a.{c.name} AS {c.name}__total"
                if sl is None
                else f"(a.p{sl.pack} >> {sl.shift}) & {mask} AS {c.name}__total"
            )
    code_mask = (1 << TYPE_CODE_BITS) - 1
    readings += [
        "a.first_ts",
        *(f"a.{lt.name}" for lt in catalog.last_times),
        *(f"a.{lv.name}" for lv in catalog.last_values),
        *(
            f"(a.types{i // codes_per_pack} >> {(i % codes_per_pack) * TYPE_CODE_BITS})"
            f" & {code_mask} AS code_{i + 1}"
            for i in range(k)
        ),
        "(a.stage_code >> 8) & 255 AS cur_stage",
        "CASE WHEN a.stage_code & 255 > 0 THEN (a.stage_code & 255) - 1 END AS prev_stage",
        "a.stage_since AS stage_since_ts",
        "a.furthest_stage",
    ]
    type_names = "".join(
        f"\n    LEFT JOIN types AS n{i} ON n{i}.code = r.code_{i}" for i in range(1, k + 1)
    )
    features = _list(
        [f"CAST({f.sql} AS {_sql_type(f.dtype)}) AS {f.name}" for f in catalog.features], 4
    )
    profile = [f"c.{attr} AS profile_{attr}" for attr in catalog.settings.profile_attributes]
    before_last = "e.timestamp < (SELECT MAX(snapshot_ts) FROM snapshots)"
    # the dimensions and measures of the settings, read from each event row
    log_columns = [f"{c.sql} AS {c.name}" for c in catalog.event_columns]
    ordered_columns = [
        f"{c.sql} AS {c.name}"
        for c in catalog.event_columns
        if any(c.name in _columns(lv.expr) for lv in catalog.last_values)
    ]
    type_cols = [
        *(f"t.{c}" for c in ("stage_idx", *ROLE_COLUMNS)),
        *(f"t.tp{i}" for i in range(n_packs)),
    ]
    # events in order with the stage machine's state before and after each (its one definition)
    ordered = stage_machine(
        f"""SELECT cid, ts, event_id, code, stage_idx, back_idx, is_activity, {cell},
    {_list([f"{lv.expr} AS {lv.name}" for lv in catalog.last_values], 4)}
FROM (
    SELECT k.cid, EPOCH_US(e.timestamp) AS ts, e.event_id, t.code, t.stage_idx,
        t.back_idx, t.is_activity,{"".join(f" {c}," for c in ordered_columns)}
        CASE WHEN t.is_nps = 1 THEN
            TRY_CAST(JSON_EXTRACT_STRING(e.properties, '$.{prop}') AS DOUBLE)
        END AS nps_score,
        CASE WHEN t.is_csat = 1 THEN
            TRY_CAST(JSON_EXTRACT_STRING(e.properties, '$.{prop}') AS DOUBLE)
        END AS csat_score
    FROM events AS e
    JOIN types AS t ON t.event_type = e.event_type
    JOIN customer_ids AS k ON k.customer_id = e.customer_id
    WHERE {before_last}
) AS x
""",
        "cid",
        "ts, event_id",
        ("ROW_NUMBER() OVER w AS seq", *type_packs_sql),
    ).replace("\n", "\n    ")
    return f"""
WITH customer_ids AS (
    SELECT customer_id, ROW_NUMBER() OVER (ORDER BY customer_id) AS cid
    FROM (SELECT DISTINCT customer_id FROM snapshots) AS x
),
snaps AS (
    SELECT s.customer_id, k.cid, s.snapshot_ts, EPOCH_US(s.snapshot_ts) AS t
    FROM snapshots AS s
    JOIN customer_ids AS k ON k.customer_id = s.customer_id
),
split_days AS (
    SELECT DISTINCT {_day_start("b")} AS day_start
    FROM (
        SELECT x.t - l.lag_days * {_DAY} AS b
        FROM (SELECT DISTINCT t FROM snaps) AS x
        CROSS JOIN (VALUES {", ".join(f"({w})" for w in [0, *lags])}) AS l(lag_days)
    ) AS bounds
    WHERE ((b % {_DAY}) + {_DAY}) % {_DAY} <> 0
),
types AS (
    SELECT *, ROW_NUMBER() OVER (ORDER BY event_type) AS code,
        {type_packs}
    FROM roles
),
rows_a AS (
    SELECT cid, {cell},
        {_list(a_cols)}
    FROM (
        SELECT k.cid, EPOCH_US(e.timestamp) AS ts, e.event_type, e.channel, e.value,
            {_list([*type_cols, *log_columns], 12)}
        FROM events AS e
        JOIN types AS t ON t.event_type = e.event_type
        JOIN customer_ids AS k ON k.customer_id = e.customer_id
        WHERE {before_last}
    ) AS x
),
session_rows AS (
    SELECT cid, {cell},
        {_list(a_session_cols)}
    FROM (
        SELECT k.cid, MIN(EPOCH_US(e.timestamp)) AS ts
        FROM events AS e
        JOIN roles AS t ON t.event_type = e.event_type
        JOIN customer_ids AS k ON k.customer_id = e.customer_id
        WHERE t.is_activity = 1 AND e.session_id IS NOT NULL AND {before_last}
        GROUP BY k.cid, e.session_id
    ) AS x
),
cells_a AS (
    SELECT cid, r,
        {_list(a_aggs)}
    FROM (SELECT * FROM rows_a UNION ALL SELECT * FROM session_rows) AS x
    GROUP BY cid, r
),
ordered AS (
    {ordered}
),
cells_b AS (
    SELECT cid, r,
        {_list(b_aggs)}
    FROM (
        SELECT cid, r, {_list(b_cols, 12)}
        FROM ordered
    ) AS x
    GROUP BY cid, r
),
cells AS (
    SELECT a.cid, a.r,
        {_list(cell_cols)}
    FROM cells_a AS a
    LEFT JOIN cells_b AS b ON b.cid = a.cid AND b.r = a.r
),
state AS (
    SELECT cid, r,
        {_list(running)}
    FROM cells
    WINDOW w AS (PARTITION BY cid ORDER BY r ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
),
now AS (
    SELECT s.customer_id, s.snapshot_ts, s.t, c.*
    FROM snaps AS s
    ASOF JOIN state AS c ON c.cid = s.cid AND s.t > c.r
),
lagged AS (
    SELECT s.cid, s.t, s.lag_days, {", ".join(f"c.{col}" for col in lagged)}
    FROM (
        SELECT cid, t, l.lag_days, t - l.lag_days * {_DAY} AS b
        FROM snaps CROSS JOIN (VALUES {", ".join(f"({w})" for w in lags)}) AS l(lag_days)
    ) AS s
    ASOF JOIN state AS c ON c.cid = s.cid AND s.b > c.r
),
lookback AS (
    SELECT cid, t,
        {_list(lookback)}
    FROM lagged
    GROUP BY cid, t
),
readings AS (
    SELECT
        {_list(readings)}
    FROM now AS a
    LEFT JOIN lookback AS b ON b.cid = a.cid AND b.t = a.t
),
profiled AS (
    SELECT r.*,
        {_list([*(f"n{i}.event_type AS last_type_{i}" for i in range(1, k + 1)), *profile])}
    FROM readings AS r{type_names}
    LEFT JOIN customers AS c ON c.customer_id = r.customer_id
)
SELECT
    customer_id,
    snapshot_ts AS {TIMESTAMP_FIELD},
    {features}
FROM profiled
WHERE c_events__total > 0
"""


def _sql_type(dtype: str) -> str:
    return {"int64": "BIGINT", "float64": "DOUBLE", "string": "VARCHAR"}[dtype]


_RANKING = (exp.Lead, exp.Lag, exp.RowNumber)
"""Window functions that take no frame in Spark (DuckDB ignores the frame they are given)."""


def to_spark_sql(query: str) -> str:
    """Transpiles the feature query to Spark SQL (the ``spark`` engine runs it).

    sqlglot translates the functions; what differs in meaning is rewritten first:

    - Spark has no ``ASOF JOIN``: each one (``s ASOF JOIN c ON <keys> AND <probe> > c.r``) is
      written as the equivalent range join on the cell's validity interval,
      ``c.r < <probe> AND <probe> <= COALESCE(c.next_r, <max>)``;
    - ``EPOCH_US`` is ``UNIX_MICROS``;
    - Spark's ``ROW_NUMBER`` and 32-bit columns shift within 32 bits (Java's ``int <<``), so
      the left side of every bit shift is cast to BIGINT, as DuckDB's would be;
    - ``LEAD``/``LAG``/``ROW_NUMBER`` over a named window that has a frame take the window's
      partition and order only (Spark refuses a frame there; DuckDB ignores it).
    """

    def rewrite(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Join) and (node.args.get("method") or "").upper() == "ASOF":
            on = node.args["on"]
            ineq = on.expression if isinstance(on, exp.And) else None
            if not isinstance(ineq, exp.GT) or not isinstance(ineq.expression, exp.Column):
                raise ValueError(f"unexpected ASOF JOIN condition: {on.sql('duckdb')}")
            probe, start = ineq.this, ineq.expression
            end = exp.column("next_r", table=start.table)
            valid = exp.and_(
                on.this,
                exp.LT(this=start.copy(), expression=probe.copy()),
                exp.LTE(
                    this=probe.copy(),
                    expression=exp.func("COALESCE", end, exp.Literal.number(_MAX_BIGINT)),
                ),
            )
            node = node.copy()
            node.set("method", None)
            node.set("on", valid)
            return node
        if isinstance(node, exp.Anonymous) and node.name.upper() == "EPOCH_US":
            return exp.Anonymous(this="UNIX_MICROS", expressions=node.expressions)
        if isinstance(node, exp.BitwiseLeftShift | exp.BitwiseRightShift):
            node = node.copy()
            node.set("this", exp.cast(node.this, exp.DataType.build("BIGINT")))
            return node
        if isinstance(node, exp.Select) and node.args.get("windows"):
            return _unframe_ranking(node)
        return node

    statements = sqlglot.parse(query, read="duckdb")
    return ";\n".join(
        s.transform(rewrite).sql(dialect="spark", pretty=True) for s in statements if s
    )


def _unframe_ranking(select: exp.Select) -> exp.Select:
    """Inlines the named window of each ranking function of ``select`` without its frame."""
    named = {w.this.name: w for w in select.args["windows"] if w.args.get("spec") is not None}
    if not named:
        return select
    select = select.copy()
    for window in list(select.find_all(exp.Window)):
        alias = window.args.get("alias")
        func = window.this.this if isinstance(window.this, exp.IgnoreNulls) else window.this
        if alias is None or alias.name not in named or not isinstance(func, _RANKING):
            continue
        spec = named[alias.name]
        window.set("alias", None)
        window.set("partition_by", [p.copy() for p in spec.args.get("partition_by") or []])
        if spec.args.get("order") is not None:
            window.set("order", spec.args["order"].copy())
    return select


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
    if len(types) > MAX_EVENT_TYPES:
        raise FeatureBuildError(
            f"the log has {len(types)} event types; the feature query handles {MAX_EVENT_TYPES}"
        )
    if len(journey_map.stages) > MAX_STAGES:
        raise FeatureBuildError(
            f"the journey map has {len(journey_map.stages)} stages; at most {MAX_STAGES} work"
        )
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


def _register_snapshots_from_span(con: duckdb.DuckDBPyConnection, cutoffs: list[datetime]) -> None:
    """:func:`register_snapshots_for_cutoffs` from the ``customer_span`` table (no new scan)."""
    con.register(
        "cutoffs_arrow", pa.table({"snapshot_ts": pa.array(cutoffs, pa.timestamp("us", tz="UTC"))})
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE snapshots AS SELECT f.customer_id, c.snapshot_ts"
        " FROM customer_span AS f JOIN cutoffs_arrow AS c ON f.first_ts < c.snapshot_ts"
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

    path: Path | str
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
        # one pass over the log: each customer's first and last activity and event count
        con.execute(
            "CREATE OR REPLACE TEMP TABLE customer_span AS SELECT e.customer_id,"
            " MIN(CASE WHEN r.is_activity = 1 THEN e.timestamp END) AS first_ts,"
            " MAX(CASE WHEN r.is_activity = 1 THEN e.timestamp END) AS last_ts, COUNT(*) AS n"
            " FROM events AS e JOIN roles AS r ON r.event_type = e.event_type"
            " GROUP BY e.customer_id"
        )
        first, last, most = con.execute(
            "SELECT MIN(first_ts), MAX(last_ts), MAX(n) FROM customer_span"
        ).fetchall()[0]
        if first is None or last is None:
            raise FeatureBuildError(f"the lake at {lake} has no customer activity events")
        if as_of is not None and as_of <= first:
            raise FeatureBuildError(
                f"--as-of {as_of.isoformat()} is before the first event ({first.isoformat()})"
            )
        snaps = catalog.settings.snapshots
        plan = plan_snapshots(first, last, snaps.cadence_days, snaps.warmup_days, as_of)
        _register_snapshots_from_span(con, [*plan.cutoffs, plan.as_of])
        tmp.mkdir(parents=True)
        # packed counts sized to the busiest customer: fewer, narrower columns to carry
        query = feature_query(catalog, journey_map.experience.score_property, count_bits_for(most))
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
