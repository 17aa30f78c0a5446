"""The next step after the latest event, served from the freshest state: the answers of
/v1/events, /v1/next-best-action and /v1/score carry it, computed with the events just
received; rules read it (p_next['step'], p_abandon)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType

import pytest

from features.catalog import build_catalog
from features.store import Workspace
from journeyml.config import SIMULATOR_CONFIG_DIR, load_journey_map
from serving.engine import DecisionContext
from serving.models import LoadedModel
from serving.rules import Rule, p_next_name
from serving.runtime import Runtime
from serving.schemas import EventIn, EventsRequest, NextBestActionRequest, ScoreRequest
from tests.serving.conftest import ServingWorkspace, serving_settings
from training.bundle import ModelBundle, load_model_bundle, write_bundle
from training.config import NextEventSettings, TrainingConfig
from training.next_event import NO_EVENT, SESSION_END, fit_next_event_task


@dataclass(frozen=True)
class Trained:
    bundle: ModelBundle
    metrics: dict[str, float]


@pytest.fixture(scope="module")
def next_event_bundle(
    serving_ws: ServingWorkspace, tmp_path_factory: pytest.TempPathFactory
) -> Trained:
    """A next_event model of the serving workspace, written and loaded as a bundle."""
    journey_map = load_journey_map(SIMULATOR_CONFIG_DIR / "journeys.yaml")
    catalog = build_catalog(journey_map, serving_ws.sim.settings)
    settings = NextEventSettings(
        max_anchors=6000,
        num_boost_round=40,
        early_stopping_rounds=10,
        lightgbm={"learning_rate": 0.1, "num_leaves": 7, "max_bin": 31},
    )
    out = fit_next_event_task(
        Workspace(serving_ws.sim.root).lake, journey_map, catalog, settings,
        TrainingConfig(num_threads=1), ["", ""],
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("next_event_bundle")
    write_bundle(
        folder, out["manifest"], out["model_texts"], out["vocabularies"], out["calibrator"]
    )
    return Trained(load_model_bundle(folder), out["fit"].metrics)


@pytest.fixture()
def runtime(
    serving_ws: ServingWorkspace, next_event_bundle: Trained, tmp_path: Path
) -> Iterator[Runtime]:
    rt = Runtime(serving_settings(serving_ws, tmp_path, deadline_ms=10_000))
    loaded = LoadedModel("next_event", "next_event", "1", next_event_bundle.bundle)
    rt.models._models = MappingProxyType({**rt.models.models, "next_event": loaded})
    yield rt
    rt.close()


def send(rt: Runtime, customer: str, event_type: str, minutes: int) -> dict:
    at = rt.now() + timedelta(minutes=minutes)
    event = EventIn(customer_id=customer, timestamp=at, event_type=event_type, session_id="live-1")
    reply = rt.events(EventsRequest(events=[event]))
    assert reply.status == 200, reply.body
    return reply.body


def test_the_bundle_holds_classes_and_abandonment(next_event_bundle: Trained) -> None:
    bundle = next_event_bundle.bundle
    assert bundle.kind == "next_event"
    assert {SESSION_END, NO_EVENT} <= set(bundle.classes)
    assert set(bundle.boosters) == {"model", "abandon"}
    assert "chain" in bundle.calibrator and "abandon" in bundle.calibrator


def test_events_and_decisions_carry_the_next_step_of_the_freshest_state(
    runtime: Runtime, serving_ws: ServingWorkspace
) -> None:
    customer = serving_ws.customers[3]
    body = send(runtime, customer, "add_to_cart", 1)
    (after_cart,) = body["next_steps"]
    assert after_cart["customer_id"] == customer
    steps = after_cart["next"]
    assert len(steps) == 3 and all(0.0 <= s["probability"] <= 1.0 for s in steps)
    assert [s["probability"] for s in steps] == sorted(
        (s["probability"] for s in steps), reverse=True
    )
    assert 0.0 <= after_cart["p_abandon"] <= 1.0
    # the decision right after reads the same state: the same next step
    reply = runtime.next_best_action(NextBestActionRequest(customer_id=customer))
    assert reply.status == 200
    scores = reply.body["scores"]
    assert scores["next_event"] == {k: after_cart[k] for k in ("next", "p_abandon")}
    # a purchase now: the answer changes with the event just received
    (after_purchase,) = send(runtime, customer, "purchase", 2)["next_steps"]
    assert after_purchase != after_cart
    scored = runtime.score(ScoreRequest(customer_ids=[customer])).body["results"][0]
    assert scored["next_event"] == {k: after_purchase[k] for k in ("next", "p_abandon")}


def test_rules_read_p_next_and_p_abandon(runtime: Runtime, serving_ws: ServingWorkspace) -> None:
    customer = serving_ws.customers[5]
    send(runtime, customer, "checkout_start", 1)
    engine = runtime.engine
    now = runtime.now()
    values = engine.read_features(customer, now).values
    sequence = engine.next_event_inputs([customer])[customer]
    scores = engine.score(values, now, sequence)
    assert abs(sum(scores.p_next.values()) - 1.0) < 1e-6
    engine.p_next_names = [p_next_name("purchase"), p_next_name("never_seen")]
    env = engine._env(values, scores, DecisionContext(), now)
    assert env["p_abandon"] == scores.p_abandon
    p_purchase = scores.p_next.get("purchase")
    assert env[p_next_name("purchase")] == p_purchase
    threshold = 0.5 if p_purchase is None else p_purchase
    assert Rule(f"p_next['purchase'] >= {threshold}").evaluate(env) is (p_purchase is not None)
    assert Rule(f"p_abandon <= {scores.p_abandon}").evaluate(env)
    # a step the model does not know is missing: the rule fails closed
    assert env[p_next_name("never_seen")] is None
    assert not Rule("p_next['never_seen'] < 1").evaluate(env)


def test_the_openapi_document_describes_the_next_step() -> None:
    from serving.config import LimitSettings
    from serving.http import complete_openapi

    paths = {r: {"post": {"responses": {"200": {"description": "OK"}}}} for r in ROUTES}
    spec = complete_openapi({"paths": paths}, ROUTES, LimitSettings())
    schemas = spec["components"]["schemas"]
    assert set(schemas["NextEvent"]["properties"]) == {"next", "p_abandon"}
    assert "customer_id" in schemas["CustomerNextEvent"]["properties"]
    assert "NextStepProbability" in schemas
    for route in ROUTES:
        assert (
            "next step after the latest event"
            in spec["paths"][route]["post"]["responses"]["200"]["description"]
        )


ROUTES = ["/v1/events", "/v1/next-best-action", "/v1/score"]
