"""Rows without an event_id that are identical in every column: kept in a date-only log (two
equal orders by one customer on one day are real), dropped when timestamps have times of day;
``dedupe`` in the event contract decides, and ingest says what it did."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from journeyml.config import ConfigError, validate_config
from journeyml.events.cli import app
from journeyml.events.config import EventsConfig
from journeyml.events.ingest import ingest_events, validate_events
from tests.events.conftest import NOW

WriteText = Callable[[str, str], Path]

DATE_ONLY = """\
customer_id,order_date,event_type,value
c1,2024-03-01,purchase,20
c1,2024-03-01,purchase,20
c1,2024-03-01,purchase,20
c1,2024-03-02,purchase,20
c2,2024-03-01,purchase,5
"""

TIMED = """\
customer_id,order_date,event_type,value
c1,2024-03-01T10:15:00Z,purchase,20
c1,2024-03-01T10:15:00Z,purchase,20
c2,2024-03-01T00:00:00Z,purchase,5
"""


def _config(config: EventsConfig, dedupe: str) -> EventsConfig:
    return config.model_copy(update={"dedupe": dedupe}).with_column_maps(
        {"order_date": "timestamp"}
    )


@pytest.mark.parametrize(
    ("log", "dedupe", "valid", "kept", "dropped", "what"),
    [
        # auto: a date-only log keeps its repeated rows, a timed log drops them
        (DATE_ONLY, "auto", 5, 2, 0, "kept"),
        (TIMED, "auto", 2, 0, 1, "dropped"),
        # the contract's key overrides what the timestamps say
        (DATE_ONLY, "drop", 3, 0, 2, "dropped"),
        (TIMED, "keep", 3, 1, 0, "kept"),
    ],
)
def test_identical_rows_follow_the_dedupe_rule(
    write_text: WriteText,
    config: EventsConfig,
    log: str,
    dedupe: str,
    valid: int,
    kept: int,
    dropped: int,
    what: str,
) -> None:
    report = validate_events(write_text("log.csv", log), config=_config(config, dedupe), now=NOW)
    assert report.events.rows_valid == valid
    assert report.events.duplicates_kept == kept
    assert report.dropped["duplicate_row"] == dropped
    assert report.events.duplicate_rows == what
    assert report.events.duplicate_rows_reason.startswith(f"dedupe: {dedupe}")
    rules = {w.rule: w for w in report.warnings}
    if kept:
        assert rules["duplicate_row_kept"].count == kept
        assert [e.line for e in rules["duplicate_row_kept"].examples] == [3, 4][:kept]
    if dropped:
        assert rules["duplicate_row"].count == dropped


def test_kept_copies_are_stored_with_stable_ids(
    write_text: WriteText, config: EventsConfig, tmp_path: Path
) -> None:
    src = write_text("log.csv", DATE_ONLY)
    cfg = _config(config, "auto")
    result = ingest_events(src, tmp_path / "lake", config=cfg, now=NOW)
    assert result.batch.rows.written == 5
    assert result.batch.rows.duplicates_kept == 2
    rows = pq.read_table(tmp_path / "lake" / "events").to_pylist()
    assert sum(r["customer_id"] == "c1" and r["value"] == 20.0 for r in rows) == 4
    assert len({r["event_id"] for r in rows}) == 5
    # the same file again: the same ids, so nothing is added twice
    again = ingest_events(src, tmp_path / "lake", config=cfg, mode="append", now=NOW)
    assert again.batch.rows.written == 0
    assert again.batch.rows.dropped["already_in_lake"] == 5
    assert again.manifest.rows == 5


def test_duplicate_event_ids_are_dropped_even_when_rows_are_kept(
    write_text: WriteText, config: EventsConfig
) -> None:
    log = "customer_id,order_date,event_type,event_id\nc1,2024-03-01,a,e1\nc1,2024-03-01,a,e1\n"
    report = validate_events(write_text("log.csv", log), config=_config(config, "keep"), now=NOW)
    assert report.events.rows_valid == 1
    assert report.dropped["duplicate_event_id"] == 1
    assert report.events.duplicates_kept == 0


def test_ingest_says_what_it_did(write_text: WriteText, tmp_path: Path) -> None:
    runner = CliRunner(env={"COLUMNS": "200"})
    src = write_text("log.csv", DATE_ONLY)
    args = ["ingest", str(src), "--out", str(tmp_path / "lake"), "--map", "order_date=timestamp"]
    result = runner.invoke(app, [*args, "--now", "2025-01-01T00:00:00Z"])
    assert result.exit_code == 0, result.output
    assert "identical rows: 2 repeated rows kept as events of their own" in result.stdout
    assert "no timestamp has a time of day" in result.stdout
    assert "duplicate_row_kept" in result.stdout
    timed = write_text("timed.csv", TIMED)
    args = ["validate", str(timed), "--map", "order_date=timestamp"]
    result = runner.invoke(app, [*args, "--now", "2025-01-01T00:00:00Z"])
    assert result.exit_code == 0, result.output
    assert "1 duplicate dropped" in result.stdout
    assert "identical rows: dropped (dedupe: auto, and the timestamps have times of day)" in (
        result.stdout
    )


def test_an_unknown_dedupe_rule_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="dedupe"):
        validate_config({"dedupe": "sometimes"}, EventsConfig, "events.yaml")


def test_a_date_only_purchase_log_keeps_its_repeated_orders(tmp_path: Path) -> None:
    from tests.foreign_logs import generate_purchase_log

    log = generate_purchase_log(tmp_path / "log", n_customers=300, seed=3)
    repeats = log.params["duplicate_rows"]
    assert repeats > 0  # equal orders by one customer on one day, real in this log
    config = EventsConfig(memory_limit="512MB", threads=1).with_column_maps(log.column_map)
    result = ingest_events(log.events_csv, tmp_path / "lake", config=config)
    assert result.batch.rows.written == log.n_events
    assert result.batch.rows.duplicates_kept == repeats
    assert result.events.duplicate_rows == "kept"
