"""Labels and the training set on Spark: the same label query, run by PySpark.

The definition stays in :func:`training.labels.label_query`; it is transpiled as the feature
query is (:func:`features.pipeline.to_spark_sql`) and run over the same relations
(``events``, ``label_roles``, ``entities``) as Spark temp views (:mod:`features.spark` reads
the lake). The labelled rows are joined with the feature snapshots at their cutoff and written
as Parquet, with the columns and types of :func:`training.training_set.build_training_set`.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from features.pipeline import ENTITY, TIMESTAMP_FIELD, plan_snapshots
from features.settings import FeatureSettings
from features.spark import (
    HadoopFiles,
    customer_span,
    feature_frame,
    from_unix_micros,
    join_uri,
    read_events,
    register_spark_inputs,
    register_spark_snapshots,
    replace_output,
    sibling_uri,
)
from journeyml.config import JourneyMap
from training.labels import LABEL_COLUMNS, LabelError, label_query, max_horizon_days
from training.training_set import (
    CUTOFF,
    LOG_END,
    TrainingSetReport,
    feature_columns,
    missing_snapshots_error,
    too_short_error,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

logger = logging.getLogger(__name__)


def register_spark_label_roles(spark: SparkSession, journey_map: JourneyMap) -> None:
    """Adds the ``label_roles`` view (the ``roles`` view plus the explicit-churn flag), as
    :func:`training.labels.register_label_roles` does for DuckDB."""
    from pyspark.sql.types import IntegerType, StringType, StructField, StructType

    types = [r[0] for r in spark.sql("SELECT event_type FROM roles").collect()]
    schema = StructType(
        [StructField("event_type", StringType(), False), StructField("is_churn", IntegerType())]
    )
    rows = [(t, int(journey_map.is_churn_event(t))) for t in types]
    spark.createDataFrame(rows, schema).createOrReplaceTempView("churn_flags")
    spark.sql(
        "SELECT r.event_type, r.stage_idx, r.back_idx, r.is_activity, r.is_conversion,"
        " c.is_churn FROM roles AS r JOIN churn_flags AS c ON c.event_type = r.event_type"
    ).createOrReplaceTempView("label_roles")


def labelled_cutoffs_spark(
    spark: SparkSession, journey_map: JourneyMap, settings: FeatureSettings
) -> tuple[list[datetime], datetime]:
    """:func:`training.labels.labelled_cutoffs` on the ``customer_span`` and ``events`` views."""
    first_us, last_us = spark.sql(
        "SELECT UNIX_MICROS(MIN(first_ts)), UNIX_MICROS(MAX(last_ts)) FROM customer_span"
    ).collect()[0]
    end_us = spark.sql("SELECT UNIX_MICROS(MAX(timestamp)) FROM events").collect()[0][0]
    if first_us is None or end_us is None:
        raise LabelError("the lake has no customer activity events")
    end = from_unix_micros(end_us)
    snaps = settings.snapshots
    plan = plan_snapshots(
        from_unix_micros(first_us), from_unix_micros(last_us), snaps.cadence_days, snaps.warmup_days
    )
    horizon = timedelta(days=max_horizon_days(journey_map))
    return [t for t in plan.cutoffs if t + horizon <= end], end


@contextmanager
def spark_labels(
    spark: SparkSession, journey_map: JourneyMap, settings: FeatureSettings, lake: str
) -> Iterator[tuple[DataFrame, list[datetime], datetime]]:
    """The label rows of the lake at every labelled cutoff, computed by Spark.

    Yields the frame (``customer_id``, ``cutoff`` and :data:`LABEL_COLUMNS`, unordered), the
    cutoffs and the log's last event; the frames Spark kept are released on exit.

    Raises:
        LabelError: no events, or the log is too short for one full horizon.
    """
    from journeyml.events.schema import EVENTS_DIR

    events_uri = join_uri(lake, EVENTS_DIR)
    if not HadoopFiles(spark, events_uri).has_parquet(events_uri):
        raise LabelError(f"no ingested events under {events_uri}: run `journeyml events ingest`")
    register_spark_inputs(spark, journey_map, read_events(spark, events_uri), None, [])
    span = customer_span(spark)
    try:
        cutoffs, end = labelled_cutoffs_spark(spark, journey_map, settings)
        if not cutoffs:
            raise too_short_error(journey_map, end)
        register_spark_snapshots(spark, cutoffs)
        spark.sql(
            "SELECT DISTINCT customer_id, snapshot_ts AS cutoff FROM snapshots"
        ).createOrReplaceTempView("entities")
        register_spark_label_roles(spark, journey_map)
        with feature_frame(spark, label_query(journey_map, ordered=False)) as frame:
            yield frame, cutoffs, end
    finally:
        span.unpersist()


def build_training_set_spark(
    spark: SparkSession,
    lake: str,
    snapshots: str,
    out: str,
    journey_map: JourneyMap,
    settings: FeatureSettings,
    output_files: int = 8,
) -> TrainingSetReport:
    """Labels the lake with Spark and writes labels + the snapshots' features as Parquet.

    The rows and columns of :func:`training.training_set.build_training_set`, written as
    ``output_files`` files (rows hashed by customer, sorted by cutoff and customer) beside
    ``out`` and renamed into place. ``lake``, ``snapshots`` and ``out`` may be any
    Hadoop-compatible URI.

    Raises:
        LabelError: no events, a log too short for one horizon, or snapshots missing.
    """
    from pyspark.sql import functions as sf

    started = time.perf_counter()
    fs = HadoopFiles(spark, out)
    if not fs.has_parquet(snapshots):
        raise LabelError(
            f"no feature snapshots at {snapshots}: run `journeyml features build` first"
        )
    tmp = sibling_uri(out, f"tmp-{uuid.uuid4().hex[:8]}")
    with spark_labels(spark, journey_map, settings, lake) as (labels, cutoffs, end):
        features = spark.read.parquet(snapshots)
        feats = feature_columns(features.columns)
        right = features.select(
            sf.col(ENTITY).alias("__entity"),
            sf.col(TIMESTAMP_FIELD).alias("__cutoff"),
            sf.lit(True).alias("__matched"),
            *[sf.col(c) for c in feats],
        )
        end_us = int((end - from_unix_micros(0)).total_seconds() * 1_000_000)
        joined = (
            labels.join(
                right,
                (labels[ENTITY] == right["__entity"]) & (labels[CUTOFF] == right["__cutoff"]),
                "left",
            )
            .select(
                ENTITY,
                CUTOFF,
                *LABEL_COLUMNS,
                sf.expr(f"TIMESTAMP_MICROS({end_us})").alias(LOG_END),
                "__matched",
                *feats,
            )
            .persist()
        )
        try:
            rows, active, customers, missing = joined.selectExpr(
                "COUNT(*)",
                "COUNT_IF(active)",
                f"COUNT(DISTINCT {ENTITY})",
                "COUNT_IF(__matched IS NULL)",
            ).collect()[0]
            if missing:
                raise missing_snapshots_error(int(missing), int(rows))
            (
                joined.drop("__matched")
                .repartition(output_files, ENTITY)
                .sortWithinPartitions(CUTOFF, ENTITY)
                .write.mode("error")
                .parquet(tmp)
            )
            replace_output(fs, tmp, out)
        except Exception:
            if fs.exists(tmp):
                fs.delete(tmp)
            raise
        finally:
            joined.unpersist()
    report = TrainingSetReport(
        out, int(rows), int(active), int(customers), len(cutoffs), len(feats), end,
        time.perf_counter() - started,
    )  # fmt: skip
    logger.info(
        "spark training set: %d rows (%d active) at %d cutoffs in %.1f s",
        report.rows, report.active_rows, report.cutoffs, report.seconds,
    )  # fmt: skip
    return report
