"""The service's decision log as a Parquet file: the input of off-policy evaluation and policy
learning (``journeyml decisions export``, :mod:`evaluation.policy_log`).

One row per logged decision (previews left out: nothing was sent), with what the state store
keeps: the chosen action and its logged propensity, the holdout and exploration flags, the
candidates with the rule or contact limit that removed each, the online features and scores the
engine read at decision time (JSON text), and one ``<outcome>_at`` column per feedback outcome
(empty when none was received).
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from serving.state import OUTCOMES, StateStore

logger = logging.getLogger(__name__)

DECISION_LOG_COLUMNS: tuple[str, ...] = (
    "decision_id",
    "decided_at",
    "customer_id",
    "chosen_action",
    "propensity",
    "channel",
    "contacted",
    "holdout",
    "explored",
    "fallback_reason",
    "request",
    "candidates",
    "features",
    "model_versions",
    "policy_version",
    *(f"{o}_at" for o in OUTCOMES),
)


def export_decisions(
    store: StateStore,
    out: Path,
    start: datetime | None = None,
    end: datetime | None = None,
) -> int:
    """Writes the decisions of ``[start, end)`` to ``out`` (Parquet, atomically); returns the
    number of rows. An empty log writes an empty file with the same columns."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    writer: pq.ParquetWriter | None = None
    rows = 0
    try:
        for chunk in store.iter_decisions(start, end):
            table = pa.Table.from_pandas(chunk[list(DECISION_LOG_COLUMNS)], preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
            writer.write_table(table.cast(writer.schema))
            rows += table.num_rows
        if writer is None:
            empty = pd.DataFrame({c: pd.Series(dtype=_EMPTY_DTYPES.get(c, "object"))
                                  for c in DECISION_LOG_COLUMNS})  # fmt: skip
            empty.to_parquet(tmp, index=False)
        else:
            writer.close()
            writer = None
        tmp.replace(out)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    logger.info("exported %d decisions to %s", rows, out)
    return rows


_EMPTY_DTYPES: dict[str, str] = {
    "decided_at": "datetime64[us, UTC]",
    "propensity": "float64",
    "contacted": "bool",
    "holdout": "bool",
    "explored": "bool",
    **{f"{o}_at": "datetime64[us, UTC]" for o in OUTCOMES},
}
