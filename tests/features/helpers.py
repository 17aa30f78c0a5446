"""Helpers for feature tests: tiny literal event logs and an in-memory pipeline run."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.catalog import FeatureCatalog
from features.pipeline import (
    connect,
    feature_query,
    register_inputs,
    register_snapshots_for_cutoffs,
)
from journeyml.config import JourneyMap
from journeyml.events.schema import NORMALISED_EVENT_SCHEMA


def day(d: int, hour: int = 12, month: int = 1) -> datetime:
    return datetime(2025, month, d, hour, tzinfo=UTC)


def events_table(rows: Sequence[dict[str, object]]) -> pa.Table:
    """Normalised events from short dicts (missing optional fields are null)."""
    cols: dict[str, list[object]] = {name: [] for name in NORMALISED_EVENT_SCHEMA.names}
    for i, r in enumerate(rows):
        for name in cols:
            default = f"e{i}" if name == "event_id" else None
            cols[name].append(r.get(name, default))
    return pa.Table.from_pydict(cols, schema=NORMALISED_EVENT_SCHEMA)


def write_lake(lake: Path, events: pa.Table, customers: pa.Table | None = None) -> Path:
    part = lake / "events" / "event_month=2025-01"
    part.mkdir(parents=True, exist_ok=True)
    pq.write_table(events, part / "batch-0.parquet")
    if customers is not None:
        pq.write_table(customers, lake / "customers.parquet")
    return lake


def by_customer_and_time(frame: pd.DataFrame) -> pd.DataFrame:
    """Snapshot rows sorted by customer, then snapshot time (the pipeline keeps no order)."""
    return frame.sort_values(["customer_id", "event_timestamp"], kind="stable").reset_index(
        drop=True
    )


def compute_features(
    events: pa.Table,
    cutoffs: Sequence[datetime],
    journey_map: JourneyMap,
    catalog: FeatureCatalog,
) -> pd.DataFrame:
    """Runs the pipeline query in memory (what build_snapshots writes, without files)."""
    con = connect(memory_limit="1GB")
    try:
        con.register("ev_arrow", events)
        register_inputs(
            con, journey_map, "SELECT * FROM ev_arrow", None, catalog.settings.profile_attributes
        )
        register_snapshots_for_cutoffs(con, list(cutoffs))
        return con.execute(feature_query(catalog)).df().pipe(by_customer_and_time)
    finally:
        con.close()


def redis_available(host: str = "127.0.0.1", port: int = 6379) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def postgres_available(host: str = "127.0.0.1", port: int = 5432) -> bool:
    return redis_available(host, port)
