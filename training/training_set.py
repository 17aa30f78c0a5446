"""The labelled training set: labels and features at every labelled cutoff, as Parquet.

One row per customer seen before a labelled cutoff (:func:`training.labels.build_labels`):
``customer_id``, ``cutoff``, the :data:`~training.labels.LABEL_COLUMNS`, ``log_end`` (the last
event, the same on every row) and every feature of the snapshot at that cutoff. Two engines
write the same rows from the same label definition: DuckDB (:func:`build_training_set`) and
Spark (:func:`training.spark_labels.build_training_set_spark`), for a log that does not fit
one machine.

``journeyml train --dataset PATH`` reads such a set (:func:`read_training_set`), sampled by
customer when it exceeds the configured row or memory budget.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from features.pipeline import CREATED_FIELD, ENTITY, TIMESTAMP_FIELD, register_snapshots_for_cutoffs
from features.settings import FeatureSettings
from journeyml.config import JourneyMap
from training.labels import (
    LABEL_COLUMNS,
    LabelError,
    customer_fraction,
    label_query,
    labelled_cutoffs,
    max_horizon_days,
    open_lake,
    register_label_roles,
)

logger = logging.getLogger(__name__)

CUTOFF = "cutoff"
LOG_END = "log_end"
KEY_COLUMNS: tuple[str, ...] = (ENTITY, CUTOFF)
SET_COLUMNS: tuple[str, ...] = (*KEY_COLUMNS, *LABEL_COLUMNS, LOG_END)
"""The columns every training set starts with; the features follow."""
SAMPLE_SALT = "training-sample:"
"""Salts the customer hash of the sample, so it is independent of the held-out validation
group (:func:`training.labels.held_out_customers` hashes the bare id)."""


@dataclass(frozen=True)
class TrainingSetReport:
    """What a training-set build wrote."""

    path: str
    rows: int
    active_rows: int
    customers: int
    cutoffs: int
    features: int
    log_end: datetime
    seconds: float


def feature_columns(snapshot_columns: list[str]) -> list[str]:
    """The snapshot's feature columns (its key and load time left out).

    Raises:
        LabelError: a feature has the name of a training-set column.
    """
    feats = [c for c in snapshot_columns if c not in (ENTITY, TIMESTAMP_FIELD, CREATED_FIELD)]
    clash = sorted(set(feats) & set(SET_COLUMNS))
    if clash:
        raise LabelError(f"features named like training-set columns: {', '.join(clash)}")
    return feats


def missing_snapshots_error(missing: int, rows: int) -> LabelError:
    return LabelError(
        f"{missing:,} of {rows:,} labelled rows have no feature snapshot at their cutoff: "
        "build the features of this lake first (`journeyml features build`, without an "
        "--as-of before the log's end)"
    )


def build_training_set(
    lake: str | Path,
    snapshots: str | Path,
    out: str | Path,
    journey_map: JourneyMap,
    settings: FeatureSettings,
) -> TrainingSetReport:
    """Labels the lake (DuckDB) and writes labels + the snapshot's features as Parquet.

    The output is written beside ``out`` and moved into place, one file, rows sorted by cutoff
    and customer.

    Raises:
        LabelError: no events, a log too short for one horizon, or snapshots missing.
    """
    started = time.perf_counter()
    out = Path(out)
    con = open_lake(lake, journey_map)
    try:
        cutoffs, end = labelled_cutoffs(con, journey_map, settings)
        if not cutoffs:
            raise too_short_error(journey_map, end)
        register_snapshots_for_cutoffs(con, cutoffs)
        con.execute(
            "CREATE OR REPLACE TEMP TABLE entities AS "
            "SELECT DISTINCT customer_id, snapshot_ts AS cutoff FROM snapshots"
        )
        register_label_roles(con, journey_map)
        con.execute(f"CREATE OR REPLACE TEMP TABLE labels AS {label_query(journey_map, False)}")
        glob = str(Path(snapshots) / "**" / "*.parquet").replace("'", "''")
        con.execute(
            "CREATE OR REPLACE TEMP VIEW features AS "
            f"SELECT * FROM read_parquet('{glob}', hive_partitioning = false)"
        )
        feats = feature_columns([r[0] for r in con.execute("DESCRIBE features").fetchall()])
        selected = ", ".join(f'f."{c}"' for c in feats)
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE training_set AS
            SELECT l.customer_id, l.cutoff, {", ".join(f"l.{c}" for c in LABEL_COLUMNS)},
                CAST($end AS TIMESTAMPTZ) AS {LOG_END},
                f.{TIMESTAMP_FIELD} IS NOT NULL AS __matched, {selected}
            FROM labels AS l
            LEFT JOIN features AS f
                ON f.{ENTITY} = l.customer_id AND f.{TIMESTAMP_FIELD} = l.cutoff
            """,
            {"end": end},
        )
        rows, active, customers, missing = con.execute(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE active), COUNT(DISTINCT customer_id),"
            " COUNT(*) FILTER (WHERE NOT __matched) FROM training_set"
        ).fetchall()[0]
        if missing:
            raise missing_snapshots_error(missing, rows)
        tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            target = str(tmp / "part-0.parquet").replace("'", "''")
            con.execute(
                f"COPY (SELECT * EXCLUDE (__matched) FROM training_set ORDER BY cutoff, "
                f"customer_id) TO '{target}' (FORMAT parquet, COMPRESSION zstd)"
            )
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    finally:
        con.close()
    report = TrainingSetReport(
        str(out), rows, active, customers, len(cutoffs), len(feats), end,
        time.perf_counter() - started,
    )  # fmt: skip
    logger.info("training set: %d rows (%d active) at %d cutoffs", rows, active, len(cutoffs))
    return report


def too_short_error(journey_map: JourneyMap, end: datetime) -> LabelError:
    return LabelError(
        f"the log is too short: no snapshot cutoff has a full {max_horizon_days(journey_map)}"
        f"-day label horizon before the last event ({end.isoformat()})"
    )


@dataclass(frozen=True)
class TrainingSetSample:
    """A training set as read for training, and how much of it was kept."""

    frame: pd.DataFrame
    rows_total: int
    customers_total: int
    sample_rate: float

    def params(self) -> dict[str, object]:
        """The sample's MLflow parameters."""
        return {
            "dataset_rows_total": self.rows_total,
            "dataset_customers_total": self.customers_total,
            "dataset_rows_read": len(self.frame),
            "dataset_customers_read": int(self.frame[ENTITY].nunique()),
            "dataset_sample_rate": round(self.sample_rate, 6),
        }


def read_training_set(path: str | Path, max_rows: int, max_memory_mb: float) -> TrainingSetSample:
    """Reads a training set, every row of a share of its customers when it exceeds a budget.

    The share is ``min(1, max_rows / rows, max_memory_mb / uncompressed MB)`` (the size as
    the Parquet footers report it); a customer is kept when its salted hash
    (:func:`training.labels.customer_fraction`) is below it, so the same customers are kept in
    every run.

    Raises:
        LabelError: no Parquet at ``path``, or its columns are not a training set's.
    """
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    try:
        data = ds.dataset(str(path), format="parquet", exclude_invalid_files=True)
        files = list(data.files)
    except (FileNotFoundError, OSError) as exc:
        raise LabelError(f"no training set at {path}: {exc}") from None
    if not files:
        raise LabelError(f"no training set at {path}: no Parquet files")
    missing = [c for c in SET_COLUMNS if c not in data.schema.names]
    if missing:
        raise LabelError(
            f"{path} is not a training set (no {', '.join(missing)}): write one with "
            "`journeyml training-set`"
        )
    rows = 0
    size = 0
    for fragment in data.get_fragments():
        meta = fragment.metadata
        rows += meta.num_rows
        size += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    ids = data.to_table(columns=[ENTITY]).column(ENTITY).unique().to_pandas()
    rate = min(1.0, max_rows / max(rows, 1), max_memory_mb * 2**20 / max(size, 1))
    if rate < 1.0:
        keep = ids[customer_fraction(ids, SAMPLE_SALT) < rate]
        table = data.to_table(filter=pc.field(ENTITY).isin(keep.to_numpy(dtype=object)))
        logger.info(
            "training set %s: %d rows, %.0f MB uncompressed over the budget (%d rows, %d MB): "
            "kept %d of %d customers (rate %.4f)",
            path, rows, size / 2**20, max_rows, max_memory_mb, len(keep), len(ids), rate,
        )  # fmt: skip
    else:
        table = data.to_table()
    frame = table.to_pandas()
    frame[CUTOFF] = pd.to_datetime(frame[CUTOFF], utc=True)
    frame[LOG_END] = pd.to_datetime(frame[LOG_END], utc=True)
    frame = frame.sort_values([CUTOFF, ENTITY], kind="stable").reset_index(drop=True)
    frame["active"] = frame["active"].fillna(False).astype(bool)
    return TrainingSetSample(frame, rows, len(ids), rate)


def label_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The label columns of a training set, as :func:`training.labels.build_labels` gives
    them (``churn`` as a float with NaN where the customer is not active)."""
    out = frame[[*KEY_COLUMNS, *LABEL_COLUMNS]].copy()
    for col in ("churn", "conversion"):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype(np.float64)
    return out
