"""Request semantics of the API: time bounds on every date input (400 naming the field and the
bound, nothing stored, no 500 for any date), no contact counted in the future, request ids
(a retry gets the same decision and logs no second contact, also under concurrency, on SQLite
and PostgreSQL) and previews (no contact, not counted by caps)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from features.realtime import EventStore
from journeyml.events.lake import load_manifest
from serving.engine import NO_ACTION, DecisionContext
from serving.runtime import Runtime
from serving.state import RequestKey, StateStore
from tests.serving.conftest import (
    DECIDE_ONLY,
    KEY,
    ServiceClient,
    ServingWorkspace,
    serving_settings,
)
from tests.serving.test_state_concurrency import postgres_available

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
H = {"x-api-key": KEY}
NBA = "/v1/next-best-action"


@dataclass
class Api:
    client: TestClient
    state: StateStore
    events: EventStore
    lake_first: datetime


@pytest.fixture(scope="module")
def api(service: ServiceClient, serving_ws: ServingWorkspace) -> Iterator[Api]:
    """The service's client, and its state and event stores opened beside it."""
    manifest = load_manifest(serving_ws.sim.root / "lake")
    first = min(b.time_range.first for b in manifest.batches if b.time_range)
    state = StateStore(service.settings.resolved_state_url())
    events = EventStore(service.settings.resolved_event_store_url())
    try:
        yield Api(service.client, state, events, first)
    finally:
        state.close()
        events.engine.dispose()


def count(store: StateStore | EventStore, table: sa.Table, **where: str) -> int:
    q = sa.select(sa.func.count()).select_from(table)
    for column, value in where.items():
        q = q.where(table.c[column] == value)
    with store.engine.connect() as conn:
        return int(conn.execute(q).scalar_one())


def stored(api: Api) -> tuple[int, int, int]:
    """(decisions, contacts, events) stored so far."""
    return (
        count(api.state, api.state.decisions),
        count(api.state, api.state.contacts),
        count(api.events, api.events.table),
    )


def customer_with_an_action(api: Api, customers: list[str], skip: int = 0) -> str:
    """A customer whose decision is an action (asked as a preview: nothing is contacted)."""
    found = 0
    for cid in customers:
        body = {"customer_id": cid, "mode": "preview"}
        if api.client.post(NBA, json=body, headers=H).json()["action"] != NO_ACTION:
            if found == skip:
                return cid
            found += 1
    raise AssertionError("no customer gets an action")


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def bad_times(api: Api) -> list[tuple[str, str]]:
    """(timestamp text, what the 400 says) for every kind of date input that is refused."""
    now = datetime.now(UTC)
    return [
        ("0001-01-01T00:00:00+01:00", "between years 1 and 9999"),
        ("0001-01-01T00:00:00Z", "earlier than the lake's first event - 30 days"),
        ("9999-12-31T23:59:59.999999Z", "later than now + 10 minutes"),
        ("9999-12-31T23:59:59.999999-01:00", "between years 1 and 9999"),
        ("2099-01-01T00:00:00Z", "later than now + 10 minutes"),
        (iso(now + timedelta(minutes=11)), "later than now + 10 minutes"),
        (iso(api.lake_first - timedelta(days=31)), "earlier than the lake's first event"),
        ("2026-01-01T00:00:00", "time zone"),
        ("2026-01-01", "time zone"),
        ("2026-02-30T00:00:00Z", "day value is outside expected range"),
        ("garbage", "valid datetime"),
        ("", "valid datetime"),
    ]


def message(r: Any) -> str:
    """The 400's words: the field paths and messages of a validation error, else the error."""
    body = r.json()
    return json.dumps(body["detail"]) if "detail" in body else str(body["error"])


def test_event_times_outside_the_window_are_400_and_nothing_is_stored(
    api: Api, serving_ws: ServingWorkspace
) -> None:
    cid = serving_ws.customers[20]
    good = {"customer_id": cid, "timestamp": iso(datetime.now(UTC)), "event_type": "page_view"}
    before = stored(api)
    for text, says in bad_times(api):
        bad = {**good, "timestamp": text, "event_id": f"bad-{uuid.uuid4().hex[:6]}"}
        r = api.client.post("/v1/events", json={"events": [good, bad]}, headers=H)
        assert r.status_code == 400, (text, r.text)
        assert "timestamp" in message(r) and says in message(r), (text, message(r))
        if "detail" not in r.json():  # the bound is named, the refused value is not echoed
            assert r.json()["error"].startswith("events[1].timestamp: ")
            assert text not in r.json()["error"]
    assert stored(api) == before  # nothing of any refused batch, not even the good event
    assert count(api.events, api.events.table, customer_id=cid) == 0
    ok = api.client.post("/v1/events", json={"events": [good]}, headers=H)
    assert ok.status_code == 200 and ok.json()["stored"] == 1
    as_of = datetime.fromisoformat(ok.json()["features_as_of"])
    assert as_of <= datetime.now(UTC) + timedelta(seconds=1)  # the feature clock stayed now


def test_decision_times_outside_the_window_are_400_and_nothing_is_logged(
    api: Api, serving_ws: ServingWorkspace
) -> None:
    before = stored(api)
    for text, says in bad_times(api):
        body = {"customer_id": serving_ws.customers[21], "context": {"at": text}}
        r = api.client.post(NBA, json=body, headers=H)
        assert r.status_code == 400, (text, r.text)
        assert "at" in message(r) and says in message(r), (text, message(r))
        if "detail" not in r.json():
            assert r.json()["error"].startswith("context.at: ")
    assert stored(api) == before


def test_feedback_times_outside_the_window_are_400_and_nothing_is_stored(
    api: Api, serving_ws: ServingWorkspace
) -> None:
    d = api.client.post(NBA, json={"customer_id": serving_ws.customers[22]}, headers=H).json()
    for text, says in bad_times(api):
        fb = {"decision_id": d["decision_id"], "outcome": "ignored", "at": text}
        r = api.client.post("/v1/feedback", json=fb, headers=H)
        assert r.status_code == 400, (text, r.text)
        assert says in message(r), (text, message(r))
    assert api.state.feedback(d["decision_id"]) == []


def test_no_contact_is_counted_in_the_future(api: Api, serving_ws: ServingWorkspace) -> None:
    cid = customer_with_an_action(api, serving_ws.customers[40:60])
    actions = []
    for _ in range(6):  # the caps (any channel: 3 a week) end in "no action"
        d = api.client.post(NBA, json={"customer_id": cid}, headers=H).json()
        actions.append(d["action"])
        if d["action"] == NO_ACTION:
            break
    assert actions[-1] == NO_ACTION and len(actions) > 1
    contacts = count(api.state, api.state.contacts, customer_id=cid)
    now = datetime.now(UTC)
    for days in (8, 16, 24):  # beyond the caps' windows: refused, not three more emails
        body = {"customer_id": cid, "context": {"at": iso(now + timedelta(days=days))}}
        assert api.client.post(NBA, json=body, headers=H).status_code == 400
    body = {"customer_id": cid, "context": {"at": "9999-12-30T00:00:00Z"}}
    assert api.client.post(NBA, json=body, headers=H).status_code == 400
    # minutes of clock skew are accepted and taken as now: the caps still hold
    skewed = {"customer_id": cid, "context": {"at": iso(now + timedelta(minutes=9))}}
    d = api.client.post(NBA, json=skewed, headers=H).json()
    assert d["action"] == NO_ACTION
    assert datetime.fromisoformat(d["decided_at"]) <= datetime.now(UTC)
    assert count(api.state, api.state.contacts, customer_id=cid) == contacts
    with api.state.engine.connect() as conn:
        latest = conn.execute(sa.select(sa.func.max(api.state.contacts.c.sent_at_us))).scalar()
    assert datetime.fromtimestamp(latest / 1e6, UTC) <= datetime.now(UTC)


def test_a_retried_request_id_gets_the_same_decision_and_one_contact(
    api: Api, serving_ws: ServingWorkspace
) -> None:
    cid = customer_with_an_action(api, serving_ws.customers[60:100])
    body = {"customer_id": cid, "context": {"channel": "web"}, "request_id": "campaign-7:abc"}
    first = api.client.post(NBA, json=body, headers=H)
    again = api.client.post(NBA, json=body, headers=H)
    assert first.status_code == again.status_code == 200
    a, b = first.json(), again.json()
    assert a["action"] != NO_ACTION and a["request_id"] == "campaign-7:abc"
    assert (a["replayed"], b["replayed"]) == (False, True)
    assert {**b, "replayed": False} == a  # the same decision, word for word
    assert count(api.state, api.state.contacts, customer_id=cid) == 1
    assert count(api.state, api.state.decisions, customer_id=cid, mode="decide") == 1
    # the same id for another customer, or as a preview: a conflict, nothing written
    before = stored(api)
    other = {**body, "customer_id": serving_ws.customers[59]}
    r = api.client.post(NBA, json=other, headers=H)
    assert r.status_code == 409 and "another customer_id" in r.json()["error"]
    r = api.client.post(NBA, json={**body, "mode": "preview"}, headers=H)
    assert r.status_code == 409 and "mode 'decide'" in r.json()["error"]
    assert stored(api) == before
    # another API key's request ids are its own
    mine = api.client.post(NBA, json=other, headers={"x-api-key": DECIDE_ONLY})
    assert mine.status_code == 200 and mine.json()["replayed"] is False


def test_the_openapi_document_describes_request_ids_and_previews(api: Api) -> None:
    spec = json.dumps(api.client.get("/docs.json").json())
    assert "Idempotency key chosen by the caller" in spec
    assert "no contact is recorded" in spec
    assert "later than now plus the event contract's future tolerance" in spec


@pytest.mark.parametrize(
    "body",
    [
        {"customer_id": "c1", "request_id": "has space"},
        {"customer_id": "c1", "request_id": "x" * 65},
        {"customer_id": "c1", "request_id": 42},
        {"customer_id": "c1", "mode": "dry-run"},
    ],
)
def test_malformed_request_ids_and_modes_are_400(api: Api, body: dict[str, Any]) -> None:
    r = api.client.post(NBA, json=body, headers=H)
    assert r.status_code == 400
    field = "request_id" if "request_id" in body else "mode"
    assert field in json.dumps(r.json()["detail"])


def test_a_preview_records_no_contact_and_does_not_count_against_caps(
    api: Api, serving_ws: ServingWorkspace
) -> None:
    cid = customer_with_an_action(api, serving_ws.customers[100:140])
    previews = [
        api.client.post(NBA, json={"customer_id": cid, "mode": "preview"}, headers=H).json()
        for _ in range(4)
    ]
    assert {p["mode"] for p in previews} == {"preview"}
    assert len({p["action"] for p in previews}) == 1 and previews[0]["action"] != NO_ACTION
    assert count(api.state, api.state.contacts, customer_id=cid) == 0
    assert count(api.state, api.state.decisions, customer_id=cid, mode="preview") >= 4
    # five previews did not use up caps or cooldowns: the real decision sends the action
    d = api.client.post(NBA, json={"customer_id": cid}, headers=H).json()
    assert d["action"] == previews[0]["action"] and d["mode"] == "decide"
    assert count(api.state, api.state.contacts, customer_id=cid) == 1
    logged = [f for f in api.state.iter_decisions() if (f["customer_id"] == cid).any()]
    evaluated = [i for f in logged for i in f.loc[f["customer_id"] == cid, "decision_id"]]
    assert evaluated == [d["decision_id"]]  # previews stay out of the evaluated log
    # a preview after the contact shows what the policy now allows, and still sends nothing
    p = api.client.post(NBA, json={"customer_id": cid, "mode": "preview"}, headers=H).json()
    assert p["action"] != d["action"]
    assert count(api.state, api.state.contacts, customer_id=cid) == 1


# -- concurrent retries through the engine, SQLite and PostgreSQL -----------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def runtime(
    request: pytest.FixtureRequest, serving_ws: ServingWorkspace, tmp_path: Path
) -> Iterator[Runtime]:
    if request.param == "postgres" and not postgres_available():
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    rt = Runtime(serving_settings(serving_ws, tmp_path, holdout={"share": 0.0, "salt": "x"}))
    pg: StateStore | None = None
    if request.param == "postgres":
        rt.state.close()
        pg = StateStore(PG_URL, table_prefix=f"q{uuid.uuid4().hex[:10]}_")
        rt.state = rt.engine.state = pg
    yield rt
    rt.close()
    if pg is not None:
        for table in (pg.requests, pg.feedback_table, pg.contacts, pg.decisions):
            table.drop(pg.engine, checkfirst=True)
        pg.close()


def test_concurrent_retries_of_a_request_id_give_one_decision_and_one_contact(
    runtime: Runtime, serving_ws: ServingWorkspace
) -> None:
    engine = runtime.engine
    cid = next(
        c
        for c in serving_ws.customers[140:]
        if engine.decide(c, mode="preview").action != NO_ACTION
    )
    expires = datetime.now(UTC) + timedelta(hours=1)
    calls = 12
    gate = threading.Barrier(calls)

    def call(_: int) -> Any:
        gate.wait(timeout=30)
        return engine.decide(
            cid, DecisionContext(channel="web"), request=RequestKey("k", "retry-1", expires)
        )

    with ThreadPoolExecutor(max_workers=calls) as pool:
        decisions = list(pool.map(call, range(calls)))
    assert len({d.decision_id for d in decisions}) == 1
    assert len({d.action for d in decisions}) == 1 and decisions[0].action != NO_ACTION
    assert sum(not d.replayed for d in decisions) == 1
    state = runtime.state
    assert count(state, state.contacts, customer_id=cid) == 1
    assert count(state, state.decisions, customer_id=cid, mode="decide") == 1
