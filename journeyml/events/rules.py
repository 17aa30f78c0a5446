"""The row rules of the contract, as a declarative list of SQL predicates.

A rule is (column, name, description, predicate, severity). All rules of a table are counted in
one pass over the staged table (``count(*) FILTER (WHERE predicate)``); for every broken rule a
second, top-N query fetches the first offending rows by file and row number.

Predicates read the staged columns (see :mod:`journeyml.events.ingest`): trimmed strings
(empty is NULL), ``timestamp`` parsed or NULL with ``timestamp_text`` holding the text that
failed to parse, ``value`` parsed or NULL with ``value_text`` likewise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import duckdb

from journeyml.events.problems import Problem, Severity
from journeyml.events.schema import MAX_ID_LENGTH
from journeyml.events.sources import LineIndex, sql_name

_CONTROL = r"'[\x00-\x1f\x7f]'"
_ISO = "strftime({col}, '%Y-%m-%dT%H:%M:%S.%fZ')"


@dataclass(frozen=True)
class Rule:
    """One check on every row.

    Attributes:
        column: the contract column checked.
        name: short stable rule name.
        description: what is wrong, for the report.
        predicate: SQL, true for an offending row; ``{cutoff}`` is the latest valid timestamp.
        severity: error or warning.
        shown: SQL for the offending value shown in examples (default: the column).
        needs: the contract column that must exist in the input for the rule to apply.
    """

    column: str
    name: str
    description: str
    predicate: str
    severity: Severity = Severity.ERROR
    shown: str | None = None
    needs: str | None = None


def _identifier_rules(column: str, required: bool, what: str = "id") -> tuple[Rule, ...]:
    col = sql_name(column)
    rules = [
        Rule(
            column,
            "too_long",
            f"longer than {MAX_ID_LENGTH} characters (an {what}, not free text?)",
            f"length({col}) > {MAX_ID_LENGTH}",
            needs=None if required else column,
        ),
        Rule(
            column,
            "control_characters",
            "contains control characters (tab, newline, NUL, ...)",
            f"regexp_matches({col}, {_CONTROL})",
            needs=None if required else column,
        ),
    ]
    if required:
        rules.insert(0, Rule(column, "required", "is empty", f"{col} IS NULL"))
    return tuple(rules)


EVENT_RULES: tuple[Rule, ...] = (
    *_identifier_rules("customer_id", required=True),
    *_identifier_rules("event_type", required=True, what="event name"),
    *_identifier_rules("event_id", required=False),
    *_identifier_rules("session_id", required=False),
    Rule(
        "timestamp",
        "required",
        "is empty",
        "timestamp IS NULL AND timestamp_text IS NULL",
    ),
    Rule(
        "timestamp",
        "unparseable",
        "is not an ISO-8601 timestamp such as 2024-05-01T13:45:00Z or 2024-05-01 13:45:00+02:00 "
        "(without an offset it is read as UTC)",
        "timestamp_text IS NOT NULL",
        shown="timestamp_text",
    ),
    Rule(
        "timestamp",
        "future",
        "is in the future (later than {cutoff_text})",
        "timestamp > {cutoff}",
        shown=_ISO.format(col="timestamp"),
    ),
    Rule(
        "value",
        "non_numeric",
        "is not a number (write 1234.50: no currency sign or thousands separator)",
        "value_text IS NOT NULL",
        shown="value_text",
        needs="value",
    ),
    Rule(
        "value",
        "non_finite",
        "is not a finite number (NaN or infinity)",
        "NOT isfinite(value)",
        needs="value",
    ),
    Rule(
        "value",
        "negative",
        "is negative (kept: refunds and reversals are valid events)",
        "value < 0",
        severity=Severity.WARNING,
        needs="value",
    ),
    Rule(
        "event_id",
        "empty",
        "is empty: these events get an id derived from their content",
        "event_id IS NULL",
        severity=Severity.WARNING,
        needs="event_id",
        shown="customer_id",
    ),
)

CUSTOMER_RULES: tuple[Rule, ...] = (
    *_identifier_rules("customer_id", required=True),
    Rule(
        "signup_at",
        "unparseable",
        "is not an ISO-8601 timestamp such as 2024-05-01T13:45:00Z",
        "signup_at_text IS NOT NULL",
        shown="signup_at_text",
        needs="signup_at",
    ),
    Rule(
        "signup_at",
        "future",
        "is in the future (later than {cutoff_text})",
        "signup_at > {cutoff}",
        severity=Severity.WARNING,
        shown=_ISO.format(col="signup_at"),
        needs="signup_at",
    ),
)


def check_rules(
    con: duckdb.DuckDBPyConnection,
    table: str,
    rules: Sequence[Rule],
    present: Sequence[str],
    lines: LineIndex,
    cutoff: datetime,
    max_examples: int,
    table_name: str = "events",
) -> list[Problem]:
    """Counts every rule in one pass over ``table`` and fetches examples of the broken ones.

    Args:
        con: the DuckDB connection holding ``table`` (with ``__file`` and ``__row``).
        table: the staged table.
        rules: the rules to check.
        present: the contract columns the input has (rules needing others are skipped).
        lines: maps rows to line numbers for the examples.
        cutoff: the latest valid timestamp (now plus the tolerance).
        max_examples: offending rows shown per rule.
        table_name: ``events`` or ``customers`` (for the problems).
    """
    active = [r for r in rules if r.needs is None or r.needs in present]
    if not active:
        return []
    cutoff_sql = f"TIMESTAMPTZ '{cutoff.isoformat()}'"
    cutoff_text = cutoff.strftime("%Y-%m-%dT%H:%M:%SZ")
    predicates = [r.predicate.format(cutoff=cutoff_sql) for r in active]
    counts = con.execute(
        "SELECT " + ", ".join(f"count(*) FILTER (WHERE {p})" for p in predicates) + f" FROM {table}"
    ).fetchall()[0]
    problems = []
    for rule, predicate, count in zip(active, predicates, counts, strict=True):
        if not count:
            continue
        shown = rule.shown or sql_name(rule.column)
        rows = con.execute(
            f"SELECT __file, __row, CAST({shown} AS VARCHAR) FROM {table} WHERE {predicate} "
            "ORDER BY __file, __row LIMIT ?",
            [max_examples],
        ).fetchall()
        problems.append(
            Problem(
                rule.severity,
                rule.column,
                rule.name,
                rule.description.format(cutoff_text=cutoff_text),
                count=int(count),
                examples=tuple(lines.example(int(f), int(r), v) for f, r, v in rows),
                table=table_name,
            )
        )
    return problems
