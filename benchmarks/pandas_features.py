"""Every journey feature in plain pandas: the peer that ``bench_features_vs_pandas.py`` times.

Written the way a competent data scientist would without a SQL engine: sort the log once by
customer and time, derive per-event running state with groupby ``cumsum``/``cummax``/``ffill``/
``shift``, find for every snapshot (and every look-back) the last event strictly before it with
one ``merge_asof`` per look-back, and gather the running values at those rows with numpy. No
DuckDB, no Python loop over events. Event roles come from ``features.pipeline.event_roles`` (the
journey map's pattern resolution, not feature logic); every feature rule is re-implemented
here from the catalog's definitions, so a parity test compares two independent
implementations.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from features.catalog import NO_SCORE, NONE_LABEL, FeatureCatalog, slug
from features.pipeline import event_roles
from journeyml.config import JourneyMap

EVENT_COLUMNS = [
    "event_id",
    "customer_id",
    "timestamp",
    "event_type",
    "channel",
    "value",
    "session_id",
    "properties",
]
_US_PER_DAY = 86_400_000_000.0


def read_lake(lake: str | Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The events and (when present) the customers table of an ingested lake.

    Low-cardinality text columns are read as categoricals: at 10M events object strings
    would otherwise take several GB per copy of the frame.
    """
    lake = Path(lake)
    table = pq.read_table(lake / "events", columns=EVENT_COLUMNS)
    events = table.to_pandas(
        categories=["customer_id", "event_type", "channel"], split_blocks=True, self_destruct=True
    )
    del table
    customers_path = lake / "customers.parquet"
    customers = pd.read_parquet(customers_path) if customers_path.exists() else None
    return events, customers


def _score_of(text: object, key: str) -> float:
    # JSON_EXTRACT_STRING + TRY_CAST AS DOUBLE: numbers and numeric strings, else missing
    try:
        value = json.loads(text).get(key)  # type: ignore[arg-type]
    except (TypeError, ValueError, AttributeError):
        return np.nan
    if isinstance(value, bool) or value is None:
        return np.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


def _scores(properties: pd.Series, key: str) -> pd.Series:
    """Survey scores parsed once per distinct properties string (surveys are a few % of rows)."""
    distinct = properties.dropna().unique()
    lookup = {text: _score_of(text, key) for text in distinct}
    return properties.map(lookup).astype("float64")


def _per_event_state(
    events: pd.DataFrame, journey_map: JourneyMap, catalog: FeatureCatalog
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Events sorted by customer and time with running sums and running latest values.

    Returns:
        ``(ev, sums, latest)``: the sorted events (with ``cust`` codes and ``pos``), the running
        totals per event row, and the running latest non-missing values per event row.
    """
    settings = catalog.settings
    exp = journey_map.experience
    ev = events.sort_values(["customer_id", "timestamp", "event_id"], kind="stable")
    ev = ev.reset_index(drop=True)
    types = ev["event_type"].astype(str)
    roles = event_roles(journey_map, types.unique().tolist()).to_pandas().set_index("event_type")
    for col in roles.columns:
        ev[col] = roles[col].reindex(types).to_numpy()
    del types
    # sorted by customer, so code i is the i-th distinct customer_id
    ev["cust"] = pd.factorize(ev["customer_id"])[0]
    ev["pos"] = np.arange(len(ev))
    cust = ev["cust"]

    act = ev["is_activity"].to_numpy() == 1
    # microseconds since the epoch as float64: exact below 2**53 (year 2255), and NaN-able
    ts = ev["timestamp"].astype("int64").astype("float64")

    # sessions count once, at their first activity event
    with_session = act & ev["session_id"].notna().to_numpy()
    first_in_session = np.zeros(len(ev), dtype=bool)
    sess = ev.loc[with_session, ["cust", "session_id"]]
    first_in_session[sess.index[~sess.duplicated().to_numpy()]] = True

    sums = pd.DataFrame(
        {
            "c_events": act,
            "c_sessions": first_in_session,
            "c_valued": act & ev["value"].notna().to_numpy(),
            "c_conversions": ev["is_conversion"].to_numpy() == 1,
            "c_support": ev["is_support"].to_numpy() == 1,
            "c_complaints": ev["is_complaint"].to_numpy() == 1,
            "c_actions": ev["is_treatment"].to_numpy() == 1,
            "c_responses": ev["is_response"].to_numpy() == 1,
        }
    )
    for t in catalog.counted_event_types:
        sums[f"c_type_{slug(t)}"] = (ev["event_type"] == t).to_numpy()
    channel = ev["channel"]
    for ch in settings.channels:
        sums[f"c_channel_{ch}"] = act & (channel == ch).to_numpy()
    sums = sums.astype(np.int32)
    sums["c_value"] = np.where(act, ev["value"].fillna(0.0).to_numpy(), 0.0)
    sums = sums.groupby(cust.to_numpy(), sort=False).cumsum()

    # journey stage: a stage event moves forward only; a regression event sets its stage; the
    # stage after an event is the furthest since the customer's latest regression event
    back = ev["back_idx"].astype("float64")
    segment = back.notna().astype(np.int64).groupby(cust, sort=False).cumsum()
    stage = back.fillna(ev["stage_idx"].astype("float64")).fillna(-1.0)  # -1: no stage yet
    stage = stage.groupby([cust, segment], sort=False).cummax().replace(-1.0, np.nan)
    prior = stage.groupby(cust, sort=False).shift(1)
    has = stage.notna()
    changed = has & (prior.isna() | (stage != prior))
    moved = changed & prior.notna()
    latest = pd.DataFrame(
        {
            "cur_stage": stage.where(changed),
            "prev_stage": prior.where(moved),
            "stage_since_ts": ts.where(changed),
            "furthest_stage": stage.groupby(cust, sort=False).cummax(),
            "last_event_ts": ts.where(act),
            "last_conversion_ts": ts.where(ev["is_conversion"] == 1),
            "last_support_ts": ts.where(ev["is_support"] == 1),
            "last_complaint_ts": ts.where(ev["is_complaint"] == 1),
            "last_action_ts": ts.where(ev["is_treatment"] == 1),
        }
    )
    score_key = exp.score_property
    for col, flag in (("last_nps", "is_nps"), ("last_csat", "is_csat")):
        mask = ev[flag] == 1
        latest[col] = np.nan
        latest.loc[mask, col] = _scores(ev.loc[mask, "properties"], score_key)
    names = ev.loc[act, "event_type"].astype(object)  # categoricals cannot hold "none"
    activity_types = names.groupby(cust[act], sort=False)
    for k in range(1, settings.last_k + 1):
        kth = activity_types.shift(k - 1).fillna(NONE_LABEL) if k > 1 else names
        latest[f"last_type_{k}"] = kth.reindex(ev.index)
    latest = latest.groupby(cust.to_numpy(), sort=False).ffill()
    regressions = (moved & (stage < prior)).astype(np.int64)
    latest["regressions"] = regressions.groupby(cust, sort=False).cumsum()
    return ev[["customer_id", "cust", "timestamp", "pos", "is_activity"]], sums, latest


def _positions_before(snaps: pd.DataFrame, by_time: pd.DataFrame, lag_days: int) -> np.ndarray:
    """Row of the customer's last event strictly before ``snapshot_ts - lag_days`` (or -1)."""
    left = pd.DataFrame(
        {
            "row": np.arange(len(snaps)),
            "cust": snaps["cust"].to_numpy(),
            "at": (snaps["snapshot_ts"] - pd.Timedelta(days=lag_days)).astype(
                by_time["timestamp"].dtype
            ),
        }
    ).sort_values("at", kind="stable")
    found = pd.merge_asof(
        left,
        by_time,
        left_on="at",
        right_on="timestamp",
        by="cust",
        allow_exact_matches=False,
        direction="backward",
    )
    out = np.full(len(snaps), -1, dtype=np.int64)
    out[found["row"].to_numpy()] = found["pos"].fillna(-1).to_numpy(dtype=np.int64)
    return out


def _gather(values: np.ndarray, pos: np.ndarray, missing: object) -> np.ndarray:
    out = values[np.maximum(pos, 0)]
    if out.dtype.kind in "iub" and not isinstance(missing, (int, np.integer)):
        out = out.astype("float64")
    out[pos < 0] = missing
    return out


def compute_pandas_features(
    events: pd.DataFrame,
    customers: pd.DataFrame | None,
    cutoffs: Sequence[datetime | pd.Timestamp],
    journey_map: JourneyMap,
    catalog: FeatureCatalog,
) -> pd.DataFrame:
    """Every catalog feature for every customer active before each cutoff, at that cutoff.

    Args:
        events: normalised events (``EVENT_COLUMNS``).
        customers: the customers table, or None (profile features then read "unknown").
        cutoffs: snapshot times; a customer gets a row at each cutoff after their first
            activity event, as ``features.pipeline.register_snapshots_for_cutoffs`` defines.

    Returns:
        ``customer_id``, ``event_timestamp`` and every catalog feature, one row per snapshot,
        sorted by customer and time (the order the parity checks compare in; the SQL
        pipeline writes its rows in no particular order).
    """
    settings = catalog.settings
    stamps = pd.to_datetime(pd.Series(list(cutoffs)), utc=True).astype("datetime64[us, UTC]")
    cut = stamps.drop_duplicates().sort_values().reset_index(drop=True)
    if events["timestamp"].dtype != "datetime64[us, UTC]":
        events = events.assign(timestamp=events["timestamp"].astype("datetime64[us, UTC]"))
    late = (events["timestamp"] >= cut.iloc[-1]).to_numpy()
    if late.any():  # copy the log only when something is after the last snapshot
        events = events[~late]
    ev, sums, latest = _per_event_state(events, journey_map, catalog)

    first = ev[ev["is_activity"] == 1].groupby("cust", sort=False)["timestamp"].min()
    grid = pd.merge(
        first.rename("first_ts").reset_index(), cut.rename("snapshot_ts").to_frame(), how="cross"
    )
    grid = grid[grid["first_ts"] < grid["snapshot_ts"]]
    ids_by_code = ev["customer_id"].drop_duplicates().to_numpy().astype(object)
    grid["customer_id"] = ids_by_code[grid["cust"].to_numpy()]
    # in the output order already: no sort of the wide frame at the end
    snaps = grid.sort_values(["customer_id", "snapshot_ts"]).reset_index(drop=True)
    by_time = ev[["cust", "timestamp", "pos"]].sort_values("timestamp", kind="stable")

    lags = settings.lags_days
    pos = {lag: _positions_before(snaps, by_time, lag) for lag in lags}
    sum_arrays = {c: sums[c].to_numpy() for c in sums.columns}

    def total(acc: str, lag: int = 0) -> np.ndarray:
        return _gather(sum_arrays[acc], pos[lag], 0)

    def window(acc: str, w: int) -> np.ndarray:
        return total(acc, 0) - total(acc, w)

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        safe = np.where(den > 0, den, 1)
        return np.where(den > 0, num * 1.0 / safe, 0.0)

    def now(col: str) -> pd.Series:
        values = latest[col].to_numpy()
        out = values[np.maximum(pos[0], 0)]
        return pd.Series(out).where(pos[0] >= 0)

    t_us = snaps["snapshot_ts"].astype("int64").to_numpy().astype("float64")

    def days_since(stamp_us: pd.Series) -> np.ndarray:
        return (t_us - stamp_us.to_numpy()) / _US_PER_DAY

    out: dict[str, np.ndarray] = {}
    for w in settings.windows_days:
        out[f"events_{w}d"] = window("c_events", w)
        out[f"sessions_{w}d"] = window("c_sessions", w)
        out[f"conversions_{w}d"] = window("c_conversions", w)
        out[f"value_sum_{w}d"] = window("c_value", w)
        out[f"value_mean_{w}d"] = ratio(window("c_value", w), window("c_valued", w))
        for t in catalog.counted_event_types:
            out[f"n_{slug(t)}_{w}d"] = window(f"c_type_{slug(t)}", w)
        for ch in settings.channels:
            out[f"channel_{ch}_{w}d"] = window(f"c_channel_{ch}", w)
    tr = settings.trend_days
    for name, acc in (("events", "c_events"), ("value", "c_value")):
        recent = total(acc, 0) - total(acc, tr)
        before = total(acc, tr) - total(acc, 2 * tr)
        out[f"{name}_trend_{tr}d"] = (recent + 1.0) / (before + 1.0)
    w_mid = 30 if 30 in settings.windows_days else settings.windows_days[-1]
    out[f"events_per_session_{w_mid}d"] = ratio(
        window("c_events", w_mid), window("c_sessions", w_mid)
    )
    out["events_total"] = total("c_events")
    out["conversions_total"] = total("c_conversions")
    out["value_total"] = total("c_value")

    tenure = days_since(snaps["first_ts"].astype("int64").astype("float64"))
    out["tenure_days"] = tenure
    for what in ("last_event", "last_conversion", "last_support", "last_complaint", "last_action"):
        since = days_since(now(f"{what}_ts"))
        out[f"days_since_{what}"] = np.where(np.isnan(since), tenure + 1.0, since)

    names = np.array([*journey_map.stages, NONE_LABEL], dtype=object)

    def stage_index(col: str) -> np.ndarray:
        return now(col).fillna(-1).to_numpy().astype(np.int64)

    cur, furthest = stage_index("cur_stage"), stage_index("furthest_stage")
    out["stage"] = names[cur]  # -1 picks the trailing NONE_LABEL
    out["stage_index"] = cur
    out["previous_stage"] = names[stage_index("prev_stage")]
    out["furthest_stage"] = names[furthest]
    out["furthest_stage_index"] = furthest
    in_stage = days_since(now("stage_since_ts"))
    out["days_in_stage"] = np.where(np.isnan(in_stage), tenure + 1.0, in_stage)
    out["stage_regressions"] = now("regressions").fillna(0).to_numpy().astype(np.int64)
    for k in range(1, settings.last_k + 1):
        out[f"last_event_{k}"] = now(f"last_type_{k}").fillna(NONE_LABEL).to_numpy()

    for w in settings.windows_days:
        out[f"support_{w}d"] = window("c_support", w)
        out[f"complaints_{w}d"] = window("c_complaints", w)
        out[f"actions_{w}d"] = window("c_actions", w)
        out[f"responses_{w}d"] = window("c_responses", w)
    w_max = settings.windows_days[-1]
    out[f"response_rate_{w_max}d"] = ratio(window("c_responses", w_max), window("c_actions", w_max))
    out["support_total"] = total("c_support")
    out["complaints_total"] = total("c_complaints")
    out["actions_total"] = total("c_actions")
    out["last_nps"] = now("last_nps").fillna(NO_SCORE).to_numpy()
    out["last_csat"] = now("last_csat").fillna(NO_SCORE).to_numpy()

    ids = snaps["customer_id"].to_numpy()
    if customers is None:
        profile = pd.DataFrame(index=pd.Index([], name="customer_id"))
    else:
        profile = customers.drop_duplicates("customer_id").set_index("customer_id")
    for attr in settings.profile_attributes:
        if attr in profile.columns:
            out[attr] = _as_text(profile[attr]).reindex(ids).fillna("unknown").to_numpy()
        else:
            out[attr] = np.full(len(snaps), "unknown", dtype=object)

    dtypes = {"int64": np.int64, "float64": np.float64, "string": object}
    frame = pd.DataFrame(
        {
            "customer_id": ids,
            "event_timestamp": snaps["snapshot_ts"],
            **{f.name: np.asarray(out[f.name]).astype(dtypes[f.dtype]) for f in catalog.features},
        }
    )
    return frame


def _as_text(column: pd.Series) -> pd.Series:
    """A profile column as the SQL pipeline casts it to VARCHAR (booleans as true/false)."""
    if column.dtype == bool or str(column.dtype) == "boolean":
        return column.map({True: "true", False: "false"})
    return column.astype("string").astype(object)
