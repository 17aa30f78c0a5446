"""A session clickstream of a shop's app and web site, with injected incidents.

Columns: ``user_ref``, ``session``, ``event_time`` (ISO-8601 with time of day, UTC ``Z``),
``platform`` (ios, android, web), ``action`` and ``page`` (the product category on catalog and
product pages, empty elsewhere); with ``with_value``, ``order_total`` on ``order_placed``.

Journeys are second-order: the next action depends on the last two (``product → cart`` goes
on to ``shipping``, ``search → cart`` back to ``catalog``), so a second-order Markov chain
predicts better than a first-order one. The user base ramps up (a share of users at the start,
the rest joining uniformly, some leaving), sessions follow a weekday pattern (weekends busier),
and the incidents of :mod:`tests.foreign_logs.incidents` change the journeys of one platform
for a few weeks.

Truth (``truth/``): ``incidents.json`` (windows, segments, affected customers),
``affected.csv`` (every affected session), ``transitions.json`` (the true second-order
transition probabilities), ``users.csv`` (join and leave days, session rate, platform) and
``params.json``.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from tests.foreign_logs.base import (
    ForeignLog,
    customer_ids,
    time_strings,
    write_json,
    write_log,
)
from tests.foreign_logs.incidents import (
    Incident,
    default_incidents,
    incident_records,
    redirect,
    session_mask,
    suppress_sessions,
    write_incidents,
)

ACTIONS: tuple[str, ...] = (
    "home", "search", "catalog", "product", "add_item", "cart", "shipping", "payment",
    "payment_error", "order_placed", "support_ticket", "logout",
)  # fmt: skip
END = "(end)"
START = "(start)"
PLATFORMS: tuple[str, ...] = ("ios", "android", "web")
CATEGORIES: tuple[str, ...] = ("shoes", "bags", "jackets", "watches", "toys", "garden", "books")
#: Monday first; weekends are busier.
WEEKDAY_FACTORS: tuple[float, ...] = (0.85, 0.9, 0.95, 1.0, 1.05, 1.35, 1.3)
COLUMN_MAP = {
    "user_ref": "customer_id",
    "event_time": "timestamp",
    "action": "event_type",
    "session": "session_id",
}

FIRST: dict[str, float] = {
    "home": 0.45,
    "search": 0.25,
    "catalog": 0.15,
    "product": 0.1,
    "cart": 0.05,
}
#: The next action given only the current one ...
BASE: dict[str, dict[str, float]] = {
    "home": {"search": 0.3, "catalog": 0.35, "product": 0.1, "cart": 0.05,
             "support_ticket": 0.02, "logout": 0.03, END: 0.15},
    "search": {"search": 0.15, "product": 0.45, "catalog": 0.15, "cart": 0.05, END: 0.2},
    "catalog": {"product": 0.5, "catalog": 0.15, "search": 0.1, END: 0.25},
    "product": {"add_item": 0.25, "product": 0.15, "catalog": 0.18, "search": 0.1,
                "cart": 0.1, END: 0.22},
    "add_item": {"cart": 0.55, "product": 0.2, "catalog": 0.1, END: 0.15},
    "cart": {"shipping": 0.3, "catalog": 0.25, "product": 0.1, END: 0.35},
    "shipping": {"payment": 0.6, "cart": 0.15, END: 0.25},
    "payment": {"order_placed": 0.75, "payment_error": 0.06, "shipping": 0.05, END: 0.14},
    "payment_error": {"payment": 0.5, "support_ticket": 0.12, END: 0.38},
    "order_placed": {"home": 0.15, "logout": 0.25, "product": 0.1, END: 0.5},
    "support_ticket": {"home": 0.2, "logout": 0.2, END: 0.6},
    "logout": {END: 1.0},
}  # fmt: skip
#: ... except after these two-action histories (previous, current).
PAIRS: dict[tuple[str, str], dict[str, float]] = {
    ("add_item", "cart"): {"shipping": 0.65, "catalog": 0.1, "product": 0.05, END: 0.2},
    ("product", "cart"): {"shipping": 0.55, "catalog": 0.1, END: 0.35},
    ("search", "cart"): {"catalog": 0.55, "product": 0.15, "shipping": 0.05, END: 0.25},
    ("home", "cart"): {"catalog": 0.45, "shipping": 0.15, END: 0.4},
    ("catalog", "product"): {"product": 0.3, "add_item": 0.1, "catalog": 0.32, END: 0.28},
    ("search", "product"): {"add_item": 0.4, "search": 0.25, "product": 0.05, END: 0.3},
    ("cart", "shipping"): {"payment": 0.72, "cart": 0.08, END: 0.2},
    ("payment_error", "payment"): {"order_placed": 0.45, "payment_error": 0.3,
                                   "support_ticket": 0.1, END: 0.15},
}  # fmt: skip
MAX_SESSION_EVENTS = 40


def transition_table() -> tuple[np.ndarray, np.ndarray]:
    """``(first, table)``: the first action's probabilities (V) and the second-order table,
    ``table[prev * V + cur]`` = probabilities of the next action (V actions, then END) with
    ``prev = V`` for the session's first action."""
    v = len(ACTIONS)
    idx = {a: i for i, a in enumerate(ACTIONS)} | {END: v}
    first = np.zeros(v)
    for action, prob in FIRST.items():
        first[idx[action]] = prob
    table = np.zeros(((v + 1) * v, v + 1))
    for prev in range(v + 1):
        for cur, action in enumerate(ACTIONS):
            key = (ACTIONS[prev] if prev < v else START, action)
            row = PAIRS.get(key, BASE[action])
            for nxt, prob in row.items():
                table[prev * v + cur, idx[nxt]] = prob
    table /= table.sum(axis=1, keepdims=True)
    return first / first.sum(), table


def generate_clickstream(
    out: Path,
    n_users: int = 600,
    seed: int = 0,
    start: date = date(2025, 1, 6),
    days: int = 182,
    sessions_per_day: float = 0.13,
    incidents: tuple[Incident, ...] | None = None,
    with_value: bool = False,
    parquet: bool = False,
) -> ForeignLog:
    """Writes ``out/clicks.csv`` (and ``.parquet``) and ``out/truth/``.

    Args:
        out: the folder to write.
        n_users: users (the user base ramps up: 30 % at the start, the rest join over the log).
        seed: everything is a function of the seed.
        start: the log's first day (a Monday by default); the log covers ``[start, +days)``.
        sessions_per_day: a user's mean session rate on an average weekday while a user.
        incidents: the incidents to inject; ``None`` for ``default_incidents(days)``, ``()``
            for an incident-free log.
        with_value: add ``order_total`` on ``order_placed``.
    """
    rng = np.random.default_rng(seed)
    incidents = default_incidents(days) if incidents is None else incidents
    v = len(ACTIONS)
    index = {a: i for i, a in enumerate(ACTIONS)}
    for incident in incidents:
        for rule in incident.redirects:
            for name in (rule.from_action, rule.to_action):
                if name not in index:
                    raise ValueError(f"incident {incident.name}: unknown action {name!r}")

    users = customer_ids("u", n_users, rng)
    join = np.where(rng.uniform(size=n_users) < 0.3, 0.0, rng.uniform(0, days, n_users))
    leave = join + rng.exponential(240.0, n_users)
    rate = rng.gamma(2.0, sessions_per_day / 2.0, n_users)
    home_platform = rng.choice(len(PLATFORMS), size=n_users, p=[0.36, 0.36, 0.28])

    day_index = np.arange(days)
    weekday = (np.datetime64(start, "D") + day_index).astype("datetime64[D]").view("int64")
    factors = np.asarray(WEEKDAY_FACTORS)[(weekday + 3) % 7]  # 1970-01-01 was a Thursday
    present = (day_index[None, :] >= join[:, None]) & (day_index[None, :] < leave[:, None])
    counts = rng.poisson(rate[:, None] * factors[None, :] * present)
    s_user, s_day = np.nonzero(counts)
    reps = counts[s_user, s_day]
    s_user, s_day = np.repeat(s_user, reps), np.repeat(s_day, reps)
    own = rng.uniform(size=len(s_user)) < 0.85
    s_platform = np.where(own, home_platform[s_user], rng.integers(0, 3, len(s_user)))
    platform_names = np.asarray(PLATFORMS)[s_platform]
    segments = {"platform": platform_names}

    kept, suppressed = suppress_sessions(incidents, s_day, segments, rng)
    planned_user, planned_day = s_user, s_day
    s_user, s_day, s_platform, platform_names = (
        s_user[kept],
        s_day[kept],
        s_platform[kept],
        platform_names[kept],
    )
    segments = {"platform": platform_names}
    n_sessions = len(s_user)
    active = {i.name: session_mask(i, s_day, segments) for i in incidents}
    fired = {i.name: np.zeros(n_sessions, dtype=bool) for i in incidents}

    first, table = transition_table()
    cum = np.cumsum(table, axis=1)
    cum[:, -1] = 1.0
    cur = rng.choice(v, size=n_sessions, p=first)
    prev = np.full(n_sessions, v)
    walking = np.arange(n_sessions)
    ev_session, ev_action, ev_step = [walking], [cur], [np.zeros(n_sessions, dtype=np.int64)]
    for step in range(1, MAX_SESSION_EVENTS):
        u = rng.uniform(size=len(walking))
        proposed = (u[:, None] > cum[prev * v + cur]).sum(axis=1)
        nxt = redirect(
            incidents,
            {k: m[walking] for k, m in active.items()},
            cur,
            proposed,
            index,
            rng,
            sub := {k: np.zeros(len(walking), dtype=bool) for k in fired},
        )
        for k, hits in sub.items():
            fired[k][walking[hits]] = True
        go = nxt < v
        walking, prev, cur = walking[go], cur[go], nxt[go]
        if not len(walking):
            break
        ev_session.append(walking)
        ev_action.append(cur)
        ev_step.append(np.full(len(walking), step))

    e_session = np.concatenate(ev_session)
    e_action = np.concatenate(ev_action)
    e_step = np.concatenate(ev_step)
    order = np.lexsort((e_step, e_session))
    e_session, e_action, e_step = e_session[order], e_action[order], e_step[order]

    hour_profile = {
        0: _hours(rng, peak=21),  # ios: evenings
        1: _hours(rng, peak=20),  # android
        2: _hours(rng, peak=13),  # web: office hours
    }
    s_second = np.empty(n_sessions, dtype=np.int64)
    for p, weights in hour_profile.items():
        on = s_platform == p
        hours = rng.choice(24, size=int(on.sum()), p=weights)
        s_second[on] = s_day[on] * 86400 + hours * 3600 + rng.integers(0, 3600, int(on.sum()))
    gaps = np.round(rng.exponential(40.0, len(e_session)) + 3).astype(np.int64)
    gaps[e_step == 0] = 0
    cum_gap = np.cumsum(gaps)
    session_first = np.searchsorted(e_session, np.arange(n_sessions))
    base = cum_gap[session_first]
    seconds = s_second[e_session] + cum_gap - base[e_session]
    session_category = rng.integers(0, len(CATEGORIES), n_sessions)
    browse = rng.uniform(size=len(e_session)) < 0.3
    category = np.where(
        browse, rng.integers(0, len(CATEGORIES), len(e_session)), session_category[e_session]
    )
    on_page = np.isin(e_action, [index["catalog"], index["product"], index["add_item"]])
    session_codes = rng.permutation(n_sessions)

    columns: dict[str, np.ndarray] = {
        "user_ref": users[s_user[e_session]],
        "session": np.char.add("s", np.char.zfill(session_codes[e_session].astype(str), 7)),
        "event_time": time_strings(start, seconds),
        "platform": platform_names[e_session],
        "action": np.asarray(ACTIONS)[e_action],
        "page": np.where(on_page, np.asarray(CATEGORIES)[category], ""),
    }
    if with_value:
        placed = e_action == index["order_placed"]
        totals = np.round(rng.gamma(3.0, 25.0, len(e_session)), 2)
        columns["order_total"] = np.where(placed, totals, np.nan)
    frame = pd.DataFrame(columns)
    frame = frame.iloc[np.argsort(seconds, kind="stable")].reset_index(drop=True)
    csv_path, parquet_path = write_log(frame, out, "clicks", parquet)

    truth_dir = out / "truth"
    truth_dir.mkdir(parents=True, exist_ok=True)
    affected: list[pd.DataFrame] = []
    for incident in incidents:
        if incident.name in suppressed:
            lost = suppressed[incident.name]
            who, when = planned_user[lost], planned_day[lost]
            session = np.full(len(who), "")
        else:
            hit = fired[incident.name]
            who, when = s_user[hit], s_day[hit]
            session = np.char.add("s", np.char.zfill(session_codes[hit].astype(str), 7))
        affected.append(
            pd.DataFrame(
                {
                    "incident": incident.name,
                    "user_ref": users[who],
                    "day": when,
                    "session": session,
                    "suppressed": incident.name in suppressed,
                }
            )
        )
    affected_sessions = (
        pd.concat(affected, ignore_index=True)
        if affected
        else pd.DataFrame(columns=["incident", "user_ref", "day", "session", "suppressed"])
    )
    affected_sessions.to_csv(truth_dir / "affected.csv", index=False)
    grouped = affected_sessions.groupby("incident")
    records = incident_records(
        incidents,
        start,
        {str(k): int(n) for k, n in grouped["user_ref"].nunique().items()},
        {str(k): int(n) for k, n in grouped.size().items()},
    )
    write_incidents(truth_dir / "incidents.json", records)
    pd.DataFrame(
        {
            "user_ref": users,
            "join_day": join,
            "leave_day": leave,
            "sessions_per_day": rate,
            "platform": np.asarray(PLATFORMS)[home_platform],
        }
    ).to_csv(truth_dir / "users.csv", index=False)
    first_probs, _ = transition_table()
    names = [*ACTIONS, END]
    write_json(
        truth_dir / "transitions.json",
        {
            "first": dict(zip(ACTIONS, first_probs.round(6).tolist(), strict=True)),
            "next": {
                f"{names[p]}>{a}": {
                    names[j]: round(float(q), 6) for j, q in enumerate(table[p * v + i]) if q > 0
                }
                for p in range(v + 1)
                for i, a in enumerate(ACTIONS)
            },
        },
    )
    write_json(
        truth_dir / "params.json",
        {
            "seed": seed,
            "start": start,
            "end": start + timedelta(days=days),
            "n_users": n_users,
            "n_sessions": n_sessions,
            "n_events": len(frame),
            "sessions_per_day": sessions_per_day,
            "weekday_factors": dict(
                zip(("mon", "tue", "wed", "thu", "fri", "sat", "sun"), WEEKDAY_FACTORS, strict=True)
            ),
            "initial_user_share": 0.3,
            "mean_membership_days": 240.0,
        },
    )
    column_map = dict(COLUMN_MAP)
    if with_value:
        column_map["order_total"] = "value"
    return ForeignLog(
        kind="clickstream",
        events_csv=csv_path,
        events_parquet=parquet_path,
        truth_dir=truth_dir,
        column_map=column_map,
        start=start,
        end=start + timedelta(days=days),
        n_customers=int(frame["user_ref"].nunique()),
        n_events=len(frame),
        params={"seed": seed, "n_users": n_users, "sessions_per_day": sessions_per_day},
        truth={
            "incidents": truth_dir / "incidents.json",
            "affected": truth_dir / "affected.csv",
            "transitions": truth_dir / "transitions.json",
            "users": truth_dir / "users.csv",
            "params": truth_dir / "params.json",
        },
        columns=tuple(frame.columns),
        value_column="order_total" if with_value else None,
        segment_columns=("platform",),
    )


def _hours(rng: np.random.Generator, peak: int) -> np.ndarray:
    hours = np.arange(24)
    distance = np.minimum(np.abs(hours - peak), 24 - np.abs(hours - peak))
    weights = np.exp(-(distance**2) / 18.0) + 0.03
    weights[1:6] *= 0.2
    return weights / weights.sum()
