"""Journey health monitoring: KPIs per step, segment and period, change detection, drift.

The KPIs are computed by DuckDB over the event lake (nothing is loaded into memory but the
small per-period tables), for the whole population and for each value of the segment columns
(``segments`` in ``configs/monitoring.yaml``: an event column such as ``channel``, an event
property such as a clickstream's ``platform``, or a column of the customers table):

- **steps**: a session that reaches a step's start event is one trial. Per step: the share of
  trials that reach the step's success (or any later step) within the step's time
  (*conversion*), the share where an error event comes first (*error rate*), the share with
  two or more error events within the step's time (*repeated errors*), and the share followed
  by a support contact (*support after the step*). A trial counts in the period it is judged
  in (the step's time after it starts), so a period's trials are complete when it ends and a
  daily run judges yesterday evening's checkouts today, not tomorrow. Steps are listed in the
  config, and derived from the journey map (consecutive events of the map up to the
  conversion), never from one log's vocabulary;
- **rates per active customer**: complaints, support contacts, error events;
- **NPS detractors**: the share of NPS answers of 6 or less;
- **loops**: sessions that go back and forth between two mapped events (A → B → A), per
  session;
- **volume** of all events and of every frequent event type.

Change detection (:func:`detect_changes`) compares windows of the last 1 to
``max_window_periods`` periods with a baseline from the periods before them. The baseline's
predictive distribution gives the window's tail probability: beta-binomial for proportions
(the baseline rate's own uncertainty and the day-to-day over-dispersion widen it) and
negative binomial for counts. Because whole windows are tested, a step with three trials a
day is tested at all, and a step that fails half of them is found within days; the minimum
support rule (``min_support`` trials or expected events in a window) is waived for a change of
at least ``large_change_relative``, so a small segment never hides a large change. Volumes get
a baseline that follows the log's trend and weekday pattern. An alert closes when its KPI is
back within range of the baseline.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from fnmatch import fnmatchcase
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np
import pandas as pd
from pydantic import Field, PositiveFloat, PositiveInt, field_validator
from scipy import stats

from journeyml.config import JourneyMap, StrictModel, config_path, load_config
from journeyml.events.lake import read_customers_sql, read_events_sql

logger = logging.getLogger(__name__)

Direction = Literal["down", "up", "both"]


# -- configuration ------------------------------------------------------------------------------


class StepSettings(StrictModel):
    """A journey step: starts with ``from``, succeeds with ``success`` within the time."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    from_: list[str] = Field(alias="from", min_length=1)
    success: list[str] = Field(min_length=1)
    failure: list[str] = Field(default_factory=list)
    within_hours: PositiveFloat = 24.0


class RateSettings(StrictModel):
    """Events of these types per active customer and period."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    events: list[str] = Field(min_length=1)


class DetectionSettings(StrictModel):
    """Window tests against a baseline (see :func:`detect_changes`)."""

    baseline_periods: PositiveInt = 28
    min_baseline_periods: PositiveInt = 14
    min_baseline_trials: PositiveInt = 20
    max_window_periods: PositiveInt = 7
    min_support: PositiveInt = 5
    large_change_relative: PositiveFloat = 1.0
    min_excess: PositiveFloat = 3.0
    shift_relative: PositiveFloat = 0.25
    shift_absolute: PositiveFloat = 0.05
    volume_shift_relative: PositiveFloat = 0.5
    volume_model_cv: float = Field(default=0.15, ge=0)
    threshold: PositiveFloat = 8.0
    close_periods: PositiveInt = 3
    close_p_value: PositiveFloat = 0.1
    max_alert_periods: PositiveInt = 42


class DriftSettings(StrictModel):
    """Population stability (PSI) of features between a reference and the latest snapshot."""

    bins: int = Field(default=10, ge=2, le=100)
    reference_end_days: PositiveInt = 35
    reference_sample_rows: PositiveInt = 200_000
    psi_warn: PositiveFloat = 0.1
    psi_alert: PositiveFloat = 0.25
    calendar_features: list[str] = Field(
        default_factory=lambda: [
            "tenure_days", "days_since_*", "*_age_days", "days_in_*", "*_total",
            "stage_regressions",
        ]
    )  # fmt: skip
    min_reference_rows: PositiveInt = 200
    performance_window_days: PositiveInt = 28
    min_label_rows: PositiveInt = 20
    auc_drop_warn: PositiveFloat = 0.03
    auc_drop_alert: PositiveFloat = 0.05


class WebhookSettings(StrictModel):
    """Where incidents are posted (Slack-compatible JSON); no URL, no post."""

    url: str | None = None
    url_env: str | None = "JOURNEYML_MONITOR_WEBHOOK"
    timeout_seconds: PositiveFloat = 5.0
    retries: int = Field(default=2, ge=0, le=10)
    backoff_seconds: float = Field(default=0.5, ge=0)
    max_incidents: PositiveInt = 10


class AlertSettings(StrictModel):
    """How KPI changes become incidents and where they go."""

    group_within_periods: int = Field(default=3, ge=0)
    value_lookback_days: PositiveInt = 90
    webhook: WebhookSettings = WebhookSettings()


class MonitorSettings(StrictModel):
    """``configs/monitoring.yaml``."""

    period_days: PositiveInt = 1
    steps: list[StepSettings] = Field(default_factory=list)
    steps_from_journey_map: bool = True
    journey_step_hours: PositiveFloat = 24.0
    rates: list[RateSettings] = Field(default_factory=list)
    error_events: list[str] = Field(default_factory=lambda: ["*error*", "*fail*"])
    support_within_hours: PositiveFloat = 72.0
    segments: list[str] = Field(default_factory=list)
    max_segment_values: PositiveInt = 8
    min_segment_share: float = Field(default=0.02, ge=0, le=1)
    volume_min_per_period: PositiveInt = 30
    session_gap_minutes: PositiveFloat = 30.0
    loop_within_hours: PositiveFloat = 2.0
    loop_min_per_period: PositiveInt = 5
    loop_min_total: PositiveInt = 3
    detection: DetectionSettings = DetectionSettings()
    drift: DriftSettings = DriftSettings()
    alerts: AlertSettings = AlertSettings()

    @field_validator("steps", "rates")
    @classmethod
    def _unique_names(cls, items: list[Any]) -> list[Any]:
        names = [i.name for i in items]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"names must be unique; repeated: {', '.join(dupes)}")
        return items


def load_monitor_settings(path: str | Path | None = None) -> MonitorSettings:
    """Reads and validates the monitoring settings (``monitoring.yaml`` of the config folder
    by default); a ConfigError names every bad key."""
    return load_config(path or config_path("monitoring.yaml"), MonitorSettings)


# -- KPIs ---------------------------------------------------------------------------------------

ALL = "all"


@dataclass(frozen=True)
class Series:
    """One KPI of one segment, period by period: ``numerator`` out of ``denominator``.

    For a proportion the denominator is the number of trials; for a count it is the exposure
    (active customers or sessions for a rate, 1 for a raw volume). ``seasonal`` series (raw
    volumes) get a baseline that follows the trend and the weekday pattern.
    """

    kpi: str
    step: str
    kind: Literal["proportion", "count"]
    bad: Direction
    periods: list[date]
    numerator: np.ndarray
    denominator: np.ndarray
    segment: str = ALL
    seasonal: bool = False
    watch_from: int = 0  # no alert opens before this period (the series did not exist yet)

    @cached_property
    def weekdays(self) -> np.ndarray:
        """Weekday (0 = Monday) of each period's first day."""
        return np.array([p.weekday() for p in self.periods], dtype=int)

    def rate(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.denominator > 0, self.numerator / self.denominator, np.nan)


def _in_list(values: list[str] | tuple[str, ...]) -> str:
    if not values:
        return "(NULL)"
    return "(" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + ")"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _period_sql(column: str, period_days: int, origin: date) -> str:
    if period_days == 1:
        return f"CAST({column} AT TIME ZONE 'UTC' AS DATE)"
    return (
        f"(DATE '{origin.isoformat()}' + CAST(FLOOR(DATE_DIFF('day', DATE '{origin.isoformat()}', "
        f"CAST({column} AT TIME ZONE 'UTC' AS DATE)) / {period_days}) * {period_days} AS INTEGER))"
    )


class LogTooShortError(ValueError):
    """The log does not hold enough periods to monitor."""


def expand(patterns: list[str] | tuple[str, ...], event_types: list[str]) -> list[str]:
    """The log's event types that match any of the shell-style patterns, in log order."""
    return [e for e in event_types if any(fnmatchcase(e, p) for p in patterns)]


def journey_steps(
    journey: JourneyMap,
    event_types: list[str],
    error_events: list[str],
    hours: float,
    order: Mapping[str, float] | None = None,
) -> list[StepSettings]:
    """Steps read from the journey map: its events stage by stage, up to the last conversion.

    Each event of that chain that the log holds starts a step, which succeeds when the customer
    reaches any later event of the chain; error events are never steps (they are the steps'
    failures). Within a stage the events keep the map's order, or with ``order`` (event ->
    where it typically comes in a session, :func:`session_positions`) they follow the log's own
    order: a map written by ``journeyml init`` lists a stage's events by frequency, and "cart"
    before "add to cart" would make a step succeed on a loop. A map without ordered events up to
    a conversion gives no step.
    """
    chain: list[str] = []
    for stage in journey.stages:
        in_stage: list[str] = []
        for pattern in journey.stage_events.get(stage, []):
            for e in expand([pattern], event_types):
                if e not in chain and e not in in_stage and not journey.is_treatment(e):
                    in_stage.append(e)
        if order is not None:
            rank = {e: i for i, e in enumerate(in_stage)}
            in_stage.sort(key=lambda e: (order.get(e, math.inf), rank[e]))
        chain += in_stage
    chain = [e for e in chain if not any(fnmatchcase(e, p) for p in error_events)]
    conversions = [i for i, e in enumerate(chain) if journey.is_conversion(e)]
    if not conversions:
        return []
    chain = chain[: max(conversions) + 1]
    steps = []
    for i, e in enumerate(chain[:-1]):
        name = ("from_" + "".join(c if c.isalnum() else "_" for c in e.lower()))[:60]
        if not name[0].isalpha():
            name = "s" + name
        steps.append(
            StepSettings.model_validate(
                {"name": name, "from": [e], "success": chain[i + 1 :], "within_hours": hours}
            )
        )
    return steps


def session_positions(con: duckdb.DuckDBPyConnection) -> dict[str, float]:
    """Where each event type typically comes in a session (the ``ev`` table): the share of the
    other event types that come first (first occurrences, over the sessions that hold both),
    averaged over the other types (0 = always first)."""
    rows = con.execute(
        """
        WITH f AS (SELECT sess, event_type, MIN(timestamp) AS t FROM ev GROUP BY 1, 2)
        SELECT a.event_type, AVG(CASE WHEN b.t < a.t THEN 1.0 WHEN b.t = a.t THEN 0.5
                                      ELSE 0.0 END) AS before
        FROM f a JOIN f b ON a.sess = b.sess AND a.event_type <> b.event_type
        GROUP BY a.event_type, b.event_type
        """
    ).fetchall()
    shares: dict[str, list[float]] = {}
    for event, before in rows:
        shares.setdefault(str(event), []).append(float(before))
    return {e: float(np.mean(v)) for e, v in shares.items()}


@dataclass
class KpiTables:
    """The KPI series and what was read to make them (for affected customers and values)."""

    series: list[Series]
    facts: dict[str, object]
    segments: dict[str, str]  # segment column name -> its SQL column in ``ev``
    steps: list[StepSettings]
    rates: list[RateSettings]
    error_types: list[str]
    loop_types: list[str]
    has_values: bool


def _segment_columns(
    con: duckdb.DuckDBPyConnection, lake: Path, names: list[str]
) -> tuple[dict[str, str], list[str], str]:
    """SQL expressions of the configured segment columns that this log has.

    Returns (name -> expression over the event row ``e`` and customer row ``c``, missing names,
    the customers join or "").
    """
    event_cols = {"channel"}
    customers_sql = read_customers_sql(lake)
    customer_cols: set[str] = set()
    if customers_sql is not None:
        customer_cols = {str(r[0]) for r in con.execute(f"DESCRIBE {customers_sql}").fetchall()} - {
            "customer_id"
        }
    keys = {
        str(r[0])
        for r in con.execute(
            "SELECT DISTINCT UNNEST(json_keys(properties)) FROM ev_raw WHERE properties IS NOT NULL"
        ).fetchall()
    }
    found, missing = {}, []
    for name in names:
        if name in event_cols:
            found[name] = f"CAST(e.{_quote(name)} AS VARCHAR)"
        elif name in keys:
            path = "$." + json.dumps(name)
            found[name] = (
                f"json_extract_string(e.properties, '{path.replace(chr(39), chr(39) * 2)}')"
            )
        elif name in customer_cols:
            found[name] = f"CAST(c.{_quote(name)} AS VARCHAR)"
        else:
            missing.append(name)
    join = (
        f"LEFT JOIN ({customers_sql}) c ON c.customer_id = e.customer_id"
        if customers_sql is not None and any(n in customer_cols for n in found)
        else ""
    )
    return found, missing, join


def compute_kpis(
    con: duckdb.DuckDBPyConnection,
    lake: Path,
    settings: MonitorSettings,
    journey: JourneyMap | None = None,
    until: date | None = None,
) -> KpiTables:
    """Every KPI per period and segment over the lake's events (DuckDB, out-of-core).

    ``until`` cuts the log after that day, as a run on that day would have seen it.
    """
    raw = read_events_sql(lake)
    cut = (
        f" WHERE timestamp < TIMESTAMPTZ '{(until + timedelta(days=1)).isoformat()} 00:00:00+00'"
        if until is not None
        else ""
    )
    con.execute(f"CREATE OR REPLACE TEMP VIEW ev_raw AS SELECT * FROM ({raw}){cut}")
    first, last, n_events = con.execute(
        "SELECT MIN(timestamp), MAX(timestamp), COUNT(*) FROM ev_raw"
    ).fetchone() or (None, None, 0)
    if not n_events:
        raise LogTooShortError(f"the lake {lake} holds no events: nothing to monitor")
    origin = first.astimezone(UTC).date()
    end = last.astimezone(UTC).date()
    if until is not None:
        end = until
    pdays = settings.period_days
    periods = [origin + timedelta(days=i) for i in range(0, (end - origin).days + 1, pdays)]
    # the last period is complete only if the log reaches its end: a period of several days
    # must span to the last day, and the last day must reach its last hour (a run cut at
    # ``until`` is a run at the end of that day)
    last_hour = last.astimezone(UTC).hour >= 23
    if periods and (
        periods[-1] + timedelta(days=pdays) > end + timedelta(days=1)
        or (until is None and not last_hour)
    ):
        periods = periods[:-1]
    if len(periods) < settings.detection.min_baseline_periods + 1:
        raise LogTooShortError(
            f"the log spans {len(periods)} complete period(s) of {pdays} day(s) "
            f"({origin} to {end}); monitoring needs at least "
            f"{settings.detection.min_baseline_periods + 1} (detection.min_baseline_periods + 1)"
        )
    index = {p: i for i, p in enumerate(periods)}
    horizon_us = int(
        (datetime.combine(end + timedelta(days=1), datetime.min.time(), UTC)).timestamp() * 1e6
    )
    if until is None:
        horizon_us = min(horizon_us, int(last.timestamp() * 1e6))

    seg_sql, missing, join = _segment_columns(con, lake, settings.segments)
    seg_names = list(seg_sql)
    seg_cols = [f"s{i}" for i in range(len(seg_names))]
    gap = int(settings.session_gap_minutes * 60_000_000)
    seg_select = "".join(f", {seg_sql[n]} AS {c}" for n, c in zip(seg_names, seg_cols, strict=True))
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE ev AS
        WITH b AS (SELECT e.customer_id, e.timestamp, e.event_type, e.value, e.session_id,
                          e.properties, e.event_id{seg_select},
                          {_period_sql("e.timestamp", pdays, origin)} AS period
                   FROM ev_raw e {join}),
             g AS (SELECT *, CASE WHEN EPOCH_US(timestamp) - EPOCH_US(LAG(timestamp) OVER w)
                                  <= {gap} THEN 0 ELSE 1 END AS new_session
                   FROM b WINDOW w AS (PARTITION BY customer_id ORDER BY timestamp, event_id))
        SELECT * EXCLUDE (new_session),
               COALESCE(session_id, customer_id || ':' || CAST(SUM(new_session) OVER
                   (PARTITION BY customer_id ORDER BY timestamp, event_id) AS VARCHAR)) AS sess
        FROM g
        """
    )
    # segment values worth a series of their own: the most frequent, above a minimum share
    kept: dict[str, list[str]] = {}
    for name, col in zip(seg_names, seg_cols, strict=True):
        rows = con.execute(
            f"SELECT {col}, COUNT(*) AS n FROM ev WHERE {col} IS NOT NULL GROUP BY 1 "
            f"ORDER BY n DESC, 1 LIMIT {settings.max_segment_values}"
        ).fetchall()
        total = max(sum(int(r[1]) for r in rows), 1)
        values = [str(r[0]) for r in rows if int(r[1]) / total >= settings.min_segment_share]
        kept[name] = values if len(values) >= 2 else []

    def grouping(extra: str = "") -> tuple[str, str]:
        """(segment label expression, GROUPING SETS clause) for ``period`` plus segments."""
        sets = [f"(period{extra})"] + [
            f"(period{extra}, {c})" for c in seg_cols if kept[seg_names[seg_cols.index(c)]]
        ]
        label = (
            "CASE "
            + "".join(
                f"WHEN GROUPING({c}) = 0 THEN "
                f"'{n.replace(chr(39), chr(39) * 2)}=' || COALESCE({c}, '')" + " "
                for n, c in zip(seg_names, seg_cols, strict=True)
                if kept[n]
            )
            + f"ELSE '{ALL}' END"
            if any(kept.values())
            else f"'{ALL}'"
        )
        return label, "GROUPING SETS (" + ", ".join(sets) + ")"

    allowed = {ALL} | {f"{n}={v}" for n in seg_names for v in kept[n]}
    label, sets = grouping()

    def frame(sql: str) -> pd.DataFrame:
        df = con.execute(sql).df()
        if "segment" in df.columns:
            df = df[df["segment"].isin(allowed)]
        return df

    def dense(df: pd.DataFrame, column: str) -> np.ndarray:
        out = np.zeros(len(periods))
        for p, v in zip(df["period"], df[column], strict=True):
            i = index.get(pd.Timestamp(p).date())
            if i is not None:
                out[i] = float(v)
        return out

    def exposure(sql: str) -> dict[str, np.ndarray]:
        df = frame(sql)
        return {str(seg): dense(g, "n") for seg, g in df.groupby("segment")}

    seg_group = ", ".join(seg_cols)
    seg_any = (", " + seg_group) if seg_cols else ""
    active = exposure(
        f"SELECT {label} AS segment, period, COUNT(DISTINCT customer_id) AS n FROM ev "
        f"GROUP BY {sets}"
    )
    sessions = exposure(
        f"SELECT {label} AS segment, period, COUNT(DISTINCT sess) AS n FROM ev GROUP BY {sets}"
    )
    event_types = [
        str(r[0])
        for r in con.execute(
            "SELECT event_type, COUNT(*) FROM ev GROUP BY 1 ORDER BY 2 DESC, 1"
        ).fetchall()
    ]
    error_types = expand(settings.error_events, event_types)
    support_types = expand(journey.experience.support, event_types) if journey else []
    series: list[Series] = []
    skipped: list[str] = []

    steps = [s for s in settings.steps]
    if journey is not None and settings.steps_from_journey_map:
        configured = {tuple(sorted(s.from_)) for s in steps}
        names = {s.name for s in steps}
        for s in journey_steps(
            journey,
            event_types,
            settings.error_events,
            settings.journey_step_hours,
            session_positions(con),
        ):
            if tuple(sorted(s.from_)) not in configured and s.name not in names:
                steps.append(s)
    usable_steps = []
    for step in steps:
        if not expand(step.from_, event_types) or not expand(step.success, event_types):
            skipped.append(step.name)
            continue
        usable_steps.append(step)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE trials (step VARCHAR, customer_id VARCHAR, "
        "period DATE, ok BOOLEAN, failed BOOLEAN, n_err INTEGER, support BOOLEAN"
        + "".join(f", {c} VARCHAR" for c in seg_cols)
        + ")"
    )
    support_us = int(settings.support_within_hours * 3_600_000_000)
    for step in usable_steps:
        within = int(step.within_hours * 3_600_000_000)
        failures = sorted(set(expand(step.failure, event_types)) | set(error_types))
        starts = expand(step.from_, event_types)
        con.execute(
            f"""
            INSERT INTO trials
            WITH f0 AS (SELECT customer_id, sess, timestamp AS t, period{seg_any},
                          ROW_NUMBER() OVER (PARTITION BY customer_id, sess
                                             ORDER BY timestamp, event_id) AS k
                        FROM ev WHERE event_type IN {_in_list(starts)}),
                 f AS (SELECT * FROM f0 WHERE k = 1 AND EPOCH_US(t) + {within} <= {horizon_us}),
                 s AS (SELECT customer_id, timestamp AS ts FROM ev
                       WHERE event_type IN {_in_list(expand(step.success, event_types))}),
                 x AS (SELECT customer_id, timestamp AS tf FROM ev
                       WHERE event_type IN {_in_list(failures)}),
                 h AS (SELECT customer_id, timestamp AS th FROM ev
                       WHERE event_type IN {_in_list(support_types)}),
                 j AS (SELECT f.*, s.ts, x.tf, h.th FROM f
                       ASOF LEFT JOIN s ON f.customer_id = s.customer_id AND f.t < s.ts
                       ASOF LEFT JOIN x ON f.customer_id = x.customer_id AND f.t < x.tf
                       ASOF LEFT JOIN h ON f.customer_id = h.customer_id AND f.t < h.th),
                 n AS (SELECT j.customer_id, j.t, COUNT(x.tf) AS n_err FROM j
                       JOIN x ON x.customer_id = j.customer_id AND x.tf > j.t
                        AND EPOCH_US(x.tf) - EPOCH_US(j.t) <= {within}
                       WHERE j.tf IS NOT NULL GROUP BY 1, 2)
            SELECT '{step.name}', j.customer_id,
                   {_period_sql(f"(j.t + to_microseconds({within}))", pdays, origin)},
                   ts IS NOT NULL AND EPOCH_US(ts) - EPOCH_US(j.t) <= {within}
                       AND (tf IS NULL OR tf > ts) AS ok,
                   tf IS NOT NULL AND EPOCH_US(tf) - EPOCH_US(j.t) <= {within}
                       AND (ts IS NULL OR tf < ts) AS failed,
                   COALESCE(n.n_err, 0) AS n_err,
                   th IS NOT NULL AND EPOCH_US(th) - EPOCH_US(j.t) <= {support_us} AS support
                   {"".join(f", j.{c}" for c in seg_cols)}
            FROM j LEFT JOIN n ON n.customer_id = j.customer_id AND n.t = j.t
            """
        )
        df = frame(
            f"""SELECT {label} AS segment, period, COUNT(*) AS n,
                       COUNT(*) FILTER (WHERE ok) AS ok, COUNT(*) FILTER (WHERE failed) AS failed,
                       COUNT(*) FILTER (WHERE n_err >= 2) AS n_err,
                       COUNT(*) FILTER (WHERE support) AS support
                FROM trials WHERE step = '{step.name}' GROUP BY {sets}"""
        )
        has_failures = bool(failures)
        for seg, g in df.groupby("segment"):
            n = dense(g, "n")
            if n.sum() == 0:
                continue
            seg = str(seg)
            series.append(
                Series(
                    "step_conversion",
                    step.name,
                    "proportion",
                    "down",
                    periods,
                    dense(g, "ok"),
                    n,
                    seg,
                )
            )
            if has_failures:
                series.append(
                    Series(
                        "step_error_rate",
                        step.name,
                        "proportion",
                        "up",
                        periods,
                        dense(g, "failed"),
                        n,
                        seg,
                    )
                )
                series.append(
                    Series(
                        "step_errors",
                        step.name,
                        "proportion",
                        "up",
                        periods,
                        dense(g, "n_err"),
                        n,
                        seg,
                    )
                )
            if support_types:
                series.append(
                    Series(
                        "step_support",
                        step.name,
                        "proportion",
                        "up",
                        periods,
                        dense(g, "support"),
                        n,
                        seg,
                    )
                )

    rates = list(settings.rates)
    if journey is not None:
        names = {r.name for r in rates}
        for name, patterns in (
            ("complaints", journey.experience.complaints),
            ("support_contacts", journey.experience.support),
        ):
            if patterns and name not in names:
                rates.append(RateSettings(name=name, events=list(patterns)))
    if error_types and "errors" not in {r.name for r in rates}:
        rates.append(RateSettings(name="errors", events=list(error_types)))
    seen_rates: dict[frozenset[str], str] = {}
    for rate in rates:
        types = expand(rate.events, event_types)
        if not types:
            skipped.append(rate.name)
            continue
        if frozenset(types) in seen_rates:
            # the same events under two names (a configured rate and the journey map's
            # support events) would be one KPI counted twice
            logger.info("rate %s counts the events of %s", rate.name, seen_rates[frozenset(types)])
            continue
        seen_rates[frozenset(types)] = rate.name
        df = frame(
            f"SELECT {label} AS segment, period, COUNT(*) AS n FROM ev "
            f"WHERE event_type IN {_in_list(types)} GROUP BY {sets}"
        )
        for seg, g in df.groupby("segment"):
            seg = str(seg)
            if seg in active:
                series.append(
                    Series(
                        "rate", rate.name, "count", "up", periods, dense(g, "n"), active[seg], seg
                    )
                )

    nps_types = expand(journey.experience.nps, event_types) if journey else []
    if nps_types:
        prop = "$." + json.dumps(journey.experience.score_property if journey else "score")
        df = frame(
            f"""WITH r AS (SELECT *, TRY_CAST(json_extract_string(properties, '{prop}') AS DOUBLE)
                                     AS score FROM ev WHERE event_type IN {_in_list(nps_types)})
                SELECT {label} AS segment, period, COUNT(*) AS n,
                       COUNT(*) FILTER (WHERE score <= 6) AS bad
                FROM r WHERE score IS NOT NULL GROUP BY {sets}"""
        )
        for seg, g in df.groupby("segment"):
            series.append(
                Series(
                    "nps_detractors",
                    "nps",
                    "proportion",
                    "up",
                    periods,
                    dense(g, "bad"),
                    dense(g, "n"),
                    str(seg),
                )
            )

    # volumes: every event, and each event type frequent enough in its segment
    ones = np.ones(len(periods))
    df = frame(f"SELECT {label} AS segment, period, COUNT(*) AS n FROM ev GROUP BY {sets}")
    for seg, g in df.groupby("segment"):
        series.append(
            Series(
                "volume",
                "all events",
                "count",
                "both",
                periods,
                dense(g, "n"),
                ones,
                str(seg),
                seasonal=True,
            )
        )
    label_t, sets_t = grouping(", event_type")
    df = frame(
        f"SELECT {label_t} AS segment, event_type, period, COUNT(*) AS n FROM ev GROUP BY {sets_t}"
    )
    for key, g in df.groupby(["segment", "event_type"]):
        seg, event_type = str(key[0]), str(key[1])
        counts = dense(g, "n")
        if counts.mean() >= settings.volume_min_per_period:
            series.append(
                Series(
                    "volume",
                    str(event_type),
                    "count",
                    "both",
                    periods,
                    counts,
                    ones,
                    str(seg),
                    seasonal=True,
                    watch_from=_first_reached(
                        np.cumsum(counts) / np.arange(1, len(counts) + 1),
                        settings.volume_min_per_period,
                    ),
                )
            )

    # loops: sessions going A -> B -> A between two events of the journey (or of the steps)
    mapped: list[str] = []
    if journey is not None:
        mapped = [e for e in event_types if journey.stage_of(e) is not None]
    for step in usable_steps:
        mapped += expand(step.from_ + step.success, event_types)
    # without a journey map or steps, every event type may loop
    loop_types = sorted(set(mapped) | set(error_types)) if mapped else list(event_types)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE loops (pair VARCHAR, customer_id VARCHAR, sess VARCHAR, "
        "period DATE" + "".join(f", {c} VARCHAR" for c in seg_cols) + ")"
    )
    if loop_types:
        loop_within = int(settings.loop_within_hours * 3_600_000_000)
        con.execute(
            f"""
            INSERT INTO loops
            WITH m AS (SELECT * FROM ev WHERE event_type IN {_in_list(loop_types)}),
                 d AS (SELECT *, LAG(event_type) OVER w AS prev FROM m
                       WINDOW w AS (PARTITION BY customer_id, sess ORDER BY timestamp, event_id)),
                 c AS (SELECT * FROM d WHERE prev IS NULL OR prev <> event_type),
                 o AS (SELECT *, LAG(event_type, 1) OVER w AS e1, LAG(event_type, 2) OVER w AS e2,
                              LAG(timestamp, 2) OVER w AS t2 FROM c
                       WINDOW w AS (PARTITION BY customer_id, sess ORDER BY timestamp, event_id))
            SELECT LEAST(event_type, e1) || ' <-> ' || GREATEST(event_type, e1) AS pair,
                   ANY_VALUE(customer_id), sess, MIN(period)
                   {"".join(f", ANY_VALUE({c})" for c in seg_cols)}
            FROM o WHERE e2 = event_type AND e1 <> event_type
              AND EPOCH_US(timestamp) - EPOCH_US(t2) <= {loop_within}
            GROUP BY 1, sess
            """
        )
        label_p, sets_p = grouping(", pair")
        df = frame(
            f"SELECT {label_p} AS segment, pair, period, COUNT(*) AS n FROM loops GROUP BY {sets_p}"
        )
        whole = df[df["segment"] == ALL]
        # a pair is watched from the day the log (as it stood) held enough looping sessions
        watched = {
            str(pair): _first_reached(np.cumsum(dense(g, "n")), settings.loop_min_total)
            for pair, g in whole.groupby("pair")
        }
        for key, g in df.groupby(["segment", "pair"]):
            seg, pair = str(key[0]), str(key[1])
            if watched.get(pair, len(periods)) < len(periods) and str(seg) in sessions:
                series.append(
                    Series(
                        "loop",
                        str(pair),
                        "count",
                        "up",
                        periods,
                        dense(g, "n"),
                        sessions[str(seg)],
                        str(seg),
                        watch_from=watched[pair],
                    )
                )

    has_values = bool(
        (
            con.execute("SELECT COUNT(*) FROM ev WHERE value IS NOT NULL AND value <> 0").fetchone()
            or (0,)
        )[0]
    )
    facts: dict[str, object] = {
        "first_event": first.astimezone(UTC).isoformat(),
        "last_event": last.astimezone(UTC).isoformat(),
        "events": int(n_events),
        "periods": len(periods),
        "period_days": pdays,
        "segments": {n: kept[n] for n in seg_names},
        "segments_missing": missing,
        "steps": [s.name for s in usable_steps],
        "steps_skipped": skipped,
        "has_values": has_values,
    }
    if missing:
        logger.info("segment columns not in this log: %s", ", ".join(missing))
    return KpiTables(
        series, facts, dict(zip(seg_names, seg_cols, strict=True)), usable_steps, rates,
        error_types, loop_types, has_values,
    )  # fmt: skip


def _first_reached(values: np.ndarray, minimum: float) -> int:
    """The first index where ``values`` reaches ``minimum`` (``len(values)`` if never)."""
    hits = np.nonzero(values >= minimum)[0]
    return int(hits[0]) if len(hits) else len(values)


# -- change detection ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """What a KPI is expected to be: a rate (or level), its spread, and for volumes a trend
    and weekday factors."""

    rate: float
    dispersion: float
    info: float  # trials (proportions) or events (counts) the rate rests on
    weekday: np.ndarray
    slope: float = 0.0
    origin: int = 0
    until: int | None = None  # the trend is not followed past this period (a frozen baseline)
    model_cv: float = 0.0  # relative error of a trend and weekday forecast, beyond the noise

    def expected(self, s: Series, idx: np.ndarray) -> np.ndarray:
        """Expected numerator of the periods ``idx`` (counts) or their rate (proportions)."""
        if s.kind == "proportion":
            return np.full(len(idx), self.rate)
        at = idx if self.until is None else np.minimum(idx, self.until)
        level = np.clip(self.rate + self.slope * (at - self.origin), 0.5 * self.rate, 2 * self.rate)
        return level * self.weekday[s.weekdays[idx]] * s.denominator[idx]


def baseline(s: Series, end: int, excluded: np.ndarray, d: DetectionSettings) -> Baseline | None:
    """The baseline from the usable periods up to ``end`` (inclusive), or None.

    Proportions: the pooled rate (Jeffreys-smoothed) and its over-dispersion. Counts: the rate
    per exposure; for seasonal series (volumes) weekday factors from the last eight weeks
    (shrunk towards 1) and a linear trend from the two halves of the window, so a log that grows
    or a ramp-up is followed instead of alerting.
    """
    if end < 0:
        return None
    idx = np.arange(max(0, end - d.baseline_periods + 1), end + 1)
    idx = idx[~excluded[idx]]
    idx = idx[s.denominator[idx] > 0]
    # volumes wait for a full baseline window of history: a log's first weeks are often its
    # ramp-up
    if len(idx) < d.min_baseline_periods or (s.seasonal and end + 1 < d.baseline_periods):
        return None
    k, n = s.numerator[idx], s.denominator[idx]
    if s.kind == "proportion":
        total = float(n.sum())
        if total < d.min_baseline_trials:
            return None
        p0 = float((k.sum() + 0.5) / (total + 1.0))
        var = total * p0 * (1 - p0)
        dispersion = max(1.0, float(np.sum((k - n * p0) ** 2)) / max(var, 1e-9))
        return Baseline(p0, dispersion, total, _ONES7)
    weekday = _ONES7
    if s.seasonal:
        widx = np.arange(max(0, end - 55), end + 1)
        widx = widx[~excluded[widx]]
        if len(widx) >= 21:
            wk = s.numerator[widx]
            wdays = s.weekdays[widx]
            mean = max(float(wk.mean()), 1e-9)
            sums = np.bincount(wdays, weights=wk, minlength=7)
            counts = np.bincount(wdays, minlength=7)
            weekday = (sums + 0.5 * mean) / (counts * mean + 0.5 * mean)
            weekday = weekday / weekday.mean()
    scale = n * weekday[s.weekdays[idx]]
    slope, origin, level = 0.0, int(end), float(k.sum() / scale.sum())
    if s.seasonal and len(idx) >= 14:
        y = k / scale
        half = len(idx) // 2
        m1, m2 = float(np.median(y[:half])), float(np.median(y[half:]))
        t1, t2 = float(idx[:half].mean()), float(idx[half:].mean())
        slope = SLOPE_SHARE * (m2 - m1) / max(t2 - t1, 1.0)
        level, origin = m2, round(t2)
    level = max(level, 0.5 / max(float(np.sum(n)), 1.0))
    info = max(float(k.sum()), 1.0)
    base = Baseline(level, 1.0, info, weekday, slope, origin)
    mu = np.maximum(base.expected(s, idx), 1e-9)
    dispersion = max(1.0, float(np.sum((k - mu) ** 2) / np.sum(mu)))
    cv = d.volume_model_cv if s.seasonal else 0.0
    return Baseline(level, dispersion, info, weekday, slope, origin, model_cv=cv)


_ONES7 = np.ones(7)
SLOPE_SHARE = 0.5  # of the trend extrapolated: a trend is followed, a ramp-up not overshot


def tail_probabilities(
    s: Series, base: Baseline, los: np.ndarray, hi: int, direction: Literal["down", "up"]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(p-values, observed, expected, support) of the windows ``lo..hi`` for each ``lo``.

    The p-value is the baseline's predictive probability of a window at least as far from it
    in ``direction``: beta-binomial for proportions (the beta's concentration is the baseline's
    trials over its dispersion, so an uncertain or noisy baseline asks for more evidence),
    negative binomial for counts (variance dispersion × mean plus the level's own uncertainty).
    For proportions, observed and expected count the trials that are "bad" for the KPI.
    """
    observed, expected, support = _window_sums(s, base, los, hi)
    return _p_values(s, base, observed, support if s.kind == "proportion" else expected,
                     direction), observed, expected, support  # fmt: skip


def _window_sums(
    s: Series, base: Baseline, los: np.ndarray, hi: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lo0 = int(los.min())
    idx = np.arange(lo0, hi + 1)
    back = hi - los  # offset of each window's first period from the end
    k = np.cumsum(s.numerator[idx][::-1])[back]
    if s.kind == "proportion":
        n = np.cumsum(s.denominator[idx][::-1])[back]
        return k, base.rate * n, n
    m = np.cumsum(base.expected(s, idx)[::-1])[back]
    return k, m, m


def _p_values(
    s: Series, base: Baseline, k: np.ndarray, n_or_m: np.ndarray, direction: str
) -> np.ndarray:
    kk = np.round(k)
    if s.kind == "proportion":
        c = max(base.info / base.dispersion, 2.0)
        a, b = base.rate * c, (1 - base.rate) * c
        nn = np.round(n_or_m)
        if direction == "up":
            p = stats.betabinom.sf(kk - 1, nn, a, b)
        else:
            p = stats.betabinom.cdf(kk, nn, a, b)
        return np.where(nn > 0, p, 1.0)
    m = np.maximum(n_or_m, 1e-12)
    var = base.dispersion * m + m * m * (base.dispersion / max(base.info, 1.0) + base.model_cv**2)
    extra = np.maximum(var - m, 1e-12 * m)
    r = m * m / extra
    q = r / (r + m)
    p = stats.nbinom.sf(kk - 1, r, q) if direction == "up" else stats.nbinom.cdf(kk, r, q)
    return np.where(n_or_m > 0, p, 1.0)


def _changed(
    s: Series,
    observed: np.ndarray,
    expected: np.ndarray,
    support: np.ndarray,
    direction: Literal["down", "up"],
    d: DetectionSettings,
) -> np.ndarray:
    """Which windows moved enough to matter (and have the support to be tested).

    The minimum support is waived for a relative change of at least ``large_change_relative``:
    a small segment never hides a large change.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        if s.kind == "proportion":
            cur = np.where(support > 0, observed / np.maximum(support, 1e-12), 0.0)
            p0 = expected / np.maximum(support, 1e-12)
            if direction == "up":
                excess, gap = observed - expected, cur - p0
                big = (gap >= d.shift_absolute) & (cur >= p0 * (1 + d.shift_relative))
            else:
                excess, gap = expected - observed, p0 - cur
                big = (gap >= d.shift_absolute) & (cur <= p0 * (1 - d.shift_relative))
            rel = gap / np.maximum(p0, 1e-9)
            enough = (support >= d.min_support) | (rel >= d.large_change_relative)
            return big & (excess >= d.min_excess) & enough & (support > 0)
        shift = d.volume_shift_relative if s.seasonal else d.shift_relative
        if direction == "up":
            big = (observed >= expected * (1 + shift)) & (observed - expected >= d.min_excess)
            rel = observed / np.maximum(expected, 1e-9) - 1
        else:
            big = (observed <= expected / (1 + shift)) & (expected - observed >= d.min_excess)
            rel = expected / np.maximum(observed, 1e-9) - 1
        return big & ((support >= d.min_support) | (rel >= d.large_change_relative))


@dataclass(frozen=True)
class Change:
    """A detected change of one KPI in one segment: when it started, was seen, ended."""

    kpi: str
    step: str
    direction: Literal["down", "up"]
    start: date
    detected: date
    end: date | None  # None: still going on at the end of the log
    baseline: float
    current: float
    segment: str = ALL
    evidence: float = 0.0
    settled: bool = False  # closed because the KPI stayed at its new level

    @property
    def change_absolute(self) -> float:
        return self.current - self.baseline

    @property
    def change_relative(self) -> float:
        return self.change_absolute / self.baseline if self.baseline else math.inf


def _summary(s: Series, base: Baseline, lo: int, hi: int) -> tuple[float, float]:
    """(baseline, current) of periods ``lo..hi`` in the KPI's own units."""
    idx = np.arange(lo, hi + 1)
    k, n = float(s.numerator[idx].sum()), float(s.denominator[idx].sum())
    if s.kind == "proportion":
        return base.rate, (k / n if n else float("nan"))
    m = float(base.expected(s, idx).sum())
    if s.seasonal:  # volumes: per period
        return m / len(idx), k / len(idx)
    return m / n if n else float("nan"), k / n if n else float("nan")


def _first_moved(
    s: Series, base: Baseline, lo: int, hi: int, direction: Literal["down", "up"]
) -> int:
    """The window's first period that moved in ``direction`` (a window's quiet first days are
    not part of the change: the start is not dated before the break)."""
    idx = np.arange(lo, hi + 1)
    k, n = s.numerator[idx], s.denominator[idx]
    expected = base.rate * n if s.kind == "proportion" else base.expected(s, idx)
    moved = (k > expected) if direction == "up" else (k < expected) & (n > 0)
    hits = np.nonzero(moved)[0]
    return int(idx[hits[0]]) if len(hits) else lo


def detect_changes(s: Series, d: DetectionSettings) -> list[Change]:
    """Changes of one KPI series, found period by period as a live run would find them.

    At each period the windows of the last 1 to ``max_window_periods`` periods are tested
    against a baseline that ends before the longest window (so a change does not leak into its
    own baseline); the evidence is ``-ln`` of the smallest tail probability, less
    ``ln(max_window_periods)`` for the windows tried, and an alert fires when it reaches
    ``threshold`` in a window that also moved enough (:func:`_changed`). The alert starts at
    the start of that window; it ends when the last ``close_periods`` periods (widened to
    ``min_support``) are back in range (tail probability above ``close_p_value``), or after
    ``max_alert_periods``, when the new level is taken as the baseline (``settled``). Periods
    inside a closed alert are left out of later baselines.
    """
    changes: list[Change] = []
    directions: list[Literal["down", "up"]] = ["down", "up"] if s.bad == "both" else [s.bad]
    w_max = d.max_window_periods
    penalty = math.log(w_max)
    usable = s.denominator > 0
    for direction in directions:
        excluded = np.zeros(len(s.periods), dtype=bool)
        free_from = 0  # windows never reach back into an earlier alert
        alert: dict[str, Any] | None = None
        for i in range(len(s.periods)):
            if alert is None:
                if not usable[i] or i < s.watch_from or (s.numerator[i] == 0 and direction == "up"):
                    continue
                base = baseline(s, i - w_max, excluded, d)
                if base is None:
                    continue
                los = np.arange(max(i - w_max + 1, free_from), i + 1)[::-1]
                if not len(los):
                    continue
                obs, exp, sup = _window_sums(s, base, los, i)
                moved = _changed(s, obs, exp, sup, direction, d)
                if not moved.any():
                    continue
                p = _p_values(
                    s, base, obs[moved], (sup if s.kind == "proportion" else exp)[moved],
                    direction,
                )  # fmt: skip
                evidence = -np.log(np.maximum(p, 1e-300)) - penalty
                j = int(np.argmax(evidence))
                if evidence[j] >= d.threshold:
                    start = _first_moved(s, base, int(los[moved][j]), i, direction)
                    frozen = dataclasses.replace(base, until=start)
                    alert = {"start": start, "detected": i, "base": frozen, "evidence": evidence[j]}
                continue
            base = alert["base"]
            lo = max(alert["start"], i - d.close_periods + 1)
            los = np.arange(max(alert["start"], i - w_max + 1), lo + 1)[::-1]
            _, _, sup = _window_sums(s, base, los, i)
            widened = np.nonzero(sup >= d.min_support)[0]
            lo = int(los[widened[0]]) if len(widened) else int(los[-1])
            obs, exp, sup = _window_sums(s, base, np.array([lo]), i)
            p_close = float(
                _p_values(s, base, obs, sup if s.kind == "proportion" else exp, direction)[0]
            )
            settled = i - alert["start"] + 1 >= d.max_alert_periods
            if p_close > d.close_p_value or settled:
                end = i if settled else max(lo - 1, alert["detected"])
                changes.append(_change(s, direction, alert, end, settled=settled))
                if not settled:
                    excluded[alert["start"] : end + 1] = True
                free_from = i + 1
                alert = None
        if alert is not None:
            changes.append(_change(s, direction, alert, None))
    return sorted(changes, key=lambda c: (c.start, c.kpi, c.step, c.segment))


def _change(
    s: Series,
    direction: Literal["down", "up"],
    alert: dict[str, Any],
    end: int | None,
    settled: bool = False,
) -> Change:
    last = end if end is not None else len(s.periods) - 1
    base_value, current = _summary(s, alert["base"], alert["start"], last)
    return Change(
        kpi=s.kpi,
        step=s.step,
        direction=direction,
        start=s.periods[alert["start"]],
        detected=s.periods[alert["detected"]],
        end=None if end is None else s.periods[end],
        baseline=float(base_value),
        current=float(current),
        segment=s.segment,
        evidence=float(alert["evidence"]),
        settled=settled,
    )


# -- incidents: changes grouped, with the customers they touch ----------------------------------


def _segment_filter(kt: KpiTables, segment: str, alias: str = "") -> str:
    if segment == ALL:
        return "TRUE"
    name, _, value = segment.partition("=")
    column = kt.segments.get(name)
    if column is None:
        return "FALSE"
    return f"{alias}{column} = '{value.replace(chr(39), chr(39) * 2)}'"


def affected_customers_sql(kt: KpiTables, change: Change, last: date) -> str:
    """A SELECT of the distinct customers a change touched (run on the KPI connection).

    Steps: customers with a trial that failed in the KPI's sense (no success, an error, errors,
    a support contact); rates and NPS: customers with those events; loops: customers whose
    sessions looped; a volume rise: customers with the event; a volume fall: customers who had
    the event in as many periods just before the change but none during it.
    """
    end = change.end or last
    when = f"period BETWEEN DATE '{change.start.isoformat()}' AND DATE '{end.isoformat()}'"
    seg = _segment_filter(kt, change.segment)
    step = change.step.replace("'", "''")
    if change.kpi.startswith("step_"):
        condition = {
            "step_conversion": "NOT ok",
            "step_error_rate": "failed",
            "step_errors": "n_err >= 2",
            "step_support": "support",
        }[change.kpi]
        return (
            f"SELECT DISTINCT customer_id FROM trials WHERE step = '{step}' AND {condition} "
            f"AND {when} AND {seg}"
        )
    if change.kpi == "loop":
        return f"SELECT DISTINCT customer_id FROM loops WHERE pair = '{step}' AND {when} AND {seg}"
    if change.kpi == "rate":
        rate = next((r for r in kt.rates if r.name == change.step), None)
        patterns = rate.events if rate is not None else []
        matches = " OR ".join(
            f"event_type GLOB '{t.replace(chr(39), chr(39) * 2)}'" for t in patterns
        )
        return (
            f"SELECT DISTINCT customer_id FROM ev WHERE ({matches or 'FALSE'}) AND {when} AND {seg}"
        )
    types = "TRUE" if change.step == "all events" else f"event_type = '{step}'"
    if change.kpi == "nps_detractors":
        types = "TRUE"
    if change.kpi == "volume" and change.direction == "down":
        span = (end - change.start).days + 1
        before = change.start - timedelta(days=span)
        return (
            f"SELECT DISTINCT customer_id FROM ev WHERE {types} AND {seg} AND period BETWEEN "
            f"DATE '{before.isoformat()}' "
            f"AND DATE '{(change.start - timedelta(days=1)).isoformat()}' "
            f"EXCEPT SELECT DISTINCT customer_id FROM ev WHERE {types} AND {seg} AND {when}"
        )
    return f"SELECT DISTINCT customer_id FROM ev WHERE {types} AND {when} AND {seg}"


KPI_LABELS = {
    "step_conversion": "success rate",
    "step_error_rate": "error rate",
    "step_errors": "share with repeated errors",
    "step_support": "share followed by a support contact",
    "rate": "events per active customer",
    "nps_detractors": "share of NPS detractors",
    "volume": "events per period",
    "loop": "looping sessions per session",
}


def describe(change: Change, affected: int) -> str:
    """One plain-language sentence about a change."""
    label = KPI_LABELS.get(change.kpi, change.kpi)
    if change.kpi in (
        "step_conversion",
        "step_error_rate",
        "step_errors",
        "step_support",
        "nps_detractors",
    ):
        size = (
            f"{label} went from {change.baseline:.0%} to {change.current:.0%} "
            f"({change.change_absolute * 100:+.0f} points)"
        )
    elif change.kpi in ("rate", "loop"):
        size = (
            f"{label} went from {change.baseline:.3f} to {change.current:.3f} "
            f"({change.change_relative:+.0%})"
        )
    else:
        size = (
            f"{label} went from {change.baseline:.1f} to {change.current:.1f} "
            f"({change.change_relative:+.0%})"
        )
    step = change.step
    what = {
        "step_conversion": f"The {step} step broke",
        "step_error_rate": f"Errors at the {step} step rose",
        "step_errors": f"Repeated errors after the {step} step rose",
        "step_support": f"Support contacts after the {step} step rose",
        "rate": f"{step.replace('_', ' ').capitalize()} rose",
        "nps_detractors": "NPS detractors rose",
        "volume": f"The volume of {step} " + ("fell" if change.direction == "down" else "jumped"),
        "loop": f"Customers looped between {step.replace(' <-> ', ' and ')}",
    }.get(change.kpi, f"{change.kpi} of {step} changed")
    where = "" if change.segment == ALL else f" ({change.segment})"
    if change.end is None:
        until = "and is still going on"
    elif change.settled:
        until = f"and settled at its new level on {change.end}"
    else:
        until = f"until {change.end}"
    return f"{what}{where} on {change.start} {until}: {size}; {affected:,} customers affected."


def group_changes(changes: list[Change], within_days: int) -> list[list[Change]]:
    """Changes that belong to one incident: they start within ``within_days`` of a member and
    overlap it in time (single linkage), so a broken step's KPIs and segments make one alert."""
    ordered = sorted(changes, key=lambda c: (c.start, c.detected))
    groups: list[list[Change]] = []
    for c in ordered:
        for g in groups:
            if any(
                abs((c.start - m.start).days) <= within_days
                and (m.end is None or c.start <= m.end + timedelta(days=within_days))
                for m in g
            ):
                g.append(c)
                break
        else:
            groups.append([c])
    return groups


def _severity(change: Change) -> float:
    if not math.isfinite(change.change_relative):
        return 10.0
    return abs(math.log1p(max(change.change_relative, -0.99)))


def build_incidents(
    con: duckdb.DuckDBPyConnection,
    kt: KpiTables,
    changes: list[Change],
    settings: MonitorSettings,
    last: date,
) -> tuple[pd.DataFrame, dict[int, int], dict[int, str]]:
    """One row per incident (grouped changes), ranked by severity, each change's
    affected-customer count and each change's incident (both by position in ``changes``).

    Severity is the value at stake when the log has values (what the affected customers spent
    in the ``value_lookback_days`` before the start), else the number of affected customers.
    """
    groups = group_changes(changes, settings.alerts.group_within_periods)
    position = {id(c): i for i, c in enumerate(changes)}
    per_change: dict[int, int] = {}
    incident_of: dict[int, str] = {}
    rows = []
    for g in groups:
        sqls = []
        for c in g:
            sql = affected_customers_sql(kt, c, last)
            per_change[position[id(c)]] = int(
                (con.execute(f"SELECT COUNT(*) FROM ({sql})").fetchone() or (0,))[0]
            )
            sqls.append(sql)
        # an incident located in segments counts their customers: its whole-population
        # changes are the same customers, diluted
        located = [q for c, q in zip(g, sqls, strict=True) if c.segment != ALL] or sqls
        union = " UNION ".join(f"({q})" for q in located)
        affected = int((con.execute(f"SELECT COUNT(*) FROM ({union})").fetchone() or (0,))[0])
        start = min(c.start for c in g)
        value: float | None = None
        if kt.has_values:
            lookback = start - timedelta(days=settings.alerts.value_lookback_days)
            row = con.execute(
                f"SELECT COALESCE(SUM(value), 0) FROM ev WHERE customer_id IN ({union}) "
                f"AND period >= DATE '{lookback.isoformat()}' "
                f"AND period < DATE '{start.isoformat()}'"
            ).fetchone()
            value = float(row[0]) if row else 0.0
        ongoing = any(c.end is None for c in g)
        end = None if ongoing else max(c.end for c in g if c.end is not None)
        lead = max(g, key=lambda c: (c.evidence, _severity(c)))
        name = f"{start.isoformat()}:{lead.kpi}:{lead.step}:{lead.segment}"
        incident_of.update({position[id(c)]: name for c in g})
        members = sorted(g, key=lambda c: -c.evidence)
        rows.append(
            {
                "incident": name,
                "start": start,
                "detected": min(c.detected for c in g),
                "end": end,
                "status": "ongoing" if ongoing else "ended",
                "kpis": sorted({f"{c.kpi}:{c.step}" for c in g}),
                "segments": sorted({c.segment for c in g}),
                "changes": len(g),
                "size": max(_severity(c) for c in g),
                "affected_customers": affected,
                "value_at_stake": value,
                "headline": describe(lead, per_change[position[id(lead)]]),
                "details": [describe(c, per_change[position[id(c)]]) for c in members],
            }
        )
    columns = [
        "incident", "start", "detected", "end", "status", "kpis", "segments", "changes",
        "size", "affected_customers", "value_at_stake", "headline", "details",
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=columns)
    if not frame.empty:
        key = frame["value_at_stake"] if kt.has_values else frame["affected_customers"]
        frame = (
            frame.assign(_key=key.astype(float))
            .sort_values(["_key", "size"], ascending=False)
            .drop(columns="_key")
            .reset_index(drop=True)
        )
        frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    else:
        frame.insert(0, "rank", pd.Series(dtype=int))
    return frame, per_change, incident_of


# -- drift --------------------------------------------------------------------------------------


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of a numeric feature, bins at the reference's quantiles.

    Missing values are a bin of their own; empty bins get half a count, so the index is
    finite. ``sum((cur% - ref%) * ln(cur% / ref%))``.
    """
    ref = np.asarray(reference, dtype=float)
    cur = np.asarray(current, dtype=float)
    if len(ref) == 0 or len(cur) == 0:
        raise ValueError("PSI needs a non-empty reference and current sample")
    finite = ref[np.isfinite(ref)]
    cuts = np.linspace(0, 1, bins + 1)[1:-1]
    edges = np.unique(np.quantile(finite, cuts)) if len(finite) else np.array([])

    def shares(x: np.ndarray) -> np.ndarray:
        missing = ~np.isfinite(x)
        counts = np.bincount(
            np.searchsorted(edges, x[~missing], side="right"), minlength=len(edges) + 1
        )
        return np.append(counts, missing.sum()).astype(float)

    return _psi_from_counts(shares(ref), shares(cur))


def categorical_psi(reference: pd.Series, current: pd.Series) -> float:
    """PSI of a categorical feature, one bin per level (missing is a level)."""
    ref = reference.astype("object").fillna("<missing>").value_counts()
    cur = current.astype("object").fillna("<missing>").value_counts()
    levels = ref.index.union(cur.index)
    return _psi_from_counts(
        ref.reindex(levels, fill_value=0).to_numpy(float),
        cur.reindex(levels, fill_value=0).to_numpy(float),
    )


def _psi_from_counts(ref: np.ndarray, cur: np.ndarray) -> float:
    keep = (ref + cur) > 0
    ref, cur = ref[keep] + 0.5, cur[keep] + 0.5
    p, q = ref / ref.sum(), cur / cur.sum()
    return float(np.sum((q - p) * np.log(q / p)))


Scorer = Callable[[pd.DataFrame], np.ndarray]
"""A model's score of snapshot rows (e.g. the champion churn model's calibrated risk)."""


@dataclass(frozen=True)
class DriftFrames:
    """The snapshot rows drift compares: a reference sample and the latest snapshot time."""

    reference: pd.DataFrame
    current: pd.DataFrame
    reference_end: datetime
    current_time: datetime


def drift_frames(snapshots: Path, settings: DriftSettings) -> DriftFrames:
    """The reference is the snapshot rows older than ``reference_end_days`` before the latest
    snapshot time (a sample of ``reference_sample_rows``), what a model trained now has seen;
    the current rows are those of the latest snapshot time."""
    glob = str(snapshots / "**" / "*.parquet").replace("'", "''")
    con = duckdb.connect()
    try:
        # snapshot timestamps may be stored in ns or us: compare them as plain TIMESTAMPTZ
        con.execute(
            f"CREATE VIEW snap AS SELECT * REPLACE "
            f"(CAST(event_timestamp AS TIMESTAMPTZ) AS event_timestamp) "
            f"FROM read_parquet('{glob}')"
        )
        latest = con.execute("SELECT MAX(event_timestamp) FROM snap").fetchone()
        if not latest or latest[0] is None:
            raise ValueError(f"no feature snapshots under {snapshots}")
        cutoff = latest[0] - timedelta(days=settings.reference_end_days)
        current = con.execute(
            "SELECT * FROM snap WHERE event_timestamp = CAST(? AS TIMESTAMPTZ)", [latest[0]]
        ).df()
        reference = con.execute(
            f"SELECT * FROM snap WHERE event_timestamp <= CAST(? AS TIMESTAMPTZ) "
            f"USING SAMPLE {settings.reference_sample_rows} ROWS (reservoir, 7)",
            [cutoff],
        ).df()
    finally:
        con.close()
    if reference.empty:
        raise ValueError(
            f"no snapshot is older than {settings.reference_end_days} days before the latest "
            f"({latest[0]}): the drift reference is empty (lower drift.reference_end_days)"
        )
    return DriftFrames(reference, current, cutoff, latest[0])


def _level(value: float, settings: DriftSettings) -> str:
    if value >= settings.psi_alert:
        return "alert"
    return "warn" if value >= settings.psi_warn else "ok"


def is_calendar_feature(name: str, settings: DriftSettings) -> bool:
    """Whether a feature moves with the calendar (tenure, days since an event): it grows by a
    day every day in a world that does not change, so its PSI says nothing about the world."""
    return any(fnmatchcase(name, p) for p in settings.calendar_features)


_WINDOW = re.compile(r"_(\d+)d(?:_|$)")


def feature_drift(
    frames: DriftFrames,
    settings: DriftSettings,
    model_features: Mapping[str, list[str]] | None = None,
    history_start: datetime | None = None,
) -> pd.DataFrame:
    """PSI per feature between the reference rows and the latest snapshot's rows.

    Features that grow with the calendar or the log's age (:func:`is_calendar_feature`:
    tenure, days since an event, lifetime totals) get the level ``calendar`` and no alert. A
    windowed feature (``..._90d``) is compared only with reference rows that had the window's
    full history behind them (``history_start``, the log's first event, plus the window): a
    90-day count in the log's first weeks is not a 90-day count. Without such rows it gets the
    level ``young``. ``model_features`` (model name -> the features it reads) fills the
    ``models`` column: which models a moved feature affects.
    """
    reference, current = frames.reference, frames.current
    ref_times = pd.to_datetime(reference["event_timestamp"], utc=True)
    rows = []
    for column in current.columns:
        if column in ("customer_id", "event_timestamp"):
            continue
        ref = reference[column]
        young = False
        match = _WINDOW.search(column)
        if match and history_start is not None:
            full = ref_times >= pd.Timestamp(history_start) + pd.Timedelta(days=int(match[1]))
            young = int(full.sum()) < settings.min_reference_rows
            ref = ref[full.to_numpy()]
        if young or is_calendar_feature(column, settings):
            value = float("nan")
        elif pd.api.types.is_numeric_dtype(current[column]) and not pd.api.types.is_bool_dtype(
            current[column]
        ):
            value = psi(ref.to_numpy(float), current[column].to_numpy(float), settings.bins)
        else:
            value = categorical_psi(ref, current[column])
        if is_calendar_feature(column, settings):
            level = "calendar"
        elif young:
            level = "young"
        else:
            level = _level(value, settings)
        models = sorted(m for m, feats in (model_features or {}).items() if column in feats)
        rows.append({"feature": column, "psi": value, "level": level, "models": ", ".join(models)})
    out = pd.DataFrame(rows, columns=["feature", "psi", "level", "models"])
    out.attrs["reference_end"] = str(frames.reference_end)
    out.attrs["current"] = str(frames.current_time)
    return out.sort_values(
        ["psi", "feature"], ascending=[False, True], ignore_index=True, na_position="last"
    )


def _with_moves(drift: pd.DataFrame, judged: pd.DataFrame, column: str) -> pd.DataFrame:
    """Adds ``column``: for each feature, the models reading it whose ``judged`` row (score or
    performance drift) is at warn or alert."""
    moved = {
        str(s).split(" v")[0]
        for s, lv in zip(judged["score"], judged["level"], strict=True)
        if lv in ("warn", "alert")
    }
    out = drift.copy()
    out[column] = [
        ", ".join(m for m in str(models).split(", ") if m and m in moved)
        for models in drift["models"]
    ]
    return out


@dataclass(frozen=True)
class LabelledModel:
    """What a model's performance is measured on: its label (``churn``, ``conversion``) and
    the snapshot cutoffs of its test period (rows it was judged on and never trained on)."""

    label: str
    test_from: datetime
    test_to: datetime


PERFORMANCE_COLUMNS = [
    "score", "label", "reference_from", "reference_to", "reference_rows", "reference_auc",
    "recent_from", "recent_to", "recent_rows", "recent_auc", "recent_rate", "recent_mean_score",
    "auc_change", "level",
]  # fmt: skip


def compare_performance(
    reference: tuple[np.ndarray, np.ndarray],
    recent: tuple[np.ndarray, np.ndarray],
    settings: DriftSettings,
) -> dict[str, Any]:
    """AUC of (labels, scores) on the reference and the recent rows, and the verdict: ``alert``
    when the AUC fell by ``auc_drop_alert`` or more, ``warn`` by ``auc_drop_warn``, ``too few
    labels`` when either side has fewer than ``min_label_rows`` positives or negatives."""
    from sklearn.metrics import roc_auc_score

    out: dict[str, Any] = {}
    enough = True
    for side, (y, score) in (("reference", reference), ("recent", recent)):
        y = np.asarray(y, dtype=int)
        positives = int(y.sum())
        out[f"{side}_rows"] = len(y)
        if min(positives, len(y) - positives) < settings.min_label_rows:
            enough = False
            out[f"{side}_auc"] = float("nan")
        else:
            out[f"{side}_auc"] = float(roc_auc_score(y, np.asarray(score, dtype=float)))
    y, score = recent
    out["recent_rate"] = float(np.mean(y)) if len(y) else float("nan")
    out["recent_mean_score"] = float(np.mean(score)) if len(score) else float("nan")
    if not enough:
        out["auc_change"], out["level"] = float("nan"), "too few labels"
        return out
    change = out["recent_auc"] - out["reference_auc"]
    out["auc_change"] = change
    out["level"] = (
        "alert"
        if -change >= settings.auc_drop_alert
        else "warn"
        if -change >= settings.auc_drop_warn
        else "ok"
    )
    return out


def performance_drift(
    lake: Path,
    snapshots: Path,
    journey: JourneyMap,
    scorers: Mapping[str, Scorer],
    labelled: Mapping[str, LabelledModel],
    settings: DriftSettings,
) -> pd.DataFrame:
    """Whether each model still ranks customers as well as on its test period, where labels
    have matured.

    The reference is the model's own test period (snapshot rows it never trained on); the
    recent rows are the snapshots after it whose label horizon has passed by the log's last
    event, the last ``performance_window_days`` of them. Both are labelled by the training
    labels' own definition (:func:`training.labels.compute_labels`, active customers only) and
    scored by the model; a fall of the AUC says the model got worse, a recent base rate far from
    the mean score that its calibration moved. Without matured rows after the test period the
    level is ``no matured labels``.
    """
    from training.labels import compute_labels, open_lake

    glob = str(snapshots / "**" / "*.parquet").replace("'", "''")
    rows: list[dict[str, Any]] = []
    con = open_lake(lake, journey)
    try:
        last = con.execute("SELECT MAX(timestamp) FROM events").fetchone()
        log_end = last[0] if last else None
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW snap AS SELECT * REPLACE "
            f"(CAST(event_timestamp AS TIMESTAMPTZ) AS event_timestamp) "
            f"FROM read_parquet('{glob}')"
        )
        times = [r[0] for r in con.execute("SELECT DISTINCT event_timestamp FROM snap").fetchall()]
        h = journey.horizons
        for name, model in labelled.items():
            if name not in scorers:
                continue
            horizon = timedelta(
                days={"churn": h.churn_days, "conversion": h.conversion_days}.get(
                    model.label, max(h.churn_days, h.conversion_days, h.next_step_days)
                )
            )
            matured = sorted(t for t in times if log_end is not None and t + horizon <= log_end)
            reference = [t for t in matured if model.test_from <= t <= model.test_to]
            after = [t for t in matured if t > model.test_to]
            recent = [
                t for t in after if t > after[-1] - timedelta(days=settings.performance_window_days)
            ]
            row: dict[str, Any] = {
                "score": name,
                "label": model.label,
                "reference_from": min(reference, default=None),
                "reference_to": max(reference, default=None),
                "recent_from": min(recent, default=None),
                "recent_to": max(recent, default=None),
            }
            if not reference or not recent:
                row["level"] = "no matured labels"
                rows.append(row)
                continue
            sides = []
            for cutoffs in (reference, recent):
                con.register("cutoffs_df", pd.DataFrame({"t": cutoffs}))
                frame = con.execute(
                    "SELECT s.* FROM snap s JOIN cutoffs_df c ON s.event_timestamp = c.t"
                ).df()
                con.unregister("cutoffs_df")
                labels = compute_labels(
                    con,
                    journey,
                    frame[["customer_id", "event_timestamp"]].rename(
                        columns={"event_timestamp": "cutoff"}
                    ),
                )
                frame["cutoff"] = pd.to_datetime(frame["event_timestamp"], utc=True)
                labels["cutoff"] = pd.to_datetime(labels["cutoff"], utc=True)
                merged = frame.merge(labels, on=["customer_id", "cutoff"], how="inner")
                merged = merged[merged["active"].astype(bool)].reset_index(drop=True)
                y = merged[model.label].to_numpy(dtype=float)
                sides.append((y, np.asarray(scorers[name](merged), dtype=float)))
            row.update(compare_performance(sides[0], sides[1], settings))
            rows.append(row)
    finally:
        con.close()
    return pd.DataFrame(rows, columns=PERFORMANCE_COLUMNS)


def score_drift(
    frames: DriftFrames, scorers: Mapping[str, Scorer], settings: DriftSettings
) -> pd.DataFrame:
    """PSI and mean shift of each model's score between the reference and the latest rows.

    A score can drift while no single feature does (many small moves the model adds up), and
    a drifting feature the model ignores moves no score: both views are reported.
    """
    rows = []
    for name, scorer in scorers.items():
        ref = np.asarray(scorer(frames.reference), dtype=float)
        cur = np.asarray(scorer(frames.current), dtype=float)
        value = psi(ref, cur, settings.bins)
        rows.append(
            {
                "score": name,
                "reference_mean": float(np.nanmean(ref)),
                "current_mean": float(np.nanmean(cur)),
                "psi": value,
                "level": _level(value, settings),
            }
        )
    return pd.DataFrame(rows, columns=["score", "reference_mean", "current_mean", "psi", "level"])


# -- the whole run ------------------------------------------------------------------------------


@dataclass
class MonitorResult:
    """KPIs, alerts, incidents and drift of one monitoring run."""

    kpis: pd.DataFrame  # period, kpi, step, segment, numerator, denominator, value
    alerts: pd.DataFrame  # one row per change of one KPI in one segment
    drift: pd.DataFrame | None
    facts: dict[str, object] = field(default_factory=dict)
    score_drift: pd.DataFrame | None = None
    incidents: pd.DataFrame = field(default_factory=pd.DataFrame)
    performance: pd.DataFrame | None = None

    def write(self, out: Path) -> list[Path]:
        """kpis.parquet, alerts.csv, alerts.json, incidents.jsonl, drift.csv, score_drift.csv,
        performance.csv, summary.json, each atomically."""
        out.mkdir(parents=True, exist_ok=True)
        incidents = self.incidents
        written = [
            _atomic(out / "kpis.parquet", lambda p: self.kpis.to_parquet(p, index=False)),
            _atomic(out / "alerts.csv", lambda p: self.alerts.to_csv(p, index=False)),
            _atomic(
                out / "alerts.json",
                lambda p: p.write_text(
                    self.alerts.to_json(orient="records", date_format="iso", indent=1)
                ),
            ),
            _atomic(out / "incidents.jsonl", lambda p: p.write_text(incidents_jsonl(incidents))),
        ]
        drift = self.drift
        if drift is not None:
            written.append(_atomic(out / "drift.csv", lambda p: drift.to_csv(p, index=False)))
        scores = self.score_drift
        if scores is not None:
            written.append(
                _atomic(out / "score_drift.csv", lambda p: scores.to_csv(p, index=False))
            )
        performance = self.performance
        if performance is not None:
            written.append(
                _atomic(out / "performance.csv", lambda p: performance.to_csv(p, index=False))
            )
        written.append(
            _atomic(
                out / "summary.json",
                lambda p: p.write_text(json.dumps(self.facts, indent=1, default=str)),
            )
        )
        return written


def incident_records(incidents: pd.DataFrame) -> list[dict[str, Any]]:
    """Incidents as JSON-ready dicts (dates as ISO strings, no NaN)."""
    out = []
    for row in incidents.to_dict(orient="records"):
        record: dict[str, Any] = {}
        for key, value in row.items():
            if isinstance(value, date | datetime):
                value = value.isoformat()
            elif isinstance(value, np.generic):
                value = value.item()
            elif (isinstance(value, float) and not math.isfinite(value)) or value is pd.NaT:
                value = None
            record[str(key)] = value
        out.append(record)
    return out


def incidents_jsonl(incidents: pd.DataFrame) -> str:
    """One JSON object a line, most severe first."""
    return "".join(json.dumps(r, default=str) + "\n" for r in incident_records(incidents))


def read_incidents_jsonl(path: Path) -> pd.DataFrame:
    """Incidents as :meth:`MonitorResult.write` left them (an empty frame without the file)."""
    if not path.is_file():
        return pd.DataFrame()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return pd.DataFrame(rows)


def _atomic(path: Path, write: object) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))  # type: ignore[operator]
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


ALERT_COLUMNS = [
    "incident", "kpi", "step", "segment", "direction", "start", "detected", "end", "settled",
    "baseline", "current", "change_absolute", "change_relative", "evidence",
    "affected_customers", "message",
]  # fmt: skip


def detect_all(series: list[Series], settings: MonitorSettings) -> list[Change]:
    """Every change of every series (loops need ``loop_min_per_period`` loops a period)."""
    changes = []
    for s in series:
        for c in detect_changes(s, settings.detection):
            if s.kpi == "loop" and s.segment == ALL:
                # as a run on the detection day saw it (not what came after)
                first = s.periods.index(c.start)
                last = s.periods.index(c.detected)
                per_period = float(s.numerator[first : last + 1].mean())
                if per_period < settings.loop_min_per_period / 5:
                    continue
            changes.append(c)
    return changes


def run_monitor(
    lake: Path,
    settings: MonitorSettings,
    snapshots: Path | None = None,
    scorers: Mapping[str, Scorer] | None = None,
    journey: JourneyMap | None = None,
    until: date | None = None,
    model_features: Mapping[str, list[str]] | None = None,
    labelled: Mapping[str, LabelledModel] | None = None,
) -> MonitorResult:
    """KPIs of the lake per segment, their changes grouped into incidents, and (when snapshots
    exist) feature drift and, with ``scorers``, score drift.

    ``until`` monitors the log as it stood at the end of that day (the backtest's replay).
    With ``labelled`` (scorer name -> its label and test period) and a journey map, each
    model's performance where labels have matured (:func:`performance_drift`).
    """
    con = duckdb.connect()
    try:
        kt = compute_kpis(con, lake, settings, journey, until)
        series, facts = kt.series, kt.facts
        rows = []
        for s in series:
            values = s.rate()
            for p, k, n, v in zip(s.periods, s.numerator, s.denominator, values, strict=True):
                if n > 0 or k > 0:
                    rows.append((p, s.kpi, s.step, s.segment, float(k), float(n), float(v)))
        changes = detect_all(series, settings)
        last = series[0].periods[-1] if series else date.today()
        incidents, per_change, incident_of = build_incidents(con, kt, changes, settings, last)
    finally:
        con.close()
    kpis = pd.DataFrame(
        rows, columns=["period", "kpi", "step", "segment", "numerator", "denominator", "value"]
    )
    alerts = [
        {
            "incident": incident_of.get(i),
            "kpi": c.kpi,
            "step": c.step,
            "segment": c.segment,
            "direction": c.direction,
            "start": c.start,
            "detected": c.detected,
            "end": c.end,
            "settled": c.settled,
            "baseline": c.baseline,
            "current": c.current,
            "change_absolute": c.change_absolute,
            "change_relative": c.change_relative,
            "evidence": c.evidence,
            "affected_customers": per_change.get(i, 0),
            "message": describe(c, per_change.get(i, 0)),
        }
        for i, c in enumerate(changes)
    ]
    alert_frame = pd.DataFrame(alerts, columns=ALERT_COLUMNS)
    drift = scores = performance = None
    if snapshots is not None and any(snapshots.rglob("*.parquet")):
        frames = drift_frames(snapshots, settings.drift)
        history = pd.Timestamp(str(facts["first_event"])).to_pydatetime()
        drift = feature_drift(frames, settings.drift, model_features, history)
        if scorers:
            scores = score_drift(frames, scorers, settings.drift)
            drift = _with_moves(drift, scores, "scores_moved")
            if labelled and journey is not None:
                performance = performance_drift(
                    lake, snapshots, journey, scorers, labelled, settings.drift
                )
                drift = _with_moves(drift, performance, "performance_moved")
        facts["drift_reference_end"] = drift.attrs.get("reference_end")
        facts["drift_current"] = drift.attrs.get("current")
        facts["drift_alerts"] = int((drift["level"] == "alert").sum())
    facts["alerts"] = len(alert_frame)
    facts["incidents"] = len(incidents)
    facts["ongoing_incidents"] = (
        int((incidents["status"] == "ongoing").sum()) if len(incidents) else 0
    )
    facts["kpis"] = len(series)
    logger.info(
        "monitoring: %d KPI series, %d changes, %d incidents",
        len(series), len(alert_frame), len(incidents),
    )  # fmt: skip
    return MonitorResult(kpis, alert_frame, drift, facts, scores, incidents, performance)
