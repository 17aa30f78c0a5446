"""`/v1/events` on the incremental journey state: the next decision reflects the events, the
state agrees with the batch query on the served workspace, and the event store is behind a
deadline and a circuit breaker like the other stores."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from features.journey_state import epoch_us
from serving.runtime import Runtime
from serving.schemas import EventIn, EventsRequest, NextBestActionRequest, RequestContext
from tests.serving.conftest import ServingWorkspace, serving_settings


@pytest.fixture
def runtime(serving_ws: ServingWorkspace, tmp_path: Path) -> Iterator[Runtime]:
    settings = serving_settings(serving_ws, tmp_path, holdout={"share": 0.0, "salt": "x"})
    rt = Runtime(settings)
    yield rt
    rt.close()


def complaints(cid: str, n: int) -> EventsRequest:
    now = datetime.now(UTC)
    return EventsRequest(
        events=[
            EventIn(
                customer_id=cid,
                timestamp=now - timedelta(minutes=n - i),
                event_type="complaint",
                channel="phone",
                event_id=f"state-{cid}-{i}",
            )
            for i in range(n)
        ]
    )


def preview(runtime: Runtime, cid: str) -> dict[str, Any]:
    reply = runtime.next_best_action(
        NextBestActionRequest(
            customer_id=cid, context=RequestContext(channel="web"), mode="preview"
        )
    )
    assert reply.status == 200, reply.body
    return reply.body


def test_a_decision_after_events_reflects_them(
    runtime: Runtime, serving_ws: ServingWorkspace
) -> None:
    assert runtime.updater is not None and runtime.updater.program is not None
    assert runtime.features is not None
    cid = serving_ws.customers[11]
    before = runtime.features.read([cid])[0].values
    decided_before = preview(runtime, cid)
    reply = runtime.events(complaints(cid, 4))
    assert reply.status == 200, reply.body
    assert reply.body["stored"] == 4
    after = runtime.features.read([cid])[0].values
    assert after["events_total"] == before["events_total"] + 4
    assert after["complaints_30d"] == before["complaints_30d"] + 4
    assert after["last_event_1"] == "complaint"
    decided_after = preview(runtime, cid)
    assert decided_after["scores"]["churn_risk"] != decided_before["scores"]["churn_risk"]
    view = runtime.updater.journey(cid)
    assert [e["event_id"] for e in view.recent_events[-4:]] == [
        f"state-{cid}-{i}" for i in range(4)
    ]
    assert view.features is not None and view.features["events_total"] == after["events_total"]


def test_the_state_equals_the_batch_query_on_the_served_workspace(
    runtime: Runtime, serving_ws: ServingWorkspace
) -> None:
    updater = runtime.updater
    assert updater is not None
    cids = serving_ws.customers[20:26]
    for cid in cids[:3]:
        assert runtime.events(complaints(cid, 2)).status == 200
    at = datetime.now(UTC) + timedelta(minutes=1)
    batch = updater.compute(cids, at).set_index("customer_id")
    for cid in cids:
        features = updater.journey(cid, at).features
        assert features is not None
        for spec in updater.catalog.features:
            want = batch.loc[cid, spec.name]
            if spec.dtype == "float64":
                assert features[spec.name] == pytest.approx(float(want), rel=1e-9), spec.name
            elif spec.dtype == "int64":
                assert features[spec.name] == int(want), spec.name
            else:
                assert features[spec.name] == want, spec.name
    assert epoch_us(updater.journey(cids[0], at).as_of) == epoch_us(at)


def test_event_store_errors_are_503s_behind_a_breaker(
    runtime: Runtime, serving_ws: ServingWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = runtime.event_store
    calls = []

    def down(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        raise sa.exc.OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(store.engine, "begin", down)
    monkeypatch.setattr(store.engine, "connect", down)
    cid = serving_ws.customers[30]
    first = runtime.events(complaints(cid, 1))
    second = runtime.events(complaints(cid, 1))
    assert first.status == second.status == 503
    assert len(calls) == 1  # the second request did not wait on the store
    ready = runtime.readiness()
    assert ready["ready"] and not ready["components"]["event_store"]["ok"]
    assert preview(runtime, cid)["fallback_reason"] is None  # decisions go on


def test_a_programming_error_is_not_an_event_store_outage(
    runtime: Runtime, serving_ws: ServingWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    def bug(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("a bug, not an outage")

    monkeypatch.setattr(runtime.event_store.engine, "begin", bug)
    with pytest.raises(KeyError):
        runtime.events(complaints(serving_ws.customers[31], 1))
    breaker = runtime.event_store.breaker
    assert breaker is not None
    breaker.check()  # still closed
