"""``configs/events.yaml`` and the ``--map`` syntax."""

from __future__ import annotations

import pytest

from journeyml.config import ConfigError
from journeyml.events.config import (
    DEFAULT_EVENTS_CONFIG,
    EventsConfig,
    load_events_config,
    parse_column_map,
)


def test_the_shipped_config_is_valid() -> None:
    config = load_events_config(DEFAULT_EVENTS_CONFIG)
    assert config.column_map == {} and config.max_examples == 5


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ([], {}),
        (["user_id=customer_id"], {"user_id": "customer_id"}),
        ([" ts = timestamp "], {"ts": "timestamp"}),
        (["tier=plan"], {"tier": "plan"}),  # not a contract column: renames a property
        (["a=b", "a=b"], {"a": "b"}),
    ],
)
def test_parse_column_map(items: list[str], expected: dict[str, str]) -> None:
    assert parse_column_map(items) == expected


@pytest.mark.parametrize("items", [["user_id"], ["=x"], ["x="], ["a=b", "a=c"]])
def test_parse_column_map_rejects(items: list[str]) -> None:
    with pytest.raises(ValueError, match="--map"):
        parse_column_map(items)


def test_cli_maps_extend_and_override_the_config() -> None:
    config = EventsConfig(column_map={"user": "customer_id", "ts": "timestamp"})
    merged = config.with_column_maps({"ts": "time_sent", "event": "event_type"})
    assert merged.column_map == {
        "user": "customer_id",
        "ts": "time_sent",
        "event": "event_type",
    }


@pytest.mark.parametrize(
    "data",
    [
        {"column_map": {"a": "customer_id", "b": "customer_id"}},
        {"column_map": {"a": "properties"}},
        {"column_map": {"a": ""}},
        {"memory_limit": "lots"},
        {"max_examples": 0},
        {"future_tolerance_minutes": -1},
        {"unknown": 1},
    ],
)
def test_invalid_settings(data: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        EventsConfig.model_validate(data)


def test_merged_maps_are_validated() -> None:
    with pytest.raises(ConfigError, match="both mapped"):
        EventsConfig(column_map={"a": "customer_id"}).with_column_maps({"b": "customer_id"})
