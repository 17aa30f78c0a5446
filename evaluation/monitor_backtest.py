"""Backtest of journey monitoring: replay a log day by day and score the alerts against known
incidents (detection delay, false alerts per month).

The detector (:func:`evaluation.monitor.detect_changes`) is causal: what it decides at a period
depends only on that period and the ones before. A live run on day ``d`` sees a KPI's periods
up to ``d`` minus the time the KPI needs to be complete (a step's trials count in the period
they are judged in, ``within_hours`` after they start, so they are complete with it; whether a
support contact followed is known ``support_within_hours`` after the start). So the replay
computes the KPIs once and takes each alert's *live* detection day as its detection period plus
that lag; :func:`live_day` is tested against runs on logs cut at each day.

Incidents (one per group of changes, see :func:`evaluation.monitor.group_changes`) are matched
to known incidents by time, change by change: a change raised (live) on or after a known
incident's start, that starts before its end plus ``grace_days`` and is still open at its start
minus ``grace_days``, is about it, and its alert belongs to it; an alert none of whose changes
is about a known incident (one raised before the incident began included) is false. A known
incident is detected on the first live day one of its changes was raised; its delay counts
from its start.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from evaluation.monitor import (
    Change,
    MonitorSettings,
    compute_kpis,
    detect_all,
    group_changes,
)
from journeyml.config import JourneyMap


class IncidentFileError(ValueError):
    """The known-incidents file is missing or malformed (the message says where)."""


@dataclass(frozen=True)
class KnownIncident:
    """One incident known to have happened (from an injector's ground truth or a post-mortem)."""

    name: str
    start: date
    end: date
    segment: str | None = None
    affected_customers: int | None = None


def _day(value: Any, origin: date, where: str) -> date:
    if isinstance(value, int) and not isinstance(value, bool):
        return origin + timedelta(days=value)
    if isinstance(value, str):
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            pass
    raise IncidentFileError(f"{where}: expected an ISO date or a day number, got {value!r}")


def load_known_incidents(path: Path, origin: date) -> list[KnownIncident]:
    """Reads a JSON list of incidents (or ``{"incidents": [...]}``).

    Each has ``start`` and ``end`` (inclusive; ISO dates, or day numbers counted from
    ``origin``, the log's first day), or the incident injector's ``start_date`` /
    ``end_date_exclusive`` or ``start_day`` / ``end_day`` (the end exclusive), and optionally
    ``name`` (or ``kind``), ``segment`` and ``affected_customers``.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise IncidentFileError(f"cannot read the incidents file {path}: {exc}") from None
    items = data.get("incidents") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise IncidentFileError(f"{path}: expected a list of incidents (or {{'incidents': [...]}})")
    out = []
    for i, item in enumerate(items):
        where = f"{path}: incident {i}"
        if not isinstance(item, dict):
            raise IncidentFileError(f"{where}: expected an object")
        if "start_date" in item:
            start = _day(item["start_date"], origin, f"{where}.start_date")
        elif "start" in item or "start_day" in item:
            start = _day(item.get("start", item.get("start_day")), origin, f"{where}.start")
        else:
            raise IncidentFileError(f"{where}: needs start (or start_day, start_date)")
        # an exclusive end (the injector's end_day, end_date_exclusive) ends the day before
        if "end_date_exclusive" in item:
            end = _day(item["end_date_exclusive"], origin, where) - timedelta(days=1)
        elif "end_day" in item:
            end = _day(item["end_day"], origin, f"{where}.end_day") - timedelta(days=1)
        elif "end" in item:
            end = _day(item["end"], origin, f"{where}.end")
        else:
            raise IncidentFileError(f"{where}: needs end (or end_day, end_date_exclusive)")
        segment = item.get("segment")
        if isinstance(segment, dict):
            segment = ", ".join(f"{k}={v}" for k, v in segment.items())
        affected = item.get("affected_customers")
        if isinstance(affected, list):
            affected = len(affected)
        out.append(
            KnownIncident(
                name=str(item.get("name") or item.get("kind") or f"incident {i}"),
                start=start,
                end=end,
                segment=str(segment) if segment is not None else None,
                affected_customers=int(affected) if affected is not None else None,
            )
        )
    return out


def kpi_lag_days(change: Change, settings: MonitorSettings, step_hours: dict[str, float]) -> int:
    """Days after a period's end before a live run sees that period of this KPI complete (a
    step's trials count in the period they are judged in; the support contacts after them are
    known ``support_within_hours`` after the trial started)."""
    if change.kpi == "step_support":
        later = max(settings.support_within_hours - step_hours.get(change.step, 24.0), 0.0)
        return math.ceil(later / 24)
    return 0


def live_day(change: Change, settings: MonitorSettings, step_hours: dict[str, float]) -> date:
    """The day a live (daily) run would have raised this change."""
    period_end = change.detected + timedelta(days=settings.period_days - 1)
    return period_end + timedelta(days=kpi_lag_days(change, settings, step_hours))


@dataclass
class BacktestResult:
    """Known incidents with their detection, the alerts that matched none, and the figures."""

    incidents: pd.DataFrame  # name, start, end, segment, detected, delay_days, alerts
    false_alerts: pd.DataFrame  # start, live_day, kpis, segments
    summary: dict[str, Any]


def backtest(
    lake: Path,
    settings: MonitorSettings,
    known: list[KnownIncident],
    journey: JourneyMap | None = None,
    grace_days: int = 3,
    within_days: int = 3,
) -> BacktestResult:
    """Replays the lake day by day (see the module documentation) and scores the alerts."""
    con = duckdb.connect()
    try:
        kt = compute_kpis(con, lake, settings, journey)
    finally:
        con.close()
    changes = detect_all(kt.series, settings)
    step_hours = {s.name: s.within_hours for s in kt.steps}
    groups = group_changes(changes, settings.alerts.group_within_periods)
    periods = kt.series[0].periods if kt.series else []
    first = periods[0] if periods else date.today()
    last = periods[-1] if periods else first
    warmup = settings.detection.min_baseline_periods + settings.detection.max_window_periods
    monitored_from = first + timedelta(days=warmup * settings.period_days)
    rows: list[dict[str, Any]] = []
    false_rows: list[dict[str, Any]] = []
    matched: dict[int, list[tuple[date, list[Change]]]] = {i: [] for i in range(len(known))}
    for g in groups:
        start = min(c.start for c in g)
        day = min(live_day(c, settings, step_hours) for c in g)
        owners: dict[int, date] = {}
        # a change is about a known incident when it is raised on or after its start, starts
        # before its end and is open at its start; an alert (a group) belongs to the incidents
        # of its changes, and a change raised before the incident began (noise the incident's
        # changes were grouped with) does not make the alert false nor date its detection
        for c in g:
            raised = live_day(c, settings, step_hours)
            for i, k in enumerate(known):
                if (
                    c.start <= k.end + timedelta(days=grace_days)
                    and raised >= k.start
                    and (c.end or last) >= k.start - timedelta(days=grace_days)
                ):
                    owners[i] = min(owners.get(i, raised), raised)
        if owners:
            for i, raised in owners.items():
                matched[i].append((raised, g))
        else:
            false_rows.append(
                {
                    "start": start,
                    "live_day": day,
                    "kpis": sorted({f"{c.kpi}:{c.step}" for c in g}),
                    "segments": sorted({c.segment for c in g}),
                }
            )
    for i, k in enumerate(known):
        hits = matched[i]
        detected = min((d for d, _ in hits), default=None)
        delay = (detected - k.start).days if detected is not None else None
        rows.append(
            {
                "name": k.name,
                "start": k.start,
                "end": k.end,
                "segment": k.segment,
                "affected_customers": k.affected_customers,
                "detected": detected,
                "delay_days": delay,
                "within_target": delay is not None and delay <= within_days,
                "alerts": sorted({f"{c.kpi}:{c.step}@{c.segment}" for _, g in hits for c in g}),
            }
        )
    monitored_days = max((last - monitored_from).days + 1, 1)
    months = monitored_days / 30.44
    # false alerts are counted on the days no known incident (with its grace) covers
    covered = sum(
        max(
            0,
            (min(k.end + timedelta(days=grace_days), last) - max(k.start, monitored_from)).days + 1,
        )
        for k in known
    )
    clean_months = max(monitored_days - covered, 1) / 30.44
    incidents = pd.DataFrame(
        rows,
        columns=[
            "name", "start", "end", "segment", "affected_customers", "detected", "delay_days",
            "within_target", "alerts",
        ],
    )  # fmt: skip
    false_alerts = pd.DataFrame(false_rows, columns=["start", "live_day", "kpis", "segments"])
    delays = [r["delay_days"] for r in rows if r["delay_days"] is not None]
    summary = {
        "log_first_day": first.isoformat(),
        "log_last_day": last.isoformat(),
        "monitored_from": monitored_from.isoformat(),
        "monitored_months": round(months, 2),
        "known_incidents": len(known),
        "detected": len(delays),
        "detected_within_target": int(sum(bool(r["within_target"]) for r in rows)),
        "target_days": within_days,
        "max_delay_days": max(delays) if delays else None,
        "median_delay_days": float(pd.Series(delays).median()) if delays else None,
        "false_alerts": len(false_rows),
        "false_alerts_per_month": round(len(false_rows) / clean_months, 3),
        "kpi_series": len(kt.series),
    }
    return BacktestResult(incidents, false_alerts, summary)
