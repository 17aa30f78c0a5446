"""The time window of the online paths: the event contract's future tolerance, and the lake's
first event minus a margin (re-read when the lake's manifest changes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from journeyml.events import bounds as bounds_module
from journeyml.events.bounds import EPOCH, TimeBounds
from journeyml.events.config import EventsConfig
from journeyml.events.ingest import ingest_events
from journeyml.events.lake import load_manifest

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def write_log(path: Path, first: str, last: str) -> Path:
    path.write_text(
        f"customer_id,timestamp,event_type\nc1,{first},page_view\nc1,{last},purchase\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    lake = tmp_path / "lake"
    ingest_events(
        write_log(tmp_path / "a.csv", "2026-03-01T08:00:00Z", "2026-04-01"), lake, now=NOW
    )
    return lake


@pytest.mark.parametrize(
    ("offset", "refused"),
    [
        (timedelta(minutes=9, seconds=59), False),
        (timedelta(minutes=10), False),
        (timedelta(minutes=10, microseconds=1), True),
        (timedelta(days=365 * 73), True),
    ],
)
def test_the_future_tolerance_is_the_event_contracts(offset: timedelta, refused: bool) -> None:
    bounds = TimeBounds.from_config(EventsConfig(), None)
    problem = bounds.problem(NOW + offset, "context.at", NOW)
    assert (problem is not None) == refused
    if refused:
        assert problem is not None and problem.startswith("context.at: later than now + 10 ")
        assert "2026-06-01T12:10:00+00:00" in problem


def test_the_lake_start_minus_the_margin_is_the_earliest_time(lake: Path) -> None:
    bounds = TimeBounds.from_config(EventsConfig(past_margin_days=30), lake)
    first = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    assert bounds.lake_first_event() == first
    earliest = first - timedelta(days=30)
    assert bounds.problem(earliest, "events[0].timestamp", NOW) is None
    problem = bounds.problem(earliest - timedelta(microseconds=1), "events[0].timestamp", NOW)
    assert problem == (
        "events[0].timestamp: earlier than the lake's first event - 30 days "
        "(2026-01-30T08:00:00+00:00)"
    )


def test_without_a_lake_nothing_before_1970_is_accepted(tmp_path: Path) -> None:
    bounds = TimeBounds.from_config(EventsConfig(), tmp_path / "no-lake")
    assert bounds.lake_first_event() is None
    assert bounds.problem(EPOCH, "at", NOW) is None
    problem = bounds.problem(datetime(1, 1, 1, tzinfo=UTC), "at", NOW)
    assert problem is not None and "1970-01-01" in problem


def test_an_ingest_that_reaches_further_back_widens_the_window(
    lake: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bounds_module, "_RECHECK_SECONDS", 0.0)
    bounds = TimeBounds.from_config(EventsConfig(past_margin_days=0), lake)
    older = datetime(2025, 12, 24, 0, 0, tzinfo=UTC)
    assert bounds.problem(older, "at", NOW) is not None
    log = write_log(tmp_path / "b.csv", "2025-12-24T00:00:00Z", "2025-12-25T00:00:00Z")
    ingest_events(log, lake, mode="append", now=NOW)
    assert len(load_manifest(lake).batches) == 2
    assert bounds.lake_first_event() == older
    assert bounds.problem(older, "at", NOW) is None
