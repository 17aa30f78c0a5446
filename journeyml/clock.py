"""The data's clock: what "now" means for a log.

A log that ends in the past (an export, a public data set, last year's demo) would be aged by
the wall clock: every customer "inactive for 10,390 days". So when the lake's last event is
more than :data:`STALE_AFTER` before the wall clock, "now" is the last event's time, and the
commands say so; a given ``--now`` always wins. Lists, reasons, monitoring and the real-time
path all take their "now" from :func:`data_clock`, which reads the lake's manifest only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

STALE_AFTER = timedelta(days=1)
"""A lake whose last event is older than this (by the wall clock) runs on its own clock."""


@dataclass(frozen=True)
class DataClock:
    """The "now" of a command, and where it comes from.

    Attributes:
        now: the time to decide, age features and count contacts at (UTC).
        source: ``given`` (``--now``), ``data`` (the lake's last event: the log ends in the
            past) or ``wall`` (the wall clock: the log is current, or there is no lake).
        last_event: the lake's last event time, when there is a lake with events.
        wall: the wall-clock time the clock was read at.
    """

    now: datetime
    source: Literal["given", "data", "wall"]
    last_event: datetime | None
    wall: datetime

    @property
    def on_data_time(self) -> bool:
        return self.source == "data"

    def describe(self) -> str:
        """One line for the user: which "now" is used and why."""
        if self.source == "given":
            return f"now: {self.now.isoformat()} (given)"
        if self.source == "data":
            assert self.last_event is not None
            behind = (self.wall - self.last_event).total_seconds() / 86400.0
            return (
                f"now: {self.now.isoformat()}, the log's last event ({behind:,.0f} days before "
                "the wall clock): ages are counted from the end of the log; --now overrides"
            )
        return f"now: {self.now.isoformat()} (wall clock)"

    def ticking(self, wall: Callable[[], datetime] | None = None) -> Callable[[], datetime]:
        """A clock for a long-running process (the service): on data time it starts at the
        log's end and advances with the wall clock, so decisions stay in order."""
        read_wall = wall or (lambda: datetime.now(UTC))
        if self.source == "wall":
            return read_wall
        offset = self.wall - self.now
        return lambda: read_wall() - offset


def last_event_time(lake: str | Path) -> datetime | None:
    """The latest event time the lake's manifest records, or None (no lake, no events)."""
    from journeyml.events.lake import is_lake, load_manifest
    from journeyml.events.problems import LakeError

    if not is_lake(lake):
        return None
    try:
        manifest = load_manifest(lake)
    except LakeError:
        return None
    ends = [b.time_range.last for b in manifest.batches if b.time_range is not None]
    if not ends:
        return None
    last = max(ends)
    return last if last.tzinfo else last.replace(tzinfo=UTC)


def data_clock(
    lake: str | Path | None, now: datetime | None = None, wall: datetime | None = None
) -> DataClock:
    """The "now" for a command on ``lake``.

    Args:
        lake: the event lake (its manifest is read); None for no lake.
        now: a time given by the user (``--now``): always used.
        wall: the wall-clock time (default: the current time; tests pass one).
    """
    wall = (wall or datetime.now(UTC)).astimezone(UTC)
    last = last_event_time(lake) if lake is not None else None
    if now is not None:
        given = now if now.tzinfo else now.replace(tzinfo=UTC)
        return DataClock(given.astimezone(UTC), "given", last, wall)
    if last is not None and wall - last > STALE_AFTER:
        clock = DataClock(last.astimezone(UTC), "data", last, wall)
        logger.info("%s", clock.describe())
        return clock
    return DataClock(wall, "wall", last, wall)
