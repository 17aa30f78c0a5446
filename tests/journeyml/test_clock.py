"""The data's clock: a lake whose last event is more than a day old runs on its own time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from journeyml.clock import STALE_AFTER, data_clock, last_event_time
from journeyml.events.ingest import ingest_events

END = datetime(2024, 3, 31, 18, 0, tzinfo=UTC)


def lake_ending(root: Path, end: datetime) -> Path:
    """A three-event log ingested into a lake (its manifest records the time range)."""
    source = root / "log.csv"
    pd.DataFrame(
        {
            "customer_id": ["a", "b", "a"],
            "timestamp": [(end - timedelta(days=d)).isoformat() for d in (40, 3, 0)],
            "event_type": ["visit", "visit", "order"],
        }
    ).to_csv(source, index=False)
    ingest_events(source, root / "lake", now=end + timedelta(days=1))
    return root / "lake"


def test_a_log_that_ends_in_the_past_is_aged_from_its_own_end(tmp_path: Path) -> None:
    lake = lake_ending(tmp_path, END)
    assert last_event_time(lake) == END
    clock = data_clock(lake)
    assert clock.source == "data" and clock.now == END
    assert "the log's last event" in clock.describe() and "--now overrides" in clock.describe()


def test_a_current_log_a_given_time_and_no_lake_use_what_they_say(tmp_path: Path) -> None:
    lake = lake_ending(tmp_path, END)
    wall = END + STALE_AFTER - timedelta(minutes=1)  # the log is current
    assert data_clock(lake, wall=wall).now == wall and data_clock(lake, wall=wall).source == "wall"
    given = datetime(2030, 1, 1, tzinfo=UTC)
    assert (
        data_clock(lake, now=given).now == given and data_clock(lake, now=given).source == "given"
    )
    naive = data_clock(lake, now=datetime(2030, 1, 1))  # naive is UTC, as everywhere
    assert naive.now == given
    nowhere = data_clock(tmp_path / "no_lake", wall=wall)
    assert nowhere.source == "wall" and nowhere.last_event is None


def test_the_service_clock_starts_at_the_end_and_ticks_with_the_wall(tmp_path: Path) -> None:
    lake = lake_ending(tmp_path, END)
    started = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    walls = iter([started + timedelta(seconds=5), started + timedelta(minutes=10)])
    tick = data_clock(lake, wall=started).ticking(lambda: next(walls))
    assert tick() == END + timedelta(seconds=5)
    assert tick() == END + timedelta(minutes=10)
