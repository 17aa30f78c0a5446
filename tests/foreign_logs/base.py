"""What every foreign-log generator returns, and the small helpers they share.

The generators here are written independently of ``journeyml/simulate``: their own column
names, event vocabularies and statistics, so that no test or benchmark that uses them can lean
on the simulator's world.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq


@dataclass(frozen=True)
class ForeignLog:
    """A generated log: where it was written and what is known about it.

    Attributes:
        kind: ``purchase``, ``clickstream`` or ``subscription``.
        events_csv: the log as CSV (the log's own column names).
        events_parquet: the same rows as Parquet, when asked for.
        truth_dir: the ground-truth folder (files listed in ``truth``).
        column_map: log column -> journeyml contract column, what ``--map`` needs.
        start: the first day of the log.
        end: the day after the last day of the log (the log covers ``[start, end)``).
        n_customers: customers with at least one event.
        n_events: rows of the log.
        params: the generating parameters (population parameters, rates, seed).
        truth: truth name -> file inside ``truth_dir``.
        columns: the log's columns, in order.
        value_column: the log's numeric value column, when it has one.
        segment_columns: low-cardinality columns a monitor can split KPIs by.
    """

    kind: str
    events_csv: Path
    events_parquet: Path | None
    truth_dir: Path
    column_map: dict[str, str]
    start: date
    end: date
    n_customers: int
    n_events: int
    params: dict[str, Any]
    truth: dict[str, Path]
    columns: tuple[str, ...]
    value_column: str | None = None
    segment_columns: tuple[str, ...] = field(default_factory=tuple)

    def map_args(self) -> list[str]:
        """``["--map", "SRC=DST", ...]`` for ``journeyml events validate|ingest|init``."""
        return [arg for src, dst in self.column_map.items() for arg in ("--map", f"{src}={dst}")]

    @property
    def days(self) -> int:
        """The number of days the log covers."""
        return (self.end - self.start).days


def write_log(frame: pd.DataFrame, out: Path, name: str, parquet: bool) -> tuple[Path, Path | None]:
    """Writes ``frame`` as ``out/name.csv`` (and ``out/name.parquet``)."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"{name}.csv"
    table = pa.Table.from_pandas(frame, preserve_index=False)
    with csv_path.open("wb") as sink:
        sink.write((",".join(frame.columns) + "\n").encode())
        options = pa_csv.WriteOptions(include_header=False, quoting_style="none")
        pa_csv.write_csv(table, sink, options)
    parquet_path: Path | None = None
    if parquet:
        parquet_path = out / f"{name}.parquet"
        pq.write_table(table, parquet_path)
    return csv_path, parquet_path


def write_json(path: Path, payload: Any) -> Path:
    """Writes ``payload`` as indented JSON (numpy scalars converted)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_plain) + "\n")
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (date, Path)):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def day_strings(start: date, day_offsets: np.ndarray) -> np.ndarray:
    """``YYYY-MM-DD`` strings for whole-day offsets from ``start``."""
    days = np.datetime64(start, "D") + day_offsets.astype("int64")
    return np.datetime_as_string(days, unit="D")


def time_strings(start: date, seconds: np.ndarray, fmt: str = "%Y-%m-%dT%H:%M:%SZ") -> np.ndarray:
    """Timestamp strings (default ``YYYY-MM-DDTHH:MM:SSZ``) for second offsets from ``start``."""
    stamps = np.datetime64(start, "s") + seconds.astype("int64")
    text = pc.strftime(pa.array(stamps, type=pa.timestamp("s")), format=fmt)
    return np.asarray(text.to_numpy(zero_copy_only=False), dtype=object)


def customer_ids(prefix: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct ids such as ``cl-5f3a09``: opaque, not ordered by signup."""
    codes = rng.choice(16**6, size=n, replace=False)
    return np.array([f"{prefix}-{c:06x}" for c in codes])
