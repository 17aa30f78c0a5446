"""Incremental journey state: each customer's feature readings kept up to date event by event.

The batch pipeline (:mod:`features.pipeline`) computes, for a snapshot time T, *readings* from
the events before T and evaluates the catalog's feature expressions over them. This module
keeps what those readings derive from, per customer, and updates it in O(new events):

- every counter of the catalog as running totals, one vector per event in time order, so a
  window [T - W days, T) is the difference of two totals found by bisection (the cells of the
  batch query at instant resolution);
- the start of every session (its first activity event), for the session counters;
- the first activity, the latest time of each :class:`~features.catalog.LastTime`, the latest
  value of each :class:`~features.catalog.LastValue`, the ring of the latest ``last_k``
  activity event types and of the latest raw events;
- the journey stage machine's running key (see :func:`features.pipeline.stage_machine`): the
  count of regression events and the running maximum of ``(regressions << 8) + stage``, and the
  latest stage change.

An event later than every event held is appended; an event older than the newest one held
(late, or out of order) sends the customer's events, kept in time order, through the same
steps again from the start; an ``event_id`` already held is ignored. The catalog's SQL (counter
expressions, conditions, latest values, features) is evaluated by :mod:`features.sql_eval`
from the same text the batch query runs, so the definitions are not copied; a property test
(tests/features/test_journey_state.py) checks that the features equal ``build_snapshots``'s
for random event sequences with late, duplicate and out-of-order events.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from features.catalog import US_PER_DAY, FeatureCatalog
from features.pipeline import ROLE_COLUMNS, _scope, event_roles
from features.sql_eval import (
    Compiled,
    compile_expression,
    json_extract_string,
    to_bigint,
    to_double,
    to_text,
    try_double,
)
from journeyml.config import JourneyMap

RECENT_EVENTS = 50
"""How many of a customer's latest raw events the state keeps (:attr:`CustomerJourney.recent`)."""

_CASTS = {"int64": to_bigint, "float64": to_double, "string": to_text}


def epoch_us(ts: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (naive ones are UTC)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    delta = ts - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True)
class _Counters:
    names: tuple[str, ...]
    exprs: tuple[Compiled, ...]
    scopes: tuple[str, ...]


class JourneyProgram:
    """The feature catalog compiled for one event or one customer at a time.

    Raises:
        features.sql_eval.UnsupportedExpressionError: the catalog uses SQL the evaluator lacks
            (the caller keeps the SQL recomputation).
    """

    def __init__(self, catalog: FeatureCatalog, journey_map: JourneyMap):
        self.catalog = catalog
        self.journey_map = journey_map
        self.last_k = catalog.settings.last_k
        prop = journey_map.experience.score_property
        self._score_path = tuple(prop.split("."))
        self.event_columns = tuple(
            (c.name, compile_expression(c.sql)) for c in catalog.event_columns
        )
        counts = [c for c in catalog.counters if not c.amount]
        amounts = [c for c in catalog.counters if c.amount]
        self.counts = _Counters(
            tuple(c.name for c in counts),
            tuple(compile_expression(c.expr) for c in counts),
            tuple(_scope(c) for c in counts),
        )
        self.amounts = _Counters(
            tuple(c.name for c in amounts),
            tuple(compile_expression(c.expr) for c in amounts),
            tuple(_scope(c) for c in amounts),
        )
        self.windows = {c.name: c.windows for c in catalog.counters}
        self.totals = {c.name for c in catalog.counters if c.total}
        self.lags = sorted({w for c in catalog.counters for w in c.windows})
        self.last_times = tuple(
            (lt.name, compile_expression(lt.condition)) for lt in catalog.last_times
        )
        self.last_values = tuple(
            (lv.name, compile_expression(lv.expr)) for lv in catalog.last_values
        )
        self.features = tuple(
            (f.name, compile_expression(f.sql), _CASTS[f.dtype]) for f in catalog.features
        )
        self.profile_attributes = tuple(catalog.settings.profile_attributes)
        self._session_counts = tuple(i for i, s in enumerate(self.counts.scopes) if s == "session")
        self._ordered_counts = tuple(i for i, s in enumerate(self.counts.scopes) if s == "ordered")
        self._ordered_amounts = tuple(
            i for i, s in enumerate(self.amounts.scopes) if s == "ordered"
        )
        self._roles: dict[str, dict[str, Any]] = {}
        self._type_counts: dict[str, list[int]] = {}

    def roles(self, event_type: str) -> dict[str, Any]:
        """The journey map's stage and roles of an event type (``event_roles``'s row)."""
        found = self._roles.get(event_type)
        if found is None:
            row = event_roles(self.journey_map, [event_type]).to_pylist()[0]
            found = {k: row[k] for k in ("stage_idx", "back_idx", *ROLE_COLUMNS)}
            self._roles[event_type] = found
        return found

    def enrich(self, event: Mapping[str, Any]) -> _Event:
        """One event with what its counters, conditions and latest values read."""
        row: dict[str, Any] = {
            "event_id": event["event_id"],
            "event_type": event["event_type"],
            "channel": event.get("channel"),
            "value": event.get("value"),
            "session_id": event.get("session_id"),
            "properties": event.get("properties"),
            "ts": event["ts"],
            **self.roles(event["event_type"]),
        }
        for name, expr in self.event_columns:
            row[name] = expr(row)
        props = row["properties"]
        row["nps_score"] = (
            try_double(json_extract_string(props, self._score_path)) if row["is_nps"] == 1 else None
        )
        row["csat_score"] = (
            try_double(json_extract_string(props, self._score_path))
            if row["is_csat"] == 1
            else None
        )
        per_type = self._type_counts.get(row["event_type"])
        if per_type is None:  # counters of the event type alone, evaluated once per type
            per_type = [
                (to_bigint(expr(row)) or 0) if scope == "type" else 0
                for expr, scope in zip(self.counts.exprs, self.counts.scopes, strict=True)
            ]
            self._type_counts[row["event_type"]] = per_type
        counts = [
            (to_bigint(expr(row)) or 0) if scope == "event" else known
            for expr, scope, known in zip(
                self.counts.exprs, self.counts.scopes, per_type, strict=True
            )
        ]
        amounts = [
            0.0 if scope == "ordered" else float(to_double(expr(row)) or 0.0)
            for expr, scope in zip(self.amounts.exprs, self.amounts.scopes, strict=True)
        ]
        return _Event(
            key=(row["ts"], row["event_id"]),
            row=row,
            counts=counts,
            amounts=amounts,
            times=tuple(bool(cond(row)) for _, cond in self.last_times),
            values=tuple(expr(row) for _, expr in self.last_values),
        )


@dataclass
class _Event:
    key: tuple[int, str]
    row: dict[str, Any]
    counts: list[int]
    amounts: list[float]
    times: tuple[bool, ...]
    values: tuple[Any, ...]


@dataclass
class CustomerJourney:
    """One customer's journey state (see the module docstring); ``profile`` holds the customers
    table's attributes."""

    program: JourneyProgram
    profile: dict[str, Any] = field(default_factory=dict)
    events: list[_Event] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    online_events: int = 0
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_EVENTS))
    recomputations: int = 0

    def __post_init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        p = self.program
        self._ts: list[int] = []
        self._count_totals: list[list[int]] = [[0] * len(p.counts.names)]
        self._amount_totals: list[list[float]] = [[0.0] * len(p.amounts.names)]
        self._sessions: dict[str, int] = {}
        self._session_starts: list[int] = []
        self.first_ts: int | None = None
        self.last_times: list[int | None] = [None] * len(p.last_times)
        self.last_values: list[Any] = [None] * len(p.last_values)
        self.latest_types: deque[str] = deque(maxlen=p.last_k)
        self._stage_key: int | None = None
        self._regressions = 0
        self.cur_stage: int | None = None
        self.prev_stage: int | None = None
        self.stage_since: int | None = None
        self.furthest_stage: int | None = None
        self.recent.clear()

    @property
    def latest_ts(self) -> int | None:
        return self._ts[-1] if self._ts else None

    def add(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Adds events (dicts of the normalised schema with ``ts`` in microseconds); returns
        how many were new. An event older than the newest held makes the whole customer's
        state be recomputed from its events."""
        fresh = []
        for e in events:
            if e["event_id"] in self.ids:
                continue
            self.ids.add(e["event_id"])
            fresh.append(self.program.enrich(e))
        if not fresh:
            return 0
        fresh.sort(key=lambda x: x.key)
        if self.events and fresh[0].key < self.events[-1].key:
            self.events.extend(fresh)
            self.events.sort(key=lambda x: x.key)
            self._reset()
            self.recomputations += 1
            for ev in self.events:
                self._step(ev)
        else:
            for ev in fresh:
                self.events.append(ev)
                self._step(ev)
        return len(fresh)

    def _step(self, ev: _Event) -> None:
        """Advances the state by one event, later than every event before it."""
        p = self.program
        row = ev.row
        ts = row["ts"]
        # the stage machine, as features.pipeline.stage_machine runs it over ordered events
        back, stage = row["back_idx"], row["stage_idx"]
        if back is not None:
            self._regressions += 1
        own = back if back is not None else stage
        key = None if own is None else (self._regressions << 8) + own
        prior = self._stage_key
        running = prior if key is None else (key if prior is None else max(prior, key))
        self._stage_key = running
        stage_prior = None if prior is None else prior & 255
        stage_now = None if running is None else running & 255
        counts = ev.counts
        amounts = ev.amounts
        if p._ordered_counts or p._ordered_amounts:
            ordered = {**row, "stage_prior": stage_prior, "stage_now": stage_now}
            counts = list(counts)
            amounts = list(amounts)
            for i in p._ordered_counts:
                counts[i] = to_bigint(p.counts.exprs[i](ordered)) or 0
            for i in p._ordered_amounts:
                amounts[i] = float(to_double(p.amounts.exprs[i](ordered)) or 0.0)
        if stage_now is not None:
            if stage_prior is None or stage_now != stage_prior:
                self.cur_stage, self.prev_stage, self.stage_since = stage_now, stage_prior, ts
            if self.furthest_stage is None or stage_now > self.furthest_stage:
                self.furthest_stage = stage_now
        self._ts.append(ts)
        last_c, last_a = self._count_totals[-1], self._amount_totals[-1]
        self._count_totals.append([a + b for a, b in zip(last_c, counts, strict=True)])
        self._amount_totals.append([a + b for a, b in zip(last_a, amounts, strict=True)])
        activity = row["is_activity"] == 1
        if activity:
            if self.first_ts is None:
                self.first_ts = ts
            self.latest_types.appendleft(row["event_type"])
            session = row["session_id"]
            if session is not None and session not in self._sessions:
                self._sessions[session] = ts
                self._session_starts.append(ts)  # in time order: events come in order
        for i, hit in enumerate(ev.times):
            if hit:
                self.last_times[i] = ts
        for i, value in enumerate(ev.values):
            if value is not None:
                self.last_values[i] = value
        self.recent.append(
            {k: row[k] for k in ("event_id", "event_type", "channel", "value", "session_id")}
            | {"timestamp": datetime.fromtimestamp(ts / 1e6, UTC), "properties": row["properties"]}
        )

    def readings(self, t_us: int) -> dict[str, Any] | None:
        """The readings at snapshot time ``t_us`` (after every event held), or None while the
        customer has no activity event (the batch pipeline writes no row then)."""
        p = self.program
        if self._ts and t_us <= self._ts[-1]:
            raise ValueError("journey state readings are taken after the latest event")
        now_c, now_a = self._count_totals[-1], self._amount_totals[-1]
        out: dict[str, Any] = {"snapshot_us": t_us}
        lagged: dict[int, tuple[list[int], list[float], int]] = {}
        for w in p.lags:
            b = t_us - w * US_PER_DAY
            i = bisect.bisect_left(self._ts, b)
            s = len(self._session_starts) - bisect.bisect_left(self._session_starts, b)
            lagged[w] = (self._count_totals[i], self._amount_totals[i], s)
        sessions_total = len(self._session_starts)
        session_idx = set(p._session_counts)
        for i, name in enumerate(p.counts.names):
            for w in p.windows[name]:
                then = lagged[w]
                out[f"{name}__w{w}"] = then[2] if i in session_idx else now_c[i] - then[0][i]
            if name in p.totals:
                out[f"{name}__total"] = sessions_total if i in session_idx else now_c[i]
        for i, name in enumerate(p.amounts.names):
            for w in p.windows[name]:
                out[f"{name}__w{w}"] = now_a[i] - lagged[w][1][i]
            if name in p.totals:
                out[f"{name}__total"] = now_a[i]
        if not out.get("c_events__total"):
            return None
        out["first_ts"] = self.first_ts
        for (name, _), value in zip(p.last_times, self.last_times, strict=True):
            out[name] = value
        for (name, _), value in zip(p.last_values, self.last_values, strict=True):
            out[name] = value
        types = list(self.latest_types)
        for i in range(p.last_k):
            out[f"last_type_{i + 1}"] = types[i] if i < len(types) else None
        out["cur_stage"] = self.cur_stage
        out["prev_stage"] = self.prev_stage
        out["stage_since_ts"] = self.stage_since
        out["furthest_stage"] = self.furthest_stage
        for attr in p.profile_attributes:
            out[f"profile_{attr}"] = self.profile.get(attr)
        return out

    def features(self, t_us: int) -> dict[str, Any] | None:
        """The catalog's features at ``t_us``; None without any activity event."""
        readings = self.readings(t_us)
        if readings is None:
            return None
        return {name: cast(expr(readings)) for name, expr, cast in self.program.features}


def rows_of(table: pa.Table) -> list[dict[str, Any]]:
    """Events of a normalised-schema table as dicts with ``ts`` in microseconds."""
    ts = table.column("timestamp").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_pylist()
    rows = table.drop_columns(["timestamp"]).to_pylist()
    for r, t in zip(rows, ts, strict=True):
        r["ts"] = t
    return rows
