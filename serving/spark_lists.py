"""The churn-risk list on Spark: every customer decided by the same decision engine.

``journeyml lists churn-risk --engine spark`` reads each customer's latest snapshot row with
Spark and decides the rows inside ``mapInPandas`` with
:func:`serving.lists.decide_chunk`, the function the DuckDB path lists with (the engine's
``decide_frame``: same models, rules, arbitration, holdout and contact policy). What the
executors get is text: the models as their LightGBM text models and JSON (manifest, encoders,
calibrator), the serving settings as JSON, the action, feature and journey configurations as
YAML, and the contact-policy state as Arrow IPC bytes; each Python worker rebuilds the engine
from them once. No object of the project is pickled (Spark pickles only the function it runs).

The listed rows are written as Parquet files (rows hashed by customer) in
``<out>/<name>_parts/``, then sorted into the same ``<name>.csv``, ``<name>.parquet`` and
``<name>.json`` summary the DuckDB path writes, replaced only once complete.

On a cluster the executors need journeyml installed (the same wheel as the driver).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from journeyml.config import load_journey_map
from serving.capacity import Capacity
from serving.config import ServingSettings
from serving.engine import DecisionEngine
from serving.lists import (
    CHUNK_COUNTS,
    ENTITY,
    TIMESTAMP,
    ListError,
    ListFilters,
    ListSummary,
    _atomic_text,
    _suppressed_everywhere,
    _write_sorted,
    check_outputs,
    contact_policy_state,
    decide_chunk,
    list_capacity,
    list_summary,
    part_schema,
)
from serving.models import LoadedModel, ModelSet

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from training.bundle import ModelBundle

logger = logging.getLogger(__name__)

_CONFIGS = ("actions", "features", "journeys")
_LEFT_OUT_COL = "left_out"
_COUNT_COL = "left_out_n"


# -- the engine as text -----------------------------------------------------------------------


def bundle_texts(bundle: ModelBundle) -> dict[str, str]:
    """A loaded model bundle as text: LightGBM text models and JSON, nothing executable."""
    texts = {
        "manifest": json.dumps(bundle.manifest, default=str),
        "vocabularies": json.dumps(bundle.vocabularies),
        "calibrator": json.dumps(bundle.calibrator),
    }
    if bundle.scorer:
        texts["scorer"] = json.dumps(bundle.scorer)
    for role, booster in bundle.boosters.items():
        texts[f"booster:{role}"] = booster.model_to_string()
    return texts


def bundle_from_texts(texts: Mapping[str, str]) -> ModelBundle:
    """The bundle :func:`bundle_texts` wrote."""
    import lightgbm as lgb

    from training.bundle import ModelBundle

    boosters = {
        key.split(":", 1)[1]: lgb.Booster(model_str=text)
        for key, text in texts.items()
        if key.startswith("booster:")
    }
    return ModelBundle(
        json.loads(texts["manifest"]),
        boosters,
        json.loads(texts["vocabularies"]),
        json.loads(texts["calibrator"]),
        json.loads(texts.get("scorer", "{}")),
    )


def engine_payload(engine: DecisionEngine) -> dict[str, Any]:
    """Everything an executor needs to rebuild ``engine`` for the batch path, as strings."""
    settings = engine.settings
    return {
        "settings": settings.model_dump_json(),
        "configs": {
            key: Path(getattr(settings, key)).read_text(encoding="utf-8") for key in _CONFIGS
        },
        "models": {
            role: {"name": m.name, "version": m.version, **bundle_texts(m.bundle)}
            for role, m in engine.models.models.items()
        },
    }


class _FixedModels(ModelSet):
    """Models given at construction (an executor's copy); never refreshed."""

    def __init__(self, settings: ServingSettings, models: Mapping[str, LoadedModel]):
        self.settings = settings
        self._models = MappingProxyType(dict(models))
        self._errors: dict[str, str] = {}

    def refresh(self) -> list[str]:
        return []


def engine_from_payload(payload: Mapping[str, Any], workdir: Path) -> DecisionEngine:
    """The batch decision engine rebuilt from :func:`engine_payload` (no online store; the
    state store is an empty file in ``workdir``: the batch path reads the contact policy from its
    rows, never from the store)."""
    from serving.actions import load_decision_catalogs
    from serving.state import StateStore

    paths = {}
    for key in _CONFIGS:
        path = workdir / f"{key}.yaml"
        path.write_text(payload["configs"][key], encoding="utf-8")
        paths[key] = str(path)
    settings = ServingSettings.model_validate_json(payload["settings"]).model_copy(update=paths)
    catalog, actions = load_decision_catalogs(
        paths["actions"], paths["features"], paths["journeys"]
    )
    models = {
        role: LoadedModel(role, m["name"], m["version"], bundle_from_texts(m))
        for role, m in payload["models"].items()
    }
    state = StateStore(f"sqlite:///{workdir / 'state.db'}")
    return DecisionEngine(
        settings, actions, _FixedModels(settings, models), None, state, catalog.descriptions,
        specs=catalog.specs,
    )  # fmt: skip


def _frame_bytes(frame: pd.DataFrame) -> bytes:
    table = pa.Table.from_pandas(frame, preserve_index=True)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def _frame_from_bytes(data: bytes) -> pd.DataFrame:
    return pa.ipc.open_stream(data).read_all().to_pandas()


# -- the list ---------------------------------------------------------------------------------


def _output_schema(schema: pa.Schema) -> Any:
    from pyspark.sql.types import (
        BooleanType,
        DoubleType,
        LongType,
        StringType,
        StructField,
        StructType,
        TimestampType,
    )

    spark_type = {
        pa.string(): StringType(),
        pa.float64(): DoubleType(),
        pa.bool_(): BooleanType(),
        pa.timestamp("us", tz="UTC"): TimestampType(),
    }
    fields = [StructField(f.name, spark_type[f.type], True) for f in schema]
    fields += [StructField(_LEFT_OUT_COL, StringType(), True)]
    fields += [StructField(_COUNT_COL, LongType(), True)]
    return StructType(fields)


def decide_partitions(
    broadcast: Any,
    now: datetime,
    ageing: list[str],
    filters: ListFilters,
    names: list[str],
) -> Callable[[Iterable[pd.DataFrame]], Iterable[pd.DataFrame]]:
    """The ``mapInPandas`` function: each batch of latest rows to list rows, plus one row per
    left-out reason with its count (``left_out``, ``left_out_n``)."""

    def run(batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        payload = broadcast.value
        workdir = Path(tempfile.mkdtemp(prefix="journeyml-list-"))
        try:
            engine = engine_from_payload(payload, workdir)
            journey_map = load_journey_map(engine.settings.journeys)
            policy_rows = _frame_from_bytes(payload["policy"])
            suppression = set(payload["suppression"])
            suppressed_policy = set(payload["suppressed_policy"])
            for batch in batches:
                if batch.empty:
                    continue
                chunk = batch.set_index(ENTITY, drop=False)
                scored, counts = decide_chunk(
                    engine, chunk, now, policy_rows, ageing, journey_map, suppression,
                    suppressed_policy, filters,
                )  # fmt: skip
                out = scored.assign(**{_LEFT_OUT_COL: None, _COUNT_COL: 1})
                tally = pd.DataFrame(
                    {_LEFT_OUT_COL: list(counts), _COUNT_COL: list(counts.values())}
                )
                yield pd.concat([out, tally], ignore_index=True)[
                    [*names, _LEFT_OUT_COL, _COUNT_COL]
                ]
            engine.state.close()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    return run


def latest_rows(
    spark: SparkSession,
    snapshots: str,
    as_of: datetime | None,
    segments: tuple[str, ...],
    segment_column: str = "segment",
) -> DataFrame:
    """Each customer's latest snapshot row at or before ``as_of`` (Spark), as
    :func:`serving.lists.latest_snapshot_chunks` reads them."""
    from pyspark.sql import functions as sf
    from pyspark.sql.window import Window

    frame = (
        spark.read.option("recursiveFileLookup", "true")
        .option("pathGlobFilter", "*.parquet")
        .parquet(snapshots)
        .where(sf.col(ENTITY).isNotNull())
    )
    if as_of is not None:
        frame = frame.where(sf.col(TIMESTAMP) <= sf.lit(as_of))
    latest = Window.partitionBy(ENTITY).orderBy(sf.col(TIMESTAMP).desc())
    frame = frame.withColumn("_latest", sf.row_number().over(latest)).where("_latest = 1")
    frame = frame.drop("_latest")
    if segments:
        if segment_column not in frame.columns:
            raise ListError(
                f"--segment: the feature snapshots have no column {segment_column!r} "
                "(set segment_column in serving.yaml to one of the profile attributes)"
            )
        frame = frame.where(sf.col(segment_column).isin(list(segments)))
    return frame


def churn_risk_list_spark(
    spark: SparkSession,
    engine: DecisionEngine,
    snapshots: str | Path,
    out_dir: Path,
    *,
    name: str = "churn_risk",
    filters: ListFilters | None = None,
    as_of: datetime | None = None,
    now: datetime | None = None,
    suppression: set[str] | None = None,
    output_files: int = 8,
    split_by: str | None = None,
    previous: Path | None = None,
    capacity: Capacity | None = None,
) -> ListSummary:
    """:func:`serving.lists.churn_risk_list` with the rows read and decided by Spark.

    Writes ``<out_dir>/<name>_parts/`` (the listed rows as Parquet files) and the same
    ``<name>.csv``, ``.parquet`` and ``.json`` as the DuckDB path.
    """
    from serving.actions import load_decision_catalogs

    started = time.perf_counter()
    check_outputs(split_by, previous)
    filters = filters or ListFilters()
    now = (now or datetime.now(UTC)).astimezone(UTC)
    summary = list_summary(engine, now, filters, as_of)
    schema = part_schema(engine)
    snapshots = str(snapshots)
    if not Path(snapshots).exists() and "://" not in snapshots:
        raise ListError(
            f"no feature snapshots under {snapshots}: run `journeyml features build` first"
        )
    catalog, _ = load_decision_catalogs(
        engine.settings.actions, engine.settings.features, engine.settings.journeys
    )
    ageing = [f.name for f in catalog.features if f.ages_with_time]
    policy_rows = contact_policy_state(engine, now)
    channels = sorted({a.channel for a in engine.actions})
    payload = {
        **engine_payload(engine),
        "policy": _frame_bytes(policy_rows),
        "suppression": sorted(suppression or set()),
        "suppressed_policy": sorted(str(c) for c in _suppressed_everywhere(policy_rows, channels)),
    }
    broadcast = spark.sparkContext.broadcast(payload)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out_dir))
    try:
        segment_column = engine.settings.segment_column
        rows = latest_rows(spark, snapshots, as_of, filters.segments, segment_column)
        decided = rows.mapInPandas(
            decide_partitions(broadcast, now, ageing, filters, schema.names),
            _output_schema(schema),
        ).persist()
        summary.customers_read = rows.count()
        for reason, count in (
            decided.where(f"{_LEFT_OUT_COL} IS NOT NULL")
            .groupBy(_LEFT_OUT_COL)
            .sum(_COUNT_COL)
            .collect()
        ):
            if reason in CHUNK_COUNTS:
                setattr(summary, reason, int(count or 0))
        parts = work / "parts"
        (
            decided.where(f"{_LEFT_OUT_COL} IS NULL")
            .select(*schema.names)
            .repartition(output_files, ENTITY)
            .write.parquet(str(parts))
        )
        decided.unpersist()
        if filters.segments:
            everyone = latest_rows(spark, snapshots, as_of, ())
            summary.other_segment = everyone.count() - summary.customers_read
        n_parts = len(list(parts.glob("part-*.parquet")))
        outputs = _write_sorted(
            parts, n_parts, out_dir, name, filters, summary, schema, split_by, previous,
            engine.actions, list_capacity(engine, capacity),
        )  # fmt: skip
        target = out_dir / f"{name}_parts"
        shutil.rmtree(target, ignore_errors=True)
        for leftover in parts.glob(f"{name}*.csv"):
            leftover.unlink(missing_ok=True)
        (parts / "capacity.parquet").unlink(missing_ok=True)
        (parts / f"{name}.parquet").unlink(missing_ok=True)
        parts.rename(target)
        summary.seconds = round(time.perf_counter() - started, 3)
        summary.outputs = [*(str(p) for p in outputs), str(target)]
        json_path = out_dir / f"{name}.json"
        _atomic_text(json_path, json.dumps(asdict(summary), indent=2, default=str) + "\n")
        summary.outputs.append(str(json_path))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        broadcast.unpersist()
    logger.info(
        "spark list %s: %d listed of %d read in %.1f s",
        name,
        summary.listed,
        summary.customers_read,
        summary.seconds,
    )
    return summary
