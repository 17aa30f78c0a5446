"""Data tests of the contract: valid logs load, every kind of bad input gets its own error."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest

from journeyml.events.config import EventsConfig
from journeyml.events.ingest import validate_events
from journeyml.events.problems import EventLogError, Problem, Severity
from tests.events.conftest import GOOD_CSV, NOW

WriteText = Callable[[str, str], Path]
WriteParquet = Callable[[str, pa.Table], Path]


def find(problems: list[Problem], column: str, rule: str) -> Problem:
    matches = [p for p in problems if p.column == column and p.rule == rule]
    assert matches, f"no {column}/{rule} in {[(p.column, p.rule) for p in problems]}"
    return matches[0]


def rejected(path: Path, config: EventsConfig, **kwargs: object) -> EventLogError:
    with pytest.raises(EventLogError) as info:
        validate_events(path, config=config, now=NOW, **kwargs)  # type: ignore[arg-type]
    return info.value


# --- valid inputs -------------------------------------------------------------------------


def test_good_csv_file_is_summarised(write_text: WriteText, config: EventsConfig) -> None:
    report = validate_events(write_text("log.csv", GOOD_CSV), config=config, now=NOW)
    ev = report.events
    assert (ev.format, ev.rows_read, ev.rows_valid, ev.customers) == ("csv", 3, 3, 2)
    assert ev.first == datetime(2024, 1, 1, 10, 0, tzinfo=UTC)
    assert ev.last == datetime(2024, 2, 1, tzinfo=UTC)
    assert ev.event_types == 3
    assert ev.property_keys == ["plan"]
    assert report.warnings == []


def test_good_parquet_file_is_summarised(write_parquet: WriteParquet, config: EventsConfig) -> None:
    table = pa.table(
        {
            "customer_id": ["c1", "c2"],
            "timestamp": pa.array(
                [datetime(2024, 1, 1, 10), datetime(2024, 1, 2, 10)], pa.timestamp("ns")
            ),
            "event_type": ["page_view", "purchase"],
            "value": pa.array([None, Decimal("19.99")], pa.decimal128(10, 2)),
        }
    )
    report = validate_events(write_parquet("log.parquet", table), config=config, now=NOW)
    assert (report.events.format, report.events.rows_valid) == ("parquet", 2)
    assert report.events.first == datetime(2024, 1, 1, 10, tzinfo=UTC)


def test_csv_folder_is_unioned_by_column_name(
    write_text: WriteText, config: EventsConfig, tmp_path: Path
) -> None:
    write_text("logs/a.csv", "customer_id,timestamp,event_type\nc1,2024-01-01,x\n")
    write_text("logs/sub/b.csv", "event_type,customer_id,timestamp,plan\ny,c2,2024-01-02,gold\n")
    write_text("logs/.hidden.csv", "garbage\n")
    write_text("logs/notes.txt", "ignored\n")
    report = validate_events(tmp_path / "logs", config=config, now=NOW)
    assert [i.path for i in report.events.inputs] == ["a.csv", "sub/b.csv"]
    assert report.events.rows_valid == 2
    assert report.events.property_keys == ["plan"]


def test_parquet_folder_loads(
    write_parquet: WriteParquet, config: EventsConfig, tmp_path: Path
) -> None:
    for i in range(2):
        write_parquet(
            f"logs/part-{i}.parquet",
            pa.table(
                {
                    "customer_id": [f"c{i}"],
                    "timestamp": ["2024-01-01T00:00:00Z"],
                    "event_type": ["x"],
                }
            ),
        )
    report = validate_events(tmp_path / "logs", config=config, now=NOW)
    assert report.events.rows_valid == 2 and report.events.customers == 2


def test_column_map_loads_a_foreign_export(write_text: WriteText) -> None:
    path = write_text("export.csv", "user_id,ts,event,amount\nu1,2024-03-01 12:00,buy,10.5\n")
    config = EventsConfig(
        column_map={"user_id": "customer_id", "ts": "timestamp", "event": "event_type"}
    ).with_column_maps({"amount": "value"})
    report = validate_events(path, config=config, now=NOW)
    assert report.events.columns == ["customer_id", "timestamp", "event_type", "value"]
    assert report.events.property_keys == []


def test_map_to_a_non_contract_name_renames_a_property(
    write_text: WriteText, config: EventsConfig
) -> None:
    path = write_text("log.csv", "customer_id,timestamp,event_type,tier\nc1,2024-01-01,x,gold\n")
    report = validate_events(path, config=config.with_column_maps({"tier": "plan"}), now=NOW)
    assert report.events.property_keys == ["plan"]


# --- row rules: each bad value gets its own error, at the right line ----------------------

HEADER = "customer_id,timestamp,event_type,value\n"
GOOD_ROW = "c1,2024-01-01,x,1\n"


@pytest.mark.parametrize(
    ("bad_row", "column", "rule", "shown"),
    [
        (",2024-01-02,y,2", "customer_id", "required", None),
        ("   ,2024-01-02,y,2", "customer_id", "required", None),
        ("c" * 129 + ",2024-01-02,y,2", "customer_id", "too_long", "c" * 59 + "…"),
        ("c\x07x,2024-01-02,y,2", "customer_id", "control_characters", "c\\x07x"),
        ("c2,2024-01-02,,2", "event_type", "required", None),
        ("c2,2024-01-02,a\x01b,2", "event_type", "control_characters", "a\\x01b"),
        ("c2,,y,2", "timestamp", "required", None),
        ("c2,yesterday,y,2", "timestamp", "unparseable", "yesterday"),
        ("c2,01/02/2024,y,2", "timestamp", "unparseable", "01/02/2024"),
        ("c2,2024-02-30,y,2", "timestamp", "unparseable", "2024-02-30"),
        ("c2,infinity,y,2", "timestamp", "unparseable", "infinity"),
        ("c2,2025-01-01T00:11:00Z,y,2", "timestamp", "future", "2025-01-01T00:11:00.000000Z"),
        ("c2,2024-01-02,y,$5", "value", "non_numeric", "$5"),
        ('c2,2024-01-02,y,"1,234.50"', "value", "non_numeric", "1,234.50"),
        ("c2,2024-01-02,y,NaN", "value", "non_finite", "nan"),
        ("c2,2024-01-02,y,-inf", "value", "non_finite", "-inf"),
    ],
)
def test_bad_value_is_reported_with_its_line(
    write_text: WriteText,
    config: EventsConfig,
    bad_row: str,
    column: str,
    rule: str,
    shown: str | None,
) -> None:
    path = write_text("log.csv", HEADER + GOOD_ROW + GOOD_ROW + bad_row + "\n" + GOOD_ROW)
    error = rejected(path, config)
    problem = find(error.errors, column, rule)
    assert problem.severity is Severity.ERROR
    assert problem.count == 1
    (example,) = problem.examples
    assert (example.file, example.row, example.line) == ("log.csv", 3, 4)
    assert example.value == shown
    assert "nothing was written" in error.render()


@pytest.mark.parametrize("column", ["event_id", "session_id"])
def test_optional_ids_are_checked(write_text: WriteText, config: EventsConfig, column: str) -> None:
    path = write_text(
        "log.csv", f"customer_id,timestamp,event_type,{column}\nc1,2024-01-01,x,{'i' * 200}\n"
    )
    assert find(rejected(path, config).errors, column, "too_long").count == 1


def test_every_problem_is_in_one_report(write_text: WriteText, config: EventsConfig) -> None:
    path = write_text(
        "log.csv",
        HEADER
        + ",2024-01-01,x,1\n"
        + "c2,soon,x,1\n"
        + "c3,2024-01-01,,abc\n"
        + ",2024-01-01,x,1\n"
        + "c4,2024-01-01,x,-3\n",
    )
    error = rejected(path, config)
    found = {(p.column, p.rule) for p in error.errors}
    assert found == {
        ("customer_id", "required"),
        ("timestamp", "unparseable"),
        ("event_type", "required"),
        ("value", "non_numeric"),
    }
    assert find(error.errors, "customer_id", "required").count == 2
    assert [e.line for e in find(error.errors, "customer_id", "required").examples] == [2, 5]
    # Warnings found on the way are part of the same report.
    assert find(error.warnings, "value", "negative").count == 1


def test_examples_are_capped(write_text: WriteText) -> None:
    rows = "".join(f"c{i},never,x,1\n" for i in range(20))
    error = rejected(write_text("log.csv", HEADER + rows), EventsConfig(max_examples=3))
    problem = find(error.errors, "timestamp", "unparseable")
    assert problem.count == 20 and len(problem.examples) == 3


def test_future_tolerance_and_now_are_configurable(write_text: WriteText) -> None:
    path = write_text("log.csv", HEADER + "c1,2025-01-01T00:30:00Z,x,1\n")
    with pytest.raises(EventLogError):
        validate_events(path, config=EventsConfig(future_tolerance_minutes=10), now=NOW)
    validate_events(path, config=EventsConfig(future_tolerance_minutes=60), now=NOW)


def test_quoted_line_break_reports_the_row_not_a_wrong_line(
    write_text: WriteText, config: EventsConfig
) -> None:
    path = write_text("log.csv", HEADER + 'c1,2024-01-01,"multi\nline",1\n' + "c2,later,x,1\n")
    (example,) = find(rejected(path, config).errors, "timestamp", "unparseable").examples
    assert (example.row, example.line) == (2, None)
    assert example.location().endswith("row 2")


def test_offending_row_in_a_folder_names_its_file(
    write_text: WriteText, config: EventsConfig, tmp_path: Path
) -> None:
    write_text("logs/a.csv", HEADER + GOOD_ROW * 3)
    write_text("logs/b.csv", HEADER + GOOD_ROW + "c9,never,x,1\n")
    (example,) = find(
        rejected(tmp_path / "logs", config).errors, "timestamp", "unparseable"
    ).examples
    assert (example.file, example.row, example.line) == ("b.csv", 2, 3)


def test_parquet_row_numbers_come_from_the_file(
    write_parquet: WriteParquet, config: EventsConfig
) -> None:
    table = pa.table(
        {
            "customer_id": ["c1", "c2", "c3", "c4"],
            "timestamp": ["2024-01-01", "2024-01-02", "not a time", "2024-01-04"],
            "event_type": ["x"] * 4,
        }
    )
    path = write_parquet("log.parquet", table)
    (example,) = find(rejected(path, config).errors, "timestamp", "unparseable").examples
    assert (example.row, example.line, example.value) == (3, None, "not a time")


def test_row_numbers_hold_in_a_large_csv_read_in_parallel(
    tmp_path: Path, config: EventsConfig
) -> None:
    # Large enough for DuckDB to split the scan across threads.
    n, bad = 400_000, {123_457, 351_000}
    path = tmp_path / "big.csv"
    with path.open("w") as fh:
        fh.write("customer_id,timestamp,event_type,pad\n")
        for i in range(1, n + 1):
            ts = "oops" if i in bad else "2024-01-01"
            fh.write(f"c{i},{ts},page_view,{i:010d}\n")
    problem = find(rejected(path, config).errors, "timestamp", "unparseable")
    assert [(e.row, e.line) for e in problem.examples] == [(r, r + 1) for r in sorted(bad)]


# --- typed Parquet columns ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (pa.array([datetime(2024, 5, 1, 12)], pa.timestamp("us")), datetime(2024, 5, 1, 12)),
        (
            pa.array([datetime(2024, 5, 1, 12, tzinfo=UTC)], pa.timestamp("ms", tz="Europe/Paris")),
            datetime(2024, 5, 1, 12),
        ),
        (pa.array([date(2024, 5, 1)], pa.date32()), datetime(2024, 5, 1)),
        (pa.array(["2024-05-01T14:00:00+02:00"]), datetime(2024, 5, 1, 12)),
    ],
)
def test_parquet_timestamps_are_utc(
    write_parquet: WriteParquet, config: EventsConfig, array: pa.Array, expected: datetime
) -> None:
    table = pa.table({"customer_id": ["c1"], "timestamp": array, "event_type": ["x"]})
    report = validate_events(write_parquet("log.parquet", table), config=config, now=NOW)
    assert report.events.first == expected.replace(tzinfo=UTC)


def test_parquet_integer_timestamps_are_rejected(
    write_parquet: WriteParquet, config: EventsConfig
) -> None:
    table = pa.table({"customer_id": ["c1"], "timestamp": [1704067200], "event_type": ["x"]})
    problem = find(
        rejected(write_parquet("log.parquet", table), config).errors, "timestamp", "unparseable"
    )
    assert problem.examples[0].value == "1704067200"


# --- file-level problems ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "column", "rule"),
    [
        ("empty.csv", "", "(file)", "empty_file"),
        ("header.csv", HEADER, "(file)", "no_rows"),
        ("short.csv", HEADER + GOOD_ROW + "c2,2024-01-01\n", "(row)", "malformed_row"),
        ("long.csv", HEADER + GOOD_ROW + "c2,2024-01-01,x,1,extra\n", "(row)", "malformed_row"),
        ("noevent.csv", "customer_id,timestamp\nc1,2024-01-01\n", "event_type", "missing_column"),
        ("log.json", '{"customer_id": "c1"}', "(file)", "unsupported_format"),
        ("bad.parquet", "not parquet at all", "(file)", "unreadable"),
    ],
)
def test_file_problems(
    write_text: WriteText, config: EventsConfig, name: str, content: str, column: str, rule: str
) -> None:
    error = rejected(write_text(name, content), config)
    find(error.errors, column, rule)


def test_invalid_utf8_is_an_encoding_error(tmp_path: Path, config: EventsConfig) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes((HEADER + "caf\xe9,2024-01-01,x,1\n").encode("latin-1"))
    problem = find(rejected(path, config).errors, "(row)", "encoding")
    assert problem.examples[0].line == 2


def test_binary_file_is_unreadable(tmp_path: Path, config: EventsConfig) -> None:
    path = tmp_path / "blob.csv"
    path.write_bytes(bytes(range(256)) * 10)
    assert "binary" in find(rejected(path, config).errors, "(file)", "unreadable").message


def test_missing_column_suggests_a_map(write_text: WriteText, config: EventsConfig) -> None:
    path = write_text("log.csv", "Customer_ID,timestamp,event_type\nc1,2024-01-01,x\n")
    problem = find(rejected(path, config).errors, "customer_id", "missing_column")
    assert "--map Customer_ID=customer_id" in problem.message


def test_map_naming_an_absent_column(write_text: WriteText, config: EventsConfig) -> None:
    path = write_text("log.csv", GOOD_CSV)
    error = rejected(path, config.with_column_maps({"user": "customer_id"}))
    assert "no column 'user'" in find(error.errors, "user", "map_unknown_source").message


def test_two_columns_mapped_to_one_name(write_text: WriteText, config: EventsConfig) -> None:
    path = write_text("log.csv", "user_id,customer_id,timestamp,event_type\nu1,c1,2024-01-01,x\n")
    error = rejected(path, config.with_column_maps({"user_id": "customer_id"}))
    problem = find(error.errors, "customer_id", "map_duplicate_target")
    assert "'user_id' and 'customer_id'" in problem.message


@pytest.mark.parametrize(
    ("setup", "rule"),
    [
        ({"logs/a.csv": GOOD_CSV, "logs/b.parquet": "x"}, "mixed_formats"),
        ({"logs/readme.txt": "x"}, "no_files"),
        ({}, "not_found"),
    ],
)
def test_folder_problems(
    write_text: WriteText,
    config: EventsConfig,
    tmp_path: Path,
    setup: dict[str, str],
    rule: str,
) -> None:
    for name, content in setup.items():
        write_text(name, content)
    find(rejected(tmp_path / "logs", config).errors, "(file)", rule)


def test_other_files_are_still_checked_when_one_is_broken(
    write_text: WriteText, config: EventsConfig, tmp_path: Path
) -> None:
    write_text("logs/a.csv", "")
    write_text("logs/b.csv", HEADER + "c1,later,x,1\n")
    error = rejected(tmp_path / "logs", config)
    find(error.errors, "(file)", "empty_file")
    assert find(error.errors, "timestamp", "unparseable").examples[0].file == "b.csv"


# --- warnings -----------------------------------------------------------------------------


def test_duplicates_are_dropped_and_counted(write_text: WriteText, config: EventsConfig) -> None:
    # identical rows of a date-only log are kept under dedupe: auto (tests/events/test_dedupe.py)
    config = config.model_copy(update={"dedupe": "drop"})
    path = write_text(
        "log.csv",
        "customer_id,timestamp,event_type,event_id\n"
        "c1,2024-01-02,x,e1\n"
        "c1,2024-01-01,y,e1\n"
        "c2,2024-01-01,z,\n"
        "c2,2024-01-01,z,\n"
        "c2,2024-01-01,z,\n",
    )
    report = validate_events(path, config=config, now=NOW)
    assert report.events.rows_read == 5 and report.events.rows_valid == 2
    assert report.dropped == {"duplicate_event_id": 1, "duplicate_row": 2}
    dup = find(report.warnings, "event_id", "duplicate")
    # The earliest occurrence is kept, so the dropped one is the first line (later timestamp).
    assert [(e.line, e.value) for e in dup.examples] == [(2, "e1")]
    assert find(report.warnings, "(row)", "duplicate_row").count == 2
    assert find(report.warnings, "event_id", "empty").count == 3


def test_negative_values_are_a_warning(write_text: WriteText, config: EventsConfig) -> None:
    path = write_text("log.csv", HEADER + "c1,2024-01-01,refund,-10\n")
    report = validate_events(path, config=config, now=NOW)
    assert find(report.warnings, "value", "negative").count == 1


# --- the customers table ------------------------------------------------------------------


def test_customers_table_is_checked(write_text: WriteText, config: EventsConfig) -> None:
    events = write_text("log.csv", GOOD_CSV + "c9,2024-03-01,x,web,,\n")
    customers = write_text(
        "customers.csv", "customer_id,signup_at,segment\nc1,2023-12-01,smb\nc2,2023-12-02,ent\n"
    )
    report = validate_events(events, config=config, customers=customers, now=NOW)
    assert report.customers is not None and report.customers.rows == 2
    assert report.customers.columns == ["customer_id", "signup_at", "segment"]
    unknown = find(report.warnings, "customer_id", "unknown_customer")
    assert unknown.count == 1 and unknown.examples[0].value == "c9"


@pytest.mark.parametrize(
    ("text", "column_map", "column", "rule"),
    [
        ("customer_id,segment\nc1,a\nc1,b\n", {}, "customer_id", "duplicate"),
        ("customer_id,signup_at\nc1,last tuesday\n", {}, "signup_at", "unparseable"),
        ("id,segment\nc1,a\n", {}, "customer_id", "missing_column"),
        # Attributes become Parquet columns: names must differ in more than letter case.
        (
            "customer_id,Segment,tier\nc1,a,b\n",
            {"tier": "segment"},
            "Segment",
            "map_duplicate_target",
        ),
        ("customer_id,tier\nc1,a\n", {"level": "tier"}, "level", "map_unknown_source"),
    ],
)
def test_bad_customers_table(
    write_text: WriteText,
    config: EventsConfig,
    text: str,
    column_map: dict[str, str],
    column: str,
    rule: str,
) -> None:
    events = write_text("log.csv", GOOD_CSV)
    config = config.with_column_maps(customers=column_map)
    error = rejected(events, config, customers=write_text("customers.csv", text))
    problem = find(error.errors, column, rule)
    assert problem.table == "customers" and problem.where == f"customers.{column}"
