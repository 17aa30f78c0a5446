"""Builds the Feast objects once for the repository files beside this one.

Feast imports every module of this folder on ``feast plan/apply``. The snapshot path comes from
``JOURNEYML_FEATURES_PATH`` (default ``data/features/journey_features`` in the project).
"""

from __future__ import annotations

import os
from functools import cache

from features.catalog import build_catalog
from features.definitions import FeastObjects, feast_objects
from features.settings import load_feature_settings
from journeyml.config import REPO_ROOT, load_journey_map

DEFAULT_SOURCE = str(REPO_ROOT / "data" / "features" / "journey_features")


@cache
def objects() -> FeastObjects:
    catalog = build_catalog(load_journey_map(), load_feature_settings())
    return feast_objects(catalog, os.environ.get("JOURNEYML_FEATURES_PATH", DEFAULT_SOURCE))
