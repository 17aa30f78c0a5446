"""The model set says what decisions do without an optional model (the fallback policy)."""

from __future__ import annotations

from serving.config import load_serving_settings
from serving.models import ModelSet


def test_missing_optional_models_are_named_with_their_fallback() -> None:
    models = ModelSet(load_serving_settings())
    try:
        fallbacks = models.fallbacks()  # nothing loaded: every optional role falls back
        assert set(fallbacks) == {"next_step", "uplift"}
        assert "uplift@champion" in fallbacks["uplift"]
        assert "ranked by propensity and risk" in fallbacks["uplift"]
    finally:
        models.stop()
