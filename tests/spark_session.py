"""The one Spark session of a test run (``local[2]``, two shuffle partitions, no UI).

Tests that need Spark take the ``spark`` fixture (``tests/conftest.py``). When no Java runtime
can be found the tests say what is missing and skip, except in CI (``CI`` set), where they fail:
``make test`` installs Java first (``make java``).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from features.settings import SparkSettings
from features.spark import JavaMissingError, java_runtime, spark_session

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

TEST_SPARK = SparkSettings(
    master="local[2]",
    app_name="journeyml-tests",
    conf={
        "spark.sql.shuffle.partitions": "2",
        "spark.default.parallelism": "2",
        "spark.ui.enabled": "false",
        "spark.driver.memory": "1g",
    },
    output_files=2,
)


def require_java() -> None:
    """Skips (fails in CI) with what is missing when Spark cannot start for want of Java."""
    try:
        java_runtime()
    except JavaMissingError as exc:
        message = f"Spark tests need Java: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def start_test_session() -> SparkSession:
    require_java()
    spark = spark_session(TEST_SPARK)
    spark.sparkContext.setLogLevel("ERROR")
    return spark
