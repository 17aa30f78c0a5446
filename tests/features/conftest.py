"""Fixtures shared by the feature tests."""

from __future__ import annotations

import pytest

from features.catalog import FeatureCatalog, build_catalog
from features.settings import FeatureSettings
from journeyml.config import SIMULATOR_CONFIG_DIR, JourneyMap, load_journey_map


@pytest.fixture(scope="session")
def journey_map() -> JourneyMap:
    return load_journey_map(SIMULATOR_CONFIG_DIR / "journeys.yaml")


@pytest.fixture(scope="session")
def catalog(journey_map: JourneyMap) -> FeatureCatalog:
    return build_catalog(journey_map, FeatureSettings())
