"""Fixtures shared by every test package.

Most tests run on the simulator's event log, so, as ``make demo`` does, the suite reads its
configuration from ``configs/simulator`` (``$JOURNEYML_CONFIG_DIR``, what ``--config-dir``
sets) unless the environment names another folder. Tests of foreign logs pass the folder
``journeyml init`` wrote with ``--config-dir``; tests of the shipped defaults read
``configs/`` by path or clear the variable.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from journeyml.config import CONFIG_DIR_ENV, SIMULATOR_CONFIG_DIR

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault(CONFIG_DIR_ENV, str(SIMULATOR_CONFIG_DIR))


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """One Spark session for the whole run (starting one costs seconds)."""
    from tests.spark_session import start_test_session

    session = start_test_session()
    yield session
    session.stop()
