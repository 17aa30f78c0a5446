"""The product's journey features of simulated customers, point in time, for learned policies.

A policy learned on the simulator should see what journeyml itself would show of a customer:
the feature catalog's journey features (windowed counts, channel mix, order values, stages,
recency, experience scores, profile attributes), computed by the **same** feature query the
batch pipeline and the online store run (:func:`features.pipeline.feature_query`), from the
events logged before the decision's day. :class:`JourneyFeatures` keeps a run's events in
DuckDB as the run goes (the simulator hands them to a policy with ``observe_events``) or all at
once (a finished run's log), normalised as ``journeyml events ingest`` normalises them (the
simulator's extra columns become the event's ``properties``).

:func:`encode_features` turns the feature frame into the learner's numbers: text values become
codes of a vocabulary fixed when the policy is learned (an unseen value is missing), so the
same customer gets the same inputs in the run it was learned on and in the runs it decides in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa

from features.catalog import FeatureCatalog, build_catalog
from features.pipeline import (
    DEFAULT_COUNT_BITS,
    ENTITY,
    SNAPSHOT_TS,
    TIMESTAMP_FIELD,
    connect,
    count_bits_for,
    feature_query,
    register_inputs,
    register_snapshots,
)
from features.settings import FeatureSettings
from journeyml.config import JourneyMap
from journeyml.events.staging import properties_sql

# the simulator's columns that are not the event contract's: kept as properties, as ingest does
_EXTRA_COLUMNS = {
    "action_id": "VARCHAR",
    "decision_id": "VARCHAR",
    "propensity": "DOUBLE",
    "score": "BIGINT",
}
_NOT_FEATURES = (ENTITY, TIMESTAMP_FIELD, SNAPSHOT_TS)


class JourneyFeatures:
    """A run's events in DuckDB, and the catalog's features of its customers at any time."""

    def __init__(self, journey: JourneyMap, settings: FeatureSettings):
        self.journey = journey
        self.settings = settings
        self.catalog: FeatureCatalog = build_catalog(journey, settings)
        self._con = connect(memory_limit="2GB")
        self._props = properties_sql({k: (k, t) for k, t in _EXTRA_COLUMNS.items()})
        self._queries: dict[int, str] = {}
        self.reset()

    def reset(self) -> None:
        """Forgets every event (a new run)."""
        self._con.execute(
            "CREATE OR REPLACE TABLE norm (event_id VARCHAR, customer_id VARCHAR, "
            "timestamp TIMESTAMPTZ, event_type VARCHAR, channel VARCHAR, value DOUBLE, "
            "session_id VARCHAR, properties VARCHAR)"
        )
        self.events = 0
        self.customers: pa.Table | None = None

    def add(self, events: pa.Table, customers: pa.Table | None = None) -> None:
        """Adds simulator events (``EVENT_SCHEMA``) and, if given, the customers table."""
        if events.num_rows:
            self._con.register("raw_events", events)
            self._con.execute(
                "INSERT INTO norm SELECT event_id, customer_id, timestamp, event_type, channel, "
                f"value, session_id, {self._props} FROM raw_events"
            )
            self._con.unregister("raw_events")
            self.events += events.num_rows
        if customers is not None:
            self.customers = customers

    def _query(self) -> str:
        bits = max(DEFAULT_COUNT_BITS, count_bits_for(max(self.events, 1)))
        if bits not in self._queries:
            self._queries[bits] = feature_query(
                self.catalog, self.journey.experience.score_property, bits
            )
        return self._queries[bits]

    def at(
        self, customer_ids: Sequence[str], times: Sequence[datetime] | pd.Series
    ) -> pd.DataFrame:
        """The features of each (customer, time) from the events strictly before that time,
        in the order given; a customer with no activity before it has missing features."""
        con = self._con
        register_inputs(
            con, self.journey, "SELECT * FROM norm", None, self.settings.profile_attributes
        )
        if self.customers is not None:
            attrs = self.settings.profile_attributes
            present = set(self.customers.column_names)
            con.register("customers_arrow", self.customers)
            cols = ", ".join(
                f"CAST({a} AS VARCHAR) AS {a}" if a in present else f"CAST(NULL AS VARCHAR) AS {a}"
                for a in attrs
            )
            con.execute(
                "CREATE OR REPLACE TEMP VIEW customers AS SELECT "
                f"CAST(customer_id AS VARCHAR) AS customer_id{', ' + cols if cols else ''} "
                "FROM customers_arrow"
            )
        wanted = pd.DataFrame(
            {ENTITY: list(customer_ids), SNAPSHOT_TS: pd.to_datetime(list(times), utc=True)}
        )
        register_snapshots(con, pa.Table.from_pandas(wanted, preserve_index=False))
        found = con.execute(self._query()).df()
        found[TIMESTAMP_FIELD] = pd.to_datetime(found[TIMESTAMP_FIELD], utc=True)
        keyed = wanted.rename(columns={SNAPSHOT_TS: TIMESTAMP_FIELD})
        keyed[TIMESTAMP_FIELD] = keyed[TIMESTAMP_FIELD].astype(found[TIMESTAMP_FIELD].dtype)
        merged = keyed.merge(found, on=[ENTITY, TIMESTAMP_FIELD], how="left")
        return merged.drop(columns=[c for c in _NOT_FEATURES if c in merged.columns])

    def close(self) -> None:
        self._con.close()


def encode_features(
    frame: pd.DataFrame, categories: Mapping[str, list[str]] | None = None
) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Numbers for the learner: numbers and booleans as floats, text as the code of its value
    in ``categories`` (a column's vocabulary is learned here when ``categories`` is None;
    an unknown value is NaN). Columns in sorted order."""
    known = dict(categories or {})
    out: dict[str, pd.Series] = {}
    columns = (
        sorted(frame.columns) if categories is None else sorted(set(frame.columns) | set(known))
    )
    for col in columns:
        values = frame[col] if col in frame else pd.Series(np.nan, index=frame.index)
        numeric = pd.to_numeric(values.map(_number), errors="coerce")
        text = bool((values.notna() & numeric.isna()).any())
        if col in known or (categories is None and text):
            vocabulary = known.setdefault(col, sorted({str(v) for v in values.dropna()}))
            codes = {v: float(i) for i, v in enumerate(vocabulary)}
            out[col] = values.map(
                lambda v, c=codes: (
                    np.nan if v is None or v is pd.NA or v != v else c.get(str(v), np.nan)
                )
            ).astype(float)
        else:
            out[col] = numeric.astype(float)
    return pd.DataFrame(out, index=frame.index).reset_index(drop=True), known


def _code(value: object, codes: Mapping[str, float]) -> float:
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return np.nan
    return codes.get(str(value), np.nan)


def _number(value: object) -> object:
    """Booleans as 0/1; anything else as it is (text fails the numeric conversion)."""
    return float(value) if isinstance(value, bool | np.bool_) else value
