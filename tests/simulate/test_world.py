"""The world configuration: the shipped file, defaults and validation errors that name the key."""

from __future__ import annotations

from typing import Any

import pytest

from journeyml.config import CONFIG_DIR, ConfigError, validate_config
from journeyml.simulate.world import ActionEffect, World, load_world


def test_shipped_config_is_the_standard_world() -> None:
    shipped, default = load_world(CONFIG_DIR / "simulator.yaml"), World()
    # compare effective effects: an explicit 0 for a persona must override "default"
    for a, b in zip(shipped.actions, default.actions, strict=True):
        for persona in default.personas:
            assert a.effect_for(persona.name) == b.effect_for(persona.name), (a.id, persona.name)
    assert shipped == default


def test_a_persona_entry_overrides_only_what_it_sets() -> None:
    onboarding = World().actions[World().action_index("onboarding_help")]
    assert onboarding.effect_for("new_explorer").convert == pytest.approx(0.9)
    assert onboarding.effect_for("loyal_regular") == ActionEffect(satisfaction=-0.05)
    assert onboarding.effect_for("bargain_hunter") == onboarding.effects["default"]


def problems(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(data, World, "world.yaml")
    return str(info.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"policy_flor": 0.1}, "policy_flor: unknown key"),
        ({"policy": {"min_propensity": 0.2}}, "min_propensity is too large"),
        ({"policy": {"scores": {"none": {"tenure": 1.0}}}}, "unknown features ['tenure']"),
        ({"policy": {"scores": {"coupon": {"intercept": 1.0}}}}, "unknown options ['coupon']"),
        (
            {"personas": [{"name": "solo", "share": 1, "sesions_per_day": 0.1}]},
            "personas.0.sesions_per_day: unknown key",
        ),
        (
            {"personas": [{"name": "solo", "share": 1, "app_share": 0.7, "store_share": 0.5}]},
            "app_share + store_share",
        ),
        (
            {"actions": [{"id": "call", "channel": "phone", "cost": 1, "effects": {"ghost": {}}}]},
            "effects for unknown personas ['ghost']",
        ),
        ({"actions": [{"id": "fax", "channel": "fax", "cost": 1}]}, "actions.0.channel"),
        ({"season": {"hour_weights": [1.0] * 24}}, "hour 0 must be 0"),
        ({"stages": {"awareness": World().stages["awareness"]}}, "give exactly the stages"),
    ],
)
def test_bad_world_configs_name_the_key(data: dict[str, Any], message: str) -> None:
    assert message in problems(data)
