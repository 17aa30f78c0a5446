"""Turning a day's outcome into event rows, and event rows into contract-shaped Arrow tables.

Rendering adds what no label depends on (timestamps inside the day, how many pages a visit
shows, support channels) with its own random generator, so it never disturbs the engine's
random numbers. Within a visit, events are seconds apart in funnel order; a second visit starts
at least 20 minutes after the first; complaints and support contacts caused by a failure follow
it; a cancellation is the customer's last event of the day. Decisions are sent 00:30–00:55 UTC
and customers act from 01:00 (``Season.hour_weights``), so no behaviour precedes the action
that influenced it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from journeyml.simulate.engine import (
    CUSTOMER_EVENT_TYPES,
    DAY_US,
    NONE,
    STORE,
    Array,
    Calendar,
    DayOutcome,
    Params,
    Population,
    seconds_to_us,
)

CHANNELS: tuple[str, ...] = ("web", "app", "email", "phone", "chat", "store")
WEB, APP, EMAIL, PHONE, CHAT, SHOP = range(len(CHANNELS))
VISIT_CHANNEL = np.array([WEB, APP, SHOP])  # engine's visit channel codes -> CHANNELS
STEP_SECONDS = 50.0
DECISION_SECOND, DECISION_SPREAD = 1800.0, 1500.0

EVENT_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("customer_id", pa.string()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("event_type", pa.string()),
        ("channel", pa.string()),
        ("value", pa.float64()),
        ("session_id", pa.string()),
        ("action_id", pa.string()),
        ("propensity", pa.float64()),
        ("decision_id", pa.string()),
        ("score", pa.int64()),
    ]
)


@dataclass(frozen=True)
class DayDecisions:
    """The decisions of one day: who, what (``NONE`` included), with which probability."""

    lanes: Array  # sorted positions of the customers decided for
    actions: Array
    propensities: Array
    numbers: Array  # global decision numbers (decision_id)
    time_us: Array


@dataclass
class EventRows:
    """Event rows as parallel arrays; -1 / NaN mean null."""

    customer: Array
    time_us: Array
    event_type: Array
    channel: Array
    value: Array
    session: Array
    score: Array
    action: Array
    propensity: Array
    decision: Array

    def __len__(self) -> int:
        return len(self.customer)

    @staticmethod
    def concat(parts: list[EventRows]) -> EventRows:
        return EventRows(
            **{
                f.name: np.concatenate([getattr(p, f.name) for p in parts])
                for f in fields(EventRows)
            }
        )

    def take(self, order: Array) -> EventRows:
        return EventRows(**{f.name: getattr(self, f.name)[order] for f in fields(EventRows)})


def _rows(
    customer: Array,
    seconds: Array,
    event_type: int | Array,
    channel: int | Array,
    value: Array | None = None,
    session: Array | None = None,
    score: Array | None = None,
) -> EventRows:
    n = len(customer)
    return EventRows(
        customer=customer.astype(np.int64),
        time_us=seconds,  # seconds into the day for now; converted in Renderer.render
        event_type=np.broadcast_to(np.asarray(event_type, dtype=np.int64), (n,)).copy(),
        channel=np.broadcast_to(np.asarray(channel, dtype=np.int64), (n,)).copy(),
        value=np.full(n, np.nan) if value is None else value.astype(np.float64),
        session=np.full(n, -1, dtype=np.int64) if session is None else session,
        score=np.full(n, -1, dtype=np.int64) if score is None else score.astype(np.int64),
        action=np.full(n, -1, dtype=np.int64),
        propensity=np.full(n, np.nan),
        decision=np.full(n, -1, dtype=np.int64),
    )


class Renderer:
    """Renders days of outcomes for one run; owns the session counter and render randomness."""

    def __init__(
        self, params: Params, pop: Population, calendar: Calendar, rng: np.random.Generator
    ):
        self.params, self.pop, self.calendar, self.rng = params, pop, calendar, rng
        self.type_names = list(CUSTOMER_EVENT_TYPES) + [
            f"action_{a}" for a in params.world.action_ids
        ]
        self.code = {t: i for i, t in enumerate(self.type_names)}
        self.action_type = len(CUSTOMER_EVENT_TYPES) + np.arange(len(params.world.action_ids))
        self.action_channel = np.array(
            [CHANNELS.index(a.channel) for a in params.world.actions], dtype=np.int64
        )
        weights = np.array(params.world.season.hour_weights, dtype=np.float64)
        self.hour_cdf = np.cumsum(weights / weights.sum())
        self.hour_cdf[-1] = 1.0
        self.sessions = 0

    def decision_times(self, day: int, n: int) -> Array:
        """Timestamps (µs) of ``n`` decisions on ``day``: 00:30 plus a spread of minutes."""
        seconds = DECISION_SECOND + self.rng.uniform(0, DECISION_SPREAD, n)
        return self.calendar.day_start_us(day) + seconds_to_us(seconds)

    def _daytime(self, n: int) -> Array:
        hour = np.searchsorted(self.hour_cdf, self.rng.random(n), side="right")
        return (np.minimum(hour, 23) + self.rng.random(n)) * 3600.0

    def render(self, day: int, out: DayOutcome, decisions: DayDecisions | None) -> EventRows:
        """All events of ``day``, in generation order (sorted later, per written chunk)."""
        rng, code = self.rng, self.code
        parts: list[EventRows] = []
        last_end = np.full(len(out.live), -1.0)  # end of each customer's last visit today

        if decisions is not None:
            sent = decisions.actions != NONE
            lanes = decisions.lanes[sent]
            a = decisions.actions[sent]
            rows = _rows(
                lanes,
                (decisions.time_us[sent] - self.calendar.day_start_us(day)) / 1e6,
                self.action_type[a],
                self.action_channel[a],
            )
            rows.action = a.astype(np.int64)
            rows.propensity = decisions.propensities[sent].astype(np.float64)
            rows.decision = decisions.numbers[sent].astype(np.int64)
            parts.append(rows)

        parts.extend(self._arrivals(out))
        starts = self._visit_starts(out)
        for j in range(out.visit.shape[0]):
            parts.extend(self._visit(out, j, starts[j], last_end))

        if decisions is not None:
            parts.extend(self._email_responses(out, decisions, day))
        parts.extend(self._service(out, last_end))
        for flag, etype in ((out.referral, "referral"), (out.review, "review_posted")):
            idx = np.flatnonzero(flag)
            channel = np.where(rng.random(len(idx)) < 0.5, APP, WEB)
            parts.append(_rows(idx, self._daytime(len(idx)), code[etype], channel))
        idx = np.flatnonzero(out.nps)
        parts.append(
            _rows(
                idx, self._daytime(len(idx)), code["nps_response"], EMAIL, score=out.nps_score[idx]
            )
        )
        rows = EventRows.concat(parts)
        # a cancellation is the customer's last event of the day
        idx = np.flatnonzero(out.cancelled)
        if len(idx):
            latest = np.full(len(out.live), -1.0)
            np.maximum.at(latest, rows.customer, rows.time_us)
            t = np.where(latest[idx] >= 0, latest[idx], self._daytime(len(idx)))
            t = t + rng.uniform(60, 900, len(idx))
            u = rng.random(len(idx))
            channel = np.where(u < 0.5, WEB, np.where(u < 0.7, APP, PHONE))
            rows = EventRows.concat([rows, _rows(idx, t, code["cancel_subscription"], channel)])
        offset = np.clip(seconds_to_us(rows.time_us), 0, DAY_US - 1)
        rows.time_us = self.calendar.day_start_us(day) + offset
        return rows

    def _arrivals(self, out: DayOutcome) -> list[EventRows]:
        """Newcomers: [ad_click], page_view, [product_view], signup at the signup time."""
        idx = np.flatnonzero(out.arriving)
        if len(idx) == 0:
            return []
        code = self.code
        signup = self.pop.signup_second[idx]
        session = self._new_sessions(len(idx))
        channel = np.where(out.arrival_app[idx], APP, WEB)
        ad, view = out.arrival_ad[idx], out.arrival_view[idx]
        steps = [(ad, "ad_click"), (np.ones(len(idx), bool), "page_view"), (view, "product_view")]
        before = ad.astype(np.int64) + 1 + view
        parts = []
        position = np.zeros(len(idx), dtype=np.int64)
        for flag, etype in steps:
            k = np.flatnonzero(flag)
            t = signup[k] - (before[k] - position[k]) * STEP_SECONDS
            parts.append(_rows(idx[k], t, code[etype], channel[k], session=session[k]))
            position[k] += 1
        parts.append(_rows(idx, signup, code["signup"], channel, session=session))
        return parts

    def _visit_starts(self, out: DayOutcome) -> Array:
        """Start second of each visit slot; later slots at least 20 minutes after earlier ones."""
        n_slots, n = out.visit.shape
        starts = np.zeros((n_slots, n))
        any_visit = np.flatnonzero(out.visit.any(axis=0))
        t = self._daytime(len(any_visit))
        starts[0, any_visit] = t
        for j in range(1, n_slots):
            gap = 1200.0
            room = np.maximum(84_600.0 - t - gap, 0.0)
            t = t + gap + self.rng.random(len(any_visit)) * room
            starts[j, any_visit] = t
        return starts

    def _new_sessions(self, n: int) -> Array:
        ids = np.arange(self.sessions, self.sessions + n, dtype=np.int64)
        self.sessions += n
        return ids

    def _visit(self, out: DayOutcome, j: int, start: Array, last_end: Array) -> list[EventRows]:
        """The events of visit slot ``j``, one session each, in funnel order."""
        rng, code = self.rng, self.code
        idx = np.flatnonzero(out.visit[j])
        if len(idx) == 0:
            return []
        online = out.channel[j, idx] != STORE
        extra_pages = rng.geometric(0.55, len(idx)) - 1
        extra_views = rng.geometric(0.5, len(idx)) - 1
        view = out.view[j, idx] & online
        steps = [
            ("ad_click", out.ad[j, idx]),
            ("login", out.login[j, idx]),
            ("page_view", online * (1 + extra_pages)),
            ("product_view", view * (1 + extra_views)),
            ("add_to_cart", out.cart[j, idx] & online),
            ("checkout_start", out.checkout[j, idx] & online),
            ("payment_failed", out.failed[j, idx]),
            ("checkout_start", out.retried[j, idx]),
            ("payment_failed", out.failed_again[j, idx]),
            ("purchase", out.purchase[j, idx]),
            ("offer_redeemed", out.redeemed[j, idx]),
        ]
        counts = np.stack([np.asarray(c, dtype=np.int64) for _, c in steps])
        total = counts.sum(axis=0)
        has = total > 0  # a store visit without a purchase leaves no trace
        session = np.full(len(idx), -1, dtype=np.int64)
        session[has] = self._new_sessions(int(has.sum()))
        channel = VISIT_CHANNEL[out.channel[j, idx]]
        first = np.cumsum(counts, axis=0) - counts
        parts = []
        for i, (etype, _) in enumerate(steps):
            c = counts[i]
            sel = np.flatnonzero(c)
            if len(sel) == 0:
                continue
            rep = np.repeat(sel, c[sel])
            within = np.arange(len(rep)) - np.repeat(np.cumsum(c[sel]) - c[sel], c[sel])
            position = first[i, rep] + within
            t = start[idx[rep]] + position * STEP_SECONDS + rng.random(len(rep)) * 40.0
            value = out.value[j, idx[rep]] if etype == "purchase" else None
            parts.append(
                _rows(idx[rep], t, code[etype], channel[rep], value=value, session=session[rep])
            )
        end = start[idx] + total * STEP_SECONDS
        last_end[idx[has]] = np.maximum(last_end[idx[has]], end[has])
        return parts

    def _email_responses(
        self, out: DayOutcome, decisions: DayDecisions, day: int
    ) -> list[EventRows]:
        idx = np.flatnonzero(out.email_open)
        if len(idx) == 0:
            return []
        sent = decisions.time_us[np.searchsorted(decisions.lanes, idx)]
        sent_second = (sent - self.calendar.day_start_us(day)) / 1e6
        opened = sent_second + np.minimum(self.rng.exponential(3 * 3600.0, len(idx)), 20 * 3600.0)
        clicked = out.email_click[idx]
        t_click = opened[clicked] + self.rng.uniform(20, 600, int(clicked.sum()))
        return [
            _rows(idx, opened, self.code["email_open"], EMAIL),
            _rows(idx[clicked], t_click, self.code["email_click"], EMAIL),
        ]

    def _service(self, out: DayOutcome, last_end: Array) -> list[EventRows]:
        """Support contacts and complaints (after today's failed payment if any), CSAT after
        support."""
        rng, code = self.rng, self.code
        failed = np.asarray((out.failed | out.failed_again).any(axis=0))

        def times(idx: Array) -> Array:
            after = failed[idx] & (last_end[idx] >= 0)
            later = last_end[idx] + rng.uniform(120, 1800, len(idx))
            return np.where(after, later, self._daytime(len(idx)))

        def channels(options: tuple[int, ...], probs: tuple[float, ...], n: int) -> Array:
            return np.array(options)[rng.choice(len(options), size=n, p=probs)]

        support = np.flatnonzero(out.support)
        support_time = times(support)
        complaint = np.flatnonzero(out.complaint)
        # CSAT answers follow the support contact they rate
        rated = np.flatnonzero(out.csat[support])
        return [
            _rows(
                support,
                support_time,
                code["support_contact"],
                channels((PHONE, CHAT, EMAIL), (0.45, 0.4, 0.15), len(support)),
            ),
            _rows(
                complaint,
                times(complaint),
                code["complaint"],
                channels((PHONE, CHAT, EMAIL, SHOP), (0.4, 0.3, 0.2, 0.1), len(complaint)),
            ),
            _rows(
                support[rated],
                support_time[rated] + rng.uniform(300, 1800, len(rated)),
                code["csat_response"],
                EMAIL,
                score=out.csat_score[support[rated]],
            ),
        ]


def _id_strings(prefix: str, numbers: Array, width: int) -> pa.Array:
    """``prefix`` + zero-padded numbers, null where a number is negative."""
    arr = pa.array(numbers, type=pa.int64(), mask=numbers < 0)
    padded = pc.utf8_lpad(pc.cast(arr, pa.string()), width=width, padding="0")
    return pc.binary_join_element_wise(pa.scalar(prefix), padded, "")


def customer_ids(n: int, width: int) -> pa.Array:
    """``C0000000`` … one id per customer number ``0 … n-1``."""
    return _id_strings("C", np.arange(n), width)


def to_table(
    rows: EventRows,
    first_event: int,
    ids: pa.Array,
    type_names: list[str],
    action_ids: list[str],
) -> pa.Table:
    """Sorts rows by customer then time (stable: funnel order on ties) and builds the table."""
    order = np.lexsort((rows.time_us, rows.customer))
    rows = rows.take(order)
    n = len(rows)
    return pa.table(
        {
            "event_id": _id_strings("E", np.arange(first_event, first_event + n), 12),
            "customer_id": ids.take(pa.array(rows.customer)),
            "timestamp": pa.array(rows.time_us, pa.timestamp("us", tz="UTC")),
            "event_type": pa.array(type_names, pa.string()).take(pa.array(rows.event_type)),
            "channel": pa.array(CHANNELS, pa.string()).take(pa.array(rows.channel)),
            "value": pa.array(rows.value, pa.float64(), mask=np.isnan(rows.value)),
            "session_id": _id_strings("S", rows.session, 10),
            "action_id": pa.array(action_ids, pa.string()).take(
                pa.array(rows.action, pa.int64(), mask=rows.action < 0)
            ),
            "propensity": pa.array(rows.propensity, pa.float64(), mask=np.isnan(rows.propensity)),
            "decision_id": _id_strings("D", rows.decision, 10),
            "score": pa.array(rows.score, pa.int64(), mask=rows.score < 0),
        },
        schema=EVENT_SCHEMA,
    )


def decision_ids(numbers: Array) -> pa.Array:
    return _id_strings("D", numbers, 10)
