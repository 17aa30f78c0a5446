"""The actions catalog: the shipped default loads on any log's journey map; the simulator's
catalog (configs/simulator/actions.yaml) loads against the real feature catalog and matches the
simulator's actions, its rules say what the business means; and every configuration mistake
fails the load with the file, the key path, the action and the closest known names."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from features.catalog import FeatureCatalog, build_catalog
from features.settings import load_feature_settings
from journeyml.config import (
    CONFIG_DIR,
    CONFIG_DIR_ENV,
    SIMULATOR_CONFIG_DIR,
    ConfigError,
    JourneyMap,
    load_journey_map,
)
from journeyml.simulate.world import load_world
from serving.actions import (
    CONTEXT_NAMES,
    NO_ACTION,
    SCORE_NAMES,
    STAGES,
    ActionsCatalog,
    load_actions,
    validate_actions,
)
from serving.consent import consent_of_customer
from serving.rules import Rule

SHIPPED = CONFIG_DIR / "actions.yaml"  # the default for any log
SIMULATED = SIMULATOR_CONFIG_DIR / "actions.yaml"  # the simulator's actions


@pytest.fixture(scope="module")
def features() -> FeatureCatalog:
    return build_catalog(
        load_journey_map(SIMULATOR_CONFIG_DIR / "journeys.yaml"),
        load_feature_settings(str(SIMULATOR_CONFIG_DIR / "features.yaml")),
    )


@pytest.fixture(scope="module")
def shipped(features: FeatureCatalog) -> ActionsCatalog:
    """The simulator's catalog (the tests of what its rules mean use its vocabulary)."""
    return load_actions(SIMULATED, known_names={f.name: f.dtype for f in features.features})


def shipped_data() -> dict[str, Any]:
    data = yaml.safe_load(SIMULATED.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


# -- the shipped catalog ----------------------------------------------------------------------


def test_the_shipped_catalog_loads_against_the_real_feature_catalog(
    shipped: ActionsCatalog, features: FeatureCatalog
) -> None:
    assert shipped.version and shipped.default_action == NO_ACTION
    assert len(shipped.ids) == len(set(shipped.ids)) >= 5
    # as the runtime loads it (feature names only) and with the project's defaults
    names = {f.name for f in features.features}
    assert load_actions(SIMULATED, known_names=names).ids == shipped.ids
    used = {n for a in shipped.actions for _, r in shipped.rule_stages(a) for n in r.names}
    assert used <= names | set(SCORE_NAMES) | set(CONTEXT_NAMES)
    assert used & names and "churn_risk" in used


def test_catalog_ids_and_channels_are_the_simulators_actions(shipped: ActionsCatalog) -> None:
    world = load_world(CONFIG_DIR / "simulator.yaml")
    sim = {a.id: a for a in world.actions}
    assert set(shipped.ids) == set(sim)  # the uplift model is trained per simulator action
    for action in shipped.actions:
        assert action.channel == sim[action.id].channel
        assert action.cost == sim[action.id].cost
        # the simulator never sends marketing to opted-out customers; the catalog's consent
        # rule (serving.consent) holds back the same actions
        assert action.marketing == sim[action.id].marketing, action.id
    assert shipped.consent.column == "marketing_opt_out"


def test_catalog_api(shipped: ActionsCatalog) -> None:
    assert shipped.action("retention_call").channel == "phone"
    with pytest.raises(KeyError, match=r"no action 'nope'.*discount_offer"):
        shipped.action("nope")
    assert set(shipped.channels) == {"email", "app", "phone"}
    assert set(shipped.channels) <= set(shipped.contact_policy.channels)
    for action in shipped.actions:
        stages = shipped.rule_stages(action)
        order = [STAGES.index(s) for s, _ in stages]
        assert order == sorted(order)
        assert [r.text for _, r in stages] == [t.strip() for s in STAGES for t in action.rules(s)]
        assert shipped.rule_stages(action.id) == stages
    caps = {c.channel for c in shipped.contact_policy.caps}
    assert "any" in caps and "email" in caps


def test_a_catalog_built_directly_compiles_its_rules_on_use() -> None:
    catalog = ActionsCatalog.model_validate(shipped_data())
    stages = catalog.rule_stages("retention_call")
    assert stages and all(isinstance(r, Rule) for _, r in stages)


# -- what the shipped rules mean -------------------------------------------------------------


def _eligible(catalog: ActionsCatalog, action_id: str, env: dict[str, Any]) -> bool:
    """Consent (for marketing actions) and every rule, as the engine checks them."""
    if catalog.action(action_id).marketing and not consent_of_customer(env, catalog.consent)[1]:
        return False
    return all(r.evaluate(env) for _, r in catalog.rule_stages(action_id))


def _env(features: FeatureCatalog, **values: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        f.name: ("none" if f.dtype == "string" else 0) for f in features.features
    }
    env.update(dict.fromkeys([*SCORE_NAMES, *CONTEXT_NAMES]))
    env.update(values)
    return env


_customer = st.fixed_dictionaries(
    {
        "marketing_opt_out": st.sampled_from(["true", "false", "unknown", None]),
        "plan": st.sampled_from(["basic", "premium", "unknown"]),
        "churn_risk": st.one_of(st.none(), st.floats(0, 1)),
        "conversion_propensity": st.one_of(st.none(), st.floats(0, 1)),
        "conversions_total": st.integers(0, 5),
        "complaints_90d": st.integers(0, 3),
        "complaints_30d": st.integers(0, 3),
        "days_since_last_event": st.floats(0, 200),
        "days_since_last_conversion": st.floats(0, 200),
        "tenure_days": st.floats(0, 700),
        "last_nps": st.sampled_from([-1.0, 0.0, 5.0, 6.0, 7.0, 10.0]),
        "n_cancel_subscription_90d": st.integers(0, 1),
    }
)


@settings(max_examples=200, deadline=None)
@given(customer=_customer)
def test_only_customers_who_accept_marketing_get_marketing_emails(
    shipped: ActionsCatalog, features: FeatureCatalog, customer: dict[str, Any]
) -> None:
    env = _env(features, **customer)
    for action in shipped.actions:
        ok = _eligible(shipped, action.id, env)
        if action.channel == "email" and customer["marketing_opt_out"] != "false":
            assert not ok, action.id  # opted out, unknown or missing: never
        if customer["n_cancel_subscription_90d"]:
            assert not ok, action.id
        if action.id == "retention_call" and ok:
            assert customer["churn_risk"] is not None and customer["churn_risk"] >= 0.3
        if action.id == "upsell_offer" and ok:
            assert customer["complaints_90d"] == 0 and customer["conversions_total"] >= 2


def test_removed_actions_are_explained_stage_by_stage(
    shipped: ActionsCatalog, features: FeatureCatalog
) -> None:
    env = _env(features, marketing_opt_out="false", churn_risk=0.1, plan="premium")
    stage, rule = next(
        (s, r) for s, r in shipped.rule_stages("retention_call") if not r.evaluate(env)
    )
    assert stage == "applicability"
    assert rule.explain(env) == "churn_risk 0.1 < 0.3"
    env = _env(features, marketing_opt_out="true")
    assert not _eligible(shipped, "content_email", env)
    assert consent_of_customer(env, shipped.consent) == ("refused", False)


def test_the_shipped_rules_agree_on_a_frame(
    shipped: ActionsCatalog, features: FeatureCatalog
) -> None:
    rows = [
        _env(
            features,
            marketing_opt_out="false",
            churn_risk=0.7,
            plan="premium",
            conversions_total=3,
            days_since_last_event=20.0,
            tenure_days=10.0,
        ),
        _env(
            features,
            marketing_opt_out="true",
            churn_risk=None,
            conversions_total=0,
            days_since_last_conversion=90.0,
        ),
        _env(
            features,
            marketing_opt_out="false",
            churn_risk=0.2,
            conversion_propensity=0.1,
            conversions_total=0,
            days_since_last_conversion=45.0,
            complaints_90d=1,
        ),
    ]
    frame = pd.DataFrame(rows)
    for action in shipped.actions:
        for _, rule in shipped.rule_stages(action):
            assert rule.evaluate_frame(frame).tolist() == [rule.evaluate(r) for r in rows]


# -- configuration errors name the file and the key path ---------------------------------------


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "actions.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value


@pytest.mark.parametrize(
    ("change", "value", "fragments"),
    [
        (
            "actions.1.id",
            "discount_offer",
            ["actions[1].id: duplicate action id 'discount_offer'", "also actions[0]"],
        ),
        ("actions.0.id", "none", ["actions[0].id: 'none' is reserved"]),
        ("actions.0.id", "Retention-Call", ["actions[0].id: String should match pattern"]),
        (
            "actions.0.channel",
            "emial",
            ["actions[0].channel: unknown channel 'emial'", "did you mean 'email'?"],
        ),
        (
            "actions.2.suitability",
            ["a[0] > 1"],
            [
                "actions[2].suitability[0]: action 'retention_call', rule 'a[0] > 1': column 1: "
                "subscript `a[0]`"
            ],
        ),
        (
            "actions.2.applicability",
            ["churn_risk >= 0.3", "open('f')"],
            ["actions[2].applicability[1]:", "call to `open`"],
        ),
        (
            "actions.1.eligibility",
            ["churn_rsk >= 0.5"],
            ["actions[1].eligibility[0]:", "churn_rsk (did you mean churn_risk?)"],
        ),
        (
            "actions.1.eligibility",
            ["days_since_last_complain > 3"],
            ["did you mean days_since_last_complaint"],
        ),
        (
            "actions.3.suitability",
            ["stage > 2"],
            ["actions[3].suitability[0]:", "compares text (stage) with a number (2)"],
        ),
        ("actions.3.suitability", ["not marketing_opt_out"], ["is text, not a condition"]),
        ("actions.0.cost", -1.0, ["actions[0].cost: Input should be greater than or equal to 0"]),
        ("actions.0.value", ".nan", ["actions[0].value:"]),
        ("actions.0.lever", 0, ["actions[0].lever: Input should be greater than 0"]),
        ("actions.0.objective", "delight", ["actions[0].objective: Input should be"]),
        ("actions.0.colour", "blue", ["actions[0].colour: unknown key"]),
        (
            "actions.0.context_weights",
            {"weather": {"rain": 1.1}},
            ["actions[0].context_weights.weather"],
        ),
        (
            "actions.0.context_weights",
            {"channel": {"web": -1}},
            ["actions[0].context_weights.channel.web: Input should be greater than or equal to 0"],
        ),
        (
            "actions.0.eligibility",
            "x > 1",
            ["actions[0].eligibility: Input should be a valid list"],
        ),
        (
            "actions.1.eligibility",
            ["n_cancel_subscripton_90d == 0"],
            [
                "actions[1].eligibility[0]: action 'onboarding_help', "
                "rule 'n_cancel_subscripton_90d == 0'",
                "did you mean n_cancel_subscription_90d",
            ],
        ),
        (
            "default_action",
            "retension_call",
            ["default_action: unknown action 'retension_call'", "did you mean 'retention_call'?"],
        ),
        ("version", 1.5, ["version: Input should be a valid string"]),
        ("contact_policy.caps.0.channel", "fax", ["contact_policy.caps[0].channel: unknown"]),
        ("contact_policy.caps.1.max", -1, ["contact_policy.caps[1].max:"]),
        ("contact_policy.channels", [], ["contact_policy.channels:"]),
        ("contact_policy.cooldown_hours", -2, ["contact_policy.cooldown_hours:"]),
        ("contact_policy.suppress_dayz", 3, ["contact_policy.suppress_dayz: unknown key"]),
        ("actions", [], ["actions: List should have at least 1 item"]),
    ],
)
def test_config_errors_name_the_file_and_the_key_path(
    tmp_path: Path, change: str, value: Any, fragments: list[str]
) -> None:
    data = shipped_data()
    _set(data, change, float("nan") if value == ".nan" else value)
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_actions(path)
    message = str(info.value)
    assert str(path) in message and info.value.source == str(path)
    for fragment in fragments:
        assert fragment in message, message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    data = shipped_data()
    data["actions"][0]["channel"] = "fax"
    data["actions"][1]["suitability"] = ["lambda: 1"]
    data["actions"][2]["eligibility"] = ["stagee == 'retention'"]
    data["default_action"] = "nothing"
    with pytest.raises(ConfigError) as info:
        load_actions(_write(tmp_path, data))
    paths = [p.split(":")[0] for p in info.value.problems]
    assert paths == [
        "actions[0].channel",
        "actions[1].suitability[0]",
        "actions[2].eligibility[0]",
        "default_action",
    ]


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\(file\): not found"):
        load_actions(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("actions: [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_actions(bad)
    with pytest.raises(ConfigError, match=r"\(top level\): expected a mapping"):
        validate_actions(["a"], "inline")


def test_known_names_and_channels_come_from_the_caller() -> None:
    data = shipped_data()
    data["actions"][0]["eligibility"] = ["loyalty_tier == 'gold' and context.channel == 'web'"]
    with pytest.raises(ConfigError, match="loyalty_tier"):
        validate_actions(data, "inline")
    names = {
        f: "float64"
        for f in [
            "conversions_total",
            "days_since_last_conversion",
            "n_offer_redeemed_30d",
            "n_cancel_subscription_90d",
            "tenure_days",
            "complaints_90d",
            "complaints_30d",
            "last_nps",
            "days_since_last_event",
        ]
    }
    names.update(loyalty_tier="string", plan="string", marketing_opt_out="string")
    catalog = validate_actions(data, "inline", known_names=names)
    assert catalog.rule_stages("discount_offer")[0][1].names == ("loyalty_tier", "context.channel")
    with pytest.raises(ConfigError, match="compares text"):
        data["actions"][0]["eligibility"] = ["loyalty_tier > 3"]
        validate_actions(data, "inline", known_names=names)
    data = shipped_data()
    data["actions"][0]["channel"] = "web"
    with pytest.raises(ConfigError, match="unknown channel 'web'"):
        validate_actions(data, "inline")
    assert validate_actions(data, "inline", channels=["web"]).action("discount_offer").channel == (
        "web"
    )


def test_loading_does_not_change_the_data() -> None:
    data = shipped_data()
    before = copy.deepcopy(data)
    validate_actions(data, "inline")
    assert data == before


# -- the shipped default works on any log --------------------------------------------------------

FOREIGN_MAPS = {
    "date-only purchases": {
        "stages": ["first_order", "repeat"],
        "stage_events": {"first_order": ["order"]},
        "conversions": ["order"],
        "churn": {"inactivity_days": 365},
    },
    "clickstream": {
        "stages": ["browse", "basket", "bought"],
        "stage_events": {"browse": ["pv_*"], "basket": ["basket_add"], "bought": ["paid"]},
        "conversions": ["paid"],
        "treatments": {"patterns": ["promo_*"]},
    },
    "subscription": {
        "stages": ["trial", "subscriber"],
        "stage_events": {"trial": ["trial_start"], "subscriber": ["renewal", "plan_change"]},
        "conversions": ["renewal"],
        "churn": {"inactivity_days": None, "events": ["cancelled"]},
        "experience": {"support": ["ticket"], "complaints": ["ticket_angry"]},
    },
}


def _known(journey: JourneyMap) -> dict[str, str]:
    catalog = build_catalog(
        journey, load_feature_settings(str(SIMULATOR_CONFIG_DIR / "features.yaml"))
    )
    return {f.name: f.dtype for f in catalog.features}


@pytest.mark.parametrize("log", sorted(FOREIGN_MAPS))
def test_the_default_catalog_loads_on_a_log_the_simulator_did_not_make(
    log: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CONFIG_DIR_ENV, raising=False)  # the suite reads configs/simulator
    journey = JourneyMap.model_validate(FOREIGN_MAPS[log])
    catalog = load_actions(SHIPPED, known_names=_known(journey))
    assert catalog.ids and "churn_risk" in {
        n for a in catalog.actions for _, r in catalog.rule_stages(a) for n in r.names
    }
    assert load_actions().ids == catalog.ids  # what every command loads without a config dir


def test_a_rule_naming_a_feature_this_log_lacks_names_the_action_rule_and_closest_names() -> None:
    journey = JourneyMap.model_validate(FOREIGN_MAPS["date-only purchases"])
    with pytest.raises(ConfigError) as info:
        load_actions(SIMULATED, known_names=_known(journey))
    problems = info.value.problems
    cancel = [p for p in problems if "n_cancel_subscription_90d" in p]
    assert len(cancel) == 5  # every action that reads it, each named
    assert cancel[0].startswith(
        "actions[0].eligibility[0]: action 'discount_offer', rule 'n_cancel_subscription_90d == 0'"
    )
    offer = next(p for p in problems if "n_offer_redeemed_30d" in p)
    assert "action 'discount_offer'" in offer and "did you mean n_order_30d" in offer
    for problem in problems:
        assert "did you mean" in problem or "closest known names" in problem, problem


def test_a_name_with_nothing_alike_still_gets_the_closest_known_names() -> None:
    with pytest.raises(ConfigError) as info:
        validate_actions(
            {**shipped_data(), "default_action": "none"} | {"actions": [_one("qqq_zz > 1")]},
            "inline",
            known_names={"events_30d": "int64", "tenure_days": "float64"},
        )
    assert "closest known names:" in str(info.value)


def _one(rule: str) -> dict[str, Any]:
    return {
        "id": "a",
        "channel": "email",
        "cost": 1.0,
        "value": 2.0,
        "objective": "retain",
        "eligibility": [rule],
    }


def test_an_empty_rule_list_is_an_empty_list(tmp_path: Path) -> None:
    """``eligibility:`` with nothing after it (YAML null) is no rules, not an error."""
    head, tail = SHIPPED.read_text(encoding="utf-8").split("\nconsent:")
    path = tmp_path / "actions.yaml"
    path.write_text(
        head
        + "\n  - id: plain_note\n    channel: email\n    cost: 0\n    value: 1\n"
        + "    objective: retain\n    eligibility:\n    applicability:\n    suitability:\n"
        + "\nconsent:"
        + tail,
        encoding="utf-8",
    )
    catalog = load_actions(path)
    note = catalog.action("plain_note")
    assert note.eligibility == note.applicability == note.suitability == []
    assert catalog.rule_stages("plain_note") == []


def test_a_consent_column_that_is_not_a_feature_is_named(tmp_path: Path) -> None:
    data = copy.deepcopy(shipped_data())
    data["consent"] = {"column": "marketing_opt_in"}
    with pytest.raises(ConfigError) as info:
        load_actions(_write(tmp_path, data))
    message = str(info.value)
    assert "consent.column: 'marketing_opt_in' is not a feature" in message
    assert "did you mean marketing_opt_out" in message and "profile_attributes" in message
    data["consent"] = {"column": None}  # a log without consent data: everyone unknown
    assert load_actions(_write(tmp_path, data)).consent.column is None


def test_rules_on_the_next_step_are_checked_against_the_journey_map() -> None:
    from serving.actions import next_step_patterns

    journey = load_journey_map(SIMULATOR_CONFIG_DIR / "journeys.yaml")
    steps = next_step_patterns(journey)
    data = shipped_data()
    data["actions"][0]["eligibility"] = ["p_next['purchase'] < 0.2 and p_abandon > 0.5"]
    catalog = validate_actions(data, "inline", next_steps=steps)
    assert catalog.rule_stages("discount_offer")[0][1].names == ("p_next['purchase']", "p_abandon")
    data["actions"][0]["eligibility"] = ["p_next['(session_end)'] > 0.5"]
    validate_actions(data, "inline", next_steps=steps)
    data["actions"][0]["eligibility"] = ["p_next['purchse'] < 0.2"]
    with pytest.raises(
        ConfigError, match=r"unknown next step\(s\) 'purchse'.*did you mean purchase"
    ):
        validate_actions(data, "inline", next_steps=steps)
    data["actions"][0]["eligibility"] = ["p_next['purchase'] == 'high'"]
    with pytest.raises(ConfigError, match="compares text"):
        validate_actions(data, "inline", next_steps=steps)
