"""The Spark engine computes the same snapshots as DuckDB: every feature of every row, on a
simulated world and on a foreign clickstream (its own column names, vocabulary and journey
map), both built through ``journeyml features build`` with ``--engine duckdb`` and ``spark``.

Counts, codes and text must be equal; floats equal within 1e-9 relative to the column's
magnitude: a window sum is the difference of two running sums whose cells each engine adds in
its own order, so a sum that comes to zero may read -5.7e-14 in one and 0.0 in the other
(its error is relative to the running sums, not to the difference). One Spark session
(``local[2]``) serves the whole test run (``tests/conftest.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from features.settings import load_feature_settings
from journeyml.cli import app
from journeyml.config import JourneyMap
from tests.features.test_stages import CLICKSTREAM_MAP
from tests.foreign_logs import generate_clickstream
from tests.spark_session import TEST_SPARK

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

KEY = ["customer_id", "event_timestamp"]


def run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def spark_config(root: Path) -> Path:
    """The shipped feature settings with a spark section that writes beside the workspace."""
    settings = load_feature_settings().model_dump(mode="json")
    settings["spark"] = {
        **TEST_SPARK.model_dump(mode="json"),
        "output": str(root / "spark_features"),
    }
    path = root / "features.yaml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def read_snapshots(path: Path) -> pd.DataFrame:
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        frame = con.execute(
            "SELECT * FROM read_parquet($p, hive_partitioning = false)",
            {"p": str(path / "**" / "*.parquet")},
        ).df()
    finally:
        con.close()
    return frame.sort_values(KEY, kind="stable").reset_index(drop=True)


def assert_same_snapshots(duck: pd.DataFrame, spark: pd.DataFrame) -> None:
    assert list(spark.columns) == list(duck.columns)
    assert len(spark) == len(duck)
    assert spark[KEY].equals(duck[KEY])
    for col in duck.columns:
        a, b = duck[col], spark[col]
        assert a.dtype == b.dtype, f"{col}: {a.dtype} (duckdb) vs {b.dtype} (spark)"
        if pd.api.types.is_float_dtype(a):
            scale = float(np.nanmax(np.abs(a.to_numpy()), initial=0.0))
            same = np.isclose(b, a, rtol=1e-9, atol=1e-9 * scale, equal_nan=True)
        else:
            same = ((a == b) | (a.isna() & b.isna())).to_numpy()
        if not same.all():
            i = int(np.argmin(same))
            raise AssertionError(
                f"{col}: {int((~same).sum())} rows differ, e.g. {duck.loc[i, KEY].tolist()}: "
                f"duckdb {a.iloc[i]!r}, spark {b.iloc[i]!r}"
            )


def build_both(root: Path, journeys: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    data = ["--data-dir", str(root)]
    maps = ["--journeys", str(journeys)] if journeys else []
    run("features", "build", *data, *maps)
    out = run(
        "features", "build", *data, *maps, "--engine", "spark", "--config", str(spark_config(root))
    )
    assert "spark" in out
    return read_snapshots(root / "features" / "journey_features"), read_snapshots(
        root / "spark_features"
    )


@pytest.mark.slow
def test_spark_equals_duckdb_on_a_simulated_world(spark: SparkSession, tmp_path: Path) -> None:
    sim = tmp_path / "sim"
    run(
        "simulate", "--customers", "150", "--days", "120", "--seed", "5",
        "--out", str(sim), "--truth-cutoffs", "0",
    )  # fmt: skip
    run(
        "events", "ingest", str(sim / "events"), "--customers", str(sim / "customers.parquet"),
        "--out", str(tmp_path / "lake"), "--mode", "replace",
    )  # fmt: skip
    duck, spark_rows = build_both(tmp_path)
    assert len(duck) > 1000 and duck["customer_id"].nunique() > 100
    assert_same_snapshots(duck, spark_rows)


@pytest.mark.slow
def test_spark_equals_duckdb_on_a_foreign_clickstream(spark: SparkSession, tmp_path: Path) -> None:
    log = generate_clickstream(tmp_path / "log", n_users=150, seed=4, days=70, incidents=())
    maps = [a for src, dst in log.column_map.items() for a in ("--map", f"{src}={dst}")]
    run("events", "ingest", str(log.events_csv), *maps, "--out", str(tmp_path / "lake"))
    journeys = tmp_path / "journeys.yaml"
    journeys.write_text(yaml.safe_dump(CLICKSTREAM_MAP.model_dump(mode="json")), "utf-8")
    assert JourneyMap.model_validate(yaml.safe_load(journeys.read_text("utf-8")))
    duck, spark_rows = build_both(tmp_path, journeys)
    assert len(duck) > 300
    # the clickstream's own stages are reached, so the stage machine ran on Spark too
    assert duck["furthest_stage"].nunique() > 1
    assert_same_snapshots(duck, spark_rows)


def test_a_spark_build_on_an_empty_lake_is_a_clear_error(
    spark: SparkSession, tmp_path: Path
) -> None:
    (tmp_path / "lake" / "events").mkdir(parents=True)
    result = CliRunner().invoke(
        app,
        ["features", "build", "--data-dir", str(tmp_path), "--engine", "spark",
         "--config", str(spark_config(tmp_path))],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "no ingested events" in result.output


def test_an_unknown_engine_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["features", "build", "--data-dir", str(tmp_path), "--engine", "pandas"]
    )
    assert result.exit_code == 2
    assert "--engine must be duckdb or spark" in result.output
