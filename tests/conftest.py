"""Fixtures shared by every test package."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """One Spark session for the whole run (starting one costs seconds)."""
    from tests.spark_session import start_test_session

    session = start_test_session()
    yield session
    session.stop()
