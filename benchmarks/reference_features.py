"""A plain pandas implementation of the journey features, the reference for the build benchmark.

Written the way a competent data scientist would without a SQL engine: sort once, derive
per-event state with groupby shifts and cumulative sums, then read every running value at each
snapshot (and at each look-back) with ``merge_asof``. It computes the same features as
``features.pipeline.feature_query`` from the same catalog, and a test checks they agree, so the
benchmark compares like with like.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from features.catalog import NO_SCORE, NONE_LABEL, FeatureCatalog, slug
from features.pipeline import ROLE_COLUMNS, event_roles
from journeyml.config import JourneyMap

DAY = pd.Timedelta(days=1)


def _score(properties: pd.Series, key: str) -> pd.Series:
    def parse(text: object) -> float:
        if not isinstance(text, str):
            return np.nan
        try:
            value = json.loads(text).get(key)
            return float(value)
        except (ValueError, TypeError, AttributeError):
            return np.nan

    return properties.map(parse).astype("float64")


def prepare_events(
    events: pd.DataFrame, journey_map: JourneyMap, catalog: FeatureCatalog, score_key: str
) -> pd.DataFrame:
    """Per-event roles, stage state, last-k types and running totals (one row per event)."""
    roles = event_roles(journey_map, events["event_type"].unique().tolist()).to_pandas()
    ev = events.merge(roles, on="event_type", how="inner")
    ev["timestamp"] = ev["timestamp"].astype("datetime64[ns, UTC]")
    ev = ev.sort_values(["customer_id", "timestamp", "event_id"], kind="mergesort")
    ev = ev.reset_index(drop=True)
    g = ev.groupby("customer_id", sort=False)
    act = ev["is_activity"] == 1

    nps = ev["is_nps"] == 1
    csat = ev["is_csat"] == 1
    ev["nps_score"] = np.nan
    ev.loc[nps, "nps_score"] = _score(ev.loc[nps, "properties"], score_key)
    ev["csat_score"] = np.nan
    ev.loc[csat, "csat_score"] = _score(ev.loc[csat, "properties"], score_key)
    with_session = ev["session_id"].notna() & act
    first = ~ev.duplicated(["customer_id", "session_id", "is_activity"])
    ev["session_start"] = (with_session & first).astype(np.int64)

    stage = ev["stage_idx"].astype("float64")
    ev["stage_f"] = stage
    prior = g["stage_f"].transform(lambda s: s.ffill().shift(1))
    has = stage.notna()
    changed = has & (prior.isna() | (stage != prior))
    ev["prev_stage"] = np.where(has & prior.notna() & (stage != prior), prior, np.nan)
    ev["stage_since_ts"] = ev["timestamp"].where(changed)
    ev["furthest_stage"] = g["stage_f"].cummax()  # NaN on stage-less rows: filled below
    ev["regressions"] = (has & prior.notna() & (stage < prior)).astype(np.int64)
    ev["regressions"] = ev.groupby("customer_id", sort=False)["regressions"].cumsum()
    ev["cur_stage"] = stage

    ga = ev[act].groupby("customer_id", sort=False)["event_type"]
    for k in range(1, catalog.settings.last_k + 1):
        col = ev["event_type"].where(act) if k == 1 else ga.shift(k - 1).fillna(NONE_LABEL)
        ev[f"last_type_{k}"] = col.reindex(ev.index)

    indicators = {
        "c_events": act,
        "c_sessions": ev["session_start"] == 1,
        "c_conversions": ev["is_conversion"] == 1,
        "c_support": ev["is_support"] == 1,
        "c_complaints": ev["is_complaint"] == 1,
        "c_actions": ev["is_treatment"] == 1,
        "c_responses": ev["is_response"] == 1,
        "c_valued": act & ev["value"].notna(),
    }
    for t in catalog.counted_event_types:
        indicators[f"c_type_{slug(t)}"] = ev["event_type"] == t
    for ch in catalog.settings.channels:
        indicators[f"c_channel_{ch}"] = act & (ev["channel"] == ch)
    sums = pd.DataFrame({k: v.astype(np.int64) for k, v in indicators.items()})
    sums["c_value"] = ev["value"].where(act, 0.0).fillna(0.0)
    sums["customer_id"] = ev["customer_id"]
    running = sums.groupby("customer_id", sort=False).cumsum()
    for col in running.columns:
        ev[col] = running[col]

    stamps = {
        "last_event_ts": act,
        "last_conversion_ts": ev["is_conversion"] == 1,
        "last_support_ts": ev["is_support"] == 1,
        "last_complaint_ts": ev["is_complaint"] == 1,
        "last_action_ts": ev["is_treatment"] == 1,
    }
    for name, mask in stamps.items():
        ev[name] = ev["timestamp"].where(mask)
    last_cols = [
        *stamps,
        "first_ts",
        "cur_stage",
        "prev_stage",
        "stage_since_ts",
        "furthest_stage",
        "last_nps",
        "last_csat",
        *(f"last_type_{k}" for k in range(1, catalog.settings.last_k + 1)),
    ]
    ev["first_ts"] = ev["timestamp"].where(act)
    ev["last_nps"] = ev["nps_score"]
    ev["last_csat"] = ev["csat_score"]
    filled = ev.groupby("customer_id", sort=False)[
        [c for c in last_cols if c != "first_ts"]
    ].ffill()
    for col in filled.columns:
        ev[col] = filled[col]
    ev["first_ts"] = ev.groupby("customer_id", sort=False)["first_ts"].transform("min")
    # first_ts must not look ahead: before the first activity it is unknown
    ev.loc[ev["timestamp"] < ev["first_ts"], "first_ts"] = pd.NaT
    return ev


def _read_at(
    snapshots: pd.DataFrame, ev: pd.DataFrame, columns: list[str], lag: int
) -> pd.DataFrame:
    """Running values of ``columns`` from the last event strictly before snapshot − lag days."""
    left = snapshots[["customer_id", "snapshot_ts"]].copy()
    left["at"] = left["snapshot_ts"] - lag * DAY
    left = left.sort_values("at", kind="mergesort")
    right = ev[["customer_id", "timestamp", *columns]].sort_values("timestamp", kind="mergesort")
    out = pd.merge_asof(
        left,
        right,
        left_on="at",
        right_on="timestamp",
        by="customer_id",
        allow_exact_matches=False,
        direction="backward",
    )
    return out.set_index(["customer_id", "snapshot_ts"])[columns]


def compute_reference_features(
    events: pd.DataFrame,
    customers: pd.DataFrame | None,
    cutoffs: list[pd.Timestamp],
    journey_map: JourneyMap,
    catalog: FeatureCatalog,
) -> pd.DataFrame:
    """Every catalog feature for every customer seen before each cutoff, in plain pandas."""
    ev = prepare_events(events, journey_map, catalog, journey_map.experience.score_property)
    settings = catalog.settings
    first = ev[ev["is_activity"] == 1].groupby("customer_id")["timestamp"].min()
    snaps = pd.DataFrame(
        [(c, t) for t in cutoffs for c in first[first < t].index],
        columns=["customer_id", "snapshot_ts"],
    )
    snaps["snapshot_ts"] = pd.to_datetime(snaps["snapshot_ts"], utc=True).astype(
        "datetime64[ns, UTC]"
    )
    sum_cols = [c for c in ev.columns if c.startswith("c_")]
    state_cols = [
        "first_ts",
        "last_event_ts",
        "last_conversion_ts",
        "last_support_ts",
        "last_complaint_ts",
        "last_action_ts",
        "cur_stage",
        "prev_stage",
        "stage_since_ts",
        "furthest_stage",
        "regressions",
        "last_nps",
        "last_csat",
        *(f"last_type_{k}" for k in range(1, settings.last_k + 1)),
    ]
    at0 = _read_at(snaps, ev, sum_cols + state_cols, 0)
    lags = sorted({*settings.windows_days, settings.trend_days, 2 * settings.trend_days})
    back = {lag: _read_at(snaps, ev, sum_cols, lag).fillna(0) for lag in lags}
    now = at0[sum_cols].fillna(0)

    def window(col: str, w: int) -> pd.Series:
        return now[col] - back[w][col]

    idx = at0.index
    t = pd.Series(idx.get_level_values("snapshot_ts"), index=idx)
    out: dict[str, pd.Series] = {}

    def days(since: pd.Series) -> pd.Series:
        return (t - since).dt.total_seconds() / 86400.0

    tenure = days(at0["first_ts"])
    for w in settings.windows_days:
        out[f"events_{w}d"] = window("c_events", w)
        out[f"sessions_{w}d"] = window("c_sessions", w)
        out[f"conversions_{w}d"] = window("c_conversions", w)
        out[f"value_sum_{w}d"] = window("c_value", w)
        valued = window("c_valued", w)
        out[f"value_mean_{w}d"] = (window("c_value", w) / valued.where(valued > 0)).fillna(0.0)
        for typ in catalog.counted_event_types:
            out[f"n_{slug(typ)}_{w}d"] = window(f"c_type_{slug(typ)}", w)
        for ch in settings.channels:
            out[f"channel_{ch}_{w}d"] = window(f"c_channel_{ch}", w)
    tr = settings.trend_days
    recent = now["c_events"] - back[tr]["c_events"]
    before = back[tr]["c_events"] - back[2 * tr]["c_events"]
    out[f"events_trend_{tr}d"] = (recent + 1.0) / (before + 1.0)
    recent_v = now["c_value"] - back[tr]["c_value"]
    before_v = back[tr]["c_value"] - back[2 * tr]["c_value"]
    out[f"value_trend_{tr}d"] = (recent_v + 1.0) / (before_v + 1.0)
    w_mid = 30 if 30 in settings.windows_days else settings.windows_days[-1]
    sess = window("c_sessions", w_mid)
    out[f"events_per_session_{w_mid}d"] = (window("c_events", w_mid) / sess.where(sess > 0)).fillna(
        0.0
    )
    out["events_total"] = now["c_events"]
    out["conversions_total"] = now["c_conversions"]
    out["value_total"] = now["c_value"]
    out["tenure_days"] = tenure
    for name in ("last_event", "last_conversion", "last_support", "last_complaint", "last_action"):
        out[f"days_since_{name}"] = days(at0[f"{name}_ts"]).fillna(tenure + 1.0)

    names = pd.Series(journey_map.stages)

    def stage_name(col: pd.Series) -> pd.Series:
        return col.map(lambda i: NONE_LABEL if pd.isna(i) else names[int(i)])

    out["stage"] = stage_name(at0["cur_stage"])
    out["stage_index"] = at0["cur_stage"].fillna(-1)
    out["previous_stage"] = stage_name(at0["prev_stage"])
    out["furthest_stage"] = stage_name(at0["furthest_stage"])
    out["furthest_stage_index"] = at0["furthest_stage"].fillna(-1)
    out["days_in_stage"] = days(at0["stage_since_ts"]).fillna(tenure + 1.0)
    out["stage_regressions"] = at0["regressions"].fillna(0)
    for k in range(1, settings.last_k + 1):
        out[f"last_event_{k}"] = at0[f"last_type_{k}"].fillna(NONE_LABEL)
    for w in settings.windows_days:
        out[f"support_{w}d"] = window("c_support", w)
        out[f"complaints_{w}d"] = window("c_complaints", w)
        out[f"actions_{w}d"] = window("c_actions", w)
        out[f"responses_{w}d"] = window("c_responses", w)
    w_max = settings.windows_days[-1]
    acts = window("c_actions", w_max)
    out[f"response_rate_{w_max}d"] = (window("c_responses", w_max) / acts.where(acts > 0)).fillna(
        0.0
    )
    out["support_total"] = now["c_support"]
    out["complaints_total"] = now["c_complaints"]
    out["actions_total"] = now["c_actions"]
    out["last_nps"] = at0["last_nps"].fillna(NO_SCORE)
    out["last_csat"] = at0["last_csat"].fillna(NO_SCORE)
    frame = pd.DataFrame(out)
    profile = (
        customers.set_index("customer_id")
        if customers is not None
        else pd.DataFrame(index=pd.Index([], name="customer_id"))
    )
    ids = frame.index.get_level_values("customer_id")
    for attr in settings.profile_attributes:
        if attr in profile.columns:
            column = profile[attr]
            if column.dtype == bool:
                column = column.map({True: "true", False: "false"})  # as SQL casts booleans
            values = column.astype("string").reindex(ids).fillna("unknown")
            frame[attr] = values.to_numpy()
        else:
            frame[attr] = "unknown"
    frame = frame[(now["c_events"] > 0).reindex(frame.index)]
    for spec in catalog.features:
        kind = {"int64": "int64", "float64": "float64", "string": object}[spec.dtype]
        frame[spec.name] = frame[spec.name].astype(kind)
    frame = frame[[f.name for f in catalog.features]].reset_index()
    frame = frame.rename(columns={"snapshot_ts": "event_timestamp"})
    return frame.sort_values(["customer_id", "event_timestamp"]).reset_index(drop=True)


__all__ = ["ROLE_COLUMNS", "compute_reference_features"]
