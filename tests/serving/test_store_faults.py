"""Store faults in process: a locked state store gives 503 and resumes by itself, store errors
are fallbacks while other errors are not hidden, failing checkpoints and model downloads are
reported and cleaned up (issue 19)."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

import serving.state as state_module
from serving.runtime import Runtime
from serving.schemas import EventsRequest, FeedbackRequest
from serving.state import RequestKey
from tests.services import unwritable
from tests.serving.conftest import ServingWorkspace, serving_settings


@pytest.fixture
def runtime(serving_ws: ServingWorkspace, tmp_path: Path) -> Iterator[Runtime]:
    settings = serving_settings(
        serving_ws, tmp_path, holdout={"share": 0.0, "salt": "x"}, state_timeout_ms=200.0
    )
    rt = Runtime(settings)
    yield rt
    rt.close()


def wait_for(check: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"not within {seconds} s"
        time.sleep(0.05)


def test_a_locked_state_store_answers_503_and_service_resumes_by_itself(
    runtime: Runtime, serving_ws: ServingWorkspace, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cid = serving_ws.customers[2]
    decision = runtime.engine.decide(cid)
    assert decision.logged
    feedback = FeedbackRequest(decision_id=decision.decision_id, outcome="clicked")
    holder = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        reply = runtime.feedback(feedback)
        assert time.monotonic() - started < 5  # the store's 30 s busy wait is not on the path
        assert reply.status == 503 and "state store unavailable" in reply.body["error"]
        assert decision.decision_id not in str(reply.body) and cid not in str(reply.body)
        ready = runtime.readiness()
        assert not ready["ready"] and not ready["components"]["state_store"]["ok"]
        fallback = runtime.engine.decide(cid)
        assert fallback.fallback_reason == "state_store_unavailable" and not fallback.logged
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    wait_for(lambda: runtime.feedback(feedback).status == 200, 5)
    assert runtime.readiness()["ready"]
    assert runtime.engine.decide(cid).logged
    logged = caplog.text
    assert cid not in logged and "[parameters" not in logged


def test_an_unwritable_state_store_answers_503_and_service_resumes_by_itself(
    runtime: Runtime, serving_ws: ServingWorkspace, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The database file and its write-ahead log immutable (a read-only file system as
    root sees it): every write fails with a disk I/O error or "readonly database", through
    the connections the service already holds as well as new ones."""
    cid = serving_ws.customers[2]
    decision = runtime.engine.decide(cid)
    assert decision.logged
    feedback = FeedbackRequest(decision_id=decision.decision_id, outcome="clicked")
    db = tmp_path / "state.db"
    with unwritable(db, db.with_name("state.db-wal")):
        reply = runtime.feedback(feedback)
        assert reply.status == 503 and "state store unavailable" in reply.body["error"]
        assert decision.decision_id not in str(reply.body) and cid not in str(reply.body)
        assert not runtime.readiness()["components"]["state_store"]["ok"]
        fallback = runtime.engine.decide(serving_ws.customers[3])
        assert fallback.fallback_reason == "state_store_unavailable" and not fallback.logged
        assert runtime.feedback(feedback).status == 503  # still down: no write got through
    wait_for(lambda: runtime.feedback(feedback).status == 200, 5)
    assert runtime.readiness()["ready"]
    again = runtime.engine.decide(serving_ws.customers[3])
    assert again.logged and again.fallback_reason is None
    assert runtime.state.decision(again.decision_id) is not None
    logged = caplog.text
    assert cid not in logged and "[parameters" not in logged


def test_online_store_errors_fall_back_and_open_the_breaker(
    runtime: Runtime, serving_ws: ServingWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    features = runtime.features
    assert features is not None
    calls = []

    def down(*args: Any) -> Any:
        calls.append(1)
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")

    monkeypatch.setattr(features, "_read", down)
    first = runtime.engine.decide(serving_ws.customers[3])
    second = runtime.engine.decide(serving_ws.customers[4])
    assert first.fallback_reason == second.fallback_reason == "feature_store_unavailable"
    assert len(calls) == 1  # the second call did not wait on the store: the breaker is open
    components = runtime.readiness()["components"]
    assert not components["online_store"]["ok"] and "ConnectionError" in str(
        components["online_store"]["detail"]
    )


def test_a_programming_error_is_not_reported_as_a_store_outage(
    runtime: Runtime, serving_ws: ServingWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    features = runtime.features
    assert features is not None

    def bug(*args: Any) -> Any:
        raise KeyError("a bug, not an outage")

    monkeypatch.setattr(features, "_read", bug)
    with pytest.raises(KeyError):
        runtime.engine.decide(serving_ws.customers[3])
    assert not features.breaker.is_open


def test_a_failing_checkpointer_is_a_warning_and_a_readiness_detail(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def fail(conn: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(state_module, "_wal_checkpoint", fail)
    with caplog.at_level(logging.WARNING, logger="serving.state"):
        wait_for(lambda: runtime.state.checkpoint_error is not None, 5)
    assert any("checkpoint failed" in r.getMessage() for r in caplog.records)
    state = runtime.readiness()["components"]["state_store"]
    assert state["ok"] and "checkpoints failing" in state["detail"]
    assert "disk I/O error" in state["detail"]


def test_request_ids_fall_back_on_store_errors_only(
    runtime: Runtime,
    serving_ws: ServingWorkspace,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Reading a request id: the store's own error is a warning with its message (the
    decision goes on, and falls back if the store stays down); a programming error is raised
    with its traceback, not taken for "no such request"."""
    cid = serving_ws.customers[5]
    key = RequestKey("all", "retry-1", datetime.now(UTC) + timedelta(hours=1))

    def down(request: RequestKey) -> Any:
        raise sa.exc.OperationalError("SELECT", {}, sqlite3.OperationalError("database is locked"))

    monkeypatch.setattr(runtime.state, "find_request", down)
    with caplog.at_level(logging.WARNING, logger="serving.engine"):
        decision = runtime.engine.decide(cid, request=key)
    assert decision.action  # answered
    assert "database is locked" in caplog.text and cid not in caplog.text

    def bug(request: RequestKey) -> Any:
        raise AttributeError("'NoneType' object has no attribute 'answer'")

    monkeypatch.setattr(runtime.state, "find_request", bug)
    with pytest.raises(AttributeError, match="has no attribute 'answer'"):
        runtime.engine.decide(cid, request=RequestKey("all", "retry-2", key.expires_at))


def test_a_locked_event_store_answers_503_within_the_deadline_and_resumes(
    runtime: Runtime, serving_ws: ServingWorkspace
) -> None:
    """/v1/events with its event store locked by another writer: a 503 bounded by the
    service's store timeout (not SQLite's default 5 s busy wait), at once while the store's
    breaker is open, and events stored again by themselves once the lock is gone."""
    cid = serving_ws.customers[8]
    now = datetime.now(UTC)

    def events(tag: str) -> EventsRequest:
        at = (now - timedelta(minutes=1)).isoformat()
        event = {"customer_id": cid, "timestamp": at, "event_type": "complaint",
                 "channel": "phone", "event_id": f"{tag}-{cid}"}  # fmt: skip
        return EventsRequest.model_validate({"events": [event]})

    assert runtime.events(events("a")).status == 200
    url = runtime.settings.resolved_event_store_url()
    holder = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        reply = runtime.events(events("b"))
        first = time.monotonic() - started
        assert reply.status == 503 and cid not in str(reply.body)
        assert first < 2 * runtime.settings.state_timeout_ms / 1000 + 1.0, first
        started = time.monotonic()
        assert runtime.events(events("c")).status == 503
        assert time.monotonic() - started < first  # the breaker: the store is not waited for
        ready = runtime.readiness()  # not a required component: decisions go on
        assert ready["ready"] and not ready["components"]["event_store"]["ok"]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    wait_for(lambda: runtime.events(events("d")).status == 200, 5)
