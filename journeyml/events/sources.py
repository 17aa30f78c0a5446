"""Finding, probing and staging input files in DuckDB.

An input is one CSV or Parquet file or a folder of them. Every file is read by DuckDB (never
loaded into Python): CSV files as text, so that a bad value becomes a reported problem rather
than a reader crash, Parquet files with their own types. Columns are renamed through the column
map and every file is staged into one DuckDB table with its file index and 1-based row number,
so each problem can name the file and row it comes from.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import duckdb

from journeyml.events.problems import Example, Problem, Severity, shorten

logger = logging.getLogger(__name__)

Format = Literal["csv", "parquet"]

#: File-name endings read as each format (compressed CSV is read by DuckDB transparently).
SUFFIXES: dict[Format, tuple[str, ...]] = {
    "csv": (".csv", ".csv.gz"),
    "parquet": (".parquet",),
}
#: Whitespace trimmed from both ends of every string value.
WHITESPACE = " \t\n\r"
_TEXT_TYPES = ("VARCHAR",)
_TIMESTAMP_TYPES = (
    "TIMESTAMP",
    "TIMESTAMP_S",
    "TIMESTAMP_MS",
    "TIMESTAMP_NS",
    "TIMESTAMP WITH TIME ZONE",
    "DATE",
)
_NUMERIC_TYPES = (
    "TINYINT",
    "SMALLINT",
    "INTEGER",
    "BIGINT",
    "HUGEINT",
    "UTINYINT",
    "USMALLINT",
    "UINTEGER",
    "UBIGINT",
    "UHUGEINT",
    "FLOAT",
    "DOUBLE",
)
_ISO_DATE_PREFIX = r"^[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}"
_INTEGER = r"^-?(0|[1-9][0-9]{0,17})$"
_NUMBER = r"^-?(0|[1-9][0-9]{0,14})(\.[0-9]+)?([eE][+-]?[0-9]{1,3})?$"


def sql_string(value: str | Path) -> str:
    """A SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def sql_name(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def clean_text(expr: str) -> str:
    """SQL: ``expr`` as text, trimmed, with empty strings as NULL."""
    return f"NULLIF(TRIM(CAST({expr} AS VARCHAR), {sql_string(WHITESPACE)}), '')"


def is_numeric_type(duck_type: str) -> bool:
    return duck_type in _NUMERIC_TYPES or duck_type.startswith("DECIMAL")


@dataclass(frozen=True)
class InputFile:
    """One input file and its columns as DuckDB reads them.

    Attributes:
        index: position in the input (file order, used to break ties when deduplicating).
        path: the file.
        display: how reports name it (relative to the input folder).
        columns: column name -> DuckDB type, in file order.
        size: bytes.
    """

    index: int
    path: Path
    display: str
    columns: dict[str, str]
    size: int


@dataclass
class ColumnPlan:
    """Which column of each file feeds each output column.

    Attributes:
        contract: contract column -> per-file source column name (None when absent).
        extras: final names of the extra columns, in order of first appearance.
        extra_sources: extra name -> per-file source column name (None when absent).
        files: the files that can be staged (no file-level problem).
    """

    contract: dict[str, dict[int, str]] = field(default_factory=dict)
    extras: list[str] = field(default_factory=list)
    extra_sources: dict[str, dict[int, str]] = field(default_factory=dict)
    files: list[InputFile] = field(default_factory=list)

    def present(self, column: str) -> bool:
        """Whether any staged file has the contract column."""
        return bool(self.contract.get(column))

    def extra_alias(self, name: str) -> str:
        return f"x{self.extras.index(name)}"


def discover(path: str | Path, table: str = "events") -> tuple[Format, list[Path]]:
    """The format and the files of an input (a file or a folder of files).

    Raises:
        EventLogError: the path does not exist, holds no CSV or Parquet file, mixes both, or is
            a file of another format.
    """
    from journeyml.events.problems import EventLogError

    path = Path(path)

    def fail(rule: str, message: str) -> EventLogError:
        problem = Problem(Severity.ERROR, "(file)", rule, message, table=table)
        return EventLogError(str(path), [problem])

    if path.is_file():
        fmt = format_of(path)
        if fmt is None:
            raise fail(
                "unsupported_format",
                f"{path.name} is neither CSV (.csv, .csv.gz) nor Parquet (.parquet)",
            )
        return fmt, [path]
    if not path.is_dir():
        raise fail("not_found", f"{path} does not exist")
    found: dict[Format, list[Path]] = {"csv": [], "parquet": []}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        # Hidden and underscore names are tool droppings (.DS_Store, Spark's _SUCCESS).
        if not p.is_file() or any(part.startswith((".", "_")) for part in rel.parts):
            continue
        fmt = format_of(p)
        if fmt is not None:
            found[fmt].append(p)
    if found["csv"] and found["parquet"]:
        raise fail(
            "mixed_formats",
            f"{path} holds both CSV ({len(found['csv'])}) and Parquet "
            f"({len(found['parquet'])}) files: put each format in its own folder",
        )
    for kind, paths in found.items():
        if paths:
            return kind, paths
    raise fail("no_files", f"{path} holds no .csv or .parquet file")


def format_of(path: Path) -> Format | None:
    name = path.name.lower()
    for fmt, suffixes in SUFFIXES.items():
        if name.endswith(suffixes):
            return fmt
    return None


def reader_sql(path: Path, fmt: Format, rejects: str | None = None) -> str:
    """The DuckDB table function that reads one file (CSV as text, header required)."""
    if fmt == "parquet":
        return f"read_parquet({sql_string(path)})"
    options = "all_varchar = true, header = true"
    if rejects:
        options += (
            f", store_rejects = true, rejects_table = {sql_string(rejects + '_errors')}, "
            f"rejects_scan = {sql_string(rejects + '_scans')}"
        )
    return f"read_csv({sql_string(path)}, {options})"


def probe(
    con: duckdb.DuckDBPyConnection,
    paths: Sequence[Path],
    fmt: Format,
    root: Path,
    table: str = "events",
) -> tuple[list[InputFile], list[Problem]]:
    """Reads the columns of every file; unreadable and empty files become problems."""
    files: list[InputFile] = []
    problems: list[Problem] = []
    for index, path in enumerate(paths):
        # The input path heads every report, so files are named relative to it.
        display = path.name if root == path else str(path.relative_to(root))
        size = path.stat().st_size
        if size == 0:
            problems.append(
                Problem(
                    Severity.ERROR,
                    "(file)",
                    "empty_file",
                    "the file is empty (0 bytes)",
                    examples=(Example(file=display),),
                    table=table,
                )
            )
            continue
        if fmt == "csv" and _looks_binary(path):
            problems.append(
                Problem(
                    Severity.ERROR,
                    "(file)",
                    "unreadable",
                    "not a text CSV file (it holds binary data)",
                    examples=(Example(file=display),),
                    table=table,
                )
            )
            continue
        try:
            # Same reader options as the scan: rejecting bad rows also makes the CSV sniffer
            # tolerate them (without, one short row can make it miss the delimiter).
            reader = reader_sql(path, fmt, f"__jml_probe_{table}_{index}_")
            described = con.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()
        except duckdb.Error as exc:
            problems.append(
                Problem(
                    Severity.ERROR,
                    "(file)",
                    "unreadable",
                    f"cannot be read as {fmt.upper()}: {first_line(exc)}",
                    examples=(Example(file=display),),
                    table=table,
                )
            )
            continue
        columns = {str(row[0]): str(row[1]) for row in described}
        files.append(InputFile(index, path, display, columns, size))
    return files, problems


def _looks_binary(path: Path) -> bool:
    if path.name.lower().endswith(".gz"):
        return False
    with path.open("rb") as fh:
        return b"\x00" in fh.read(8192)


def first_line(exc: BaseException) -> str:
    """The first line of an exception message, shortened (DuckDB appends SQL context)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return shorten(text, 200)


def _suggest(name: str, candidates: Sequence[str]) -> str:
    lowered = {c.lower().replace(" ", "_"): c for c in candidates}
    match = lowered.get(name.lower())
    if match is None:
        close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
        match = lowered[close[0]] if close else None
    return match or ""


def resolve_columns(
    files: Sequence[InputFile],
    column_map: Mapping[str, str],
    contract: Sequence[str],
    required: Sequence[str],
    table: str = "events",
    distinct_case: bool = False,
) -> tuple[ColumnPlan, list[Problem]]:
    """Applies the column map to every file and checks the renamed columns.

    Args:
        files: the probed input files.
        column_map: input name -> output name.
        contract: the contract columns of this table.
        required: the contract columns every file must have.
        table: ``events`` or ``customers`` (for the problems).
        distinct_case: when True, output names must also differ in more than letter case
            (they become Parquet columns; events' extra columns become JSON keys instead).

    Returns:
        The plan for the files without problems, and the problems.
    """
    problems: list[Problem] = []
    all_columns = [c for f in files for c in f.columns]
    for src, dst in column_map.items():
        # Without a readable file there is nothing to compare the map with.
        if files and src not in all_columns:
            hint = _suggest(src, list(dict.fromkeys(all_columns)))
            found = ", ".join(list(dict.fromkeys(all_columns))[:20])
            problems.append(
                Problem(
                    Severity.ERROR,
                    src,
                    "map_unknown_source",
                    f"the column map renames {src!r} to {dst!r} but the input has no column "
                    f"{src!r}"
                    + (f" (did you mean {hint!r}?)" if hint else "")
                    + f"; its columns: {found}",
                    table=table,
                )
            )

    missing: dict[str, list[InputFile]] = {}
    collisions: dict[str, tuple[list[str], list[InputFile]]] = {}
    plan = ColumnPlan(contract={c: {} for c in contract})
    for f in files:
        final: dict[str, list[str]] = {}
        for src in f.columns:
            dst = column_map.get(src, src)
            key = dst if not distinct_case else dst.lower()
            final.setdefault(key, []).append(src)
        bad = False
        for sources in final.values():
            if len(sources) > 1:
                name = column_map.get(sources[0], sources[0])
                collisions.setdefault(name, (sources, []))[1].append(f)
                bad = True
        names = {column_map.get(src, src) for src in f.columns}
        for col in required:
            if col not in names:
                missing.setdefault(col, []).append(f)
                bad = True
        if bad:
            continue
        plan.files.append(f)
        for src in f.columns:
            dst = column_map.get(src, src)
            if dst in plan.contract:
                plan.contract[dst][f.index] = src
            else:
                if dst not in plan.extra_sources:
                    plan.extras.append(dst)
                    plan.extra_sources[dst] = {}
                plan.extra_sources[dst][f.index] = src

    for name, (sources, bad_files) in collisions.items():
        shown = " and ".join(repr(s) for s in sources)
        problems.append(
            Problem(
                Severity.ERROR,
                name,
                "map_duplicate_target",
                f"columns {shown} would both be named {name!r}"
                + (" (names must differ in more than letter case)" if distinct_case else "")
                + ": map one of them to another name",
                count=len(bad_files),
                examples=tuple(Example(file=f.display) for f in bad_files[:5]),
                table=table,
            )
        )
    for col, bad_files in missing.items():
        columns = list(bad_files[0].columns)
        hint = _suggest(col, columns)
        fix = (
            f"did you mean {hint!r}? map it with --map {hint}={col}"
            if hint
            else f"map one of them with --map SRC={col}"
        )
        problems.append(
            Problem(
                Severity.ERROR,
                col,
                "missing_column",
                f"required column {col!r} is missing (columns found: "
                f"{', '.join(columns[:20]) or 'none'}); {fix}",
                count=len(bad_files),
                examples=tuple(Example(file=f.display) for f in bad_files[:5]),
                table=table,
            )
        )
    return plan, problems


def row_number_source(f: InputFile, fmt: Format, rejects: str) -> str:
    """A FROM clause yielding the file's columns plus ``__jml_row`` (1-based data row).

    Parquet has ``file_row_number``. CSV has no such column: the row number is a window over
    the scan, which DuckDB computes in file order because insertion order is preserved. No
    filter may sit between this and the materialised table (DuckDB would push it below the
    window and renumber), which is why staging writes a table straight from it.
    """
    if fmt == "parquet":
        return (
            "(SELECT *, file_row_number + 1 AS __jml_row FROM "
            f"read_parquet({sql_string(f.path)}, file_row_number = true))"
        )
    reader = reader_sql(f.path, fmt, f"{rejects}{f.index}")
    return f"(SELECT *, row_number() OVER () AS __jml_row FROM {reader})"


def timestamp_exprs(src: str | None, duck_type: str | None) -> tuple[str, str]:
    """SQL for a timestamp column: (parsed TIMESTAMPTZ or NULL, offending text or NULL).

    Text must start with an ISO-8601 date (which rules out DuckDB's 'epoch', 'infinity', ...);
    a timestamp without an offset is UTC (the session time zone). Typed timestamps without a
    time zone are UTC as well.
    """
    if src is None or duck_type is None:
        return "CAST(NULL AS TIMESTAMPTZ)", "CAST(NULL AS VARCHAR)"
    col = sql_name(src)
    if duck_type in _TIMESTAMP_TYPES:
        parsed = f"CASE WHEN isfinite({col}) THEN CAST({col} AS TIMESTAMPTZ) END"
        text = f"CASE WHEN NOT isfinite({col}) THEN CAST({col} AS VARCHAR) END"
        return parsed, text
    txt = clean_text(col)
    parsed = (
        f"CASE WHEN regexp_matches({txt}, '{_ISO_DATE_PREFIX}') "
        f"THEN TRY_CAST({txt} AS TIMESTAMPTZ) END"
    )
    return parsed, f"CASE WHEN {txt} IS NOT NULL AND ({parsed}) IS NULL THEN {txt} END"


def number_exprs(src: str | None, duck_type: str | None) -> tuple[str, str]:
    """SQL for a monetary column: (DOUBLE or NULL, offending text or NULL)."""
    if src is None or duck_type is None:
        return "CAST(NULL AS DOUBLE)", "CAST(NULL AS VARCHAR)"
    col = sql_name(src)
    if is_numeric_type(duck_type):
        return f"CAST({col} AS DOUBLE)", "CAST(NULL AS VARCHAR)"
    txt = clean_text(col)
    parsed = f"TRY_CAST({txt} AS DOUBLE)"
    return parsed, f"CASE WHEN {txt} IS NOT NULL AND {parsed} IS NULL THEN {txt} END"


def extra_expr(src: str | None, duck_type: str | None) -> str:
    """SQL for an extra column: strings trimmed (empty is NULL), other types as they are."""
    if src is None or duck_type is None:
        return "NULL"
    if duck_type in _TEXT_TYPES:
        return clean_text(sql_name(src))
    return sql_name(src)


def collect_rejects(
    con: duckdb.DuckDBPyConnection,
    files: Sequence[InputFile],
    prefix: str,
    max_examples: int,
    table: str = "events",
) -> list[Problem]:
    """Turns the CSV reader's rejected lines (bad encoding, wrong field count) into problems."""
    parts = []
    for f in files:
        name = sql_name(f"{prefix}{f.index}_errors")
        parts.append(f"SELECT DISTINCT {f.index} AS f, line, error_type, csv_line FROM {name}")
    if not parts:
        return []
    table_name = sql_name(f"{prefix}rejects")
    try:
        con.execute(f"CREATE TEMP TABLE {table_name} AS {' UNION ALL '.join(parts)}")
    except duckdb.CatalogException:
        return []
    by_index = {f.index: f for f in files}
    problems = []
    rules = {
        "INVALID ENCODING": ("encoding", "not valid UTF-8 text: save the file as UTF-8"),
        "MISSING COLUMNS": ("malformed_row", "the row has fewer fields than the header"),
        "TOO MANY COLUMNS": ("malformed_row", "the row has more fields than the header"),
    }
    counts = con.execute(
        f"SELECT error_type, count(*) FROM {table_name} GROUP BY 1 ORDER BY 1"
    ).fetchall()
    for error_type, count in counts:
        rule, message = rules.get(
            str(error_type), ("malformed_row", f"the CSV reader rejected the row ({error_type})")
        )
        rows = con.execute(
            f"SELECT f, line, csv_line FROM {table_name} WHERE error_type = ? "
            "ORDER BY f, line LIMIT ?",
            [error_type, max_examples],
        ).fetchall()
        examples = tuple(
            Example(file=by_index[int(f)].display, line=int(line), value=shorten(text or ""))
            for f, line, text in rows
        )
        problems.append(
            Problem(
                Severity.ERROR,
                "(row)",
                rule,
                message + " (row numbers reported for the same file skip rejected rows)",
                count=int(count),
                examples=examples,
                table=table,
            )
        )
    return problems


def infer_text_types(
    con: duckdb.DuckDBPyConnection, table: str, aliases: Sequence[str]
) -> dict[str, str]:
    """The JSON-friendly type of text columns: BIGINT, DOUBLE, BOOLEAN or VARCHAR.

    A column takes a type only when every non-empty value has it exactly (``007`` stays text,
    an integer too large for a double stays text), so no value is ever altered.
    """
    if not aliases:
        return {}
    checks = []
    for a in aliases:
        col = sql_name(a)
        checks += [
            f"count({col})",
            f"count(*) FILTER (WHERE regexp_full_match({col}, '{_INTEGER}'))",
            f"count(*) FILTER (WHERE regexp_full_match({col}, '{_NUMBER}'))",
            f"count(*) FILTER (WHERE lower({col}) IN ('true', 'false'))",
        ]
    row = con.execute(f"SELECT {', '.join(checks)} FROM {table}").fetchall()[0]
    types = {}
    for i, a in enumerate(aliases):
        total, ints, numbers, bools = (int(v) for v in row[4 * i : 4 * i + 4])
        if total == 0:
            types[a] = "VARCHAR"
        elif ints == total:
            types[a] = "BIGINT"
        elif numbers == total:
            types[a] = "DOUBLE"
        elif bools == total:
            types[a] = "BOOLEAN"
        else:
            types[a] = "VARCHAR"
    return types


class LineIndex:
    """Maps 1-based data rows of CSV files to line numbers, where that is exact.

    The line of row ``n`` is ``n + 1`` (the header is line 1) exactly when the file has one
    line per row: no blank lines, no quoted line breaks and no rejected rows. That holds when
    the file's line count equals its row count plus one, which is checked by counting newline
    bytes (streaming, only for files that have an offending row to show).
    """

    def __init__(self, files: Sequence[InputFile], fmt: Format, rows: Mapping[int, int]):
        self._files = {f.index: f for f in files}
        self._fmt = fmt
        self._rows = rows
        self._exact: dict[int, bool] = {}

    def line(self, file_index: int, row: int) -> int | None:
        if self._fmt != "csv":
            return None
        if file_index not in self._exact:
            f = self._files[file_index]
            rows = self._rows.get(file_index, 0)
            self._exact[file_index] = (
                not f.path.name.lower().endswith(".gz") and count_lines(f.path) == rows + 1
            )
        return row + 1 if self._exact[file_index] else None

    def example(self, file_index: int, row: int, value: object | None) -> Example:
        f = self._files[file_index]
        return Example(
            file=f.display,
            row=row,
            line=self.line(file_index, row),
            value=None if value is None else shorten(value),
        )


def count_lines(path: Path, chunk: int = 1 << 20) -> int:
    """Lines in a file: newline bytes, plus one when the last line has no newline."""
    lines = 0
    last = b"\n"
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (0 if last == b"\n" else 1)
