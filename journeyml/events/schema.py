"""The journey event contract: canonical column names and the normalised store layout.

Input logs (CSV or Parquet, one file or a folder of files) carry the required columns
``customer_id``, ``timestamp`` and ``event_type``, any of the optional ones, and any number of
extra columns, which are kept as properties. ``journeyml events ingest`` writes the normalised
store that every later stage reads::

    <lake>/events/event_month=YYYY-MM/<batch>-<n>.parquet   events, sorted by customer and time
    <lake>/customers.parquet                                 the customers table, when given
    <lake>/manifest.json                                     what was ingested, batch by batch

Normalised event columns, in order (see ``NORMALISED_EVENT_COLUMNS``): ``event_id`` (string, never
null: the input's dedup key, or a content hash when the input has none), ``customer_id``
(string), ``timestamp`` (UTC, microseconds), ``event_type`` (string), ``channel`` (lower-case
string or null), ``value`` (float or null), ``session_id`` (string or null) and ``properties``
(a JSON object of the extra columns, or null).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

REQUIRED_EVENT_COLUMNS: tuple[str, ...] = ("customer_id", "timestamp", "event_type")
OPTIONAL_EVENT_COLUMNS: tuple[str, ...] = ("channel", "value", "event_id", "session_id")
CONTRACT_EVENT_COLUMNS: tuple[str, ...] = REQUIRED_EVENT_COLUMNS + OPTIONAL_EVENT_COLUMNS

REQUIRED_CUSTOMER_COLUMNS: tuple[str, ...] = ("customer_id",)
OPTIONAL_CUSTOMER_COLUMNS: tuple[str, ...] = ("signup_at",)

NORMALISED_EVENT_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("channel", pa.string()),
        pa.field("value", pa.float64()),
        pa.field("session_id", pa.string()),
        pa.field("properties", pa.string()),
    ]
)
NORMALISED_EVENT_COLUMNS: tuple[str, ...] = tuple(NORMALISED_EVENT_SCHEMA.names)

EVENTS_DIR = "events"
CUSTOMERS_FILE = "customers.parquet"
MANIFEST_FILE = "manifest.json"
PARTITION_KEY = "event_month"

MAX_ID_LENGTH = 128


def events_glob(lake: str | Path) -> str:
    """The glob that reads every normalised event file of a lake (for DuckDB or Spark)."""
    return str(Path(lake) / EVENTS_DIR / "**" / "*.parquet")
