"""Journey analytics: funnel, transitions and paths, time to convert, cohort retention, moments
that matter and personas, each overall and broken down by persona and by first-touch channel.

Everything is computed by DuckDB over the event lake; Python only ever holds small per-group
tables (and, for personas, a sample of customers to fit the clustering on and one narrow
customer → persona table, the list teams act on). The journey map (``configs/journeys.yaml``)
says which event belongs to which stage, what a conversion is, what counts as activity and
what churn is; its patterns are resolved once per event type by the feature pipeline's
:func:`features.pipeline.register_inputs`, and churn and conversion labels come from
:func:`training.labels.label_query`, so "churn" here means exactly what the churn model
predicts.

Definitions, chosen so that each number means one thing:

- A customer's **channel** is the channel of their first touch (first non-marketing event):
  it is known from the first day and does not depend on later behaviour; a "dominant channel"
  would put customers who buy in the store into the store group *because* they bought.
- **Funnel**: a customer reaches every stage up to the furthest one they reached (the journey
  order implies the earlier ones; customers known before the log starts often first appear
  in a later stage). Step conversion is reached(i + 1) / reached(i).
- **Transitions**: stage → stage counts the stage *changes* of each customer, by the journey
  map's stage machine (:func:`features.pipeline.stage_machine`, the one the stage features
  use: forward on stage events, back only on the map's regression events);
  event → event counts consecutive non-marketing events (top event types, others grouped).
  Rows are normalised to probabilities of the next stage or event. Stage transitions and
  paths are broken down by group; the event matrix is overall only (per group it would be
  mostly empty cells).
- **Time to convert**: days from the first event to the first conversion, Kaplan–Meier:
  customers who have not converted by the end of the log are censored there, not dropped
  (dropping them would make conversion look faster and likelier than it is).
- **Cohort retention**: cohorts by month of first activity; the share of a cohort with
  activity in the k-th month after. Only complete months are shown.
- **Moments that matter**: see :func:`compute_moments`.
- **Personas**: k-means on standardised behaviour, k chosen by silhouette; see
  :func:`fit_personas`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
from pydantic import Field, PositiveInt, model_validator

from evaluation.monitor import _atomic
from journeyml.config import JourneyMap, StrictModel
from journeyml.events.lake import is_lake, read_events_sql

logger = logging.getLogger(__name__)

ALL = "all"
OTHER = "other"
UNKNOWN_CHANNEL = "unknown"

TABLES: tuple[str, ...] = (
    "funnel",
    "stage_transitions",
    "event_transitions",
    "paths",
    "time_to_convert",
    "conversion_curve",
    "cohorts",
    "retention",
    "moments",
    "personas",
)
"""The tables of a run, each written as ``<name>.parquet`` (and the analyst-facing ones as CSV)."""
CSV_TABLES: tuple[str, ...] = ("funnel", "moments", "personas", "time_to_convert", "retention")


class JourneyDataError(ValueError):
    """The lake cannot be analysed (missing, empty, too short); the message says why."""


class AnalyzeOptions(StrictModel):
    """How the analyses are run (the CLI's options, validated once at the entry point).

    Attributes:
        cutoff: the moments-that-matter cutoff T (default: the last event minus the longest
            label horizon, at midnight UTC, so that every label window fits in the log).
        window_days: touchpoints are read from ``[T - window_days, T)``.
        activity_strata: quantile strata of activity in the window that the risk differences
            are adjusted for (1: no adjustment).
        min_support: fewest exposed (and unexposed) customers for a moment to be scored.
        top_events: event types shown by name in the event transition matrix.
        path_steps: stages per path in the path (Sankey) view.
        top_paths: paths kept per group.
        persona_k_min, persona_k_max: the range of k tried for the personas.
        fit_sample: customers sampled to fit the personas (every customer is then assigned).
        random_state: seeds the sampling and k-means.
        confidence: of the risk-difference intervals.
    """

    cutoff: datetime | None = None
    window_days: PositiveInt = 90
    activity_strata: int = Field(default=5, ge=1, le=20)
    min_support: PositiveInt = 20
    top_events: int = Field(default=10, ge=2, le=50)
    path_steps: int = Field(default=4, ge=2, le=8)
    top_paths: PositiveInt = 15
    persona_k_min: int = Field(default=3, ge=2, le=20)
    persona_k_max: int = Field(default=7, ge=2, le=20)
    fit_sample: int = Field(default=20_000, ge=100)
    random_state: int = 0
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)

    @model_validator(mode="after")
    def _k_range(self) -> AnalyzeOptions:
        if self.persona_k_min > self.persona_k_max:
            raise ValueError(
                f"persona_k_min ({self.persona_k_min}) is above persona_k_max "
                f"({self.persona_k_max})"
            )
        if self.cutoff is not None and self.cutoff.tzinfo is None:
            raise ValueError("cutoff needs a time zone (e.g. 2025-06-01T00:00:00+00:00)")
        return self


# -- the result ---------------------------------------------------------------------------------


@dataclass
class JourneyAnalytics:
    """Every table of one analysis run (long format: ``group_kind``/``group`` columns say
    whether a row is overall, for one persona or for one channel) and facts about the log."""

    funnel: pd.DataFrame
    stage_transitions: pd.DataFrame
    event_transitions: pd.DataFrame
    paths: pd.DataFrame
    time_to_convert: pd.DataFrame
    conversion_curve: pd.DataFrame
    cohorts: pd.DataFrame
    retention: pd.DataFrame
    moments: pd.DataFrame
    personas: pd.DataFrame
    customers: pd.DataFrame  # customer_id, persona, channel: one row per customer
    facts: dict[str, Any] = field(default_factory=dict)

    def write(self, out: Path) -> list[Path]:
        """Each table as Parquet (the analyst-facing ones also as CSV) and facts.json,
        each file atomically (a crash never leaves a half-written file)."""
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name in (*TABLES, "customers"):
            frame: pd.DataFrame = getattr(self, name)
            written.append(
                _atomic(out / f"{name}.parquet", lambda p, f=frame: f.to_parquet(p, index=False))
            )
            if name in CSV_TABLES:
                written.append(
                    _atomic(out / f"{name}.csv", lambda p, f=frame: f.to_csv(p, index=False))
                )
        facts = self.facts
        written.append(
            _atomic(
                out / "facts.json",
                lambda p: p.write_text(json.dumps(facts, indent=1, default=str)),
            )
        )
        return written


def read_journey_result(folder: Path) -> JourneyAnalytics:
    """An analysis run as :meth:`JourneyAnalytics.write` left it in ``folder``.

    Raises:
        JourneyDataError: the folder or one of its files is missing or unreadable.
    """
    names = (*TABLES, "customers")
    missing = [n for n in names if not (folder / f"{n}.parquet").is_file()]
    if not (folder / "facts.json").is_file():
        missing.append("facts")
    if missing:
        raise JourneyDataError(
            f"{folder} lacks {', '.join(missing)}: run `journeyml analyze` again (it writes them)"
        )
    try:
        tables = {n: pd.read_parquet(folder / f"{n}.parquet") for n in names}
        facts = json.loads((folder / "facts.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise JourneyDataError(f"cannot read the journey analytics in {folder}: {exc}") from None
    return JourneyAnalytics(**tables, facts=facts)


# -- helpers ------------------------------------------------------------------------------------


def _ts(value: datetime) -> str:
    return f"TIMESTAMPTZ '{value.astimezone(UTC).isoformat()}'"


def _str_list(values: list[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def _frame(con: duckdb.DuckDBPyConnection, sql: str) -> pd.DataFrame:
    return con.execute(sql).df()


# -- preparing the lake -------------------------------------------------------------------------


def open_journeys(lake: Path, journey: JourneyMap) -> duckdb.DuckDBPyConnection:
    """A connection with ``events``, ``roles``, ``label_roles``, ``cust`` and ``moves``.

    ``cust`` holds one row per customer with a non-marketing event (their facts over the
    whole log); ``moves`` one row per stage change. Both are DuckDB tables (spilled to disk
    when large), never pandas frames.

    Raises:
        JourneyDataError: ``lake`` is not an event lake, or it holds no customer events.
    """
    from features.pipeline import FeatureBuildError, connect, register_inputs, stage_machine
    from training.labels import register_label_roles

    if not is_lake(lake):
        raise JourneyDataError(
            f"{lake} is not an event lake (no manifest.json): run `journeyml events ingest` first"
        )
    con = connect(memory_limit="2GB")
    try:
        try:
            register_inputs(con, journey, read_events_sql(lake), None, [])
        except FeatureBuildError as exc:
            raise JourneyDataError(str(exc)) from None
        register_label_roles(con, journey)
        row = con.execute(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE r.is_treatment = 0), MIN(e.timestamp), "
            "MAX(e.timestamp) FROM events e JOIN roles r USING (event_type)"
        ).fetchall()[0]
        if not row[0]:
            raise JourneyDataError(f"the lake {lake} holds no events: nothing to analyse")
        if not row[1]:
            raise JourneyDataError(
                f"the lake {lake} holds only marketing actions ({journey.treatments.patterns}): "
                "there is no customer behaviour to analyse"
            )
        stage_counts = ", ".join(
            f"COUNT(*) FILTER (WHERE r.stage_idx = {i}) AS stage_{i}"
            for i in range(len(journey.stages))
        )
        con.execute(
            f"""
            CREATE TEMP TABLE cust AS
            SELECT e.customer_id,
                MIN(e.timestamp) AS first_ts,
                MIN(e.timestamp) FILTER (WHERE r.is_activity = 1) AS first_activity,
                MAX(e.timestamp) FILTER (WHERE r.is_activity = 1 AND l.is_churn = 0)
                    AS last_activity,
                COALESCE(FIRST(e.channel ORDER BY e.timestamp, e.event_id)
                    FILTER (WHERE e.channel IS NOT NULL), '{UNKNOWN_CHANNEL}') AS channel,
                MAX(COALESCE(r.stage_idx, r.back_idx)) AS furthest_stage,
                MIN(e.timestamp) FILTER (WHERE r.is_conversion = 1) AS first_conversion,
                COUNT(*) FILTER (WHERE r.is_conversion = 1) AS conversions,
                COALESCE(SUM(e.value) FILTER (WHERE r.is_conversion = 1), 0) AS revenue,
                MAX(e.timestamp) FILTER (WHERE l.is_churn = 1) AS last_churn_event,
                COUNT(*) FILTER (WHERE r.is_complaint = 1) AS complaints,
                COUNT(*) FILTER (WHERE r.is_support = 1) AS support,
                COUNT(*) FILTER (WHERE r.is_response = 1) AS responses,
                COUNT(*) AS events,
                COUNT(DISTINCT CAST(e.timestamp AS DATE)) AS active_days,
                {stage_counts}
            FROM events e JOIN roles r USING (event_type) JOIN label_roles l USING (event_type)
            WHERE r.is_treatment = 0
            GROUP BY e.customer_id
            """
        )
        # churned at the end of the log, as the churn label would say (see training.labels)
        inactivity = journey.churn.inactivity_days
        silent = (
            f"OR last_activity < {_ts(row[3])} - INTERVAL {int(inactivity)} DAY"
            if inactivity is not None
            else ""
        )
        con.execute(
            "ALTER TABLE cust ADD COLUMN churned BOOLEAN; "
            "UPDATE cust SET churned = (last_activity IS NULL OR "
            f"COALESCE(last_churn_event >= last_activity, FALSE) {silent})"
        )
        staged = (
            "SELECT e.customer_id, e.timestamp AS ts, e.event_id, e.event_type, r.stage_idx, "
            "r.back_idx FROM events e JOIN roles r USING (event_type) "
            "WHERE r.stage_idx IS NOT NULL OR r.back_idx IS NOT NULL"
        )
        # the journey map's stage machine (features.pipeline.stage_machine), one row per change
        con.execute(
            f"""
            CREATE TEMP TABLE moves AS
            SELECT customer_id, ts, event_id, event_type, stage_prior AS from_idx,
                stage_now AS to_idx
            FROM ({stage_machine(staged, "customer_id", "ts, event_id")}) AS s
            WHERE stage_now IS NOT NULL AND stage_prior IS DISTINCT FROM stage_now
            """
        )
    except BaseException:
        con.close()
        raise
    return con


def log_facts(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """First and last event, events, customers, and the values used to price outcomes.

    ``value_per_conversion`` is the mean value of a conversion that has one;
    ``value_per_customer_year`` is the revenue a customer brings per year of being in the
    log (total revenue over customer-days, times 365): what a churned customer takes away.
    """
    first, last, n_events, n_marketing = con.execute(
        "SELECT MIN(timestamp), MAX(timestamp), COUNT(*), COUNT(*) FILTER (WHERE r.is_treatment "
        "= 1) FROM events JOIN roles r USING (event_type)"
    ).fetchall()[0]
    n_customers, revenue, customer_days = con.execute(
        f"SELECT COUNT(*), SUM(revenue), SUM(GREATEST(EPOCH({_ts(last)}) - EPOCH(first_ts), "
        "86400) / 86400) FROM cust"
    ).fetchall()[0]
    per_conversion = con.execute(
        "SELECT AVG(e.value) FROM events e JOIN roles r USING (event_type) "
        "WHERE r.is_conversion = 1 AND e.value IS NOT NULL"
    ).fetchall()[0]
    value_per_conversion = float(per_conversion[0]) if per_conversion and per_conversion[0] else 0.0
    return {
        "first_event": first.astimezone(UTC).isoformat(),
        "last_event": last.astimezone(UTC).isoformat(),
        "events": int(n_events),
        "marketing_events": int(n_marketing),
        "customers": int(n_customers),
        "revenue": float(revenue or 0.0),
        "value_per_conversion": value_per_conversion,
        "value_per_customer_year": float(revenue or 0.0) / float(customer_days or 1.0) * 365.0,
    }


def register_membership(
    con: duckdb.DuckDBPyConnection, personas: pd.DataFrame | None = None
) -> None:
    """``membership(customer_id, group_kind, grp)``: each customer is in "all", their persona
    and their channel, so every breakdown is one join and one GROUP BY.

    The personas come from the ``persona_of`` table :func:`fit_personas` leaves in DuckDB, or
    from ``personas`` (customer_id, persona) when given.
    """
    source = "persona_of"
    if personas is not None:
        con.register("persona_arrow", personas[["customer_id", "persona"]])
        source = "persona_arrow"
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE membership AS
        SELECT customer_id, 'all' AS group_kind, '{ALL}' AS grp FROM cust
        UNION ALL SELECT customer_id, 'persona', persona FROM {source}
        UNION ALL SELECT customer_id, 'channel', channel FROM cust
        """
    )
    if personas is not None:
        con.unregister("persona_arrow")


# -- funnel -------------------------------------------------------------------------------------


def compute_funnel(con: duckdb.DuckDBPyConnection, journey: JourneyMap) -> pd.DataFrame:
    """Customers reaching each stage (by furthest stage), step conversion and drop-off, per group.

    ``share_of_first`` is reached(i) / reached(first stage); ``step_conversion`` is
    reached(i + 1) / reached(i) and ``drop_off`` its complement (empty for the last stage);
    ``stopped_here`` counts customers whose furthest stage is i.
    """
    n = len(journey.stages)
    df = _frame(
        con,
        f"""
        SELECT m.group_kind, m.grp AS "group", s.i AS stage_idx,
            COUNT(*) FILTER (WHERE c.furthest_stage >= s.i) AS customers,
            COUNT(*) FILTER (WHERE c.furthest_stage = s.i) AS stopped_here
        FROM cust c JOIN membership m USING (customer_id) CROSS JOIN range({n}) s(i)
        GROUP BY ALL ORDER BY 1, 2, 3
        """,
    )
    df["stage"] = df["stage_idx"].map(dict(enumerate(journey.stages)))
    parts = []
    for _, g in df.groupby(["group_kind", "group"], sort=False):
        g = g.sort_values("stage_idx").copy()
        reached = g["customers"].to_numpy(float)
        first = reached[0] if len(reached) else 0.0
        g["share_of_first"] = reached / first if first else np.nan
        nxt = np.append(reached[1:], np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            g["step_conversion"] = np.where(reached > 0, nxt / reached, np.nan)
        g["drop_off"] = 1.0 - g["step_conversion"]
        parts.append(g)
    out = pd.concat(parts, ignore_index=True)
    columns = ["group_kind", "group", "stage_idx", "stage", "customers", "share_of_first"]
    return out[[*columns, "step_conversion", "drop_off", "stopped_here"]]


# -- transitions and paths ----------------------------------------------------------------------


def _normalise_rows(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    totals = df.groupby(keys)["count"].transform("sum")
    df["probability"] = df["count"] / totals
    return df


def compute_stage_transitions(con: duckdb.DuckDBPyConnection, journey: JourneyMap) -> pd.DataFrame:
    """Stage → stage changes per group, with the probability of each next stage."""
    names = _str_list(journey.stages)
    df = _frame(
        con,
        f"""
        SELECT m.group_kind, m.grp AS "group", {names}[mv.from_idx + 1] AS from_stage,
            {names}[mv.to_idx + 1] AS to_stage, COUNT(*) AS "count"
        FROM moves mv JOIN membership m USING (customer_id)
        WHERE mv.from_idx IS NOT NULL GROUP BY ALL ORDER BY 1, 2, 3, 4
        """,
    )
    return _normalise_rows(df, ["group_kind", "group", "from_stage"])


def compute_event_transitions(con: duckdb.DuckDBPyConnection, top: int) -> pd.DataFrame:
    """Event → next event (same customer, marketing actions left out), top types by name."""
    tops = [
        r[0]
        for r in con.execute(
            "SELECT event_type FROM events JOIN roles r USING (event_type) "
            f"WHERE r.is_treatment = 0 GROUP BY 1 ORDER BY COUNT(*) DESC, 1 LIMIT {int(top)}"
        ).fetchall()
    ]
    keep = _str_list(tops)
    df = _frame(
        con,
        f"""
        WITH s AS (
            SELECT CASE WHEN list_contains({keep}, e.event_type) THEN e.event_type
                        ELSE '{OTHER}' END AS from_event,
                LEAD(e.event_type) OVER (
                    PARTITION BY e.customer_id ORDER BY e.timestamp, e.event_id) AS nxt
            FROM events e JOIN roles r USING (event_type) WHERE r.is_treatment = 0)
        SELECT from_event, CASE WHEN list_contains({keep}, nxt) THEN nxt ELSE '{OTHER}' END
            AS to_event, COUNT(*) AS "count"
        FROM s WHERE nxt IS NOT NULL GROUP BY ALL ORDER BY 1, 2
        """,
    )
    return _normalise_rows(df, ["from_event"])


def compute_paths(
    con: duckdb.DuckDBPyConnection, journey: JourneyMap, steps: int, top: int
) -> pd.DataFrame:
    """The most common first ``steps`` stages of each customer's journey, per group.

    A path is the customer's sequence of stages with repeats collapsed (``awareness →
    consideration → purchase``); ``share`` is of the group's customers with a stage event.
    """
    names = _str_list(journey.stages)
    df = _frame(
        con,
        f"""
        WITH p AS (
            SELECT customer_id,
                list_slice(list(to_idx ORDER BY ts, event_id), 1, {int(steps)}) AS idx
            FROM moves GROUP BY customer_id),
        g AS (
            SELECT m.group_kind, m.grp AS "group",
                array_to_string(list_transform(p.idx, lambda x: {names}[x + 1]), ' → ') AS path,
                len(p.idx) AS steps, COUNT(*) AS customers
            FROM p JOIN membership m USING (customer_id) GROUP BY ALL)
        SELECT *, customers / SUM(customers) OVER (PARTITION BY group_kind, "group") AS share
        FROM g QUALIFY ROW_NUMBER() OVER (
            PARTITION BY group_kind, "group" ORDER BY customers DESC, path) <= {int(top)}
        ORDER BY group_kind, "group", customers DESC, path
        """,
    )
    return df


# -- time to convert ----------------------------------------------------------------------------


@dataclass(frozen=True)
class KaplanMeier:
    """A Kaplan–Meier estimate of the share not yet converted, ``survival`` after ``times``."""

    times: np.ndarray  # distinct event times, ascending
    survival: np.ndarray  # S(t) just after each time
    customers: int
    events: int

    def converted_by(self, t: float) -> float:
        """The estimated share converted within ``t`` days."""
        i = np.searchsorted(self.times, t, side="right")
        return float(1.0 - (self.survival[i - 1] if i > 0 else 1.0))

    def quantile(self, q: float) -> float:
        """Days by which a share ``q`` has converted (NaN when the estimate never gets there)."""
        hit = np.flatnonzero(1.0 - self.survival >= q - 1e-12)
        return float(self.times[hit[0]]) if len(hit) else math.nan


def kaplan_meier(durations: np.ndarray, observed: np.ndarray, weights: np.ndarray) -> KaplanMeier:
    """Kaplan–Meier from (possibly aggregated) durations: ``weights`` customers each.

    At a time with both conversions and censorings, the censored customers still count as
    at risk (the usual convention: censoring happens just after the events of that instant).
    """
    durations = np.asarray(durations, float)
    observed = np.asarray(observed, bool)
    weights = np.asarray(weights, float)
    times = np.unique(durations[observed & (weights > 0)])
    order = np.argsort(durations)
    d_sorted, w_sorted = durations[order], weights[order]
    at_risk_from = np.cumsum(w_sorted[::-1])[::-1]  # customers with duration >= d_sorted[i]
    survival = np.empty(len(times))
    s = 1.0
    for j, t in enumerate(times):
        n = at_risk_from[np.searchsorted(d_sorted, t, side="left")]
        d = weights[observed & (durations == t)].sum()
        s *= 1.0 - d / n
        survival[j] = s
    return KaplanMeier(times, survival, int(weights.sum()), int(weights[observed].sum()))


def compute_time_to_convert(
    con: duckdb.DuckDBPyConnection, log_end: datetime, curve_days: int = 180
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Time from first event to first conversion per group, with censoring at the log's end.

    Durations are rounded to the hour and aggregated in DuckDB, so the estimate runs on a
    small table whatever the number of customers.

    Returns:
        (summary per group: customers, converted, quartiles, shares converted by 7/30/90
        days; the cumulative conversion curve per group and day).
    """
    agg = _frame(
        con,
        f"""
        SELECT m.group_kind, m.grp AS "group",
            ROUND((EPOCH(COALESCE(c.first_conversion, {_ts(log_end)})) - EPOCH(c.first_ts))
                / 3600) / 24 AS days,
            c.first_conversion IS NOT NULL AS converted, COUNT(*) AS n
        FROM cust c JOIN membership m USING (customer_id) GROUP BY ALL
        """,
    )
    rows, curves = [], []
    horizon = int(min(curve_days, max(1.0, float(agg["days"].max() if len(agg) else 1.0))))
    for (kind, group), g in agg.groupby(["group_kind", "group"], sort=True):
        km = kaplan_meier(g["days"].to_numpy(), g["converted"].to_numpy(), g["n"].to_numpy())
        rows.append(
            {
                "group_kind": kind,
                "group": group,
                "customers": km.customers,
                "converted": km.events,
                "censored": km.customers - km.events,
                "p25_days": km.quantile(0.25),
                "median_days": km.quantile(0.5),
                "p75_days": km.quantile(0.75),
                "p90_days": km.quantile(0.9),
                "converted_by_7d": km.converted_by(7),
                "converted_by_30d": km.converted_by(30),
                "converted_by_90d": km.converted_by(90),
            }
        )
        for day in range(horizon + 1):
            curves.append((kind, group, day, km.converted_by(day)))
    curve = pd.DataFrame(curves, columns=["group_kind", "group", "day", "converted_share"])
    return pd.DataFrame(rows), curve


# -- cohort retention ---------------------------------------------------------------------------


def compute_retention(
    con: duckdb.DuckDBPyConnection, log_end: datetime
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Monthly cohorts by first activity and the share active k months later.

    Only months that the log covers completely count (a cohort's own month included), so the
    last, partial month never looks like a retention drop. Period 0 is 1 by definition.

    Returns:
        (cohort × period retention of all customers; retention per group and period, pooled
        over the cohorts that reach that period).
    """
    complete_before = _ts(
        log_end.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        + timedelta(days=1)
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE cohort_activity AS
        WITH act AS (
            SELECT DISTINCT e.customer_id, DATE_TRUNC('month', e.timestamp) AS m
            FROM events e JOIN roles r USING (event_type) WHERE r.is_activity = 1),
        coh AS (SELECT customer_id, MIN(m) AS cohort FROM act GROUP BY 1)
        SELECT a.customer_id, coh.cohort, DATE_DIFF('month', coh.cohort, a.m) AS period
        FROM act a JOIN coh USING (customer_id)
        WHERE a.m + INTERVAL 1 MONTH <= {complete_before}
          AND coh.cohort + INTERVAL 1 MONTH <= {complete_before}
        """
    )
    cohorts = _frame(
        con,
        f"""
        WITH size AS (SELECT cohort, COUNT(*) AS cohort_size FROM cohort_activity
                      WHERE period = 0 GROUP BY 1),
        grid AS (SELECT s.cohort, s.cohort_size, p.period FROM size s,
                 range(0, 240) p(period)
                 WHERE s.cohort + TO_MONTHS(CAST(p.period AS INTEGER)) + INTERVAL 1 MONTH
                       <= {complete_before}),
        act AS (SELECT cohort, period, COUNT(*) AS active FROM cohort_activity GROUP BY 1, 2)
        SELECT CAST(g.cohort AS DATE) AS cohort, g.period, g.cohort_size,
            COALESCE(a.active, 0) AS active, COALESCE(a.active, 0) / g.cohort_size AS retention
        FROM grid g LEFT JOIN act a USING (cohort, period) ORDER BY 1, 2
        """,
    )
    by_group = _frame(
        con,
        f"""
        WITH first AS (SELECT customer_id, cohort FROM cohort_activity WHERE period = 0),
        observed AS (
            SELECT m.group_kind, m.grp AS "group", p.period, COUNT(*) AS customers
            FROM first f JOIN membership m USING (customer_id), range(0, 240) p(period)
            WHERE f.cohort + TO_MONTHS(CAST(p.period AS INTEGER)) + INTERVAL 1 MONTH
                  <= {complete_before}
            GROUP BY ALL),
        act AS (
            SELECT m.group_kind, m.grp AS "group", a.period, COUNT(*) AS active
            FROM cohort_activity a JOIN membership m USING (customer_id) GROUP BY ALL)
        SELECT o.group_kind, o."group", o.period, o.customers, COALESCE(a.active, 0) AS active,
            COALESCE(a.active, 0) / o.customers AS retention
        FROM observed o LEFT JOIN act a USING (group_kind, "group", period)
        ORDER BY 1, 2, 3
        """,
    )
    return cohorts, by_group


# -- moments that matter ------------------------------------------------------------------------


def default_cutoff(journey: JourneyMap, log_end: datetime) -> datetime:
    """The last midnight at which both the churn and the conversion window fit in the log."""
    h = journey.horizons
    t = log_end.astimezone(UTC) - timedelta(days=max(h.churn_days, h.conversion_days))
    return t.replace(hour=0, minute=0, second=0, microsecond=0)


def stratified_risk_difference(
    n1: np.ndarray, x1: np.ndarray, n0: np.ndarray, x0: np.ndarray, z: float
) -> tuple[float, float, float]:
    """Mantel–Haenszel risk difference over strata, with a normal interval.

    Stratum weights are ``n1 * n0 / (n1 + n0)`` (strata without both groups weigh nothing).
    The variance treats the weights as fixed: ``sum(w² v) / sum(w)²`` with each stratum's
    binomial variance computed on add-one smoothed rates, so a stratum with 0 % or 100 %
    does not claim zero variance.

    Returns:
        (risk difference, low, high); NaNs when no stratum has both groups.
    """
    n1, x1, n0, x0 = (np.asarray(a, float) for a in (n1, x1, n0, x0))
    ok = (n1 > 0) & (n0 > 0)
    if not ok.any():
        return math.nan, math.nan, math.nan
    n1, x1, n0, x0 = n1[ok], x1[ok], n0[ok], x0[ok]
    w = n1 * n0 / (n1 + n0)
    diff = x1 / n1 - x0 / n0
    rd = float(np.sum(w * diff) / w.sum())
    p1, p0 = (x1 + 1) / (n1 + 2), (x0 + 1) / (n0 + 2)
    var = float(np.sum(w**2 * (p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)) / w.sum() ** 2)
    half = z * math.sqrt(var)
    return rd, rd - half, rd + half


def compute_moments(
    con: duckdb.DuckDBPyConnection,
    journey: JourneyMap,
    cutoff: datetime,
    options: AnalyzeOptions,
    values: dict[str, float],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Touchpoints and stage moves most associated with later churn and conversion.

    No leakage by construction: at the cutoff T, the population is the customers active at T
    (the training labels' definition), **exposures** are read only from
    ``[T - window_days, T)`` and the **labels** (churn, conversion, as in
    :func:`training.labels.label_query`) only from ``[T, T + horizon)``. A touchpoint is an
    event type (marketing actions left out: the policy targets them, so their association is
    confounded by design; ``journeyml evaluate-policy`` measures their effect) or a stage
    move (``purchase → consideration``) the customer had at least once in the window.

    For each touchpoint and outcome: the rate among exposed and unexposed customers, the
    crude risk difference, and the risk difference adjusted for activity (Mantel–Haenszel
    over quantile strata of activity events in the window), so a touchpoint is not credited
    with "active customers convert". ``value_at_stake`` = exposed customers × |adjusted risk
    difference| × value (a conversion's mean value; for churn, a customer-year of revenue):
    the value the moment currently costs (harmful) or brings (helpful). These are
    associations, not causal effects: the ranking says where to look first.
    """
    from training.labels import label_query

    w_start = cutoff - timedelta(days=options.window_days)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE entities AS SELECT customer_id, {_ts(cutoff)} AS cutoff "
        f"FROM cust WHERE first_ts < {_ts(cutoff)}"
    )
    con.execute(f"CREATE OR REPLACE TEMP TABLE labels AS {label_query(journey)}")
    where = f"e.timestamp >= {_ts(w_start)} AND e.timestamp < {_ts(cutoff)}"
    names = _str_list(journey.stages)
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE pop AS
        WITH a AS (
            SELECT l.customer_id, l.churn, l.conversion,
                COUNT(e.event_id) FILTER (WHERE r.is_activity = 1) AS activity
            FROM labels l LEFT JOIN events e ON e.customer_id = l.customer_id AND {where}
            LEFT JOIN roles r USING (event_type)
            WHERE l.active GROUP BY ALL)
        SELECT * FROM a
        """
    )
    n_pop = int(con.execute("SELECT COUNT(*) FROM pop").fetchall()[0][0])
    facts: dict[str, Any] = {
        "moments_cutoff": cutoff.isoformat(),
        "moments_window_start": w_start.isoformat(),
        "moments_population": n_pop,
    }
    columns = [
        "group_kind", "group", "kind", "touchpoint", "outcome", "exposed", "unexposed",
        "exposed_rate", "unexposed_rate", "risk_difference", "adjusted_difference", "low",
        "high", "significant", "direction", "value_per_outcome", "value_at_stake", "rank",
    ]  # fmt: skip
    if n_pop == 0:
        logger.warning("no customer is active at %s: no moments that matter", cutoff)
        return pd.DataFrame(columns=columns), facts
    cuts = []
    if options.activity_strata > 1:
        qs = [i / options.activity_strata for i in range(1, options.activity_strata)]
        row = con.execute(f"SELECT QUANTILE_DISC(activity, {qs}) FROM pop").fetchall()[0]
        cuts = sorted(set(row[0])) if row and row[0] else []
    stratum = " + ".join(f"(activity > {int(c)})::INTEGER" for c in cuts) or "0"
    con.execute(f"CREATE OR REPLACE TEMP TABLE pop_s AS SELECT *, {stratum} AS stratum FROM pop")
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE exposure AS
        SELECT DISTINCT e.customer_id, 'event' AS kind, e.event_type AS touchpoint
        FROM events e JOIN roles r USING (event_type)
        WHERE r.is_treatment = 0 AND {where}
          AND e.customer_id IN (SELECT customer_id FROM pop)
        UNION
        SELECT DISTINCT e.customer_id, 'stage move',
            {names}[e.from_idx + 1] || ' → ' || {names}[e.to_idx + 1]
        FROM moves e WHERE e.from_idx IS NOT NULL AND e.ts >= {_ts(w_start)}
          AND e.ts < {_ts(cutoff)} AND e.customer_id IN (SELECT customer_id FROM pop)
        """
    )
    totals = _frame(
        con,
        """
        SELECT m.group_kind, m.grp AS "group", p.stratum, COUNT(*) AS n,
            SUM(p.churn) AS churn, SUM(p.conversion) AS conversion
        FROM pop_s p JOIN membership m USING (customer_id) GROUP BY ALL
        """,
    )
    exposed = _frame(
        con,
        """
        SELECT m.group_kind, m.grp AS "group", x.kind, x.touchpoint, p.stratum, COUNT(*) AS n1,
            SUM(p.churn) AS churn1, SUM(p.conversion) AS conversion1
        FROM pop_s p JOIN exposure x USING (customer_id) JOIN membership m USING (customer_id)
        GROUP BY ALL
        """,
    )
    z = float(_normal_quantile(0.5 + options.confidence / 2))
    value = {
        "churn": values["value_per_customer_year"],
        "conversion": values["value_per_conversion"],
    }
    rows = []
    keys = ["group_kind", "group", "stratum"]
    for (kind_g, group, kind, touchpoint), ex in exposed.groupby(
        ["group_kind", "group", "kind", "touchpoint"], sort=True
    ):
        tot = totals[(totals["group_kind"] == kind_g) & (totals["group"] == group)]
        merged = tot.merge(ex[[*keys, "n1", "churn1", "conversion1"]], on=keys, how="left")
        merged = merged.fillna({"n1": 0, "churn1": 0, "conversion1": 0})
        n1 = merged["n1"].to_numpy(float)
        n0 = merged["n"].to_numpy(float) - n1
        if n1.sum() < options.min_support or n0.sum() < options.min_support:
            continue
        for outcome in ("churn", "conversion"):
            x1 = merged[f"{outcome}1"].to_numpy(float)
            x0 = merged[outcome].to_numpy(float) - x1
            p1, p0 = x1.sum() / n1.sum(), x0.sum() / n0.sum()
            rd, low, high = stratified_risk_difference(n1, x1, n0, x0, z)
            if not math.isfinite(rd):
                continue
            rows.append(
                {
                    "group_kind": kind_g,
                    "group": group,
                    "kind": kind,
                    "touchpoint": touchpoint,
                    "outcome": outcome,
                    "exposed": int(n1.sum()),
                    "unexposed": int(n0.sum()),
                    "exposed_rate": p1,
                    "unexposed_rate": p0,
                    "risk_difference": p1 - p0,
                    "adjusted_difference": rd,
                    "low": low,
                    "high": high,
                    "significant": bool(low > 0 or high < 0),
                    "direction": ("raises " if rd > 0 else "lowers ") + outcome,
                    "value_per_outcome": value[outcome],
                    "value_at_stake": int(n1.sum()) * abs(rd) * value[outcome],
                }
            )
    out = pd.DataFrame(rows, columns=columns[:-1])
    if out.empty:
        return pd.DataFrame(columns=columns), facts
    # significant moments first, then by value at stake: the order to work through them
    out = out.sort_values(
        ["group_kind", "group", "significant", "value_at_stake"],
        ascending=[True, True, False, False],
        ignore_index=True,
    )
    out["rank"] = out.groupby(["group_kind", "group"]).cumcount() + 1
    return out, facts


def _normal_quantile(p: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(p)


# -- personas -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PersonaFeature:
    """A behavioural feature of the personas: its SQL over ``cust`` and its plain words."""

    name: str
    sql: str
    high: str
    low: str


def persona_features(channels: list[str], log_end: datetime) -> list[PersonaFeature]:
    """The behaviour the personas are found from, per 30 days in the log (log-scaled counts).

    Rates are per 30 days between a customer's first event and the end of the log (at least a
    week, so a customer who arrived yesterday does not get an extreme rate).
    """
    span = f"(GREATEST(EPOCH({_ts(log_end)}) - EPOCH(first_ts), 7 * 86400) / (30 * 86400))"
    features = [
        PersonaFeature("active_days", f"LN(1 + active_days / {span})", "visit often",
                       "visit rarely"),
        PersonaFeature("purchases", f"LN(1 + conversions / {span})", "buy often", "rarely buy"),
        PersonaFeature("order_value", "LN(1 + revenue / GREATEST(conversions, 1))",
                       "spend a lot per order", "spend little per order"),
        PersonaFeature("complaints", f"LN(1 + complaints / {span})", "complain often",
                       "rarely complain"),
        PersonaFeature("support", f"LN(1 + support / {span})", "contact support often",
                       "rarely contact support"),
        PersonaFeature("marketing_responses", f"LN(1 + responses / {span})",
                       "respond to marketing", "ignore marketing"),
        PersonaFeature("days_since_active",
                       f"LN(1 + (EPOCH({_ts(log_end)}) - EPOCH(COALESCE(last_activity, "
                       "first_ts))) / 86400)", "have lapsed", "were active recently"),
        PersonaFeature("days_in_log", f"LN(1 + (EPOCH({_ts(log_end)}) - EPOCH(first_ts)) / 86400)",
                       "have been around long", "arrived recently"),
    ]  # fmt: skip
    for ch in channels:
        quoted = ch.replace("'", "''")
        features.append(
            PersonaFeature(
                f"share_{ch}",
                f"channel_share['{quoted}']",
                f"use the {ch} channel a lot",
                f"rarely use the {ch} channel",
            )
        )
    return features


def _register_persona_features(
    con: duckdb.DuckDBPyConnection, features: list[PersonaFeature], channels: list[str]
) -> None:
    share = ", ".join(
        f"'{c.replace(chr(39), chr(39) * 2)}': COUNT(*) FILTER (WHERE e.channel = "
        f"'{c.replace(chr(39), chr(39) * 2)}') / COUNT(*)"
        for c in channels
    )
    shares = (
        f"""LEFT JOIN (SELECT e.customer_id, MAP {{{share}}} AS channel_share
                      FROM events e JOIN roles r USING (event_type) WHERE r.is_treatment = 0
                      GROUP BY 1) s USING (customer_id)"""
        if channels
        else ""
    )
    cols = ", ".join(f'CAST({f.sql} AS DOUBLE) AS "{f.name}"' for f in features)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE persona_x AS SELECT customer_id, {cols} FROM cust {shares}"
    )


def describe_persona(z: pd.Series, features: list[PersonaFeature], limit: int = 3) -> str:
    """Plain words from a persona's distinguishing features (centroid z-scores ≥ 0.5)."""
    by_name = {f.name: f for f in features}
    strong = z[z.abs() >= 0.5].abs().sort_values(ascending=False).index[:limit]
    if len(strong) == 0:
        return "customers close to the average on every measure"
    words = [by_name[n].high if z[n] > 0 else by_name[n].low for n in strong]
    if len(words) == 1:
        return f"customers who {words[0]}"
    return f"customers who {', '.join(words[:-1])} and {words[-1]}"


def fit_personas(
    con: duckdb.DuckDBPyConnection, log_end: datetime, options: AnalyzeOptions
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Personas: k-means on standardised behaviour, k chosen by silhouette.

    The features (:func:`persona_features`) are computed per customer in DuckDB; k-means is
    fitted on a sample of ``fit_sample`` customers (all of them when fewer) for each k in
    ``[persona_k_min, persona_k_max]``, and the k with the best silhouette (on at most 3,000
    of them) wins. Every customer is then assigned to the nearest centre in DuckDB. Personas
    are numbered by size (P1 the largest) and described by their distinguishing features.

    Returns:
        (personas: id, description, customers, share, conversion and churn shares, revenue per
        customer, the typical value and the centre's z-score of each feature; customer →
        persona and channel; facts).
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score
    from threadpoolctl import threadpool_limits

    channels = [
        r[0]
        for r in con.execute(
            "SELECT e.channel FROM events e JOIN roles r USING (event_type) "
            "WHERE r.is_treatment = 0 AND e.channel IS NOT NULL "
            "GROUP BY 1 ORDER BY COUNT(*) DESC, 1 LIMIT 1"
        ).fetchall()
    ]
    features = persona_features(channels, log_end)
    names = [f.name for f in features]
    _register_persona_features(con, features, channels)
    sample = _frame(
        con,
        f"SELECT * FROM persona_x USING SAMPLE reservoir({int(options.fit_sample)} ROWS) "
        f"REPEATABLE ({int(options.random_state)})",
    ).sort_values("customer_id", ignore_index=True)
    x = sample[names].fillna(0.0).to_numpy(float)
    if len(x) < options.persona_k_min + 1:
        raise JourneyDataError(
            f"{len(x)} customer(s) are too few to find {options.persona_k_min} personas"
        )
    mean, sd = x.mean(axis=0), x.std(axis=0)
    sd[sd == 0] = 1.0
    z = (x - mean) / sd
    scores: dict[int, float] = {}
    models = {}
    k_max = min(options.persona_k_max, len(x) - 1)
    # one BLAS/OpenMP thread: on a small shared machine, k-means' thread pool spinning against
    # DuckDB's threads was 15x slower than running single-threaded
    with threadpool_limits(1):
        for k in range(options.persona_k_min, k_max + 1):
            model = KMeans(n_clusters=k, n_init=4, random_state=options.random_state).fit(z)
            if len(set(model.labels_)) < 2:
                continue
            scores[k] = float(
                silhouette_score(
                    z,
                    model.labels_,
                    sample_size=min(3000, len(z)),
                    random_state=options.random_state,
                )
            )
            models[k] = model
    if not scores:
        raise JourneyDataError("the customers' behaviour does not vary: no personas can be found")
    best = max(scores, key=lambda k: (scores[k], -k))
    centres = models[best].cluster_centers_
    sizes = np.bincount(models[best].labels_, minlength=best)
    order = np.argsort(-sizes, kind="stable")  # P1 is the largest persona
    centres = centres[order]
    # nearest centre in DuckDB, on the same standardisation as the fit
    zs = [
        f'(COALESCE("{n}", 0) - {float(mean[j])!r}) / {float(sd[j])!r}' for j, n in enumerate(names)
    ]
    dists = [
        " + ".join(f"POW({zs[j]} - {float(centres[c, j])!r}, 2)" for j in range(len(names)))
        for c in range(best)
    ]
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE persona_of AS
        SELECT customer_id, 'P' || CAST(list_position(d, list_min(d)) AS VARCHAR) AS persona
        FROM (SELECT customer_id, [{", ".join(dists)}] AS d FROM persona_x)
        """
    )
    centre_z = pd.DataFrame(centres, columns=names)
    means = ", ".join(f'AVG(x."{n}") AS "{n}"' for n in names)
    profile = _frame(
        con,
        f"""
        SELECT p.persona, COUNT(*) AS customers,
            AVG((c.first_conversion IS NOT NULL)::INTEGER) AS converted_share,
            AVG(c.churned::INTEGER) AS churned_share,
            AVG(c.revenue) AS revenue_per_customer,
            AVG(c.complaints) AS complaints_per_customer,
            {means}
        FROM persona_of p JOIN cust c USING (customer_id) JOIN persona_x x USING (customer_id)
        GROUP BY 1 ORDER BY 1
        """,
    )
    profile["share"] = profile["customers"] / profile["customers"].sum()
    descriptions = {f"P{i + 1}": describe_persona(centre_z.iloc[i], features) for i in range(best)}
    profile.insert(1, "description", profile["persona"].map(descriptions))
    # back from the log scale: exp(mean log(1 + x)) - 1 is the typical customer's value, not
    # pulled up by a few extreme ones
    for n in names:
        profile[n] = np.expm1(profile[n]) if not n.startswith("share_") else profile[n]
    profile = profile.rename(columns={n: f"typical_{n}" for n in names})
    for i, n in enumerate(names):
        profile[f"z_{n}"] = profile["persona"].map(
            {f"P{c + 1}": float(centres[c, i]) for c in range(best)}
        )
    assigned = _frame(
        con, "SELECT p.customer_id, p.persona, c.channel FROM persona_of p JOIN cust c "
        "USING (customer_id) ORDER BY 1",
    )  # fmt: skip
    facts = {
        "persona_k": best,
        "persona_silhouette": {str(k): round(v, 4) for k, v in scores.items()},
        "persona_fit_customers": len(x),
        "persona_features": names,
    }
    return profile, assigned, facts


def agreement_with_truth(assigned: pd.DataFrame, truth: Path) -> float | None:
    """Adjusted Rand index between the personas found and true ones (a simulator's
    ``truth/personas.parquet``), or None when the file is not there."""
    from sklearn.metrics import adjusted_rand_score

    if not truth.is_file():
        return None
    true = pd.read_parquet(truth, columns=["customer_id", "persona"])
    both = assigned.merge(true, on="customer_id", suffixes=("", "_true"))
    if both.empty:
        return None
    return float(adjusted_rand_score(both["persona_true"], both["persona"]))


# -- the whole run ------------------------------------------------------------------------------


def analyze_journeys(
    lake: Path,
    journey: JourneyMap,
    options: AnalyzeOptions | None = None,
    truth_personas: Path | None = None,
) -> JourneyAnalytics:
    """Every analysis of the module over ``lake``.

    Raises:
        JourneyDataError: not a lake, no customer events, or a cutoff outside the log.
    """
    options = options or AnalyzeOptions()
    con = open_journeys(lake, journey)
    try:
        facts = log_facts(con)
        log_end = datetime.fromisoformat(facts["last_event"])
        log_start = datetime.fromisoformat(facts["first_event"])
        cutoff = options.cutoff or default_cutoff(journey, log_end)
        if not log_start < cutoff <= log_end:
            raise JourneyDataError(
                f"the moments-that-matter cutoff {cutoff.isoformat()} is outside the log "
                f"({log_start.isoformat()} to {log_end.isoformat()}); the log needs more than "
                f"the {max(journey.horizons.churn_days, journey.horizons.conversion_days)}-day "
                "label horizon, or give a cutoff inside it"
            )
        personas, assigned, persona_facts = fit_personas(con, log_end, options)
        facts.update(persona_facts)
        if truth_personas is not None:
            ari = agreement_with_truth(assigned, truth_personas)
            if ari is not None:
                facts["persona_agreement_ari"] = ari
        register_membership(con)
        funnel = compute_funnel(con, journey)
        stage_tr = compute_stage_transitions(con, journey)
        event_tr = compute_event_transitions(con, options.top_events)
        paths = compute_paths(con, journey, options.path_steps, options.top_paths)
        ttc, curve = compute_time_to_convert(con, log_end)
        cohorts, retention = compute_retention(con, log_end)
        moments, moment_facts = compute_moments(con, journey, cutoff, options, facts)
        facts.update(moment_facts)
    finally:
        con.close()
    facts["stages"] = list(journey.stages)
    facts["options"] = options.model_dump(mode="json")
    logger.info(
        "journey analytics: %d customers, %d personas, %d scored moments",
        facts["customers"],
        facts["persona_k"],
        int((moments["group_kind"] == ALL).sum()) if len(moments) else 0,
    )
    return JourneyAnalytics(
        funnel=funnel,
        stage_transitions=stage_tr,
        event_transitions=event_tr,
        paths=paths,
        time_to_convert=ttc,
        conversion_curve=curve,
        cohorts=cohorts,
        retention=retention,
        moments=moments,
        personas=personas,
        customers=assigned,
        facts=facts,
    )
