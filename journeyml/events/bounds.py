"""The time window an event or a decision time must fall in, for the online paths.

Batch ingest refuses timestamps later than now plus the event contract's future tolerance
(``future_tolerance_minutes`` in ``configs/events.yaml``). The online paths (events posted to
the service, the time of a next-best-action request, feedback) follow the same tolerance, and
also refuse anything before the lake's first event minus ``past_margin_days`` (before
1970-01-01 when there is no lake yet): a time outside the window is a caller's mistake, and
stored once it would move a customer's feature clock or contact history for good.

The lake's first event is read from its manifest (each batch records its time range), again
when the manifest changes, so an ingest that reaches further back widens the window without a
restart.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from journeyml.events.config import EventsConfig
from journeyml.events.lake import load_manifest, manifest_path
from journeyml.events.problems import LakeError

logger = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
"""The earliest time accepted when there is no lake (the stores count time from here)."""
_RECHECK_SECONDS = 5.0


class TimeBounds:
    """Accepts times within ``[lake's first event - margin, now + tolerance]``.

    Args:
        future_tolerance: how far after now a time may be (clock skew between systems).
        past_margin: how far before the lake's first event a time may be.
        lake: the event lake whose manifest gives its first event (None: no lake).
    """

    def __init__(
        self, future_tolerance: timedelta, past_margin: timedelta, lake: str | Path | None = None
    ) -> None:
        self.future_tolerance = future_tolerance
        self.past_margin = past_margin
        self.lake = Path(lake) if lake is not None else None
        self._lock = threading.Lock()
        self._checked_at = -float("inf")
        self._stamp: tuple[int, int] | None = None
        self._first: datetime | None = None

    @classmethod
    def from_config(cls, config: EventsConfig, lake: str | Path | None = None) -> TimeBounds:
        """The bounds of the event contract (``configs/events.yaml``)."""
        return cls(
            timedelta(minutes=config.future_tolerance_minutes),
            timedelta(days=config.past_margin_days),
            lake,
        )

    def lake_first_event(self) -> datetime | None:
        """The earliest event of the lake per its manifest (None: no lake, or an empty one)."""
        if self.lake is None:
            return None
        now = time.monotonic()
        if now - self._checked_at < _RECHECK_SECONDS:
            return self._first
        with self._lock:
            self._checked_at = now
            try:
                st = manifest_path(self.lake).stat()
            except OSError:
                self._stamp, self._first = None, None
                return None
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                try:
                    manifest = load_manifest(self.lake)
                except LakeError as exc:
                    logger.warning("time bounds: lake manifest unreadable (%s)", exc)
                    return self._first
                firsts = [b.time_range.first for b in manifest.batches if b.time_range]
                self._first = min(firsts).astimezone(UTC) if firsts else None
                self._stamp = stamp
            return self._first

    def window(self, now: datetime) -> tuple[datetime, datetime, str]:
        """(earliest, latest, what the earliest is) accepted at ``now``."""
        first = self.lake_first_event()
        if first is None:
            earliest, what = EPOCH, "1970-01-01 (no event lake yet)"
        else:
            earliest = max(first - self.past_margin, EPOCH)
            what = f"the lake's first event - {_days(self.past_margin)}"
        return earliest, now + self.future_tolerance, what

    def problem(self, t: datetime, field: str, now: datetime | None = None) -> str | None:
        """Why ``t`` is refused, naming ``field`` and the bound (never the value), or None."""
        now = now or datetime.now(UTC)
        earliest, latest, what = self.window(now)
        if t > latest:
            minutes = self.future_tolerance.total_seconds() / 60
            return (
                f"{field}: later than now + {minutes:g} minutes "
                f"({latest.isoformat(timespec='seconds')}): times in the future are refused"
            )
        if t < earliest:
            return f"{field}: earlier than {what} ({earliest.isoformat(timespec='seconds')})"
        return None


def _days(span: timedelta) -> str:
    days = span.total_seconds() / 86400
    return f"{days:g} day" + ("" if days == 1 else "s")
