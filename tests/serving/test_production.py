"""The serving runtime on the production configuration: Redis online store, PostgreSQL for the
Feast registry, the decision log and the online events (the real local servers)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
import yaml

from features.catalog import build_catalog
from features.online import load_latest_snapshot
from features.settings import FeatureSettings, OnlineStoreSettings, RegistrySettings, StoreSettings
from features.store import Workspace, apply_definitions, open_store
from journeyml.config import SIMULATOR_CONFIG_DIR, load_journey_map
from serving.engine import DecisionContext
from serving.runtime import Runtime
from serving.schemas import EventsRequest, FeedbackRequest, ScoreRequest
from tests.features.helpers import postgres_available, redis_available
from tests.services import skip_or_fail
from tests.serving.conftest import ServingWorkspace, serving_settings

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

pytestmark = [pytest.mark.redis, pytest.mark.postgres]


@pytest.fixture(scope="module")
def production(
    serving_ws: ServingWorkspace, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Runtime, FeatureSettings]]:
    if not redis_available() or not postgres_available():
        skip_or_fail("needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432")
    tmp = tmp_path_factory.mktemp("production")
    project = f"srv{uuid.uuid4().hex[:8]}"
    store_settings = StoreSettings(
        project=project,
        online=OnlineStoreSettings(type="redis", connection_string="127.0.0.1:6379"),
        registry=RegistrySettings(type="sql", url=PG_URL),
    )
    features = FeatureSettings.model_validate(
        {**serving_ws.sim.settings.model_dump(), "store": store_settings.model_dump()}
    )
    features_yaml = tmp / "features.yaml"
    features_yaml.write_text(yaml.safe_dump(features.model_dump(mode="json")), encoding="utf-8")
    ws = Workspace(serving_ws.sim.root)
    catalog = build_catalog(load_journey_map(SIMULATOR_CONFIG_DIR / "journeys.yaml"), features)
    store = open_store(store_settings, ws)
    apply_definitions(store, catalog, ws)
    load_latest_snapshot(store, catalog, ws.snapshots)
    suffix = uuid.uuid4().hex[:8]
    settings = serving_settings(
        serving_ws,
        tmp,
        features=str(features_yaml),
        state_url=PG_URL,
        event_store_url=PG_URL,
        holdout={"share": 0.0, "salt": "x"},
    )
    runtime = Runtime(settings)
    # isolate this run's tables: a fresh state store and event table per run
    runtime.close()
    from features.realtime import EventStore, RealtimeUpdater
    from serving.state import StateStore

    runtime.state = StateStore(PG_URL, table_prefix=f"t{suffix}_")
    runtime.engine.state = runtime.state
    runtime.event_store = EventStore(PG_URL, table=f"events_{suffix}")
    runtime.updater = RealtimeUpdater(
        runtime.store, runtime.catalog, runtime.journey_map, runtime.event_store, ws.lake
    )
    yield runtime, features
    runtime.close()
    with sa.create_engine(PG_URL).begin() as conn:
        names = conn.execute(
            sa.text("SELECT tablename FROM pg_tables WHERE tablename LIKE :p OR tablename = :e"),
            {"p": f"t{suffix}_%", "e": f"events_{suffix}"},
        ).scalars()
        for name in list(names):
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{name}" CASCADE'))
    client = redis.Redis(host="127.0.0.1", port=6379)
    for key in client.scan_iter(match=f"*{project}*"):
        client.delete(key)


def test_decide_score_events_and_feedback_on_redis_and_postgresql(
    production: tuple[Runtime, FeatureSettings], serving_ws: ServingWorkspace
) -> None:
    runtime, _ = production
    assert runtime.readiness()["ready"], runtime.readiness()
    cid = serving_ws.customers[11]
    d = runtime.engine.decide(cid, DecisionContext(channel="web"))
    assert d.fallback_reason is None and d.scores is not None and not d.cold_start
    assert runtime.state.decision(d.decision_id) is not None
    fb = FeedbackRequest(decision_id=d.decision_id, outcome="clicked")
    assert runtime.feedback(fb).body["status"] == "created"
    assert runtime.feedback(fb).body["status"] == "duplicate"
    before = runtime.score(ScoreRequest(customer_ids=[cid])).body["results"][0]
    now = datetime.now(UTC)
    events = EventsRequest.model_validate(
        {
            "events": [
                {
                    "customer_id": cid,
                    "timestamp": (now - timedelta(seconds=s)).isoformat(),
                    "event_type": "complaint",
                    "channel": "phone",
                }
                for s in (30, 20, 10)
            ]
        }
    )
    reply = runtime.events(events)
    assert reply.status == 200 and reply.body["stored"] == 3
    assert runtime.events(events).body["stored"] == 0  # content-hash ids: replay stored once
    after = runtime.score(ScoreRequest(customer_ids=[cid])).body["results"][0]
    assert after["churn_risk"] != before["churn_risk"]


def test_an_unreachable_redis_gives_the_fallback_not_an_error(
    production: tuple[Runtime, FeatureSettings], serving_ws: ServingWorkspace, tmp_path: Path
) -> None:
    _, features = production
    store = features.store.model_copy(
        # a port nothing listens on: connection refused at once
        update={"online": OnlineStoreSettings(type="redis", connection_string="127.0.0.1:1")}
    )
    broken = features.model_copy(update={"store": store})
    path = tmp_path / "features.yaml"
    path.write_text(yaml.safe_dump(broken.model_dump(mode="json")), encoding="utf-8")
    runtime = Runtime(serving_settings(serving_ws, tmp_path, features=str(path)))
    try:
        assert runtime.engine.features is not None  # the registry (PostgreSQL) is there
        d = runtime.engine.decide(serving_ws.customers[0])
        assert d.fallback_reason in ("feature_store_unavailable", "feature_store_timeout")
        assert d.logged  # the decision log (SQLite here) still records it
    finally:
        runtime.close()
