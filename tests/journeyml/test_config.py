"""Data tests of the configuration contract: good files load, wrong keys are named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from features.settings import FeatureSettings, load_feature_settings
from journeyml.config import CONFIG_DIR, ConfigError, JourneyMap, load_config, load_journey_map


def write(tmp_path: Path, data: object, name: str = "journeys.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def base() -> dict[str, object]:
    data = yaml.safe_load((CONFIG_DIR / "journeys.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_shipped_configs_load() -> None:
    journey = load_journey_map()
    assert journey.stages[0] == "awareness"
    assert isinstance(load_feature_settings(), FeatureSettings)


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        ({"stages": ["only"]}, "stages", "at least two stages"),
        ({"stages": ["a", "a"]}, "stages", "unique"),
        ({"stages": ["Awareness", "b"]}, "stages", "not a stage name"),
        ({"stage_events": {"nowhere": ["x"]}}, "(top level)", "not in stages: nowhere"),
        ({"conversions": []}, "conversions", "at least one conversion"),
        ({"conversions": ["pur chase"]}, "conversions", "not an event-type pattern"),
        ({"churn": {"inactivity_days": None, "events": []}}, "churn", "churn needs a rule"),
        ({"churn": {"inactivity_days": -5}}, "churn.inactivity_days", "greater than 0"),
        ({"horizons": {"churn_days": 0}}, "horizons.churn_days", "greater than 0"),
        ({"horizon": {"churn_days": 30}}, "horizon", "unknown key"),
        (
            {"treatments": {"patterns": ["action_*"], "colour": "red"}},
            "treatments.colour",
            "unknown key",
        ),
    ],
)
def test_wrong_journey_config_names_the_key(
    tmp_path: Path, change: dict[str, object], key: str, message: str
) -> None:
    data = {**base(), **change}
    with pytest.raises(ConfigError) as info:
        load_journey_map(write(tmp_path, data))
    problems = info.value.problems
    assert any(p.startswith(key) and message in p for p in problems), problems
    assert str(tmp_path / "journeys.yaml") in str(info.value)


def test_missing_required_key(tmp_path: Path) -> None:
    data = base()
    del data["conversions"]
    with pytest.raises(ConfigError, match="conversions: required key is missing"):
        load_journey_map(write(tmp_path, data))


def test_event_type_in_two_stages(tmp_path: Path) -> None:
    data = base()
    data["stage_events"] = {"awareness": ["page_view"], "retention": ["page_view"]}
    with pytest.raises(ConfigError, match="'page_view' is mapped to both"):
        load_journey_map(write(tmp_path, data))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stages: [a, b\n", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_unreadable_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_journey_map(write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_journey_map(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("event_type", "stage"),
    [
        ("page_view", "awareness"),
        ("purchase", "purchase"),
        ("referral", "advocacy"),
        ("email_open", None),  # a response moves nobody
        ("payment_failed", None),  # a regression event moves back, never forward
        ("action_discount_offer", None),  # a marketing action is not customer behaviour
        ("something_new", None),
    ],
)
def test_stage_of(event_type: str, stage: str | None) -> None:
    assert load_journey_map().stage_of(event_type) == stage


def test_patterns_and_precedence() -> None:
    journey = JourneyMap(
        stages=["a", "b", "c"],
        stage_events={"a": ["view_*"], "b": ["view_cart", "cart_*"], "c": ["*_paid"]},
        conversions=["order_*"],
    )
    assert journey.stage_of("view_home") == "a"
    assert journey.stage_of("view_cart") == "b"  # an exact name beats a pattern
    assert journey.stage_of("cart_paid") == "b"  # the earlier stage's pattern wins
    assert journey.is_conversion("order_placed")
    assert not journey.is_activity("action_x")


def test_pure_purchase_log_config() -> None:
    journey = JourneyMap(
        stages=["first_purchase", "repeat"],
        stage_events={"first_purchase": ["purchase"]},
        conversions=["purchase"],
        churn={"inactivity_days": 90, "activity_events": ["purchase"]},
    )
    assert journey.is_activity("purchase")
    assert not journey.is_activity("page_view")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"windows_days": []}, "windows_days: Value error, list at least one window"),
        ({"channels": ["Web"]}, "channels: Value error, 'Web' must be lower case"),
        ({"store": {"registry": {"type": "sql"}}}, "needs a url"),
        ({"store": {"online": {"type": "cassandra"}}}, "store.online.type"),
        ({"snapshot": {}}, "snapshot: unknown key"),
    ],
)
def test_wrong_feature_config(tmp_path: Path, data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data, "features.yaml"), FeatureSettings)
    assert message in str(info.value)


def test_a_list_key_with_nothing_after_it_is_an_empty_list(tmp_path: Path) -> None:
    data = base()
    data["responses"] = None  # `responses:` with nothing after it
    data["churn"] = {"inactivity_days": 30, "events": None}
    journey = load_config(write(tmp_path, data), JourneyMap)
    assert journey.responses == [] and journey.churn.events == []
    data["churn"] = {"inactivity_days": None, "events": ["cancel"]}  # optional: null stays null
    assert load_config(write(tmp_path, data), JourneyMap).churn.inactivity_days is None


# -- the shipped defaults are for any log; the simulator's set is configs/simulator --------------


def test_the_shipped_map_and_features_name_nothing_only_the_simulator_has() -> None:
    from journeyml.config import SIMULATOR_CONFIG_DIR

    shipped = load_feature_settings(str(CONFIG_DIR / "features.yaml"))
    simulator = load_feature_settings(str(SIMULATOR_CONFIG_DIR / "features.yaml"))
    # the simulator's customers table has segment, plan and region; an unknown log has none
    assert not {"segment", "plan", "region"} & set(shipped.profile_attributes)
    assert {"segment", "plan", "region"} <= set(simulator.profile_attributes)
    # the consent column of the shipped actions catalog is the one customer column read
    assert shipped.profile_attributes == ["marketing_opt_out"]
    assert load_journey_map(SIMULATOR_CONFIG_DIR / "journeys.yaml").stage_of("login") == (
        "consideration"
    )


@pytest.mark.parametrize(
    ("event_type", "stage", "back_to"),
    [
        # the foreign clickstream's own names (tests/foreign_logs/clickstream.py)
        ("home", "awareness", None),
        ("search", "consideration", None),
        ("add_item", "consideration", None),
        ("shipping", "purchase", None),
        ("order_placed", "purchase", None),
        ("support_ticket", "retention", None),
        ("logout", None, None),
        # the subscription log's (tests/foreign_logs/subscription.py)
        ("account_opened", "consideration", None),
        ("sign_in", "consideration", None),
        ("invoice_paid", "purchase", None),
        ("plan_upgrade", "purchase", None),
        ("usage", "retention", None),
        ("charge_failed", None, "consideration"),
        ("cancel", None, "awareness"),
        # common web-shop names
        ("page_view", "awareness", None),
        ("checkout_start", "purchase", None),
        ("subscription_cancelled", None, "awareness"),
        ("review_posted", "advocacy", None),
    ],
)
def test_the_shipped_map_places_common_vocabularies(
    event_type: str, stage: str | None, back_to: str | None
) -> None:
    journey = load_journey_map(CONFIG_DIR / "journeys.yaml")
    assert journey.stage_of(event_type) == stage
    assert journey.regression_to(event_type) == back_to


def test_the_shipped_actions_load_against_the_shipped_map_and_features() -> None:
    from features.catalog import build_catalog
    from serving.actions import load_actions

    catalog = build_catalog(
        load_journey_map(CONFIG_DIR / "journeys.yaml"),
        load_feature_settings(str(CONFIG_DIR / "features.yaml")),
    )
    actions = load_actions(
        CONFIG_DIR / "actions.yaml", known_names={f.name: f.dtype for f in catalog.features}
    )
    assert actions.ids
