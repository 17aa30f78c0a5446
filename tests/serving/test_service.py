"""The HTTP API through BentoML's own ASGI app, and once through a real `journeyml serve`."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from serving.config import AuthSettings
from tests.serving.conftest import (
    API_KEYS,
    KEY,
    READ_ONLY,
    ServiceClient,
    ServingWorkspace,
    serving_settings,
    write_settings,
)

KEYS = API_KEYS
H = {"x-api-key": KEY}


@pytest.fixture(scope="module")
def api(service: ServiceClient) -> TestClient:
    return service.client


def test_health_and_docs_are_open(api: TestClient) -> None:
    assert api.get("/livez").status_code == 200
    assert api.get("/readyz").status_code == 200
    assert api.get("/metrics").status_code == 200
    spec = api.get("/docs.json").json()
    assert {"/v1/next-best-action", "/v1/score", "/v1/events", "/v1/feedback"} <= set(spec["paths"])


def test_next_best_action_answers_with_reasons(
    api: TestClient, serving_ws: ServingWorkspace
) -> None:
    r = api.post(
        "/v1/next-best-action",
        json={"customer_id": serving_ws.customers[5], "context": {"channel": "web"}},
        headers=H,
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["decision_id"] and body["scores"]["risk_band"] in ("high", "medium", "low")
    assert body["reason_codes"]["risk"] and body["reason_codes"]["action"]
    assert body["fallback_reason"] is None


def test_unknown_customer_gets_a_cold_start_decision(api: TestClient) -> None:
    r = api.post("/v1/next-best-action", json={"customer_id": "nobody-42"}, headers=H)
    assert r.status_code == 200 and r.json()["cold_start"] is True


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"customer_id": "a b"}, "customer_id"),
        ({"customer_id": "x" * 65}, "customer_id"),
        ({"customer_id": "c1", "surprise": 1}, "surprise"),
        ({"customer_id": "c1", "context": {"channel": "web", "x": 1}}, "x"),
        ({"customer_id": "c1", "context": {"at": "2026-01-01T00:00:00"}}, "at"),
        ({}, "customer_id"),
    ],
)
def test_invalid_requests_get_400_naming_the_field_without_echoing_it(
    api: TestClient, body: dict[str, Any], field: str
) -> None:
    r = api.post("/v1/next-best-action", json=body, headers=H)
    assert r.status_code == 400
    assert field in json.dumps(r.json()["detail"])
    if "customer_id" in body and isinstance(body["customer_id"], str):
        assert body["customer_id"] not in r.text or body["customer_id"] == "c1"


def test_access_control_and_body_limit(api: TestClient) -> None:
    body = {"customer_id": "c1"}
    assert api.post("/v1/next-best-action", json=body).status_code == 401
    assert (
        api.post("/v1/next-best-action", json=body, headers={"x-api-key": READ_ONLY}).status_code
        == 403
    )
    assert (
        api.post(
            "/v1/score", json={"customer_ids": ["c1"]}, headers={"x-api-key": READ_ONLY}
        ).status_code
        == 200
    )
    big = {"customer_ids": ["c" * 60] * 2000}
    assert api.post("/v1/score", json=big, headers=H).status_code == 413


def test_score_many_and_the_batch_limit(api: TestClient, serving_ws: ServingWorkspace) -> None:
    ids = [*serving_ws.customers[:5], "nobody"]
    r = api.post("/v1/score", json={"customer_ids": ids}, headers=H)
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["customer_id"] for x in results] == ids
    assert all(0 <= x["churn_risk"] <= 1 for x in results[:5])
    assert results[-1]["fallback_reason"] == "unknown_customer"
    r = api.post("/v1/score", json={"customer_ids": [f"c{i}" for i in range(101)]}, headers=H)
    assert r.status_code == 400 and "at most 100" in r.json()["error"]


def test_score_answers_every_copy_of_a_repeated_id(
    api: TestClient, serving_ws: ServingWorkspace
) -> None:
    """A repeated id gets the same answer at each place (the earlier copies were answered
    as unknown customers), in the order asked, beside the other ids."""
    a, b = serving_ws.customers[6], serving_ws.customers[7]
    ids = [a, b, a, "nobody", a, "nobody"]
    r = api.post("/v1/score", json={"customer_ids": ids}, headers=H)
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["customer_id"] for x in results] == ids
    assert [x["known"] for x in results] == [True, True, True, False, True, False]
    assert results[0] == results[2] == results[4]
    assert results[1]["churn_risk"] is not None


def test_feedback_is_idempotent_and_unknown_decisions_are_404(
    api: TestClient, serving_ws: ServingWorkspace
) -> None:
    d = api.post(
        "/v1/next-best-action", json={"customer_id": serving_ws.customers[6]}, headers=H
    ).json()
    fb = {"decision_id": d["decision_id"], "outcome": "accepted"}
    first = api.post("/v1/feedback", json=fb, headers=H)
    again = api.post("/v1/feedback", json=fb, headers=H)
    assert first.status_code == again.status_code == 200
    assert (first.json()["status"], again.json()["status"]) == ("created", "duplicate")
    missing = api.post("/v1/feedback", json={**fb, "decision_id": "nope"}, headers=H)
    assert missing.status_code == 404
    bad = api.post("/v1/feedback", json={**fb, "outcome": "loved_it"}, headers=H)
    assert bad.status_code == 400


def test_events_update_the_features_the_next_decision_sees(
    api: TestClient, serving_ws: ServingWorkspace
) -> None:
    cid = serving_ws.customers[7]
    before = api.post("/v1/score", json={"customer_ids": [cid]}, headers=H).json()["results"][0]
    now = datetime.now(UTC)
    events = [
        {
            "customer_id": cid,
            "timestamp": (now - timedelta(minutes=m)).isoformat(),
            "event_type": "complaint",
            "channel": "phone",
            "event_id": f"evt-{cid}-{m}",
        }
        for m in (3, 2, 1)
    ]
    r = api.post("/v1/events", json={"events": events}, headers=H)
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == 3 and r.json()["customers_updated"] == 1
    replay = api.post("/v1/events", json={"events": events}, headers=H).json()
    assert replay["stored"] == 0 and replay["duplicates"] == 3
    after = api.post("/v1/score", json={"customer_ids": [cid]}, headers=H).json()["results"][0]
    assert after["churn_risk"] != before["churn_risk"]
    bad = api.post(
        "/v1/events", json={"events": [{**events[0], "timestamp": "yesterday"}]}, headers=H
    )
    assert bad.status_code == 400


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_a_real_bentoml_server_answers(serving_ws: ServingWorkspace, tmp_path: Path) -> None:
    settings = serving_settings(
        serving_ws, tmp_path, auth=AuthSettings(enabled=True, keys_env="JML_TEST_KEYS")
    )
    config = write_settings(settings, tmp_path / "serving.yaml")
    port = free_port()
    env = {**os.environ, "JML_TEST_KEYS": KEYS}
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "journeyml"),
            "serve",
            "--config",
            str(config),
            "--data-dir",
            str(serving_ws.sim.root),
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # A cold start (imports, model downloads from the registry, the first online read)
        # takes well over a minute on a loaded 2-core machine: wait for readiness, and say so
        # when it never comes instead of failing later on a request.
        deadline, ready = time.time() + 300, False
        while not ready and time.time() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0 if ready else 1)
        assert ready, "the server did not become ready within 300 s"
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/next-best-action",
            json={"customer_id": serving_ws.customers[8]},
            headers=H,
            timeout=30,
        )
        assert r.status_code == 200 and r.json()["decision_id"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
