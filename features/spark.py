"""The Spark engine of the feature pipeline: the same feature query, run by PySpark.

The definition stays in :mod:`features.pipeline`: :func:`~features.pipeline.feature_query`
writes the query, :func:`~features.pipeline.to_spark_sql` transpiles it, and this module gives
it the same four relations (``events``, ``roles``, ``snapshots``, ``customers``) as Spark temp
views, read from the lake's Parquet at any Hadoop-compatible URI. The snapshot rows are written
as Parquet that every reader of the DuckDB engine's output reads as it is (online load,
training, Feast).

Spark inlines a common table expression wherever it is referenced; the query reads its running
state twice (at T and at each T - W) and its customer and type codes several times, so the CTEs
referenced more than once are computed once and kept (``persist``) instead.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import uuid
from collections import Counter as Tally
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlglot
from sqlglot import exp

from features.catalog import FeatureCatalog
from features.pipeline import (
    ENTITY,
    MAX_EVENT_TYPES,
    MAX_STAGES,
    SNAPSHOT_TS,
    TIMESTAMP_FIELD,
    BuildReport,
    FeatureBuildError,
    count_bits_for,
    event_roles,
    feature_query,
    plan_snapshots,
    to_spark_sql,
)
from features.settings import SparkSettings
from journeyml.config import JourneyMap

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

logger = logging.getLogger(__name__)

SESSION_DEFAULTS: dict[str, str] = {
    # the pipeline's times are UTC instants, as in DuckDB's session
    "spark.sql.session.timeZone": "UTC",
    # Parquet timestamps as microseconds adjusted to UTC (what DuckDB and pyarrow write)
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.parquet.compression.codec": "zstd",
    "spark.ui.showConsoleProgress": "false",
}
"""Session settings the engine needs; ``spark.conf`` in the YAML may override the others."""

_REQUIRED = ("spark.sql.session.timeZone",)


class JavaMissingError(RuntimeError):
    """No Java runtime was found for Spark; the message says where it was looked for."""


def java_runtime() -> str:
    """The ``java`` executable Spark will start (``$JAVA_HOME/bin/java``, else on ``PATH``).

    Raises:
        JavaMissingError: neither exists.
    """
    home = os.environ.get("JAVA_HOME")
    if home:
        java = Path(home) / "bin" / "java"
        if java.is_file():
            return str(java)
        raise JavaMissingError(
            f"JAVA_HOME is {home} but {java} does not exist: point JAVA_HOME at a Java 17+ "
            "runtime or unset it"
        )
    found = shutil.which("java")
    if found is None:
        raise JavaMissingError(
            "the spark engine needs a Java 17+ runtime and none is installed (no `java` on "
            "PATH, JAVA_HOME unset): `make java` installs Debian's openjdk-17-jre-headless"
        )
    return found


def spark_session(settings: SparkSettings) -> SparkSession:
    """Starts (or reuses) the Spark session the settings describe.

    Raises:
        JavaMissingError: no Java runtime.
    """
    java_runtime()
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(settings.master).appName(settings.app_name)
    conf = {**SESSION_DEFAULTS, **settings.conf}
    if settings.master.startswith("local") and not os.environ.get("PYSPARK_PYTHON"):
        # PySpark starts its Python workers (mapInPandas) with $PYSPARK_PYTHON, else
        # `python3` from PATH, which need not have the project installed: use this
        # interpreter (on a cluster, PYSPARK_PYTHON names the executors' Python)
        os.environ["PYSPARK_PYTHON"] = sys.executable
    for key in _REQUIRED:
        conf[key] = SESSION_DEFAULTS[key]
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    # a session that already existed keeps its own settings: set what the engine needs
    for key in _REQUIRED:
        spark.conf.set(key, SESSION_DEFAULTS[key])
    return spark


# -- URIs -------------------------------------------------------------------------------------


def join_uri(base: str, *parts: str) -> str:
    """``base/part/...`` for a path or a URI (no normalisation of the scheme)."""
    return "/".join([base.rstrip("/"), *parts])


class HadoopFiles:
    """The Hadoop file system behind a URI (local, HDFS, S3A, ABFS, ...), through the JVM."""

    def __init__(self, spark: SparkSession, uri: str):
        # the Hadoop FileSystem API has no Python binding: reach it through py4j
        jvm: Any = spark._jvm
        jsc: Any = spark._jsc
        self._path_cls = jvm.org.apache.hadoop.fs.Path
        self._fs = self._path_cls(uri).getFileSystem(jsc.hadoopConfiguration())

    def exists(self, uri: str) -> bool:
        return bool(self._fs.exists(self._path_cls(uri)))

    def delete(self, uri: str) -> None:
        self._fs.delete(self._path_cls(uri), True)

    def rename(self, src: str, dst: str) -> None:
        if not self._fs.rename(self._path_cls(src), self._path_cls(dst)):
            raise FeatureBuildError(f"could not rename {src} to {dst}")

    def has_parquet(self, uri: str) -> bool:
        if not self.exists(uri):
            return False
        files = self._fs.listFiles(self._path_cls(uri), True)
        while files.hasNext():
            if str(files.next().getPath().getName()).endswith(".parquet"):
                return True
        return False


def sibling_uri(uri: str, prefix: str) -> str:
    head, _, name = uri.rstrip("/").rpartition("/")
    return f"{head}/.{name}.{prefix}" if head else f".{name}.{prefix}"


# -- inputs -----------------------------------------------------------------------------------


def read_events(spark: SparkSession, events_uri: str) -> DataFrame:
    """Every Parquet file under ``events_uri`` (partition folders are not read as columns,
    as DuckDB's ``hive_partitioning = false``)."""
    return (
        spark.read.option("recursiveFileLookup", "true")
        .option("pathGlobFilter", "*.parquet")
        .parquet(events_uri)
    )


def register_spark_inputs(
    spark: SparkSession,
    journey_map: JourneyMap,
    events: DataFrame,
    customers: DataFrame | None,
    profile_attributes: list[str],
) -> None:
    """Creates the ``events``, ``roles`` and ``customers`` views the feature query reads
    (what :func:`features.pipeline.register_inputs` does for DuckDB)."""
    events.createOrReplaceTempView("events")
    types = [r[0] for r in events.select("event_type").distinct().collect()]
    if len(types) > MAX_EVENT_TYPES:
        raise FeatureBuildError(
            f"the log has {len(types)} event types; the feature query handles {MAX_EVENT_TYPES}"
        )
    if len(journey_map.stages) > MAX_STAGES:
        raise FeatureBuildError(
            f"the journey map has {len(journey_map.stages)} stages; at most {MAX_STAGES} work"
        )
    roles = event_roles(journey_map, types)
    rows = [tuple(r.values()) for r in roles.to_pylist()]
    spark.createDataFrame(rows, _spark_schema(roles)).createOrReplaceTempView("roles")
    if customers is not None:
        present = set(customers.columns)
        cols = [
            f"CAST({a} AS STRING) AS {a}" if a in present else f"CAST(NULL AS STRING) AS {a}"
            for a in profile_attributes
        ]
        customers.createOrReplaceTempView("customers_input")
        spark.sql(
            f"SELECT customer_id{''.join(', ' + c for c in cols)} FROM customers_input"
        ).createOrReplaceTempView("customers")
    else:
        cols = [f"CAST(NULL AS STRING) AS {a}" for a in profile_attributes]
        spark.sql(
            "SELECT CAST(NULL AS STRING) AS customer_id"
            f"{''.join(', ' + c for c in cols)} WHERE FALSE"
        ).createOrReplaceTempView("customers")


def _spark_schema(table: Any) -> Any:
    """The Spark schema of a small Arrow table of strings and 32-bit ints."""
    from pyspark.sql.types import IntegerType, StringType, StructField, StructType

    types = {"string": StringType(), "int32": IntegerType()}
    return StructType([StructField(f.name, types[str(f.type)], True) for f in table.schema])


def register_spark_snapshots(spark: SparkSession, cutoffs: list[datetime]) -> None:
    """Snapshots = every customer whose first activity is before a cutoff, at that cutoff
    (from the ``customer_span`` view :func:`customer_span` made)."""
    from pyspark.sql.types import StructField, StructType, TimestampType

    schema = StructType([StructField(SNAPSHOT_TS, TimestampType(), False)])
    spark.createDataFrame([(c,) for c in cutoffs], schema).createOrReplaceTempView("cutoffs")
    spark.sql(
        "SELECT f.customer_id, c.snapshot_ts FROM customer_span AS f"
        " JOIN cutoffs AS c ON f.first_ts < c.snapshot_ts"
    ).createOrReplaceTempView("snapshots")


def customer_span(spark: SparkSession) -> DataFrame:
    """Each customer's first and last activity and event count, kept for the build."""
    span = spark.sql(
        "SELECT e.customer_id,"
        " MIN(CASE WHEN r.is_activity = 1 THEN e.timestamp END) AS first_ts,"
        " MAX(CASE WHEN r.is_activity = 1 THEN e.timestamp END) AS last_ts, COUNT(*) AS n"
        " FROM events AS e JOIN roles AS r ON r.event_type = e.event_type"
        " GROUP BY e.customer_id"
    ).persist()
    span.createOrReplaceTempView("customer_span")
    return span


# -- the query --------------------------------------------------------------------------------


def spark_stages(spark_sql: str) -> list[tuple[str, str, int]]:
    """Splits a transpiled ``WITH`` query into (name, SQL, later references) per CTE, and
    the final SELECT as the last entry (name ``""``)."""
    tree = sqlglot.parse_one(spark_sql, read="spark")
    with_ = tree.args.get("with_")
    ctes = list(with_.expressions) if with_ is not None else []
    final = tree.copy()
    final.set("with_", None)
    bodies = [(c.alias, c.this) for c in ctes] + [("", final)]
    stages = []
    for i, (name, body) in enumerate(bodies):
        later = Tally(
            t.name for _, other in bodies[i + 1 :] for t in other.find_all(exp.Table) if t.name
        )
        stages.append((name, body.sql(dialect="spark"), later[name] if name else 0))
    return stages


@contextmanager
def feature_frame(spark: SparkSession, query: str) -> Iterator[DataFrame]:
    """The feature rows of ``query`` (DuckDB dialect) computed by Spark.

    Each CTE becomes a temp view; one that later stages read more than once is persisted, so
    Spark computes it once. The persisted frames are released when the block exits.
    """
    kept: list[DataFrame] = []
    try:
        frame = None
        for name, sql, uses in spark_stages(to_spark_sql(query)):
            frame = spark.sql(sql)
            if not name:
                break
            if uses > 1:
                frame = frame.persist()
                kept.append(frame)
            frame.createOrReplaceTempView(name)
        assert frame is not None
        yield frame
    finally:
        for df in kept:
            df.unpersist()


# -- the build --------------------------------------------------------------------------------


def build_snapshots_spark(
    spark: SparkSession,
    lake: str,
    out: str,
    journey_map: JourneyMap,
    catalog: FeatureCatalog,
    as_of: datetime | None = None,
    output_files: int = 8,
) -> BuildReport:
    """Computes the feature snapshots with Spark and writes them as Parquet at ``out``.

    The same snapshots as :func:`features.pipeline.build_snapshots` (every cadence from the
    first activity plus the warm-up, and once more at ``as_of``), written as
    ``output_files`` Parquet files, rows hashed by customer and sorted by customer and time.
    The output is written beside ``out`` and renamed into place: a failure leaves the previous
    snapshots as they were.

    Args:
        spark: the session (:func:`spark_session`).
        lake: the lake's URI (its ``events/`` folder and optional ``customers.parquet``).
        out: where the snapshots go (a path or a Hadoop-compatible URI).
        journey_map: the journey map (event roles and stages).
        catalog: the feature catalog.
        as_of: the last snapshot's time (default: just after the last event).
        output_files: how many Parquet files to write.

    Raises:
        FeatureBuildError: the lake has no events or ``as_of`` is before the first event.
    """
    from journeyml.events.schema import CUSTOMERS_FILE, EVENTS_DIR

    started = time.perf_counter()
    events_uri = join_uri(lake, EVENTS_DIR)
    fs = HadoopFiles(spark, events_uri)
    if not fs.has_parquet(events_uri):
        raise FeatureBuildError(
            f"no ingested events under {events_uri}: run `journeyml events ingest` first"
        )
    customers_uri = join_uri(lake, CUSTOMERS_FILE)
    customers = spark.read.parquet(customers_uri) if fs.exists(customers_uri) else None
    register_spark_inputs(
        spark,
        journey_map,
        read_events(spark, events_uri),
        customers,
        catalog.settings.profile_attributes,
    )
    span = customer_span(spark)
    tmp = sibling_uri(out, f"tmp-{uuid.uuid4().hex[:8]}")
    try:
        # as microseconds: PySpark turns timestamps into the Python process's local time
        first_us, last_us, most = spark.sql(
            "SELECT UNIX_MICROS(MIN(first_ts)), UNIX_MICROS(MAX(last_ts)), MAX(n)"
            " FROM customer_span"
        ).collect()[0]
        if first_us is None or last_us is None:
            raise FeatureBuildError(f"the lake at {lake} has no customer activity events")
        first, last = from_unix_micros(first_us), from_unix_micros(last_us)
        if as_of is not None and as_of <= first:
            raise FeatureBuildError(
                f"--as-of {as_of.isoformat()} is before the first event ({first.isoformat()})"
            )
        snaps = catalog.settings.snapshots
        plan = plan_snapshots(first, last, snaps.cadence_days, snaps.warmup_days, as_of)
        register_spark_snapshots(spark, [*plan.cutoffs, plan.as_of])
        query = feature_query(catalog, journey_map.experience.score_property, count_bits_for(most))
        with feature_frame(spark, query) as frame:
            (
                frame.repartition(output_files, ENTITY)
                .sortWithinPartitions(ENTITY, TIMESTAMP_FIELD)
                .write.mode("error")
                .parquet(tmp)
            )
        written = spark.read.parquet(tmp)
        rows, customers_n, n_snap = written.selectExpr(
            "COUNT(*)", f"COUNT(DISTINCT {ENTITY})", f"COUNT(DISTINCT {TIMESTAMP_FIELD})"
        ).collect()[0]
        replace_output(fs, tmp, out)
    except Exception:
        if fs.exists(tmp):
            fs.delete(tmp)
        raise
    finally:
        span.unpersist()
    report = BuildReport(
        path=out,
        rows=int(rows),
        customers=int(customers_n),
        snapshots=int(n_snap),
        first_snapshot=plan.cutoffs[0] if plan.cutoffs else None,
        as_of=plan.as_of,
        features=len(catalog.features),
        seconds=time.perf_counter() - started,
    )
    logger.info(
        "spark built %d snapshot rows (%d customers x %d snapshots, %d features) in %.1f s",
        report.rows,
        report.customers,
        report.snapshots,
        report.features,
        report.seconds,
    )
    return report


def replace_output(fs: HadoopFiles, tmp: str, out: str) -> None:
    """Moves ``tmp`` to ``out``, the previous ``out`` deleted only once the new one is there."""
    if fs.exists(out):
        old = sibling_uri(out, f"old-{uuid.uuid4().hex[:8]}")
        fs.rename(out, old)
        fs.rename(tmp, out)
        fs.delete(old)
    else:
        fs.rename(tmp, out)


def from_unix_micros(micros: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(micros))
