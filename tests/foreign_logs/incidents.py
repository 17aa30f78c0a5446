"""Known incidents injected into a generated session log: the ground truth of monitoring tests.

An incident is active on the days ``[start_day, end_day)`` of the log, for the sessions of one
segment (``{"platform": "android"}``; empty: every session). While active it changes sessions
in one of two ways:

- **redirects**: when a session is at ``from_action``, its next action becomes ``to_action``
  with probability ``prob`` (a step that fails back to an earlier one, an error surge, a loop);
- **volume**: a session starts only with probability ``volume_factor`` (an outage or a broken
  app release: sessions that never happen).

A customer is *affected* when at least one of her sessions was changed: a redirect fired in it,
or it was suppressed. ``write_incidents`` records each incident with its window (days and
dates), segment, kind, and the affected customers and sessions counted from the generated data,
in ``truth/incidents.json``. Generators call ``session_mask``, ``redirect`` and
``suppress_sessions`` with their own vocabularies; nothing here knows a log's event names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tests.foreign_logs.base import write_json

IncidentKind = Literal["step_failure", "error_surge", "loop", "volume_drop"]


@dataclass(frozen=True)
class Redirect:
    """At ``from_action`` the next action becomes ``to_action`` with probability ``prob``."""

    from_action: str
    to_action: str
    prob: float


@dataclass(frozen=True)
class Incident:
    """One injected incident (see the module docstring)."""

    name: str
    kind: IncidentKind
    start_day: int
    end_day: int
    segment: dict[str, str] = field(default_factory=dict)
    redirects: tuple[Redirect, ...] = ()
    volume_factor: float = 1.0
    description: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.start_day < self.end_day:
            raise ValueError(f"incident {self.name}: needs 0 <= start_day < end_day")
        if not 0.0 <= self.volume_factor <= 1.0:
            raise ValueError(f"incident {self.name}: volume_factor must be in [0, 1]")
        if not self.redirects and self.volume_factor == 1.0:
            raise ValueError(f"incident {self.name}: changes nothing")


def default_incidents(days: int) -> tuple[Incident, ...]:
    """Four incidents, one of each kind, spread over a log of ``days`` days without overlap.

    On a 182-day log: a checkout step failing back to the cart on android (days 45-73), a
    payment outage with errors and support tickets on every platform (91-112), a basket loop
    on ios (123-144) and a web outage that loses most web sessions (154-164).
    """
    if days < 90:
        raise ValueError("the default incidents need a log of at least 90 days")

    def window(at: float, length: int) -> tuple[int, int]:
        begin = round(at * days)
        return begin, min(days, begin + max(7, round(length * days / 182)))

    s1, e1 = window(0.25, 28)
    s2, e2 = window(0.50, 21)
    s3, e3 = window(0.68, 21)
    s4, e4 = window(0.85, 10)
    return (
        Incident(
            "checkout_loop_android", "step_failure", s1, e1, {"platform": "android"},
            (Redirect("shipping", "cart", 0.6),),
            description="android shipping step sends customers back to the cart",
        ),
        Incident(
            "payment_outage", "error_surge", s2, e2, {},
            (Redirect("payment", "payment_error", 0.5),
             Redirect("payment_error", "support_ticket", 0.6)),
            description="payment gateway errors on every platform, followed by support tickets",
        ),
        Incident(
            "basket_loop_ios", "loop", s3, e3, {"platform": "ios"},
            (Redirect("cart", "add_item", 0.55),),
            description="ios cart bounces back to adding the item again",
        ),
        Incident(
            "web_outage", "volume_drop", s4, e4, {"platform": "web"}, (), 0.3,
            description="web site mostly down: 70 % of web sessions never start",
        ),
    )  # fmt: skip


def session_mask(
    incident: Incident, day: np.ndarray, segments: dict[str, np.ndarray]
) -> np.ndarray:
    """Which sessions (by start day and segment values) the incident is active for.

    Raises:
        KeyError: the incident's segment names a column the generator does not have.
    """
    mask = (day >= incident.start_day) & (day < incident.end_day)
    for column, value in incident.segment.items():
        if column not in segments:
            raise KeyError(f"incident {incident.name}: no segment column {column!r}")
        mask &= segments[column] == value
    return mask


def suppress_sessions(
    incidents: tuple[Incident, ...],
    day: np.ndarray,
    segments: dict[str, np.ndarray],
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(kept, suppressed_by)``: which sessions happen, and per incident which it suppressed."""
    kept = np.ones(len(day), dtype=bool)
    suppressed: dict[str, np.ndarray] = {}
    for incident in incidents:
        if incident.volume_factor >= 1.0:
            continue
        lost = session_mask(incident, day, segments) & (
            rng.uniform(size=len(day)) >= incident.volume_factor
        )
        suppressed[incident.name] = lost & kept
        kept &= ~lost
    return kept, suppressed


def redirect(
    incidents: tuple[Incident, ...],
    active: dict[str, np.ndarray],
    current: np.ndarray,
    proposed: np.ndarray,
    index: dict[str, int],
    rng: np.random.Generator,
    fired: dict[str, np.ndarray],
) -> np.ndarray:
    """The next actions after the incidents' redirects (one step of every walking session).

    Args:
        incidents: the incidents.
        active: per incident, which of the walking sessions it is active for.
        current: each walking session's current action (index).
        proposed: each session's next action as the undisturbed process drew it.
        index: action name -> index in the generator's vocabulary.
        rng: the generator's random state.
        fired: per incident, a boolean per walking session, set where a redirect fired.
    """
    out = proposed.copy()
    for incident in incidents:
        for rule in incident.redirects:
            hit = (
                active[incident.name]
                & (current == index[rule.from_action])
                & (rng.uniform(size=len(current)) < rule.prob)
            )
            out[hit] = index[rule.to_action]
            fired[incident.name] |= hit
    return out


def incident_records(
    incidents: tuple[Incident, ...],
    start: date,
    affected_customers: dict[str, int],
    affected_sessions: dict[str, int],
) -> list[dict[str, Any]]:
    """The truth of each incident as plain JSON-ready records."""
    records = []
    for incident in incidents:
        record = asdict(incident)
        record["redirects"] = [asdict(r) for r in incident.redirects]
        record["start_date"] = str(start + timedelta(days=incident.start_day))
        record["end_date_exclusive"] = str(start + timedelta(days=incident.end_day))
        record["affected_customers"] = affected_customers.get(incident.name, 0)
        record["affected_sessions"] = affected_sessions.get(incident.name, 0)
        records.append(record)
    return records


def write_incidents(path: Path, records: list[dict[str, Any]]) -> Path:
    """Writes ``{"incidents": [...]}`` to ``path`` (days count from the log's first day)."""
    return write_json(path, {"day_origin": "the log's first day", "incidents": records})
