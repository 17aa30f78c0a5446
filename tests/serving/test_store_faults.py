"""Store faults in process: a locked state store gives 503 and resumes by itself, store errors
are fallbacks while other errors are not hidden, failing checkpoints and model downloads are
reported and cleaned up (issue 19)."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import serving.state as state_module
from serving.runtime import Runtime
from serving.schemas import FeedbackRequest
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
