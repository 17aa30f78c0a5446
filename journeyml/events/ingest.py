"""Validating and ingesting event logs: the entry points of the event contract.

:func:`validate_events` checks a log (and optionally a customers table) and reports what it
holds; :func:`ingest_events` does the same checks and then writes the normalised lake. Both
raise one :class:`~journeyml.events.problems.EventLogError` listing every problem when the
input breaks the contract, and then nothing is written.

All the work happens in DuckDB, out of core: the log is never loaded into Python.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from journeyml.events.config import EventsConfig
from journeyml.events.lake import (
    BatchRecord,
    CustomersRecord,
    InputFileRecord,
    Manifest,
    Mode,
    RowCounts,
    TimeRange,
    check_output,
    commit,
    is_lake,
    lake_lock,
    link_lake,
    load_manifest,
    read_events_sql,
    remove_stale_work_dirs,
    work_dir,
    write_event_batch,
    write_manifest,
)
from journeyml.events.problems import EventLogError, Example, Problem, Severity
from journeyml.events.rules import CUSTOMER_RULES, EVENT_RULES, check_rules
from journeyml.events.schema import (
    CONTRACT_EVENT_COLUMNS,
    CUSTOMERS_FILE,
    NORMALISED_EVENT_COLUMNS,
    OPTIONAL_CUSTOMER_COLUMNS,
    REQUIRED_CUSTOMER_COLUMNS,
    REQUIRED_EVENT_COLUMNS,
)
from journeyml.events.sources import (
    ColumnPlan,
    Format,
    LineIndex,
    collect_rejects,
    discover,
    first_line,
    probe,
    resolve_columns,
    sql_string,
)
from journeyml.events.staging import (
    ISO_FORMAT,
    build_batch,
    build_customers,
    extra_values,
    fingerprint_sql,
    has_time_of_day,
    prepare_events,
    properties_sql,
    stage_customers,
    stage_events,
)

logger = logging.getLogger(__name__)

TOP_EVENT_TYPES = 10
CUSTOMER_CONTRACT = REQUIRED_CUSTOMER_COLUMNS + OPTIONAL_CUSTOMER_COLUMNS


@dataclass(frozen=True)
class EventsSummary:
    """What a valid event log holds (after dropping duplicates).

    Attributes:
        source: the input path.
        format: csv or parquet.
        inputs: each input file and its data rows.
        rows_read: data rows in the input.
        rows_valid: rows kept after dropping duplicate ids and duplicate rows.
        customers: distinct customers.
        first, last: the time range (UTC).
        event_types: distinct event types.
        top_event_types: the most frequent event types with their counts.
        property_keys: the extra columns, kept as properties.
        columns: contract columns present in the input.
        duplicate_rows: what was done with rows identical in every column and without an
            event_id: ``dropped`` or ``kept``.
        duplicate_rows_reason: why (the ``dedupe`` setting, and for ``auto`` what decided).
        duplicates_kept: such rows kept as events of their own (beyond the first copy).
    """

    source: str
    format: Format
    inputs: list[InputFileRecord]
    rows_read: int
    rows_valid: int
    customers: int
    first: datetime | None
    last: datetime | None
    event_types: int
    top_event_types: list[tuple[str, int]]
    property_keys: list[str]
    columns: list[str]
    duplicate_rows: str = "dropped"
    duplicate_rows_reason: str = ""
    duplicates_kept: int = 0


@dataclass(frozen=True)
class CustomersSummary:
    """What a valid customers table holds."""

    source: str
    rows: int
    columns: list[str]


@dataclass(frozen=True)
class ValidationReport:
    """The result of :func:`validate_events` on a valid input: its summary and warnings."""

    events: EventsSummary
    customers: CustomersSummary | None
    warnings: list[Problem]
    dropped: dict[str, int]
    seconds: float


@dataclass(frozen=True)
class IngestResult:
    """The result of :func:`ingest_events`: the batch written and the warnings."""

    lake: Path
    batch: BatchRecord
    manifest: Manifest
    events: EventsSummary
    customers: CustomersSummary | None
    warnings: list[Problem]
    seconds: float


@dataclass
class _Prepared:
    events: EventsSummary
    customers: CustomersSummary | None
    customers_record: CustomersRecord | None
    warnings: list[Problem] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)


def validate_events(
    source: str | Path,
    *,
    config: EventsConfig | None = None,
    customers: str | Path | None = None,
    now: datetime | None = None,
) -> ValidationReport:
    """Checks an event log (and a customers table) against the contract; writes nothing.

    Args:
        source: a CSV or Parquet file, or a folder of them.
        config: column maps and tolerances (defaults when None).
        customers: an optional customers table (file or folder).
        now: the current time for the future-timestamp check (reproducible runs).

    Raises:
        EventLogError: the input breaks the contract; lists every problem.
    """
    config = config or EventsConfig()
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="journeyml-validate-") as tmp,
        _connect(Path(tmp), config) as con,
    ):
        prep = _prepare(con, Path(source), config, _now(now), customers, None, None, write=False)
    return ValidationReport(
        prep.events, prep.customers, prep.warnings, prep.dropped, time.perf_counter() - started
    )


def ingest_events(
    source: str | Path,
    lake: str | Path,
    *,
    mode: Mode | None = None,
    config: EventsConfig | None = None,
    customers: str | Path | None = None,
    now: datetime | None = None,
) -> IngestResult:
    """Validates an event log and writes it into the normalised lake, atomically.

    Args:
        source: a CSV or Parquet file, or a folder of them.
        lake: the lake folder (created when absent).
        mode: ``replace`` (the default for a new lake) or ``append`` (adds a batch; ids already
            in the lake are dropped). An existing lake needs an explicit mode.
        config: column maps and tolerances (defaults when None).
        customers: an optional customers table; it replaces the lake's customers table (in
            replace mode the lake keeps no customers table unless one is given).
        now: the current time for the future-timestamp check (reproducible runs).

    Raises:
        EventLogError: the input breaks the contract; the lake is left as it was.
        LakeError: the output cannot be written as asked (e.g. a lake exists and no mode).
    """
    config = config or EventsConfig()
    started = time.perf_counter()
    lake = Path(lake).absolute()
    with lake_lock(lake):
        mode = check_output(lake, mode)
        remove_stale_work_dirs(lake)
        manifest = load_manifest(lake) if is_lake(lake) else Manifest()
        batch_id = new_batch_id()
        work = work_dir(lake, batch_id)
        work.mkdir()
        try:
            new_version = work / "lake"
            new_version.mkdir()
            with _connect(work, config) as con:
                existing_customers = None
                if mode == "append" and customers is None and (lake / CUSTOMERS_FILE).is_file():
                    existing_customers = lake / CUSTOMERS_FILE
                prep = _prepare(
                    con,
                    Path(source),
                    config,
                    _now(now),
                    customers,
                    read_events_sql(lake) if mode == "append" else None,
                    existing_customers,
                    write=True,
                )
                if mode == "append":
                    link_lake(lake, new_version, keep_customers=customers is None)
                clock = time.perf_counter()
                files = write_event_batch(con, "batch", new_version, batch_id)
                logger.debug("wrote %d files in %.2f s", len(files), _lap(clock))
                batch = _batch_record(con, prep, batch_id, mode, config, files)
                customers_record = manifest.customers if mode == "append" else None
                if prep.customers_record is not None:
                    con.execute(
                        f"COPY customers_out TO {sql_string(new_version / CUSTOMERS_FILE)} "
                        "(FORMAT parquet, COMPRESSION zstd)"
                    )
                    customers_record = prep.customers_record.model_copy(
                        update={"batch_id": batch_id}
                    )
            batches = [*manifest.batches, batch] if mode == "append" else [batch]
            new_manifest = Manifest(batches=batches, customers=customers_record)
            write_manifest(new_version, new_manifest)
            commit(new_version, lake)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - started
    logger.info(
        "ingested %s rows of %s into %s (batch %s, %d dropped) in %.1f s",
        f"{batch.rows.written:,}",
        source,
        lake,
        batch_id,
        sum(batch.rows.dropped.values()),
        seconds,
    )
    return IngestResult(
        lake, batch, new_manifest, prep.events, prep.customers, prep.warnings, seconds
    )


def new_batch_id() -> str:
    """A batch id that sorts by ingest time and never repeats: ``b20240501T134500-1a2b3c``."""
    return f"b{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


@contextmanager
def _connect(work: Path, config: EventsConfig) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB that spills to ``work/spill`` beyond the memory limit, in UTC."""
    spill = work / "spill"
    spill.mkdir(parents=True, exist_ok=True)
    settings: dict[str, str | bool | int | float | list[str]] = {
        "memory_limit": config.memory_limit,
        "temp_directory": str(spill),
        # Row numbers of CSV rows rely on scans keeping file order.
        "preserve_insertion_order": True,
    }
    if config.threads:
        settings["threads"] = config.threads
    con = duckdb.connect(":memory:", config=settings)
    try:
        con.execute("SET TimeZone = 'UTC'")
        yield con
    finally:
        con.close()


def _read_input(
    con: duckdb.DuckDBPyConnection,
    source: Path,
    column_map: dict[str, str],
    contract: tuple[str, ...],
    required: tuple[str, ...],
    table: str,
) -> tuple[Format, ColumnPlan, list[Problem]]:
    fmt, paths = discover(source, table)
    files, problems = probe(con, paths, fmt, source, table)
    plan, more = resolve_columns(
        files, column_map, contract, required, table, distinct_case=table == "customers"
    )
    return fmt, plan, problems + more


def _stage(
    con: duckdb.DuckDBPyConnection,
    fmt: Format,
    plan: ColumnPlan,
    staged: str,
    prefix: str,
    max_examples: int,
    table: str,
) -> tuple[dict[int, int], list[Problem]]:
    """Runs the staging statement; returns rows per file and the file-level problems."""
    if not plan.files:
        return {}, []
    try:
        if table == "events":
            stage_events(con, plan, fmt)
        else:
            stage_customers(con, plan, fmt)
    except duckdb.Error as exc:
        problem = Problem(
            Severity.ERROR,
            "(file)",
            "unreadable",
            f"reading the {fmt.upper()} data failed: {first_line(exc)}",
            table=table,
        )
        return {}, [problem]
    problems = collect_rejects(con, plan.files, prefix, max_examples, table) if fmt == "csv" else []
    rows = {
        int(f): int(n)
        for f, n in con.execute(f"SELECT __file, count(*) FROM {staged} GROUP BY 1").fetchall()
    }
    empty = [f for f in plan.files if rows.get(f.index, 0) == 0]
    if empty:
        problems.append(
            Problem(
                Severity.ERROR,
                "(file)",
                "no_rows",
                "the file has no data rows (a header only?)",
                count=len(empty),
                examples=tuple(Example(file=f.display) for f in empty[:max_examples]),
                table=table,
            )
        )
    return rows, problems


def _prepare(
    con: duckdb.DuckDBPyConnection,
    source: Path,
    config: EventsConfig,
    now: datetime,
    customers: str | Path | None,
    lake_events_sql: str | None,
    existing_customers: Path | None,
    *,
    write: bool,
) -> _Prepared:
    """Stages, checks and deduplicates; with ``write``, builds the ``batch`` table to write.

    Raises:
        EventLogError: any error in the events or the customers table.
    """
    cutoff = now + timedelta(minutes=config.future_tolerance_minutes)
    k = config.max_examples
    fmt, plan, problems = _read_input(
        con, source, config.column_map, CONTRACT_EVENT_COLUMNS, REQUIRED_EVENT_COLUMNS, "events"
    )
    clock = time.perf_counter()
    rows, more = _stage(con, fmt, plan, "staged", "__jml_events_", k, "events")
    problems += more
    logger.debug("staged %d rows of %d files in %.2f s", sum(rows.values()), len(rows), _lap(clock))
    present = [c for c in CONTRACT_EVENT_COLUMNS if plan.present(c)]
    lines = LineIndex(plan.files, fmt, rows)
    if rows:
        clock = time.perf_counter()
        problems += check_rules(con, "staged", EVENT_RULES, present, lines, cutoff, k)
        logger.debug("checked %d rules in %.2f s", len(EVENT_RULES), _lap(clock))

    customers_summary = None
    customers_record = None
    if customers is not None:
        customers_path = Path(customers)
        try:
            c_problems, customers_summary, customers_record = _check_customers(
                con, customers_path, config, cutoff
            )
        except EventLogError as exc:
            c_problems = exc.problems
        problems += c_problems

    if any(p.severity is Severity.ERROR for p in problems):
        raise EventLogError(_source_label(source, customers), problems)

    clock = time.perf_counter()
    values = extra_values(con, "staged", plan, fmt)
    keep, reason = _dedupe_rule(con, config)
    prepare_events(con, properties_sql(values), keep_identical_rows=keep)
    con.execute("DROP TABLE staged")
    dropped = _count_duplicates(con, lines, k, problems, reason)
    kept = _count_kept_copies(con, lines, k, problems, reason) if keep else 0
    if customers_record is not None:
        ref = "customers_out"
    elif existing_customers is not None:
        ref = f"read_parquet({sql_string(existing_customers)})"
    else:
        ref = None
    if ref is not None:
        problems += _unknown_customers(con, ref, lines, k)
    if write:
        build_batch(con, lake_events_sql)
        if lake_events_sql is not None:
            dropped["already_in_lake"] = 0
            in_lake = _count_in_lake(con, lake_events_sql, lines, k)
            if in_lake is not None:
                problems.append(in_lake)
                dropped["already_in_lake"] = in_lake.count

    logger.debug("normalised and deduplicated in %.2f s", _lap(clock))
    summary = _summarise(con, source, fmt, plan, rows, present, list(values))
    summary = replace(
        summary,
        duplicate_rows="kept" if keep else "dropped",
        duplicate_rows_reason=reason,
        duplicates_kept=kept,
    )
    return _Prepared(
        summary,
        customers_summary,
        customers_record,
        warnings=[p for p in problems if p.severity is Severity.WARNING],
        dropped=dropped,
    )


def _lap(start: float) -> float:
    return time.perf_counter() - start


def _source_label(source: Path, customers: str | Path | None) -> str:
    return str(source) if customers is None else f"{source} (customers: {customers})"


def _dedupe_rule(con: duckdb.DuckDBPyConnection, config: EventsConfig) -> tuple[bool, str]:
    """Whether rows identical in every column (no event_id) are kept, and why."""
    if config.dedupe == "keep":
        return True, "dedupe: keep"
    if config.dedupe == "drop":
        return False, "dedupe: drop"
    if has_time_of_day(con, "staged"):
        return False, "dedupe: auto, and the timestamps have times of day"
    return True, (
        "dedupe: auto, and no timestamp has a time of day (a date-only log: equal events of "
        "one customer on one day are real)"
    )


def _count_kept_copies(
    con: duckdb.DuckDBPyConnection,
    lines: LineIndex,
    k: int,
    problems: list[Problem],
    reason: str,
) -> int:
    n = int(
        con.execute("SELECT count(*) FROM prepared WHERE __generated AND __copy > 1").fetchall()[0][
            0
        ]
    )
    if n:
        shown = f"customer_id || ' ' || event_type || ' ' || strftime(timestamp, '{ISO_FORMAT}')"
        rows = con.execute(
            f"SELECT __file, __row, {shown} FROM prepared WHERE __generated AND __copy > 1 "
            "ORDER BY __file, __row LIMIT ?",
            [k],
        ).fetchall()
        problems.append(
            Problem(
                Severity.WARNING,
                "(row)",
                "duplicate_row_kept",
                f"rows identical in every column to an earlier row (no event_id): kept as "
                f"events of their own ({reason}; set dedupe: drop in the event contract to "
                "drop them)",
                count=n,
                examples=tuple(lines.example(int(f), int(r), v) for f, r, v in rows),
            )
        )
    return n


def _count_duplicates(
    con: duckdb.DuckDBPyConnection,
    lines: LineIndex,
    k: int,
    problems: list[Problem],
    reason: str = "",
) -> dict[str, int]:
    counts = dict.fromkeys(("duplicate_event_id", "duplicate_row"), 0)
    for generated, n in con.execute(
        "SELECT __generated, count(*) FROM prepared WHERE __rn > 1 GROUP BY 1"
    ).fetchall():
        key = "duplicate_row" if generated else "duplicate_event_id"
        counts[key] = int(n)
        shown = (
            "event_id"
            if not generated
            else f"customer_id || ' ' || event_type || ' ' || strftime(timestamp, '{ISO_FORMAT}')"
        )
        rows = con.execute(
            f"SELECT __file, __row, {shown} FROM prepared WHERE __rn > 1 AND __generated = ? "
            "ORDER BY __file, __row LIMIT ?",
            [generated, k],
        ).fetchall()
        examples = tuple(lines.example(int(f), int(r), v) for f, r, v in rows)
        if generated:
            problem = Problem(
                Severity.WARNING,
                "(row)",
                "duplicate_row",
                "exact duplicate rows (no event_id): dropped, the first occurrence is kept"
                + (f" ({reason})" if reason else ""),
                count=int(n),
                examples=examples,
            )
        else:
            problem = Problem(
                Severity.WARNING,
                "event_id",
                "duplicate",
                "duplicate event_id: dropped, the first occurrence by timestamp, then file "
                "order is kept",
                count=int(n),
                examples=examples,
            )
        problems.append(problem)
    return counts


def _unknown_customers(
    con: duckdb.DuckDBPyConnection, ref: str, lines: LineIndex, k: int
) -> list[Problem]:
    missing = (
        "FROM prepared p WHERE __rn = 1 AND NOT EXISTS "
        f"(SELECT 1 FROM {ref} AS c WHERE c.customer_id = p.customer_id)"
    )
    n, customers = con.execute(
        f"SELECT count(*), count(DISTINCT customer_id) {missing}"
    ).fetchall()[0]
    if not n:
        return []
    rows = con.execute(
        f"SELECT __file, __row, customer_id {missing} ORDER BY __file, __row LIMIT ?", [k]
    ).fetchall()
    return [
        Problem(
            Severity.WARNING,
            "customer_id",
            "unknown_customer",
            f"events of {int(customers):,} customers that are not in the customers table "
            "(kept; their attributes will be empty)",
            count=int(n),
            examples=tuple(lines.example(int(f), int(r), v) for f, r, v in rows),
        )
    ]


def _count_in_lake(
    con: duckdb.DuckDBPyConnection, lake_events_sql: str, lines: LineIndex, k: int
) -> Problem | None:
    kept = con.execute("SELECT count(*) FROM prepared WHERE __rn = 1").fetchall()[0][0]
    written = con.execute("SELECT count(*) FROM batch").fetchall()[0][0]
    n = int(kept) - int(written)
    if n == 0:
        return None
    rows = con.execute(
        "SELECT __file, __row, event_id FROM prepared p WHERE __rn = 1 AND EXISTS "
        f"(SELECT 1 FROM ({lake_events_sql}) AS lake WHERE lake.event_id = p.event_id) "
        "ORDER BY __file, __row LIMIT ?",
        [k],
    ).fetchall()
    return Problem(
        Severity.WARNING,
        "event_id",
        "already_in_lake",
        "events whose event_id is already in the lake: dropped (replayed input)",
        count=n,
        examples=tuple(lines.example(int(f), int(r), v) for f, r, v in rows),
    )


def _summarise(
    con: duckdb.DuckDBPyConnection,
    source: Path,
    fmt: Format,
    plan: ColumnPlan,
    rows: dict[int, int],
    present: list[str],
    property_keys: list[str],
) -> EventsSummary:
    n, customers, first, last, types = con.execute(
        "SELECT count(*), count(DISTINCT customer_id), min(timestamp), max(timestamp), "
        "count(DISTINCT event_type) FROM prepared WHERE __rn = 1"
    ).fetchall()[0]
    top = con.execute(
        "SELECT event_type, count(*) AS n FROM prepared WHERE __rn = 1 "
        "GROUP BY 1 ORDER BY n DESC, 1 LIMIT ?",
        [TOP_EVENT_TYPES],
    ).fetchall()
    inputs = [InputFileRecord(path=f.display, rows=rows.get(f.index, 0)) for f in plan.files]
    return EventsSummary(
        source=str(source),
        format=fmt,
        inputs=inputs,
        rows_read=sum(rows.values()),
        rows_valid=int(n),
        customers=int(customers),
        first=first,
        last=last,
        event_types=int(types),
        top_event_types=[(str(t), int(c)) for t, c in top],
        property_keys=property_keys,
        columns=present,
    )


def _check_customers(
    con: duckdb.DuckDBPyConnection, source: Path, config: EventsConfig, cutoff: datetime
) -> tuple[list[Problem], CustomersSummary | None, CustomersRecord | None]:
    k = config.max_examples
    fmt, plan, problems = _read_input(
        con,
        source,
        config.customers_column_map,
        CUSTOMER_CONTRACT,
        REQUIRED_CUSTOMER_COLUMNS,
        "customers",
    )
    rows, more = _stage(con, fmt, plan, "customers_staged", "__jml_customers_", k, "customers")
    problems += more
    if not rows:
        return problems, None, None
    present = [c for c in CUSTOMER_CONTRACT if plan.present(c)]
    lines = LineIndex(plan.files, fmt, rows)
    problems += check_rules(
        con, "customers_staged", CUSTOMER_RULES, present, lines, cutoff, k, "customers"
    )
    dup = (
        "FROM (SELECT __file, __row, customer_id, row_number() OVER "
        "(PARTITION BY customer_id ORDER BY __file, __row) AS rn FROM customers_staged "
        "WHERE customer_id IS NOT NULL) WHERE rn > 1"
    )
    n_dup = int(con.execute(f"SELECT count(*) {dup}").fetchall()[0][0])
    if n_dup:
        examples = con.execute(
            f"SELECT __file, __row, customer_id {dup} ORDER BY __file, __row LIMIT ?", [k]
        ).fetchall()
        problems.append(
            Problem(
                Severity.ERROR,
                "customer_id",
                "duplicate",
                "the customer appears more than once (one row per customer)",
                count=n_dup,
                examples=tuple(lines.example(int(f), int(r), v) for f, r, v in examples),
                table="customers",
            )
        )
    if any(p.severity is Severity.ERROR for p in problems):
        return problems, None, None
    values = extra_values(con, "customers_staged", plan, fmt)
    build_customers(con, values, plan.extras)
    con.execute("DROP TABLE customers_staged")
    n, digest = con.execute(fingerprint_sql("customers_out")).fetchall()[0]
    columns = [str(r[0]) for r in con.execute("DESCRIBE customers_out").fetchall()]
    inputs = [InputFileRecord(path=f.display, rows=rows.get(f.index, 0)) for f in plan.files]
    record = CustomersRecord(
        batch_id="",
        ingested_at=datetime.now(UTC),
        source=str(source),
        format=fmt,
        inputs=inputs,
        column_map=dict(config.customers_column_map),
        rows=int(n),
        columns=columns,
        fingerprint=_fingerprint(int(n), int(digest)),
    )
    return problems, CustomersSummary(str(source), int(n), columns), record


def _fingerprint(n: int, digest: int) -> str:
    return hashlib.sha256(f"{n}:{digest}".encode()).hexdigest()


def _batch_record(
    con: duckdb.DuckDBPyConnection,
    prep: _Prepared,
    batch_id: str,
    mode: Mode,
    config: EventsConfig,
    files: list[str],
) -> BatchRecord:
    n, customers, first, last, types = con.execute(
        "SELECT count(*), count(DISTINCT customer_id), min(timestamp), max(timestamp), "
        "count(DISTINCT event_type) FROM batch"
    ).fetchall()[0]
    _, digest = con.execute(fingerprint_sql("batch", NORMALISED_EVENT_COLUMNS)).fetchall()[0]
    ev = prep.events
    return BatchRecord(
        batch_id=batch_id,
        mode=mode,
        ingested_at=datetime.now(UTC),
        source=ev.source,
        format=ev.format,
        inputs=ev.inputs,
        column_map=dict(config.column_map),
        rows=RowCounts(
            read=ev.rows_read,
            written=int(n),
            dropped=dict(prep.dropped),
            duplicates_kept=ev.duplicates_kept,
        ),
        time_range=TimeRange(first=first, last=last) if first is not None else None,
        customers=int(customers),
        event_types=int(types),
        property_keys=ev.property_keys,
        files=files,
        fingerprint=_fingerprint(int(n), int(digest)),
    )


__all__ = [
    "CustomersSummary",
    "EventsSummary",
    "IngestResult",
    "ValidationReport",
    "ingest_events",
    "validate_events",
]
