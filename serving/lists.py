"""The marketer's batch churn-risk list: the decision engine over every customer, in chunks.

``journeyml lists churn-risk`` ranks customers by churn risk and tells, for each, why (the top
reasons in plain words), what they will probably do next and what to do about it. It runs the
batch path of the one decision pipeline (:meth:`serving.engine.DecisionEngine.decide_frame`):
the same models, rules, uplift arbitration and contact policy as the endpoint, so a customer's
recommended action here is the action the endpoint would choose at the same time (without
exploration, which a list has no use for). Holdout customers are listed with their flag and no
action, as the endpoint answers them.

How it scales: features come from the offline snapshots (each customer's latest row at or
before the list's time), read by DuckDB and scored in chunks of ``chunk_rows`` customers; the
contact policy's state of every customer with recent contacts is read in one query before the
first chunk (no per-customer round trip). Each scored chunk goes to a Parquet part in a work
folder beside the outputs; DuckDB then sorts the parts (out of core) into the CSV and Parquet
files, which replace the previous ones by rename only when both are complete: a crash leaves
the previous list, never a partial one.

Recency features (days since ...) are advanced by the age of the snapshot row at the list's
decision time, exactly as the endpoint's online read advances them, so a list made today
from last night's snapshot sees today's recencies.

Consent is the actions catalog's one rule (:mod:`serving.consent`, the function the endpoint
uses too): customers who refused marketing are left out and counted; customers whose consent is
unknown (no customers table, no row, a null) are counted and, under the default rule, listed
without a marketing action, exactly as the endpoint answers them. The list's ``consent`` column
says which. The segment filter reads the serving settings' ``segment_column``.

Who can still be saved: by default the list holds only customers active at its time, by the
journey map's churn definition (activity within ``inactivity_days``, latest activity not a
cancellation), the population the churn model is trained and calibrated on; the lapsed go to a
separate win-back list (``population="lapsed"``) or, with ``"all"``, are listed with
``status = lapsed``. The summary counts both.

What to do: the list is ranked by the best eligible action's expected incremental value net of
its cost (the engine's arbitration priority), or by churn risk (``rank_by="risk"``); ties of
either go to the calibrated risk, then the churn model's raw score, then the customer id. Each
row has a ``target_group`` (:func:`serving.engine.target_groups`). On request, one CSV per
action or channel; and a diff against the previous list by ``customer_key`` (a hash of the id).

Left out, and counted: customers who refused marketing, customers on the suppression list (a
file of customer ids: do-not-contact, legal holds), and customers whom the contact policy
suppresses on every channel the catalog uses (they ignored every recent contact).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from journeyml.config import JourneyMap, load_journey_map
from serving.actions import Action, load_decision_catalogs
from serving.capacity import Capacity, assign, best_choice, usage
from serving.config import ServingSettings
from serving.consent import REFUSED, UNKNOWN, consent_of_frame
from serving.engine import (
    NET_PREFIX,
    NO_ACTION,
    DecisionEngine,
    holdout_flag,
    target_groups,
    why_texts,
)
from serving.models import ModelSet
from serving.state import Candidate, StateStore

logger = logging.getLogger(__name__)

ENTITY = "customer_id"
TIMESTAMP = "event_timestamp"

COLUMNS = [
    "customer_id",
    "churn_risk",
    "risk_band",
    "conversion_propensity",
    "next_step",
    "next_step_probability",
    "reason_1",
    "reason_2",
    "reason_3",
    "recommended_action",
    "channel",
    "incremental_value",
    "expected_value",
    "uplift",
    "target_group",
    "action_reason",
    "holdout",
    "consent",
    "status",
    "segment",
    "features_as_of",
    "customer_key",
]
ACTIVE, LAPSED = "active", "lapsed"
POPULATIONS = (ACTIVE, LAPSED, "all")
RANK_BY = ("incremental_value", "risk")
SPLIT_BY = ("action", "channel")
RAW_SCORE = "churn_raw_score"
"""The churn model's uncalibrated score: breaks ties of the calibrated risk in the ranking
(kept in the parts, not in the list's files)."""
BEST_VALUE = "best_value"
"""The best eligible action's net value before the holdout withholds it: ranks the holdout
among the others, so that a ``--top`` keeps the control group's share (kept in the parts)."""
HIDDEN = (RAW_SCORE, BEST_VALUE)


class ListError(ValueError):
    """The list cannot be made as asked (missing inputs, bad filters); nothing was written."""


@dataclass(frozen=True)
class ListFilters:
    """Which scored customers make the list."""

    segments: tuple[str, ...] = ()
    min_risk: float = 0.0
    top: int | None = None
    population: str = ACTIVE
    rank_by: str = "incremental_value"

    def __post_init__(self) -> None:
        if self.rank_by not in RANK_BY:
            raise ListError(f"--rank-by must be one of {', '.join(RANK_BY)}, not {self.rank_by!r}")
        if self.population not in POPULATIONS:
            raise ListError(
                f"--population must be one of {', '.join(POPULATIONS)}, not {self.population!r}"
            )
        if not 0.0 <= self.min_risk <= 1.0:
            raise ListError(f"--min-risk must be between 0 and 1, not {self.min_risk}")
        if self.top is not None and self.top < 1:
            raise ListError(f"--top must be at least 1, not {self.top}")


@dataclass
class ListSummary:
    """What the list holds and who was left out, written beside it as ``<name>.json``."""

    as_of: str
    customers_read: int = 0
    opted_out: int = 0  # refused marketing: left out
    consent_unknown: int = 0  # listed; contactable for marketing only if consent_rule says so
    consent_rule: str = ""
    active: int = 0  # read and active at the list's time (the journey map's churn definition)
    lapsed: int = 0  # read and already lapsed: inactive for the churn window, or cancelled
    other_population: int = 0  # left out by --population (default: the lapsed)
    suppressed_list: int = 0
    suppressed_contact_policy: int = 0
    other_segment: int = 0
    below_min_risk: int = 0
    beyond_top: int = 0
    listed: int = 0
    holdout: int = 0
    with_action: int = 0
    by_band: dict[str, int] = field(default_factory=dict)
    by_action: dict[str, int] = field(default_factory=dict)
    by_target_group: dict[str, int] = field(default_factory=dict)
    by_channel: dict[str, int] = field(default_factory=dict)
    incremental_value: float = 0.0  # total over the listed customers (holdout: none)
    rank_by: str = "incremental_value"
    diff: dict[str, Any] = field(default_factory=dict)  # against the previous list
    capacity: dict[str, Any] = field(default_factory=dict)  # limits, use, value given up
    model_versions: dict[str, str] = field(default_factory=dict)
    fallbacks: dict[str, str] = field(default_factory=dict)  # optional roles without a model
    policy_version: str = ""
    filters: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)

    @property
    def suppressed(self) -> int:
        return self.suppressed_list + self.suppressed_contact_policy


# -- reading ------------------------------------------------------------------------------------


def latest_snapshot_chunks(
    snapshots: Path,
    as_of: datetime | None,
    chunk_rows: int,
    segments: Sequence[str] = (),
    segment_column: str = "segment",
) -> Iterator[pd.DataFrame]:
    """Each customer's latest snapshot row at or before ``as_of``, ``chunk_rows`` at a time
    (only rows whose ``segment_column`` is one of ``segments``, when given)."""
    files = list(snapshots.rglob("*.parquet")) if snapshots.is_dir() else []
    if not files:
        raise ListError(
            f"no feature snapshots under {snapshots}: run `journeyml features build` first"
        )
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        source = str(snapshots / "**" / "*.parquet")
        where = [f"{ENTITY} IS NOT NULL"]
        params: dict[str, Any] = {"source": source}
        if as_of is not None:
            where.append(f"{TIMESTAMP} <= $as_of")
            params["as_of"] = as_of
        query = (
            f"SELECT * FROM read_parquet($source) WHERE {' AND '.join(where)} "
            f"QUALIFY row_number() OVER (PARTITION BY {ENTITY} ORDER BY {TIMESTAMP} DESC) = 1"
        )
        if segments:
            columns = [
                c[0]
                for c in con.sql(
                    "DESCRIBE SELECT * FROM read_parquet($source)", params={"source": source}
                ).fetchall()
            ]
            if segment_column not in columns:
                raise ListError(
                    f"--segment: the feature snapshots have no column {segment_column!r} "
                    "(set segment_column in serving.yaml to one of the profile attributes)"
                )
            query = (
                f'SELECT * FROM ({query}) WHERE "{segment_column}" IN (SELECT unnest($segments))'
            )
            params["segments"] = list(segments)
        reader = con.sql(query, params=params).to_arrow_reader(chunk_rows)
        for batch in reader:
            if batch.num_rows:
                yield batch.to_pandas().set_index(ENTITY, drop=False)
    finally:
        con.close()


def count_customers(snapshots: Path, as_of: datetime | None) -> int:
    """Customers with a snapshot row at or before ``as_of``."""
    con = duckdb.connect()
    try:
        where = f"WHERE {TIMESTAMP} <= $as_of" if as_of is not None else ""
        params: dict[str, Any] = {"source": str(snapshots / "**" / "*.parquet")}
        if as_of is not None:
            params["as_of"] = as_of
        row = con.execute(
            f"SELECT count(DISTINCT {ENTITY}) FROM read_parquet($source) {where}", params
        ).fetchone()
        return int(row[0]) if row else 0
    finally:
        con.close()


def read_suppression_list(path: Path) -> set[str]:
    """Customer ids from a CSV (a ``customer_id`` column, or one id a line) or Parquet file."""
    if not path.exists():
        raise ListError(f"suppression list {path} does not exist")
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype=str)
            if ENTITY not in frame.columns:
                frame = pd.read_csv(path, dtype=str, header=None, names=[ENTITY])
    except Exception as exc:
        raise ListError(f"suppression list {path} could not be read: {exc}") from exc
    if ENTITY not in frame.columns:
        raise ListError(f"suppression list {path} has no {ENTITY} column")
    return set(frame[ENTITY].dropna().astype(str))


# -- scoring one chunk --------------------------------------------------------------------------


def age_rows(chunk: pd.DataFrame, ageing: Sequence[str], now: datetime) -> pd.DataFrame:
    """Recency features advanced by the age of their snapshot row at ``now``, as the
    endpoint's online read does (:class:`serving.features.OnlineFeatures`)."""
    if TIMESTAMP not in chunk or not ageing:
        return chunk
    stamps = pd.to_datetime(chunk[TIMESTAMP], utc=True)
    days = ((pd.Timestamp(now) - stamps).dt.total_seconds().clip(lower=0.0) / 86400.0).to_numpy()
    present = [name for name in ageing if name in chunk.columns]
    return chunk.assign(**{name: chunk[name].astype(float) + days for name in present})


def contact_policy_state(engine: DecisionEngine, now: datetime) -> pd.DataFrame:
    """The contact policy of every customer with recent history, in one read of the store."""
    candidates = [Candidate(a.id, a.channel) for a in engine.actions]
    frame = engine.state.contact_counts(engine.policy, now, None, candidates)
    return frame.set_index("customer_id") if len(frame) else frame


def _suppressed_everywhere(policy_rows: pd.DataFrame, channels: Sequence[str]) -> pd.Index:
    """Customers suppressed (ignored runs) on every channel the catalog uses."""
    if policy_rows.empty:
        return pd.Index([])
    mask = np.ones(len(policy_rows), dtype=bool)
    for ch in channels:
        reasons = policy_rows.get(f"reason_channel__{ch}")
        if reasons is None:
            return pd.Index([])
        mask &= reasons.fillna("").str.contains(f"{ch} suppressed after", regex=False).to_numpy()
    return policy_rows.index[mask]


def active_customers(chunk: pd.DataFrame, journey_map: JourneyMap) -> np.ndarray:
    """Whether each customer is still active at the list's time, as the journey map defines
    churn (and training labels only active customers): some activity within the churn
    window's ``inactivity_days`` and a latest activity that is not an explicit churn event.

    ``chunk`` holds the aged snapshot rows (recencies advanced to the list's time).
    """
    active = np.ones(len(chunk), dtype=bool)
    inactivity = journey_map.churn.inactivity_days
    if inactivity is not None and "days_since_last_event" in chunk:
        days = pd.to_numeric(chunk["days_since_last_event"], errors="coerce").to_numpy(float)
        active &= days <= inactivity  # never active (NaN) is not active
    if journey_map.churn.events and "last_event_1" in chunk:
        last = chunk["last_event_1"].to_numpy(dtype=object)
        cancelled = np.fromiter(
            (isinstance(v, str) and journey_map.is_churn_event(v) for v in last), bool, len(last)
        )
        active &= ~cancelled
    return active


def score_chunk(
    engine: DecisionEngine,
    chunk: pd.DataFrame,
    now: datetime,
    policy_rows: pd.DataFrame,
    segment_column: str = "segment",
    active: np.ndarray | None = None,
) -> pd.DataFrame:
    """One chunk of the list: scores, reasons, the recommended action, the holdout flag, the
    customer's status (``active`` unless ``active`` says otherwise) and the churn model's raw
    score (:data:`RAW_SCORE`, the ranking's tie-break)."""
    blocked = [f"blocked__{a.id}" for a in engine.actions]
    frame = chunk
    if not policy_rows.empty:
        known = policy_rows.reindex(chunk.index)
        present = [c for c in blocked if c in known.columns]
        frame = chunk.assign(**{c: known[c].eq(True).to_numpy(dtype=bool) for c in present})
    decided = engine.decide_frame(frame, now, reasons=3)
    settings = engine.settings
    reasons = [decided[f"reason_{r}"].to_numpy(dtype=object) for r in (1, 2, 3)]
    ids = chunk[ENTITY].astype(str).to_numpy(dtype=object)
    share, salt = settings.holdout.share, settings.holdout.salt
    holdout = np.fromiter((holdout_flag(c, share, salt) for c in ids), bool, len(ids))
    action = decided["action"].to_numpy(dtype=object).copy()
    action[holdout] = NO_ACTION
    channel_of = {a.id: a.channel for a in engine.actions}
    channel = np.array([channel_of.get(a) for a in action], dtype=object)
    value = np.where(holdout, 0.0, decided["expected_value"].to_numpy(dtype=float))
    best = decided["priority"].to_numpy(dtype=float)
    risk = decided["churn_risk"].to_numpy(dtype=float)
    uplift = decided["uplift"].to_numpy(dtype=float)
    bands = np.array([settings.risk_band(r) for r in risk], dtype=object)
    as_of = pd.to_datetime(chunk[TIMESTAMP], utc=True) if TIMESTAMP in chunk else pd.NaT
    churn_bundle = engine.models.models["churn"].bundle
    raw = churn_bundle.predict_raw_matrix(churn_bundle.encode(chunk, as_of=now))
    status = np.where(
        np.ones(len(chunk), dtype=bool) if active is None else active, ACTIVE, LAPSED
    ).astype(object)
    return pd.DataFrame(
        {
            "customer_id": ids,
            "churn_risk": risk,
            "risk_band": bands,
            "conversion_propensity": decided["conversion_propensity"].to_numpy(dtype=float),
            "next_step": decided["next_step"].to_numpy(dtype=object),
            "next_step_probability": decided["next_step_probability"].to_numpy(dtype=float),
            "reason_1": reasons[0],
            "reason_2": reasons[1],
            "reason_3": reasons[2],
            "recommended_action": action,
            "channel": channel,
            "incremental_value": np.where(holdout, 0.0, best),
            "expected_value": value,
            "uplift": uplift,
            "target_group": target_groups(uplift, risk, settings.target_groups),
            "action_reason": why_texts(engine.actions, decided, holdout),
            "holdout": holdout,
            "consent": decided["consent"].to_numpy(dtype=object),
            "status": status,
            "segment": chunk[segment_column].to_numpy(dtype=object)
            if segment_column in chunk
            else None,
            "features_as_of": as_of,
            "customer_key": [customer_key(c) for c in ids],
            RAW_SCORE: np.asarray(raw, dtype=float),
            BEST_VALUE: best,
            **{
                f"{NET_PREFIX}{a.id}": np.where(
                    holdout, np.nan, decided[f"{NET_PREFIX}{a.id}"].to_numpy(dtype=float)
                )
                for a in engine.actions
            },
        },
        columns=part_schema(engine).names,
    )


def customer_key(customer_id: str) -> str:
    """A customer's key in a list's diff: the first 16 hex digits of the id's SHA-256 (the
    diff file names no customer)."""
    return hashlib.sha256(customer_id.encode()).hexdigest()[:16]


CHUNK_COUNTS = (
    "opted_out",
    "suppressed_list",
    "suppressed_contact_policy",
    "active",
    "lapsed",
    "other_population",
    "consent_unknown",
    "below_min_risk",
)
"""The :class:`ListSummary` counters a chunk adds to."""


def decide_chunk(
    engine: DecisionEngine,
    chunk: pd.DataFrame,
    now: datetime,
    policy_rows: pd.DataFrame,
    ageing: Sequence[str],
    journey_map: JourneyMap,
    suppression: set[str],
    suppressed_policy: set[str],
    filters: ListFilters,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """One chunk of latest snapshot rows to list rows (with :data:`RAW_SCORE`): leaves out
    customers who refused marketing, suppressed ones, those outside the population and below
    the minimum risk, scores the rest, and counts each group (:data:`CHUNK_COUNTS`). The
    DuckDB path and the Spark path (:mod:`serving.spark_lists`) both list through it."""
    counts = dict.fromkeys(CHUNK_COUNTS, 0)
    ids = chunk[ENTITY].astype(str)
    consent = consent_of_frame(chunk, engine.catalog.consent)
    opted = consent.status == REFUSED
    on_list = ids.isin(suppression).to_numpy() & ~opted
    by_policy = ids.isin(suppressed_policy).to_numpy() & ~opted & ~on_list
    counts["opted_out"] = int(opted.sum())
    counts["suppressed_list"] = int(on_list.sum())
    counts["suppressed_contact_policy"] = int(by_policy.sum())
    keep = ~(opted | on_list | by_policy)
    aged_all = age_rows(chunk, ageing, now)
    active = active_customers(aged_all, journey_map)
    counts["active"] = int(active.sum())
    counts["lapsed"] = int((~active).sum())
    wanted = _in_population(active, filters.population)
    counts["other_population"] = int((keep & ~wanted).sum())
    keep &= wanted
    counts["consent_unknown"] = int(((consent.status == UNKNOWN) & keep).sum())
    if not keep.any():
        return pd.DataFrame(columns=part_schema(engine).names), counts
    segment_column = engine.settings.segment_column
    scored = score_chunk(engine, aged_all[keep], now, policy_rows, segment_column, active[keep])
    low = scored["churn_risk"].to_numpy() < filters.min_risk
    counts["below_min_risk"] = int(low.sum())
    return scored[~low], counts


# -- the list -----------------------------------------------------------------------------------


def batch_engine(settings: ServingSettings) -> DecisionEngine:
    """The decision engine without an online store: models by alias, catalog, contact policy.

    The state store is the service's (the contact history the endpoint writes), read only.
    """
    catalog, actions = load_decision_catalogs(
        settings.actions, settings.features, settings.journeys
    )
    models = ModelSet(settings)
    models.refresh()
    state = StateStore(settings.resolved_state_url())
    return DecisionEngine(
        settings, actions, models, None, state, catalog.descriptions, specs=catalog.specs
    )


_SCHEMA = pa.schema(
    [
        ("customer_id", pa.string()),
        ("churn_risk", pa.float64()),
        ("risk_band", pa.string()),
        ("conversion_propensity", pa.float64()),
        ("next_step", pa.string()),
        ("next_step_probability", pa.float64()),
        ("reason_1", pa.string()),
        ("reason_2", pa.string()),
        ("reason_3", pa.string()),
        ("recommended_action", pa.string()),
        ("channel", pa.string()),
        ("incremental_value", pa.float64()),
        ("expected_value", pa.float64()),
        ("uplift", pa.float64()),
        ("target_group", pa.string()),
        ("action_reason", pa.string()),
        ("holdout", pa.bool_()),
        ("consent", pa.string()),
        ("status", pa.string()),
        ("segment", pa.string()),
        ("features_as_of", pa.timestamp("us", tz="UTC")),
        ("customer_key", pa.string()),
        (RAW_SCORE, pa.float64()),
        (BEST_VALUE, pa.float64()),
    ]
)


def part_schema(engine: DecisionEngine) -> pa.Schema:
    """The columns of a list's parts: the list's, the hidden ranking keys (:data:`HIDDEN`)
    and every action's net value (``net__<action>``, NaN where not eligible or in the
    holdout), which a capacity assignment reads."""
    nets = [pa.field(f"{NET_PREFIX}{a.id}", pa.float64()) for a in engine.actions]
    return pa.schema([*_SCHEMA, *nets])


def list_summary(
    engine: DecisionEngine, now: datetime, filters: ListFilters, as_of: datetime | None
) -> ListSummary:
    """The summary header of a list, before any customer is read (models, policy, consent rule,
    filters); both engines' lists start from it.

    Raises:
        ListError: the churn or the conversion model is not loaded.
    """
    missing = [r for r in ("churn", "conversion") if r not in engine.models.models]
    if missing:
        raise ListError(
            f"no {' or '.join(missing)} model is loaded ({engine.models.errors or 'no alias'}): "
            "train and promote first (`journeyml train`, `journeyml promote`); to list with "
            "a model the gates refused, without promoting it, name its alias (`journeyml lists "
            "churn-risk --alias challenger`)"
        )
    consent_rule = engine.catalog.consent
    return ListSummary(
        as_of=now.isoformat(),
        consent_rule=(
            f"column {consent_rule.column or '(none)'} ({consent_rule.meaning}); "
            f"unknown consent is {consent_rule.unknown.replace('_', ' ')}"
        ),
        model_versions=engine.models.versions(),
        fallbacks=engine.models.fallbacks(),
        policy_version=engine.catalog.version,
        rank_by=filters.rank_by,
        filters={
            "segments": list(filters.segments),
            "min_risk": filters.min_risk,
            "top": filters.top,
            "population": filters.population,
            "rank_by": filters.rank_by,
            "features_as_of": as_of.isoformat() if as_of else None,
        },
    )


def churn_risk_list(
    engine: DecisionEngine,
    snapshots: Path,
    out_dir: Path,
    *,
    name: str = "churn_risk",
    filters: ListFilters | None = None,
    as_of: datetime | None = None,
    now: datetime | None = None,
    suppression: set[str] | None = None,
    chunk_rows: int = 100_000,
    split_by: str | None = None,
    previous: Path | None = None,
    capacity: Capacity | None = None,
) -> ListSummary:
    """Writes ``<out_dir>/<name>.csv``, ``.parquet`` and ``.json`` (the summary), atomically.

    Args:
        as_of: use snapshot rows at or before this time (default: each customer's latest).
        now: the decision time for the models' calendar features and the contact policy
            (default: the current time).
        suppression: customer ids never to list.
        split_by: ``action`` or ``channel``: also one CSV per recommended action or channel.
        previous: the list to diff against (default: ``<out_dir>/<name>.parquet``, when
            there); the diff's counts go in the summary, its rows in ``<name>_diff.csv``.
        capacity: volume limits besides the catalog's (these win where both set one).
    """
    check_outputs(split_by, previous)
    started = time.perf_counter()
    filters = filters or ListFilters()
    now = (now or datetime.now(UTC)).astimezone(UTC)
    summary = list_summary(engine, now, filters, as_of)
    suppression = suppression or set()
    catalog, _ = load_decision_catalogs(
        engine.settings.actions, engine.settings.features, engine.settings.journeys
    )
    ageing = [f.name for f in catalog.features if f.ages_with_time]
    journey_map = load_journey_map(engine.settings.journeys)
    policy_rows = contact_policy_state(engine, now)
    channels = sorted({a.channel for a in engine.actions})
    suppressed_policy = set(_suppressed_everywhere(policy_rows, channels))
    schema = part_schema(engine)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out_dir))
    try:
        parts = 0
        segment_column = engine.settings.segment_column
        chunks = latest_snapshot_chunks(
            snapshots, as_of, chunk_rows, filters.segments, segment_column
        )
        for chunk in chunks:
            summary.customers_read += len(chunk)
            scored, counts = decide_chunk(
                engine, chunk, now, policy_rows, ageing, journey_map, suppression,
                suppressed_policy, filters,
            )  # fmt: skip
            for key, count in counts.items():
                setattr(summary, key, getattr(summary, key) + count)
            if scored.empty:
                continue
            table = pa.Table.from_pandas(scored, schema=schema, preserve_index=False)
            pq.write_table(table, work / f"part-{parts:05d}.parquet")
            parts += 1
        if filters.segments:
            summary.other_segment = count_customers(snapshots, as_of) - summary.customers_read
        outputs = _write_sorted(
            work, parts, out_dir, name, filters, summary, schema, split_by, previous,
            engine.actions, list_capacity(engine, capacity),
        )  # fmt: skip
        summary.seconds = round(time.perf_counter() - started, 3)
        summary.outputs = [str(p) for p in outputs]
        json_path = out_dir / f"{name}.json"
        _atomic_text(json_path, json.dumps(asdict(summary), indent=2, default=str) + "\n")
        summary.outputs.append(str(json_path))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info(
        "list %s: %d listed of %d read (%d refused marketing, %d consent unknown, "
        "%d suppressed) in %.1f s",
        name,
        summary.listed,
        summary.customers_read,
        summary.opted_out,
        summary.consent_unknown,
        summary.suppressed,
        summary.seconds,
    )
    return summary


def list_capacity(engine: DecisionEngine, extra: Capacity | None) -> Capacity:
    """The catalog's volume limits with ``extra``'s (the command line's) over them."""
    limits = engine.catalog.capacity
    return Capacity(dict(limits.actions), dict(limits.channels)).merged(extra or Capacity())


def check_outputs(split_by: str | None, previous: Path | None) -> None:
    """Refuses output options the list cannot honour, before any customer is read."""
    if split_by is not None and split_by not in SPLIT_BY:
        raise ListError(f"--split-by must be one of {', '.join(SPLIT_BY)}, not {split_by!r}")
    if previous is not None and not previous.is_file():
        raise ListError(f"--previous {previous} does not exist")


def _in_population(active: np.ndarray, population: str) -> np.ndarray:
    if population == ACTIVE:
        return active
    if population == LAPSED:
        return ~active
    return np.ones_like(active)


def _order_by(rank_by: str) -> str:
    """The list's order: by the best action's expected incremental value (net of cost), or by
    churn risk; ties by risk, then the churn model's raw score, then customer id."""
    risk = f"churn_risk DESC, {RAW_SCORE} DESC, customer_id"
    return f"{BEST_VALUE} DESC, {risk}" if rank_by == "incremental_value" else risk


def _write_sorted(
    work: Path,
    parts: int,
    out_dir: Path,
    name: str,
    filters: ListFilters,
    summary: ListSummary,
    schema: pa.Schema,
    split_by: str | None = None,
    previous: Path | None = None,
    actions: Sequence[Action] = (),
    capacity: Capacity | None = None,
) -> list[Path]:
    """Sorts the parts into the final CSV and Parquet (and, with ``split_by``, one CSV per
    action or channel; with a previous list, the diff against it); every file replaces the old
    one at the end. With ``capacity``, the actions are first assigned within the limits
    (:func:`serving.capacity.assign`, over every listed customer)."""
    csv_tmp, parquet_tmp = work / f"{name}.csv", work / f"{name}.parquet"
    if previous is None and (out_dir / f"{name}.parquet").exists():
        previous = out_dir / f"{name}.parquet"
    con = duckdb.connect()
    written: list[tuple[Path, Path]] = []
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"SET temp_directory = '{_sql(str(work / 'spill'))}'")
        if parts:
            source = f"read_parquet('{_sql(str(work / 'part-*.parquet'))}')"
        else:
            empty = pa.Table.from_pylist([], schema=schema)
            con.register("empty_list", empty)
            source = "empty_list"
        if capacity:
            source = _capacity_source(con, source, work, actions, capacity, summary)
        top = filters.top
        limit = f"LIMIT {int(top)}" if top is not None else ""
        columns = ", ".join(f'"{c}"' for c in COLUMNS)
        con.execute(
            f"CREATE VIEW ranked AS SELECT {columns} FROM {source} "
            f"ORDER BY {_order_by(filters.rank_by)} {limit}"
        )
        total = con.execute(f"SELECT count(*) FROM {source}").fetchone()
        con.execute(f"COPY (SELECT * FROM ranked) TO '{_sql(str(parquet_tmp))}' (FORMAT parquet)")
        listed = f"read_parquet('{_sql(str(parquet_tmp))}')"
        con.execute(
            f"COPY (SELECT * FROM {listed}) TO '{_sql(str(csv_tmp))}' (FORMAT csv, HEADER true)"
        )
        written += [(parquet_tmp, out_dir / parquet_tmp.name), (csv_tmp, out_dir / csv_tmp.name)]
        stats = con.execute(
            f"SELECT count(*), count(*) FILTER (WHERE holdout), "
            f"count(*) FILTER (WHERE recommended_action <> '{NO_ACTION}'), "
            f"coalesce(sum(incremental_value), 0) FROM {listed}"
        ).fetchone()

        def counts(column: str) -> dict[str, int]:
            rows = con.execute(
                f"SELECT {column}, count(*) FROM {listed} WHERE {column} IS NOT NULL "
                "GROUP BY 1 ORDER BY 2 DESC, 1"
            ).fetchall()
            return {str(v): int(c) for v, c in rows}

        summary.by_band = counts("risk_band")
        summary.by_action = counts("recommended_action")
        summary.by_channel = counts("channel")
        summary.by_target_group = counts("target_group")
        if split_by is not None:
            written += _split_files(con, listed, work, out_dir, name, split_by)
        if previous is not None:
            diff_tmp = work / f"{name}_diff.csv"
            summary.diff = _diff(con, listed, previous, diff_tmp)
            written.append((diff_tmp, out_dir / diff_tmp.name))
        else:
            summary.diff = {"previous": None}
    finally:
        con.close()
    assert stats is not None and total is not None
    summary.listed, summary.holdout, summary.with_action = (int(v) for v in stats[:3])
    summary.incremental_value = round(float(stats[3]), 6)
    summary.beyond_top = int(total[0]) - summary.listed
    keep = {target.name for _, target in written}
    for old in [*out_dir.glob(f"{name}__action_*.csv"), *out_dir.glob(f"{name}__channel_*.csv")]:
        if old.name not in keep:  # an older list's split: it would contradict this list
            old.unlink()
    for tmp, target in written:
        tmp.replace(target)
    return [target for _, target in written]


def _capacity_source(
    con: duckdb.DuckDBPyConnection,
    source: str,
    work: Path,
    actions: Sequence[Action],
    capacity: Capacity,
    summary: ListSummary,
) -> str:
    """The parts with the actions assigned within ``capacity``: one batch read of every
    listed customer's net values (the holdout's are NaN: it gets nothing, uses nothing), one
    assignment, one join back. Fills ``summary.capacity``."""
    ids = [a.id for a in actions]
    nets = ", ".join(f'"{NET_PREFIX}{a}"' for a in ids)
    frame = con.execute(f"SELECT customer_id, {nets} FROM {source}").df()
    values = frame[[f"{NET_PREFIX}{a}" for a in ids]].to_numpy(dtype=float)
    channels = [a.channel for a in actions]
    result = assign(values, channels, ids, capacity)
    best = best_choice(values)
    rows = np.flatnonzero(best >= 0)  # who had an action to give: the others keep "none"
    choice = result.choice[rows]
    some = choice >= 0
    net = np.zeros(len(rows))
    net[some] = values[rows[some], choice[some]]
    cost = np.array([a.cost for a in actions])
    ids_of = np.array([*ids, NO_ACTION], dtype=object)
    channel_of = np.array([*channels, None], dtype=object)
    changed = choice != best[rows]
    reason = np.full(len(rows), None, dtype=object)
    for r in np.flatnonzero(changed):
        was = ids[best[rows[r]]]
        if choice[r] < 0:
            reason[r] = (
                f"no action: no room left for {was} within the capacity limits (customers "
                "who gain more took it)"
            )
        else:
            j = choice[r]
            reason[r] = (
                f"{ids[j]} {net[r]:.2f} ({net[r] + cost[j]:.2f} expected value − {cost[j]:.2f} "
                f"cost): the highest expected value net of cost within the capacity limits "
                f"(no room left for {was})"
            )
    table = pa.table(
        {
            "c_reason": reason,
            "customer_id": frame["customer_id"].to_numpy(dtype=object)[rows],
            "c_action": ids_of[choice],
            "c_channel": channel_of[choice],
            "c_net": net,
            "c_gross": np.where(some, net + cost[np.clip(choice, 0, None)], 0.0),
        }
    )
    path = work / "capacity.parquet"
    pq.write_table(table, path)
    summary.capacity = {
        "limits": capacity.as_dict(),
        "used": usage(result.choice, channels, ids, capacity),
        "value_without_limits": round(result.unconstrained, 6),
        "value_within_limits": round(result.value, 6),
        "value_given_up": round(result.given_up, 6),
        "customers_moved": int((changed & some).sum()),  # to another action
        "customers_dropped": int((changed & ~some).sum()),  # to no action
    }
    return (
        f"(SELECT s.* REPLACE ("
        f"coalesce(c.c_action, s.recommended_action) AS recommended_action, "
        f"CASE WHEN c.customer_id IS NULL THEN s.channel ELSE c.c_channel END AS channel, "
        f"coalesce(c.c_net, s.incremental_value) AS incremental_value, "
        f"coalesce(c.c_gross, s.expected_value) AS expected_value, "
        f"coalesce(c.c_reason, s.action_reason) AS action_reason, "
        f"CASE WHEN s.holdout THEN s.{BEST_VALUE} ELSE coalesce(c.c_net, s.{BEST_VALUE}) END "
        f"AS {BEST_VALUE}) "
        f"FROM {source} s LEFT JOIN read_parquet('{_sql(str(path))}') c USING (customer_id))"
    )


def _split_files(
    con: duckdb.DuckDBPyConnection, listed: str, work: Path, out_dir: Path, name: str, by: str
) -> list[tuple[Path, Path]]:
    """One CSV per recommended action (``<name>__action_<id>.csv``, "no action" left out) or
    per channel (``<name>__channel_<channel>.csv``), in the list's order."""
    column = "recommended_action" if by == "action" else "channel"
    values = [
        str(v)
        for (v,) in con.execute(
            f"SELECT DISTINCT {column} FROM {listed} WHERE {column} IS NOT NULL "
            f"AND {column} <> '{NO_ACTION}' ORDER BY 1"
        ).fetchall()
    ]
    out = []
    for value in values:
        tmp = work / f"{name}__{by}_{value}.csv"
        con.execute(
            f"COPY (SELECT * FROM {listed} WHERE {column} = $value) "
            f"TO '{_sql(str(tmp))}' (FORMAT csv, HEADER true)",
            {"value": value},
        )
        out.append((tmp, out_dir / tmp.name))
    return out


def _diff(
    con: duckdb.DuckDBPyConnection, listed: str, previous: Path, target: Path
) -> dict[str, Any]:
    """The list against the previous one, by customer key: counts of new, still listed and
    gone customers (and of those still listed whose action changed), and a CSV of every key
    with its change and both actions (no customer id)."""
    try:
        if previous.suffix == ".parquet":
            before = pd.read_parquet(previous)
        else:
            before = pd.read_csv(previous, dtype={"customer_id": str})
    except Exception as exc:
        raise ListError(f"--previous {previous} could not be read: {exc}") from exc
    if "customer_key" not in before.columns:
        if "customer_id" not in before.columns:
            raise ListError(f"--previous {previous} has no customer_id or customer_key column")
        before["customer_key"] = [customer_key(str(c)) for c in before["customer_id"]]
    if "recommended_action" not in before.columns:
        before["recommended_action"] = None
    con.register("previous_list", before[["customer_key", "recommended_action"]])
    con.execute(
        f"""COPY (
            SELECT coalesce(n.customer_key, p.customer_key) AS customer_key,
                CASE WHEN p.customer_key IS NULL THEN 'new'
                     WHEN n.customer_key IS NULL THEN 'gone' ELSE 'still listed' END AS change,
                p.recommended_action AS previous_action,
                n.recommended_action AS recommended_action
            FROM (SELECT customer_key, recommended_action FROM {listed}) n
            FULL OUTER JOIN previous_list p USING (customer_key)
            ORDER BY change, customer_key
        ) TO '{_sql(str(target))}' (FORMAT csv, HEADER true)"""
    )
    row = con.execute(
        f"""SELECT count(*) FILTER (WHERE change = 'new'),
                count(*) FILTER (WHERE change = 'still listed'),
                count(*) FILTER (WHERE change = 'gone'),
                count(*) FILTER (WHERE change = 'still listed'
                    AND previous_action IS DISTINCT FROM recommended_action)
            FROM read_csv('{_sql(str(target))}', header = true, all_varchar = true)"""
    ).fetchone()
    assert row is not None
    new, still, gone, changed = (int(v) for v in row)
    return {
        "previous": str(previous),
        "new": new,
        "still_listed": still,
        "gone": gone,
        "action_changed": changed,
    }


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sql(text: str) -> str:
    return text.replace("'", "''")
