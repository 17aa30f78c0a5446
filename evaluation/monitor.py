"""Journey health monitoring: KPIs per step and period, change detection, feature drift.

The KPIs are computed by DuckDB over the event lake in one pass per kind (nothing is loaded
into memory but the small per-period tables):

- **step conversion** and **step error rate**: for each event that starts a step (e.g.
  ``checkout_start``), whether the same customer reaches the step's success event (``purchase``)
  within the step's time, and whether a failure event (``payment_failed``) comes first;
- **rates per active customer**: complaints and support contacts per customer active that
  period;
- **volume** of every event type;
- **loops**: customers going A → B → A → B between two event types within a short time.

Change detection (:func:`detect_changes`) is a one-sided CUSUM of the log-likelihood ratio
between the baseline rate (trailing periods, alert periods left out) and a rate shifted by the
configured size, binomial for proportions and Poisson for counts. The ratio is divided by the
baseline's over-dispersion (the variance of the per-period values against the binomial or
Poisson variance, at least 1), so a naturally noisy KPI needs more evidence: a quasi-likelihood
CUSUM. CUSUM was chosen over a per-period test because it adds evidence across periods (a
moderate break is found within days, a one-day blip is not an alert) and because the period
where the statistic last left zero is the maximum-likelihood estimate of when the change began
— the alert's start date. Counts get weekday factors from the baseline, so a quiet Sunday is
not a break.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np
import pandas as pd
from pydantic import Field, PositiveFloat, PositiveInt, field_validator

from journeyml.config import StrictModel, config_path, load_config
from journeyml.events.lake import read_events_sql

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
    """CUSUM change detection (see :func:`detect_changes`)."""

    baseline_periods: PositiveInt = 28
    min_baseline_periods: PositiveInt = 14
    min_support: PositiveInt = 10
    shift_relative: PositiveFloat = 0.25
    shift_absolute: PositiveFloat = 0.05
    volume_shift_relative: PositiveFloat = 1.0
    threshold: PositiveFloat = 12.0


class DriftSettings(StrictModel):
    """Population stability (PSI) of features between a reference and the latest snapshot."""

    bins: int = Field(default=10, ge=2, le=100)
    reference_end_days: PositiveInt = 35
    reference_sample_rows: PositiveInt = 200_000
    psi_warn: PositiveFloat = 0.1
    psi_alert: PositiveFloat = 0.25


class MonitorSettings(StrictModel):
    """``configs/monitoring.yaml``."""

    period_days: PositiveInt = 1
    steps: list[StepSettings] = Field(default_factory=list)
    rates: list[RateSettings] = Field(default_factory=list)
    volume_min_per_period: PositiveInt = 30
    loop_within_hours: PositiveFloat = 2.0
    loop_min_per_period: PositiveInt = 5
    detection: DetectionSettings = DetectionSettings()
    drift: DriftSettings = DriftSettings()

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


@dataclass(frozen=True)
class Series:
    """One KPI, period by period: ``numerator`` out of ``denominator``.

    For a proportion the denominator is the number of trials (step starts); for a count it is
    the exposure (active customers for a rate, 1 for a raw volume).
    """

    kpi: str
    step: str
    kind: Literal["proportion", "count"]
    bad: Direction
    periods: list[date]
    numerator: np.ndarray
    denominator: np.ndarray

    def rate(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.denominator > 0, self.numerator / self.denominator, np.nan)


def _in_list(values: list[str]) -> str:
    return "(" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + ")"


def _period_sql(column: str, period_days: int, origin: date) -> str:
    if period_days == 1:
        return f"CAST({column} AT TIME ZONE 'UTC' AS DATE)"
    return (
        f"(DATE '{origin.isoformat()}' + CAST(FLOOR(DATE_DIFF('day', DATE '{origin.isoformat()}', "
        f"CAST({column} AT TIME ZONE 'UTC' AS DATE)) / {period_days}) * {period_days} AS INTEGER))"
    )


class LogTooShortError(ValueError):
    """The log does not hold enough periods to monitor."""


def compute_kpis(
    con: duckdb.DuckDBPyConnection, lake: Path, settings: MonitorSettings
) -> tuple[list[Series], dict[str, object]]:
    """Every configured KPI per period over the lake's events (DuckDB, out-of-core).

    Returns the series and facts about the log (first and last event, periods, events).
    """
    con.execute(f"CREATE OR REPLACE TEMP VIEW ev AS {read_events_sql(lake)}")
    first, last, n_events = con.execute(
        "SELECT MIN(timestamp), MAX(timestamp), COUNT(*) FROM ev"
    ).fetchone() or (None, None, 0)
    if not n_events:
        raise LogTooShortError(f"the lake {lake} holds no events: nothing to monitor")
    origin = first.astimezone(UTC).date()
    end = last.astimezone(UTC).date()
    pdays = settings.period_days
    periods = [origin + timedelta(days=i) for i in range(0, (end - origin).days + 1, pdays)]
    # the last period is complete only if the log reaches its end
    if periods and periods[-1] + timedelta(days=pdays) > end + timedelta(days=1):
        periods = periods[:-1]
    if len(periods) < settings.detection.min_baseline_periods + 1:
        raise LogTooShortError(
            f"the log spans {len(periods)} complete period(s) of {pdays} day(s) "
            f"({origin} to {end}); monitoring needs at least "
            f"{settings.detection.min_baseline_periods + 1} (detection.min_baseline_periods + 1)"
        )
    index = {p: i for i, p in enumerate(periods)}
    period = _period_sql("timestamp", pdays, origin)
    series: list[Series] = []

    def frame(sql: str) -> pd.DataFrame:
        return con.execute(sql).df()

    def dense(df: pd.DataFrame, column: str) -> np.ndarray:
        out = np.zeros(len(periods))
        for p, v in zip(df["period"], df[column], strict=True):
            i = index.get(pd.Timestamp(p).date())
            if i is not None:
                out[i] = float(v)
        return out

    active = frame(
        f"SELECT {period} AS period, COUNT(DISTINCT customer_id) AS n FROM ev GROUP BY 1"
    )
    active_n = dense(active, "n")

    for step in settings.steps:
        within = int(step.within_hours * 3_600_000_000)
        failure = (
            f"""ASOF LEFT JOIN (SELECT customer_id, timestamp AS tf FROM ev
                 WHERE event_type IN {_in_list(step.failure)}) x
                 ON f.customer_id = x.customer_id AND f.t < x.tf"""
            if step.failure
            else ""
        )
        tf = "x.tf" if step.failure else "NULL::TIMESTAMPTZ"
        df = frame(
            f"""
            WITH f AS (SELECT customer_id, timestamp AS t FROM ev
                       WHERE event_type IN {_in_list(step.from_)}
                         AND EPOCH_US(timestamp) + {within} <= {int(last.timestamp() * 1e6)}),
                 s AS (SELECT customer_id, timestamp AS ts FROM ev
                       WHERE event_type IN {_in_list(step.success)}),
                 j AS (SELECT f.customer_id, f.t, s.ts, {tf} AS tf FROM f
                       ASOF LEFT JOIN s ON f.customer_id = s.customer_id AND f.t < s.ts
                       {failure})
            SELECT {_period_sql("t", pdays, origin)} AS period, COUNT(*) AS n,
                   COUNT(*) FILTER (WHERE ts IS NOT NULL
                       AND EPOCH_US(ts) - EPOCH_US(t) <= {within}
                       AND (tf IS NULL OR tf > ts)) AS ok,
                   COUNT(*) FILTER (WHERE tf IS NOT NULL
                       AND EPOCH_US(tf) - EPOCH_US(t) <= {within}
                       AND (ts IS NULL OR tf < ts)) AS failed
            FROM j GROUP BY 1
            """
        )
        n = dense(df, "n")
        series.append(
            Series("step_conversion", step.name, "proportion", "down", periods, dense(df, "ok"), n)
        )
        if step.failure:
            series.append(
                Series(
                    "step_error_rate", step.name, "proportion", "up", periods,
                    dense(df, "failed"), n,
                )
            )  # fmt: skip

    for rate in settings.rates:
        df = frame(
            f"SELECT {period} AS period, COUNT(*) AS n FROM ev "
            f"WHERE event_type IN {_in_list(rate.events)} GROUP BY 1"
        )
        series.append(Series("rate", rate.name, "count", "up", periods, dense(df, "n"), active_n))

    volume = frame(f"SELECT event_type, {period} AS period, COUNT(*) AS n FROM ev GROUP BY 1, 2")
    for event_type, df in volume.groupby("event_type"):
        counts = dense(df, "n")
        if counts.mean() >= settings.volume_min_per_period:
            series.append(
                Series("volume", str(event_type), "count", "both", periods, counts,
                       np.ones(len(periods)))
            )  # fmt: skip

    loop_within = int(settings.loop_within_hours * 3_600_000_000)
    loops = frame(
        f"""
        WITH o AS (SELECT customer_id, timestamp, event_type AS e0,
                     LAG(event_type, 1) OVER w AS e1, LAG(event_type, 2) OVER w AS e2,
                     LAG(event_type, 3) OVER w AS e3, LAG(timestamp, 3) OVER w AS t3
                   FROM ev WINDOW w AS (PARTITION BY customer_id ORDER BY timestamp, event_id))
        SELECT e1 || ' -> ' || e0 AS pair, {period} AS period, COUNT(*) AS n
        FROM o WHERE e0 = e2 AND e1 = e3 AND e0 <> e1
          AND EPOCH_US(timestamp) - EPOCH_US(t3) <= {loop_within}
        GROUP BY 1, 2
        """
    )
    for pair, df in loops.groupby("pair"):
        counts = dense(df, "n")
        if counts.max() >= settings.loop_min_per_period:
            series.append(
                Series("loop", str(pair), "count", "up", periods, counts, np.ones(len(periods)))
            )
    facts: dict[str, object] = {
        "first_event": first.astimezone(UTC).isoformat(),
        "last_event": last.astimezone(UTC).isoformat(),
        "events": int(n_events),
        "periods": len(periods),
        "period_days": pdays,
    }
    return series, facts


# -- change detection ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """A detected change of one KPI: where it started, when it was seen, how big it is."""

    kpi: str
    step: str
    direction: Literal["down", "up"]
    start: date
    detected: date
    end: date | None  # None: still going on at the end of the log
    baseline: float
    current: float

    @property
    def change_absolute(self) -> float:
        return self.current - self.baseline

    @property
    def change_relative(self) -> float:
        return self.change_absolute / self.baseline if self.baseline else math.inf


def _shifted(p0: float, direction: str, kind: str, d: DetectionSettings, volume: bool) -> float:
    if kind == "proportion":
        delta = max(d.shift_absolute, d.shift_relative * p0)
        return min(p0 + delta, 0.999) if direction == "up" else max(p0 - delta, 0.001)
    rel = d.volume_shift_relative if volume else d.shift_relative
    # symmetric on the log scale: "up" by (1 + rel) times, "down" by the same factor
    return p0 * (1 + rel) if direction == "up" else p0 / (1 + rel)


def _llr(k: float, n: float, p0: float, p1: float, kind: str) -> float:
    """Log-likelihood ratio of one period under the shifted rate against the baseline."""
    if kind == "proportion":
        return k * math.log(p1 / p0) + (n - k) * math.log((1 - p1) / (1 - p0))
    lam0, lam1 = p0 * n, p1 * n
    return k * math.log(p1 / p0) - (lam1 - lam0)


def _baseline(
    s: Series, i: int, excluded: np.ndarray, d: DetectionSettings
) -> tuple[float, float, np.ndarray] | None:
    """(rate, dispersion, weekday factors) from the usable periods before ``i``, or None."""
    lo = max(0, i - d.baseline_periods)
    idx = np.arange(lo, i)
    idx = idx[~excluded[idx]]
    if s.kind == "proportion":
        idx = idx[s.denominator[idx] >= d.min_support]
    else:
        idx = idx[s.denominator[idx] > 0]
    if len(idx) < d.min_baseline_periods:
        return None
    k, n = s.numerator[idx], s.denominator[idx]
    weekday = np.ones(7)
    if s.kind == "proportion":
        # Jeffreys-smoothed, so a baseline of zero failures still allows a rise to be scored
        p0 = (k.sum() + 0.5) / (n.sum() + 1.0)
        expected_var = n * p0 * (1 - p0)
        mean = n * p0
    else:
        p0 = max(k.sum() / n.sum(), 0.5 / max(n.mean(), 1e-9))
        days = np.array([s.periods[j].weekday() for j in idx])
        if len(idx) >= 21 and s.denominator[idx].max() == 1.0:  # raw volumes: weekly pattern
            per_day = np.array(
                [k[days == w].mean() if (days == w).any() else np.nan for w in range(7)]
            )
            if np.isfinite(per_day).all() and per_day.mean() > 0:
                weekday = np.clip(per_day / per_day.mean(), 0.2, 5.0)
        mean = p0 * n * weekday[days]
        expected_var = mean
    resid = (k - mean) ** 2
    dispersion = float(max(1.0, resid.sum() / max(expected_var.sum(), 1e-9)))
    return float(p0), dispersion, weekday


def detect_changes(s: Series, d: DetectionSettings, volume: bool = False) -> list[Change]:
    """CUSUM change detection on one KPI series (see the module documentation).

    The baseline is re-estimated each period from the trailing ``baseline_periods`` (periods
    inside an alert left out) and frozen while the statistic is above zero, so a break does
    not leak into its own baseline.
    """
    changes: list[Change] = []
    directions: list[Literal["down", "up"]] = ["down", "up"] if s.bad == "both" else [s.bad]
    for direction in directions:
        excluded = np.zeros(len(s.periods), dtype=bool)
        stat, start = 0.0, 0
        frozen: tuple[float, float, np.ndarray] | None = None
        alert: dict[str, int] | None = None
        quiet = 0
        for i in range(len(s.periods)):
            k, n = float(s.numerator[i]), float(s.denominator[i])
            base = frozen if frozen is not None else _baseline(s, i, excluded, d)
            if base is None or n <= 0 or (s.kind == "proportion" and n < d.min_support):
                continue
            p0, dispersion, weekday = base
            p0_i = p0 * (weekday[s.periods[i].weekday()] if s.kind == "count" else 1.0)
            p1_i = _shifted(p0_i, direction, s.kind, d, volume)
            # no single period may carry more than a third of the threshold: a break must
            # show in several periods, a one-day spike (a campaign, a holiday) is not one
            step = min(_llr(k, n, p0_i, p1_i, s.kind) / dispersion, d.threshold / 3)
            if stat == 0.0 and step > 0:
                start, frozen = i, base
            stat = max(0.0, stat + step)
            if alert is not None:
                excluded[i] = True
                quiet = 0 if step > 0 else quiet + 1
                if step > 0:
                    alert["end"] = i
                if quiet >= _QUIET_PERIODS or stat == 0.0:  # the break is over
                    changes.append(_close(s, direction, alert, frozen, open_=False))
                    alert, frozen, stat, quiet = None, None, 0.0, 0
                continue
            if stat == 0.0:
                frozen = None
            elif stat >= d.threshold:
                start = _change_point(s, start, i, base)
                alert = {"start": start, "detected": i, "end": i}
                excluded[start : i + 1] = True
                quiet = 0
        if alert is not None:
            changes.append(_close(s, direction, alert, frozen, open_=True))
    return sorted(changes, key=lambda c: (c.start, c.kpi, c.step))


def _change_point(
    s: Series, first: int, detected: int, base: tuple[float, float, np.ndarray]
) -> int:
    """The most likely start of a change between ``first`` and ``detected``.

    For each candidate start, the log-likelihood of the periods up to ``detected`` at their own
    pooled rate against the baseline rate; the CUSUM's last zero alone can lie well before the
    break when the statistic crept up on noise.
    """
    p0, _, weekday = base
    best, best_gain = first, -math.inf
    for tau in range(first, detected + 1):
        sl = slice(tau, detected + 1)
        k, n = s.numerator[sl], s.denominator[sl]
        if s.kind == "proportion":
            p = float(np.clip(k.sum() / max(n.sum(), 1e-9), 1e-6, 1 - 1e-6))
            gain = float(np.sum(k * math.log(p / p0) + (n - k) * math.log((1 - p) / (1 - p0))))
        else:
            w = np.array([weekday[q.weekday()] for q in s.periods[sl]])
            lam0 = p0 * n * w
            ratio = max(k.sum(), 1e-9) / max(lam0.sum(), 1e-9)
            gain = float(k.sum() * math.log(ratio) - (ratio - 1) * lam0.sum())
        if gain > best_gain:
            best, best_gain = tau, gain
    return best


_QUIET_PERIODS = 3  # periods without evidence of the shift that end an alert


def _close(
    s: Series,
    direction: Literal["down", "up"],
    alert: dict[str, int],
    base: tuple[float, float, np.ndarray] | None,
    open_: bool,
) -> Change:
    start, end = alert["start"], alert["end"]
    sl = slice(start, end + 1)
    k, n = s.numerator[sl].sum(), s.denominator[sl].sum()
    current = float(k / n) if n else float("nan")
    p0 = base[0] if base is not None else float("nan")
    if s.kind == "count" and base is not None and s.denominator[sl].max() == 1.0:
        # volumes: per-period average against the weekday-adjusted baseline average
        weeks = np.array([base[2][p.weekday()] for p in s.periods[sl]])
        p0 = float(base[0] * weeks.mean())
    return Change(
        kpi=s.kpi,
        step=s.step,
        direction=direction,
        start=s.periods[start],
        detected=s.periods[alert["detected"]],
        end=None if open_ else s.periods[end],
        baseline=float(p0),
        current=current,
    )


# -- affected customers -------------------------------------------------------------------------


def affected_customers(
    con: duckdb.DuckDBPyConnection, change: Change, settings: MonitorSettings
) -> int:
    """Distinct customers who went through the changed step (or event) during the change."""
    end = (change.end or date.max - timedelta(days=settings.period_days)) + timedelta(
        days=settings.period_days
    )
    when = (
        f"timestamp >= TIMESTAMPTZ '{change.start.isoformat()} 00:00:00+00' "
        f"AND timestamp < TIMESTAMPTZ '{end.isoformat()} 00:00:00+00'"
    )
    steps = {s.name: s for s in settings.steps}
    rates = {r.name: r for r in settings.rates}
    if change.kpi in ("step_conversion", "step_error_rate"):
        types = steps[change.step].from_
    elif change.kpi == "rate":
        types = rates[change.step].events
    elif change.kpi == "volume":
        types = [change.step]
    else:  # a loop "A -> B": customers with either event (an upper bound, said in the report)
        types = change.step.split(" -> ")
    row = con.execute(
        f"SELECT COUNT(DISTINCT customer_id) FROM ev WHERE event_type IN {_in_list(types)} "
        f"AND {when}"
    ).fetchone()
    return int(row[0]) if row else 0


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


def feature_drift(frames: DriftFrames, settings: DriftSettings) -> pd.DataFrame:
    """PSI per feature between the reference rows and the latest snapshot's rows."""
    reference, current = frames.reference, frames.current
    rows = []
    for column in current.columns:
        if column in ("customer_id", "event_timestamp"):
            continue
        if pd.api.types.is_numeric_dtype(current[column]) and not pd.api.types.is_bool_dtype(
            current[column]
        ):
            value = psi(
                reference[column].to_numpy(float), current[column].to_numpy(float), settings.bins
            )
        else:
            value = categorical_psi(reference[column], current[column])
        rows.append({"feature": column, "psi": value, "level": _level(value, settings)})
    out = pd.DataFrame(rows, columns=["feature", "psi", "level"])
    out.attrs["reference_end"] = str(frames.reference_end)
    out.attrs["current"] = str(frames.current_time)
    return out.sort_values(["psi", "feature"], ascending=[False, True], ignore_index=True)


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
    """KPIs, alerts and drift of one monitoring run."""

    kpis: pd.DataFrame  # period, kpi, step, numerator, denominator, value
    alerts: pd.DataFrame  # one row per change, with plain-language text
    drift: pd.DataFrame | None
    facts: dict[str, object] = field(default_factory=dict)
    score_drift: pd.DataFrame | None = None

    def write(self, out: Path) -> list[Path]:
        """kpis.parquet, alerts.csv, alerts.json, drift.csv, score_drift.csv, summary.json,
        each atomically."""
        out.mkdir(parents=True, exist_ok=True)
        written = [
            _atomic(out / "kpis.parquet", lambda p: self.kpis.to_parquet(p, index=False)),
            _atomic(out / "alerts.csv", lambda p: self.alerts.to_csv(p, index=False)),
            _atomic(
                out / "alerts.json",
                lambda p: p.write_text(
                    self.alerts.to_json(orient="records", date_format="iso", indent=1)
                ),
            ),
        ]
        drift = self.drift
        if drift is not None:
            written.append(_atomic(out / "drift.csv", lambda p: drift.to_csv(p, index=False)))
        scores = self.score_drift
        if scores is not None:
            written.append(
                _atomic(out / "score_drift.csv", lambda p: scores.to_csv(p, index=False))
            )
        written.append(
            _atomic(
                out / "summary.json",
                lambda p: p.write_text(json.dumps(self.facts, indent=1, default=str)),
            )
        )
        return written


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


KPI_LABELS = {
    "step_conversion": "success rate",
    "step_error_rate": "error rate",
    "rate": "events per active customer",
    "volume": "events per period",
    "loop": "loops per period",
}


def describe(change: Change, affected: int) -> str:
    """One plain-language sentence about a change."""
    label = KPI_LABELS[change.kpi]
    if change.kpi in ("step_conversion", "step_error_rate"):
        size = (
            f"{label} went from {change.baseline:.0%} to {change.current:.0%} "
            f"({change.change_absolute * 100:+.0f} points)"
        )
    elif change.kpi == "rate":
        size = (
            f"{label} went from {change.baseline:.3f} to {change.current:.3f} "
            f"({change.change_relative:+.0%})"
        )
    else:
        size = (
            f"{label} went from {change.baseline:.1f} to {change.current:.1f} "
            f"({change.change_relative:+.0%})"
        )
    what = {
        "step_conversion": f"The {change.step} step broke",
        "step_error_rate": f"Errors at the {change.step} step rose",
        "rate": f"{change.step.replace('_', ' ').capitalize()} rose",
        "volume": f"The volume of {change.step} "
        + ("fell" if change.direction == "down" else "jumped"),
        "loop": f"A loop appeared between {change.step.replace(' -> ', ' and ')}",
    }[change.kpi]
    until = f"until {change.end}" if change.end else "and is still going on"
    return f"{what} on {change.start} {until}: {size}; {affected:,} customers affected."


def run_monitor(
    lake: Path,
    settings: MonitorSettings,
    snapshots: Path | None = None,
    scorers: Mapping[str, Scorer] | None = None,
) -> MonitorResult:
    """KPIs of the lake, their changes, and (when snapshots exist) feature drift and, with
    ``scorers``, score drift."""
    con = duckdb.connect()
    try:
        series, facts = compute_kpis(con, lake, settings)
        rows, alerts = [], []
        for s in series:
            values = s.rate()
            for p, k, n, v in zip(s.periods, s.numerator, s.denominator, values, strict=True):
                rows.append((p, s.kpi, s.step, float(k), float(n), float(v)))
            for c in detect_changes(s, settings.detection, volume=s.kpi in ("volume", "loop")):
                if s.kpi == "loop" and c.current < settings.loop_min_per_period:
                    continue
                affected = affected_customers(con, c, settings)
                alerts.append(
                    {
                        "kpi": c.kpi,
                        "step": c.step,
                        "direction": c.direction,
                        "start": c.start,
                        "detected": c.detected,
                        "end": c.end,
                        "baseline": c.baseline,
                        "current": c.current,
                        "change_absolute": c.change_absolute,
                        "change_relative": c.change_relative,
                        "affected_customers": affected,
                        "message": describe(c, affected),
                    }
                )
    finally:
        con.close()
    kpis = pd.DataFrame(
        rows, columns=["period", "kpi", "step", "numerator", "denominator", "value"]
    )
    columns = [
        "kpi", "step", "direction", "start", "detected", "end", "baseline", "current",
        "change_absolute", "change_relative", "affected_customers", "message",
    ]  # fmt: skip
    alert_frame = pd.DataFrame(alerts, columns=columns)
    drift = scores = None
    if snapshots is not None and any(snapshots.rglob("*.parquet")):
        frames = drift_frames(snapshots, settings.drift)
        drift = feature_drift(frames, settings.drift)
        if scorers:
            scores = score_drift(frames, scorers, settings.drift)
        facts["drift_reference_end"] = drift.attrs.get("reference_end")
        facts["drift_current"] = drift.attrs.get("current")
    facts["alerts"] = len(alert_frame)
    facts["kpis"] = len(series)
    logger.info("monitoring: %d KPIs, %d alerts", len(series), len(alert_frame))
    return MonitorResult(kpis, alert_frame, drift, facts, scores)
