"""SQL that stages input files into DuckDB tables and normalises them.

Tables created on the connection (all out of core: DuckDB spills beyond its memory limit):

- ``staged`` / ``customers_staged``: one row per input row, with ``__file`` and ``__row``,
  trimmed strings, parsed timestamps and values (and the text of those that did not parse),
  and the extra columns as ``x0, x1, ...``.
- ``prepared``: normalised events with their ``event_id`` (given or derived from content) and
  ``__rn``, the occurrence number of the id (1 = kept).
- ``customers_out``: the normalised customers table.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import duckdb

from journeyml.events.sources import (
    ColumnPlan,
    Format,
    InputFile,
    clean_text,
    extra_expr,
    infer_text_types,
    number_exprs,
    row_number_source,
    sql_name,
    sql_string,
    timestamp_exprs,
)

ISO_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_ID_COLUMNS = ("customer_id", "event_type", "event_id", "session_id")
_FLOAT_TYPES = ("FLOAT", "DOUBLE")


def _source(plan: ColumnPlan, column: str, f: InputFile) -> tuple[str | None, str | None]:
    """The source column of a contract column in a file, and its DuckDB type."""
    src = plan.contract.get(column, {}).get(f.index)
    return src, (f.columns[src] if src else None)


def _extras(plan: ColumnPlan, f: InputFile) -> list[str]:
    out = []
    for name in plan.extras:
        src = plan.extra_sources[name].get(f.index)
        expr = extra_expr(src, f.columns[src] if src else None)
        out.append(f"{expr} AS {plan.extra_alias(name)}")
    return out


def stage_events(con: duckdb.DuckDBPyConnection, plan: ColumnPlan, fmt: Format) -> None:
    """Creates ``staged`` from every file of the plan (one read of each file)."""
    branches = []
    for f in plan.files:
        cols = [f"{f.index} AS __file", "__jml_row AS __row"]
        for name in _ID_COLUMNS:
            src, _ = _source(plan, name, f)
            expr = clean_text(sql_name(src)) if src else "CAST(NULL AS VARCHAR)"
            cols.append(f"{expr} AS {name}")
        src, _ = _source(plan, "channel", f)
        expr = f"lower({clean_text(sql_name(src))})" if src else "CAST(NULL AS VARCHAR)"
        cols.append(f"{expr} AS channel")
        parsed, text = timestamp_exprs(*_source(plan, "timestamp", f))
        cols += [f"{parsed} AS timestamp", f"{text} AS timestamp_text"]
        parsed, text = number_exprs(*_source(plan, "value", f))
        cols += [f"{parsed} AS value", f"{text} AS value_text"]
        cols += _extras(plan, f)
        branches.append(
            f"SELECT {', '.join(cols)} FROM {row_number_source(f, fmt, '__jml_events_')}"
        )
    con.execute(f"CREATE TABLE staged AS {' UNION ALL '.join(branches)}")


def stage_customers(con: duckdb.DuckDBPyConnection, plan: ColumnPlan, fmt: Format) -> None:
    """Creates ``customers_staged`` from every file of the customers plan."""
    branches = []
    for f in plan.files:
        src, _ = _source(plan, "customer_id", f)
        cols = [f"{f.index} AS __file", "__jml_row AS __row"]
        # Every staged file has customer_id (it is required), so src is never None here.
        cols.append(f"{clean_text(sql_name(src or 'customer_id'))} AS customer_id")
        parsed, text = timestamp_exprs(*_source(plan, "signup_at", f))
        cols += [f"{parsed} AS signup_at", f"{text} AS signup_at_text"]
        cols += _extras(plan, f)
        branches.append(
            f"SELECT {', '.join(cols)} FROM {row_number_source(f, fmt, '__jml_customers_')}"
        )
    con.execute(f"CREATE TABLE customers_staged AS {' UNION ALL '.join(branches)}")


def column_types(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    return {str(r[0]): str(r[1]) for r in con.execute(f"DESCRIBE {table}").fetchall()}


def extra_values(
    con: duckdb.DuckDBPyConnection, table: str, plan: ColumnPlan, fmt: Format
) -> dict[str, tuple[str, str]]:
    """Extra column name -> (SQL value with its JSON-friendly type, DuckDB type).

    CSV text is typed only where every value of the column has the type exactly (see
    :func:`~journeyml.events.sources.infer_text_types`); Parquet columns keep their types.
    """
    aliases = {name: plan.extra_alias(name) for name in plan.extras}
    if fmt == "csv":
        types = infer_text_types(con, table, list(aliases.values()))
    else:
        staged = column_types(con, table)
        types = {a: staged[a] for a in aliases.values()}
    values = {}
    for name, alias in aliases.items():
        t = types[alias]
        col = sql_name(alias)
        if fmt == "csv" and t != "VARCHAR":
            values[name] = (f"CAST({col} AS {t})", t)
        else:
            values[name] = (col, t)
    return values


def properties_sql(values: Mapping[str, tuple[str, str]]) -> str:
    """SQL for ``properties``: a JSON object of the non-null extra values, keys sorted, or NULL.

    Numbers, booleans and nested values keep their JSON types; a NaN or infinite float (not
    valid JSON) is kept as a string.
    """
    if not values:
        return "CAST(NULL AS VARCHAR)"
    parts = []
    for name in sorted(values):
        value, duck_type = values[name]
        as_json = f"to_json({value})"
        if duck_type in _FLOAT_TYPES:
            as_json = (
                f"CASE WHEN isfinite({value}) THEN to_json({value}) "
                f"ELSE to_json(CAST({value} AS VARCHAR)) END"
            )
        key = sql_string(json.dumps(name, ensure_ascii=False) + ":")
        parts.append(f"CASE WHEN {value} IS NOT NULL THEN {key} || {as_json} END")
    return f"NULLIF('{{' || concat_ws(',', {', '.join(parts)}) || '}}', '{{}}')"


def content_id_sql() -> str:
    """SQL for the id of an event without ``event_id``: a hash of its normalised content.

    The same content always gets the same id (re-ingesting a file is idempotent), and exact
    duplicate rows get the same id, so they are dropped like duplicate ids.
    """
    content = (
        f"to_json([customer_id, strftime(timestamp, '{ISO_FORMAT}'), event_type, channel, "
        "CAST(value AS VARCHAR), session_id, properties])"
    )
    return f"substr(sha256({content}), 1, 32)"


def prepare_events(
    con: duckdb.DuckDBPyConnection, properties: str, keep_identical_rows: bool = False
) -> None:
    """Creates ``prepared``: normalised events, ids filled in, occurrences numbered.

    The first occurrence of an id by timestamp, then file, then row is kept (``__rn = 1``).
    With ``keep_identical_rows``, rows without an id that are identical in every column are
    each kept: the n-th copy (n > 1, in file order) gets the content id of the row and ``n``,
    so ids stay the same when the same file is ingested again. ``__copy`` numbers the copies
    (1 for every row when they are not kept).
    """
    if keep_identical_rows:
        ids = (
            "CASE WHEN given_id IS NOT NULL OR __copy = 1 THEN coalesce(given_id, __hash) "
            "ELSE substr(sha256(__hash || '#' || CAST(__copy AS VARCHAR)), 1, 32) END"
        )
        copy = (
            "row_number() OVER (PARTITION BY given_id IS NULL, coalesce(given_id, __hash) "
            "ORDER BY __file, __row)"
        )
    else:
        ids, copy = "coalesce(given_id, __hash)", "1"
    con.execute(
        f"""
        CREATE TABLE prepared AS
        SELECT *, row_number() OVER (
            PARTITION BY event_id ORDER BY timestamp, __file, __row) AS __rn
        FROM (
            SELECT __file, __row, {ids} AS event_id,
                   given_id IS NULL AS __generated, __copy,
                   customer_id, timestamp, event_type, channel, value, session_id, properties
            FROM (
                SELECT *, {copy} AS __copy
                FROM (
                    SELECT *, CASE WHEN given_id IS NULL THEN {content_id_sql()} END AS __hash
                    FROM (
                        SELECT __file, __row, event_id AS given_id, customer_id, timestamp,
                               event_type, channel, value, session_id,
                               {properties} AS properties
                        FROM staged
                    )
                )
            )
        )
        """
    )


def has_time_of_day(con: duckdb.DuckDBPyConnection, table: str = "staged") -> bool:
    """Whether some timestamp of ``table`` is not at midnight UTC (False for a date-only log)."""
    row = con.execute(
        f"SELECT bool_or(timestamp <> date_trunc('day', timestamp)) FROM {table}"
    ).fetchall()[0]
    return bool(row[0])


def build_batch(con: duckdb.DuckDBPyConnection, lake_events_sql: str | None) -> None:
    """Creates ``batch``: the kept events not already in the lake, ordered for writing.

    The table's NOT NULL columns make the written Parquet schema match the contract exactly.
    """
    con.execute(
        """
        CREATE TABLE batch (
            event_id VARCHAR NOT NULL,
            customer_id VARCHAR NOT NULL,
            timestamp TIMESTAMPTZ NOT NULL,
            event_type VARCHAR NOT NULL,
            channel VARCHAR,
            value DOUBLE,
            session_id VARCHAR,
            properties VARCHAR,
            event_month VARCHAR NOT NULL
        )
        """
    )
    anti = ""
    if lake_events_sql is not None:
        anti = (
            f"AND NOT EXISTS (SELECT 1 FROM ({lake_events_sql}) AS lake "
            "WHERE lake.event_id = prepared.event_id)"
        )
    con.execute(
        f"""
        INSERT INTO batch
        SELECT event_id, customer_id, timestamp, event_type, channel, value, session_id,
               properties, strftime(timestamp, '%Y-%m') AS event_month
        FROM prepared
        WHERE __rn = 1 {anti}
        ORDER BY event_month, customer_id, timestamp
        """
    )


def build_customers(
    con: duckdb.DuckDBPyConnection, values: Mapping[str, tuple[str, str]], names: Sequence[str]
) -> None:
    """Creates ``customers_out``: customer_id, signup_at, then the attributes, by customer."""
    attrs = "".join(f", {values[n][0]} AS {sql_name(n)}" for n in names)
    con.execute(
        f"""
        CREATE TABLE customers_out AS
        SELECT CAST(customer_id AS VARCHAR) AS customer_id,
               CAST(signup_at AS TIMESTAMPTZ) AS signup_at{attrs}
        FROM customers_staged
        ORDER BY customer_id
        """
    )
    con.execute("ALTER TABLE customers_out ALTER COLUMN customer_id SET NOT NULL")


def fingerprint_sql(table: str, columns: Sequence[str] | None = None) -> str:
    """SQL for an order-independent content hash of a table: its row count and the sum of the
    rows' MD5s (upper 64 bits), which a Python-side SHA-256 folds into the fingerprint.

    With ``columns`` the row text is the columns joined by a unit separator (NULL as NUL), the
    fast path for the events; without, the row's JSON.
    """
    if columns:
        parts = ", ".join(
            f"coalesce(CAST({sql_name(c)} AS VARCHAR), chr(0))"
            if c != "timestamp"
            else "CAST(epoch_us(timestamp) AS VARCHAR)"
            for c in columns
        )
        row = f"concat_ws(chr(31), {parts})"
    else:
        row = "to_json(t)"
    return f"SELECT count(*), coalesce(sum(md5_number_upper({row})), 0) FROM {table} AS t"
