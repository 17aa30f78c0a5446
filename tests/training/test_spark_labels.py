"""The Spark engine labels a lake as DuckDB does: ``journeyml training-set --engine spark``
writes the rows, labels and features of ``--engine duckdb``, on a simulated world and on a
foreign purchase log (date-only timestamps: many events share an instant, so "the first event
of a window" leans on the (time, event id) order, which both engines must break alike).

Both engines read the same feature snapshots (DuckDB's; the features' own parity is
``tests/features/test_spark_parity.py``), so the labels are what is compared, exactly. One
Spark session (``local[2]``) serves the whole test run (``tests/conftest.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from features.settings import load_feature_settings
from journeyml.cli import app
from tests.foreign_logs import generate_purchase_log
from tests.spark_session import TEST_SPARK
from training.labels import LABEL_COLUMNS
from training.training_set import KEY_COLUMNS, SET_COLUMNS

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def with_spark(features_yaml: Path | None, out: Path) -> Path:
    """The feature settings (of ``features_yaml``, else the config folder's) with the tests'
    Spark section; the snapshots stay the workspace's."""
    settings = load_feature_settings(str(features_yaml) if features_yaml else None)
    dumped = settings.model_dump(mode="json")
    dumped["spark"] = TEST_SPARK.model_dump(mode="json")
    out.write_text(yaml.safe_dump(dumped), encoding="utf-8")
    return out


def read_set(path: Path) -> pd.DataFrame:
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        frame = con.execute(
            "SELECT * FROM read_parquet($p)", {"p": str(path / "**" / "*.parquet")}
        ).df()
    finally:
        con.close()
    return frame.sort_values(list(KEY_COLUMNS), kind="stable").reset_index(drop=True)


def assert_same_sets(duck: pd.DataFrame, spark: pd.DataFrame) -> None:
    assert list(duck.columns[: len(SET_COLUMNS)]) == list(SET_COLUMNS)
    assert list(spark.columns) == list(duck.columns)
    assert len(spark) == len(duck)
    for col in duck.columns:
        a, b = duck[col], spark[col]
        assert a.dtype == b.dtype, f"{col}: {a.dtype} (duckdb) vs {b.dtype} (spark)"
        same = ((a == b) | (a.isna() & b.isna())).to_numpy()
        if not same.all():
            i = int(same.argmin())
            raise AssertionError(
                f"{col}: {int((~same).sum())} rows differ, e.g. "
                f"{duck.loc[i, list(KEY_COLUMNS)].tolist()}: duckdb {a.iloc[i]!r}, "
                f"spark {b.iloc[i]!r}"
            )


def build_both(
    root: Path, config_dir: list[str], features_yaml: Path | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    data = ["--data-dir", str(root)]
    run(*config_dir, "features", "build", *data)
    run(*config_dir, "training-set", *data, "--out", str(root / "set_duckdb"))
    spark_yaml = with_spark(features_yaml, root / "spark.yaml")
    out = run(
        *config_dir, "training-set", *data, "--engine", "spark",
        "--features-config", str(spark_yaml), "--out", str(root / "set_spark"),
    )  # fmt: skip
    assert "spark" in out
    return read_set(root / "set_duckdb"), read_set(root / "set_spark")


def assert_labels_vary(frame: pd.DataFrame) -> None:
    """The compared labels are not all alike (the comparison could not miss a difference)."""
    active = frame[frame["active"]]
    assert 0 < frame["active"].mean() < 1
    assert active["churn"].nunique() == 2 and frame["conversion"].nunique() == 2
    assert frame["next_event_type"].nunique() > 1
    for col in LABEL_COLUMNS:
        assert frame[col].notna().any()


@pytest.mark.slow
def test_spark_labels_equal_duckdbs_on_a_simulated_world(
    spark: SparkSession, tmp_path: Path
) -> None:
    sim = tmp_path / "sim"
    run(
        "simulate", "--customers", "150", "--days", "120", "--seed", "5",
        "--out", str(sim), "--truth-cutoffs", "0",
    )  # fmt: skip
    run(
        "events", "ingest", str(sim / "events"), "--customers", str(sim / "customers.parquet"),
        "--out", str(tmp_path / "lake"), "--mode", "replace",
    )  # fmt: skip
    duck, spark_rows = build_both(tmp_path, [], None)
    assert len(duck) > 1000
    assert_labels_vary(duck)
    assert duck["next_stage"].nunique() > 2 and duck["next_event_type"].nunique() > 2
    assert_same_sets(duck, spark_rows)


@pytest.mark.slow
def test_spark_labels_equal_duckdbs_on_a_foreign_purchase_log(
    spark: SparkSession, tmp_path: Path
) -> None:
    log = generate_purchase_log(tmp_path / "log", n_customers=150, seed=2, days=240)
    cfg = tmp_path / "cfg"
    run("init", str(log.events_csv), *log.map_args(), "--out", str(cfg))
    config_dir = ["--config-dir", str(cfg)]
    run(*config_dir, "events", "ingest", str(log.events_csv), "--out", str(tmp_path / "lake"))
    duck, spark_rows = build_both(tmp_path, config_dir, cfg / "features.yaml")
    assert len(duck) > 300
    assert_labels_vary(duck)
    assert_same_sets(duck, spark_rows)


def test_a_spark_training_set_without_snapshots_is_a_clear_error(
    spark: SparkSession, tmp_path: Path
) -> None:
    (tmp_path / "lake" / "events").mkdir(parents=True)
    spark_yaml = with_spark(None, tmp_path / "spark.yaml")
    result = CliRunner().invoke(
        app,
        ["training-set", "--data-dir", str(tmp_path), "--engine", "spark",
         "--features-config", str(spark_yaml)],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "no feature snapshots" in result.output
