"""Labels with observation dates, computed in DuckDB over the event lake.

A label belongs to a customer and a *cutoff* T (a feature snapshot time). Features use events
strictly before T; labels use events at or after T, inside a horizon from the journey map:

- **active at T**: some activity in ``[T - churn.inactivity_days, T)`` and no explicit churn
  event after the last other activity (a customer who cancelled and never came back is not
  active). Only active customers get labels; with ``inactivity_days`` unset, every customer
  who has not cancelled counts as active.
- **churn**: an explicit churn event in ``[T, T + churn_days)``, or (when the journey map has
  ``inactivity_days``) no activity at all in that window.
- **conversion**: a conversion event in ``[T, T + conversion_days)``.
- **next event type**: the first activity event in ``[T, T + next_step_days)``, ``"none"``
  when there is none.
- **next stage**: the stage the customer moves to next, by the journey map's stage machine
  (:func:`features.pipeline.stage_machine`: forward on stage events, back only on regression
  events): the stage after their first stage change in ``[T, T + next_step_days)``,
  ``"none"`` when their stage does not change in that window.

Only cutoffs whose longest horizon ends inside the log (``T + max horizon <= last event``)
are labelled. Event roles come from :func:`features.pipeline.event_roles` through
``register_inputs``, so pattern semantics live in one place (``JourneyMap``). Everything is one
range join and one aggregation: no per-customer loops.

The query is written once, in SQL that DuckDB runs and :func:`features.pipeline.to_spark_sql`
transpiles for Spark (:mod:`training.spark_labels`): "the first event in a window" is
``ARG_MIN(x, seq) FILTER (...)`` over a per-customer sequence number in (time, event id) order
(Spark's ``MIN_BY``), not an ordered aggregate, which Spark lacks.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from features.pipeline import (
    connect,
    plan_snapshots,
    register_inputs,
    register_snapshots_for_cutoffs,
    stage_machine,
)
from features.settings import FeatureSettings
from journeyml.config import JourneyMap
from training.config import SplitSettings

logger = logging.getLogger(__name__)

NONE_LABEL = "none"
LABEL_COLUMNS: tuple[str, ...] = (
    "active",
    "churn",
    "conversion",
    "next_event_type",
    "next_stage",
)
Split = str  # "train" | "validation" | "test"


class LabelError(ValueError):
    """The log cannot be labelled as configured; the message says why."""


def max_horizon_days(journey_map: JourneyMap) -> int:
    """The longest label horizon, in days."""
    h = journey_map.horizons
    return max(h.churn_days, h.conversion_days, h.next_step_days)


def register_label_roles(con: duckdb.DuckDBPyConnection, journey_map: JourneyMap) -> None:
    """Adds ``label_roles`` (event_type, stage, activity, conversion, churn-event flags).

    Reads the ``roles`` table that :func:`features.pipeline.register_inputs` created and adds
    the explicit-churn flag, resolved by the journey map.
    """
    types = [r[0] for r in con.execute("SELECT event_type FROM roles").fetchall()]
    churn = pa.table(
        {
            "event_type": pa.array(types, pa.string()),
            "is_churn": pa.array([int(journey_map.is_churn_event(t)) for t in types], pa.int32()),
        }
    )
    con.register("churn_arrow", churn)
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE label_roles AS
        SELECT r.event_type, r.stage_idx, r.back_idx, r.is_activity, r.is_conversion, c.is_churn
        FROM roles AS r JOIN churn_arrow AS c USING (event_type)
        """
    )
    con.unregister("churn_arrow")


def label_query(journey_map: JourneyMap, ordered: bool = True) -> str:
    """SQL over ``events``, ``label_roles`` and ``entities(customer_id, cutoff)``.

    Args:
        ordered: sort the rows by cutoff and customer (the Spark engine leaves it out: its
            writer partitions the rows itself).
    """
    h = journey_map.horizons
    inactivity = journey_map.churn.inactivity_days
    lookback = inactivity if inactivity is not None else 365 * 100
    ahead = max_horizon_days(journey_map)
    stages = " ".join(f"WHEN {i} THEN '{s}'" for i, s in enumerate(journey_map.stages))
    silence_churns = "TRUE" if inactivity is not None else "FALSE"

    def within(days: int) -> str:
        return f"ev.ts >= n.cutoff AND ev.ts < n.cutoff + INTERVAL {days} DAY"

    staged = (
        "SELECT e.customer_id, e.timestamp AS ts, e.event_id, r.stage_idx, r.back_idx "
        "FROM events AS e JOIN label_roles AS r ON r.event_type = e.event_type "
        "WHERE (r.stage_idx IS NOT NULL OR r.back_idx IS NOT NULL) "
        "AND e.customer_id IN (SELECT customer_id FROM entities)"
    )

    return f"""
WITH ev AS (
    SELECT e.customer_id, e.timestamp AS ts, e.event_id, e.event_type,
        r.stage_idx, r.is_activity, r.is_conversion, r.is_churn,
        ROW_NUMBER() OVER (PARTITION BY e.customer_id ORDER BY e.timestamp, e.event_id) AS seq
    FROM events AS e JOIN label_roles AS r ON r.event_type = e.event_type
    WHERE r.is_activity = 1 OR r.is_conversion = 1 OR r.is_churn = 1
),
moves AS (
    SELECT customer_id, ts, event_id, stage_now, seq
    FROM ({stage_machine(staged, "customer_id", "ts, event_id", ("ROW_NUMBER() OVER w AS seq",))})
        AS s
    WHERE stage_now IS NOT NULL AND stage_prior IS DISTINCT FROM stage_now
),
next_move AS (
    SELECT n.customer_id, n.cutoff, ARG_MIN(ev.stage_now, ev.seq) AS next_stage_idx
    FROM entities AS n
    JOIN moves AS ev ON ev.customer_id = n.customer_id AND {within(h.next_step_days)}
    GROUP BY n.customer_id, n.cutoff
),
agg AS (
    SELECT n.customer_id, n.cutoff,
        MAX(ev.ts) FILTER (WHERE ev.ts < n.cutoff AND ev.is_activity = 1 AND ev.is_churn = 0)
            AS last_activity,
        MAX(ev.ts) FILTER (WHERE ev.ts < n.cutoff AND ev.is_churn = 1) AS last_churn_event,
        COUNT(ev.ts) FILTER (WHERE {within(h.churn_days)} AND ev.is_activity = 1)
            AS activity_h,
        COUNT(ev.ts) FILTER (WHERE {within(h.churn_days)} AND ev.is_churn = 1) AS churn_events_h,
        COUNT(ev.ts) FILTER (WHERE {within(h.conversion_days)} AND ev.is_conversion = 1)
            AS conversions_h,
        ARG_MIN(ev.event_type, ev.seq)
            FILTER (WHERE {within(h.next_step_days)} AND ev.is_activity = 1) AS next_type
    FROM entities AS n
    LEFT JOIN ev ON ev.customer_id = n.customer_id
        AND ev.ts >= n.cutoff - INTERVAL {lookback} DAY
        AND ev.ts < n.cutoff + INTERVAL {ahead} DAY
    GROUP BY n.customer_id, n.cutoff
),
flags AS (
    SELECT agg.*, m.next_stage_idx,
        last_activity IS NOT NULL
            AND (last_churn_event IS NULL OR last_churn_event < last_activity) AS active
    FROM agg
    LEFT JOIN next_move AS m ON m.customer_id = agg.customer_id AND m.cutoff = agg.cutoff
)
SELECT
    customer_id,
    cutoff,
    active,
    CAST(CASE WHEN NOT active THEN NULL
              WHEN churn_events_h > 0 THEN 1
              WHEN {silence_churns} AND activity_h = 0 THEN 1
              ELSE 0 END AS INTEGER) AS churn,
    CAST(conversions_h > 0 AS INTEGER) AS conversion,
    COALESCE(next_type, '{NONE_LABEL}') AS next_event_type,
    COALESCE(CASE next_stage_idx {stages} END, '{NONE_LABEL}') AS next_stage
FROM flags
{"ORDER BY cutoff, customer_id" if ordered else ""}
"""


def compute_labels(
    con: duckdb.DuckDBPyConnection, journey_map: JourneyMap, entities: pd.DataFrame
) -> pd.DataFrame:
    """Labels for explicit (customer_id, cutoff) rows, on a connection with the lake registered.

    The connection needs the ``events`` and ``roles`` relations of
    :func:`features.pipeline.register_inputs`.
    """
    register_label_roles(con, journey_map)
    frame = pa.table(
        {
            "customer_id": pa.array(entities["customer_id"].astype(str), pa.string()),
            "cutoff": pa.array(
                pd.to_datetime(entities["cutoff"], utc=True), pa.timestamp("us", tz="UTC")
            ),
        }
    )
    con.register("entities_arrow", frame)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE entities AS SELECT DISTINCT customer_id, cutoff "
        "FROM entities_arrow"
    )
    con.unregister("entities_arrow")
    return con.execute(label_query(journey_map)).df()


@dataclass(frozen=True)
class LabelSet:
    """Labels at every labelled cutoff, with the window they cover.

    Attributes:
        frame: one row per customer seen before a cutoff: customer_id, cutoff and
            :data:`LABEL_COLUMNS`.
        cutoffs: the labelled cutoffs, in order.
        log_end: the last event of the log; every label horizon ends at or before it.
    """

    frame: pd.DataFrame
    cutoffs: tuple[datetime, ...]
    log_end: datetime


def open_lake(lake: str | Path, journey_map: JourneyMap) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the lake's ``events`` and ``roles`` relations registered."""
    from journeyml.events.schema import EVENTS_DIR, events_glob

    events_dir = Path(lake) / EVENTS_DIR
    if not events_dir.is_dir() or not any(events_dir.rglob("*.parquet")):
        raise LabelError(f"no ingested events under {events_dir}: run `journeyml events ingest`")
    con = connect(memory_limit="4GB")
    glob = events_glob(lake).replace("'", "''")
    register_inputs(
        con,
        journey_map,
        f"SELECT * FROM read_parquet('{glob}', hive_partitioning = false)",
        None,
        [],
    )
    return con


def labelled_cutoffs(
    con: duckdb.DuckDBPyConnection,
    journey_map: JourneyMap,
    settings: FeatureSettings,
    log_end: datetime | None = None,
) -> tuple[list[datetime], datetime]:
    """The feature pipeline's snapshot grid, cut where a full label horizon no longer fits."""
    first, last, end = con.execute(
        "SELECT MIN(e.timestamp) FILTER (WHERE r.is_activity = 1), "
        "MAX(e.timestamp) FILTER (WHERE r.is_activity = 1), MAX(e.timestamp) "
        "FROM events e JOIN roles r ON r.event_type = e.event_type"
    ).fetchall()[0]
    if first is None:
        raise LabelError("the lake has no customer activity events")
    log_end = log_end or end
    snaps = settings.snapshots
    plan = plan_snapshots(first, last, snaps.cadence_days, snaps.warmup_days)
    horizon = timedelta(days=max_horizon_days(journey_map))
    cutoffs = [t for t in plan.cutoffs if t + horizon <= log_end]
    return cutoffs, log_end


def build_labels(
    lake: str | Path,
    journey_map: JourneyMap,
    settings: FeatureSettings,
    log_end: datetime | None = None,
) -> LabelSet:
    """Labels every customer seen before each labelled cutoff of the snapshot grid.

    Raises:
        LabelError: no events, or the log is too short for one full horizon after warm-up.
    """
    con = open_lake(lake, journey_map)
    try:
        cutoffs, end = labelled_cutoffs(con, journey_map, settings, log_end)
        if not cutoffs:
            raise LabelError(
                f"the log is too short: no snapshot cutoff has a full "
                f"{max_horizon_days(journey_map)}-day label horizon before the last event "
                f"({end.isoformat()})"
            )
        register_snapshots_for_cutoffs(con, cutoffs)
        entities = con.execute("SELECT customer_id, snapshot_ts AS cutoff FROM snapshots").df()
        frame = compute_labels(con, journey_map, entities)
    finally:
        con.close()
    logger.info(
        "labelled %d rows at %d cutoffs (%d active)",
        len(frame),
        len(cutoffs),
        int(frame["active"].sum()),
    )
    return LabelSet(frame, tuple(cutoffs), end)


@dataclass(frozen=True)
class SplitPlan:
    """Which labelled cutoffs train, validate and test a model.

    With ``held_out_share > 0`` validation is a group of customers inside the training window:
    ``train`` and ``validation`` list the same cutoffs, and a customer belongs to validation
    (at all of them) when :func:`held_out_customers` says so.
    """

    train: tuple[datetime, ...]
    validation: tuple[datetime, ...]
    test: tuple[datetime, ...]
    held_out_share: float = 0.0

    def of(self, cutoff: datetime) -> Split | None:
        for name in ("train", "validation", "test"):
            if cutoff in getattr(self, name):
                return name
        return None

    def window(self) -> dict[str, str]:
        """First and last cutoff of each split, ISO-formatted (for run parameters)."""
        out = {}
        for name in ("train", "validation", "test"):
            ts = getattr(self, name)
            out[f"{name}_from"] = ts[0].isoformat()
            out[f"{name}_to"] = ts[-1].isoformat()
        return out


def customer_fraction(customer_ids: pd.Series | np.ndarray, salt: str = "") -> np.ndarray:
    """A number in [0, 1) fixed by each customer id (its salted sha256): the same in every
    run, uniform over customers. Different salts give independent draws."""
    ids = pd.Series(np.asarray(customer_ids, dtype=object)).astype(str)
    unique = ids.drop_duplicates()
    fraction = {
        c: int.from_bytes(hashlib.sha256((salt + c).encode("utf-8")).digest()[:8], "big") / 2.0**64
        for c in unique
    }
    return ids.map(fraction).to_numpy(dtype=np.float64)


def held_out_customers(customer_ids: pd.Series | np.ndarray, share: float) -> np.ndarray:
    """Whether each customer is in the held-out validation group: a fixed function of the id
    (its sha256), so a customer is in the same group at every cutoff and in every run."""
    return customer_fraction(customer_ids) < share


def plan_splits(cutoffs: list[datetime], split: SplitSettings, gap_days: int) -> SplitPlan:
    """Splits cutoffs by time: test last; before it (after a purge gap) training, with
    validation either a held-out group of the training window's customers
    (``split.validation == "customers"``) or the period before the test (``"period"``).

    With ``split.purge``, a cutoff of an earlier split is kept only when its label window
    (``gap_days``) ends at or before the first cutoff of the next split.

    Raises:
        LabelError: a split would be empty (the log is too short for the configured periods).
    """
    ordered = sorted(cutoffs)
    if not ordered:
        raise LabelError("no labelled cutoffs")
    gap = timedelta(days=gap_days if split.purge else 0)
    last = ordered[-1]
    test = [t for t in ordered if t > last - timedelta(days=split.test_days)]
    test_start = test[0]
    if split.validation == "customers":
        train = [t for t in ordered if t <= test_start - gap and t < test_start]
        if not train:
            raise LabelError(
                f"no training cutoffs: {len(ordered)} labelled cutoffs from "
                f"{ordered[0]:%Y-%m-%d} to {last:%Y-%m-%d} leave none before the test period "
                f"({split.test_days} days) and the {gap.days}-day purge gap; use a longer log "
                "or shorter split periods in configs/models.yaml"
            )
        return SplitPlan(tuple(train), tuple(train), tuple(test), split.validation_share)
    val_end = test_start - gap
    val = [
        t
        for t in ordered
        if t <= val_end and t > val_end - timedelta(days=split.validation_days) and t < test_start
    ]
    if not val:
        raise LabelError(
            f"no validation cutoffs: {len(ordered)} labelled cutoffs from "
            f"{ordered[0]:%Y-%m-%d} to {last:%Y-%m-%d} leave none before the test period "
            f"({split.test_days} days) and the {gap.days}-day purge gap; use a longer log or "
            "shorter split periods in configs/models.yaml"
        )
    train = [t for t in ordered if t <= val[0] - gap and t < val[0]]
    if not train:
        raise LabelError(
            f"no training cutoffs before the validation period starting {val[0]:%Y-%m-%d} "
            f"(with a {gap.days}-day purge gap); use a longer log or shorter split periods"
        )
    return SplitPlan(tuple(train), tuple(val), tuple(test))


def assign_splits(frame: pd.DataFrame, plan: SplitPlan) -> pd.Series:
    """The split of every row (``None`` for cutoffs in a purge gap); with a customer-grouped
    plan, rows of the training window go to validation when their customer is held out."""
    cutoff = pd.to_datetime(frame["cutoff"], utc=True)
    lookup = {
        pd.Timestamp(t): name
        for name in ("validation", "train", "test")
        for t in getattr(plan, name)
    }
    out = cutoff.map(lookup)
    if plan.held_out_share > 0:
        out = out.where(out != "validation", "train")
        held = held_out_customers(frame["customer_id"], plan.held_out_share)
        out = out.where(~((out == "train").to_numpy() & held), "validation")
    return out
