"""The ``journeyml events`` commands: output and exit codes (0 valid, 2 rejected)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from journeyml.events.cli import app
from journeyml.events.lake import load_manifest
from tests.events.conftest import GOOD_CSV, snapshot

WriteText = Callable[[str, str], Path]

NOW = ["--now", "2025-01-01T00:00:00Z"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "200"})


def test_validate_a_valid_log_exits_0(runner: CliRunner, write_text: WriteText) -> None:
    result = runner.invoke(app, ["validate", str(write_text("log.csv", GOOD_CSV)), *NOW])
    assert result.exit_code == 0, result.output
    assert "is a valid event log" in result.stdout
    assert "rows: 3 read, 3 valid" in result.stdout
    assert "customers: 2" in result.stdout
    assert "time range (UTC): 2024-01-01 10:00:00 .. 2024-02-01 00:00:00" in result.stdout
    assert "properties: plan" in result.stdout


def test_validate_shows_warnings(runner: CliRunner, write_text: WriteText) -> None:
    src = write_text("log.csv", GOOD_CSV + "c2,2024-02-01,signup,web,,silver\n")
    result = runner.invoke(app, ["validate", str(src), *NOW])
    assert result.exit_code == 0
    assert "duplicate_row" in result.stdout and "1 duplicate dropped" in result.stdout


def test_validate_an_invalid_log_exits_2_with_every_problem(
    runner: CliRunner, write_text: WriteText
) -> None:
    src = write_text(
        "log.csv", "customer_id,timestamp,event_type,value\n,2024-01-01,x,1\nc2,soon,x,abc\n"
    )
    result = runner.invoke(app, ["validate", str(src), *NOW])
    assert result.exit_code == 2
    err = result.stderr
    assert "3 errors; nothing was written" in err
    for rule in ("required", "unparseable", "non_numeric"):
        assert rule in err
    assert "log.csv line 3: 'soon'" in err


def test_ingest_with_a_column_map(runner: CliRunner, write_text: WriteText, tmp_path: Path) -> None:
    src = write_text("export.csv", "user_id,ts,event,amount\nu1,2024-03-01 12:00,buy,10.5\n")
    lake = tmp_path / "lake"
    args = ["ingest", str(src), "--out", str(lake), *NOW]
    maps = ["--map", "user_id=customer_id", "--map", "ts=timestamp", "--map", "event=event_type"]
    result = runner.invoke(app, [*args, *maps, "--map", "amount=value"])
    assert result.exit_code == 0, result.output
    assert "written: 1 event in 1 file" in result.stdout
    assert load_manifest(lake).batches[0].column_map["amount"] == "value"
    # Without the map the same file is rejected, naming the missing columns.
    again = runner.invoke(app, ["validate", str(src), *NOW])
    assert again.exit_code == 2
    assert "missing_column" in again.stderr


def test_ingest_twice_needs_a_mode(
    runner: CliRunner, write_text: WriteText, tmp_path: Path
) -> None:
    src, lake = str(write_text("log.csv", GOOD_CSV)), str(tmp_path / "lake")
    assert runner.invoke(app, ["ingest", src, "--out", lake, *NOW]).exit_code == 0
    before = snapshot(tmp_path / "lake")
    result = runner.invoke(app, ["ingest", src, "--out", lake, *NOW])
    assert result.exit_code == 2 and "--mode append" in result.stderr
    assert snapshot(tmp_path / "lake") == before
    appended = runner.invoke(app, ["ingest", src, "--out", lake, "--mode", "append", *NOW])
    assert appended.exit_code == 0 and "already_in_lake" in appended.stdout


def test_invalid_ingest_exits_2_and_writes_nothing(
    runner: CliRunner, write_text: WriteText, tmp_path: Path
) -> None:
    src = write_text("log.csv", "customer_id,timestamp,event_type\nc1,2999-01-01,x\n")
    result = runner.invoke(app, ["ingest", str(src), "--out", str(tmp_path / "lake"), *NOW])
    assert result.exit_code == 2 and "future" in result.stderr
    assert not (tmp_path / "lake").exists()


def test_ingest_with_customers(runner: CliRunner, write_text: WriteText, tmp_path: Path) -> None:
    src = write_text("log.csv", GOOD_CSV)
    customers = write_text("crm.csv", "id,joined,segment\nc1,2023-01-01,smb\nc2,2023-02-01,ent\n")
    result = runner.invoke(
        app,
        [
            "ingest",
            str(src),
            "--out",
            str(tmp_path / "lake"),
            "--customers",
            str(customers),
            "--customers-map",
            "id=customer_id",
            "--customers-map",
            "joined=signup_at",
            *NOW,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "customers table: 2 customers" in result.stdout
    assert (tmp_path / "lake" / "customers.parquet").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--map", "user_id"], "expected SRC=DST"),
        (["--map", "=customer_id"], "expected SRC=DST"),
        (["--map", "a=properties"], "built from the extra columns"),
        (["--map", "a=customer_id", "--map", "b=customer_id"], "both mapped to 'customer_id'"),
        (["--now", "tomorrow"], "not an ISO-8601 time"),
        (["--config", "/nonexistent/events.yaml"], "not found"),
    ],
)
def test_bad_options_exit_2(
    runner: CliRunner, write_text: WriteText, extra: list[str], message: str
) -> None:
    result = runner.invoke(app, ["validate", str(write_text("log.csv", GOOD_CSV)), *extra])
    assert result.exit_code == 2
    assert message in result.stderr


def test_config_file_column_map(runner: CliRunner, write_text: WriteText) -> None:
    config = write_text("events.yaml", "column_map:\n  user_id: customer_id\nmax_examples: 1\n")
    src = write_text("log.csv", "user_id,timestamp,event_type\nu1,2024-01-01,x\n")
    result = runner.invoke(app, ["validate", str(src), "--config", str(config), *NOW])
    assert result.exit_code == 0, result.output


def test_config_file_errors_name_the_key(runner: CliRunner, write_text: WriteText) -> None:
    config = write_text("events.yaml", "colum_map: {}\n")
    result = runner.invoke(
        app, ["validate", str(write_text("log.csv", GOOD_CSV)), "--config", str(config)]
    )
    assert result.exit_code == 2 and "colum_map" in result.stderr
