"""Faults against a real server process: Redis paused and killed, the state store locked,
the worker killed, unbounded inputs, and edge-case requests (issue 19).

Timing bounds appear only where the behaviour is a time: a decision answers within its
deadline (+20 ms) while Redis hangs, and service resumes within 5 s of a store coming back.
The machine running these is shared and noisy, so the first is asserted on the median of the
answers during the fault (each one bounded far below the 12 s stalls it replaces).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.reliability.conftest import FaultRig, H
from tests.services import unwritable

pytestmark = pytest.mark.slow

LONG = os.environ.get("JOURNEYML_LONG_FAULTS") == "1"
"""The long version (``make reliability``): Redis paused 10 s as in the issue's probe, and
more generated requests; the default (``make test``, CI) keeps the suite within its budget."""
PAUSE_SECONDS = 10.0 if LONG else 3.0
RECOVERY_SECONDS = 5.0
FALLBACKS = ("feature_store_timeout", "feature_store_unavailable")


def timed(call: Callable[[], httpx.Response]) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = call()
    return time.perf_counter() - started, response


def nba(rig: FaultRig, i: int) -> httpx.Response:
    return rig.server.post(
        "/v1/next-best-action", {"customer_id": rig.customers[i % len(rig.customers)]}
    )


def wait_until(check: Callable[[], bool], seconds: float) -> float:
    """Seconds until ``check()`` holds; fails after ``seconds``."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if check():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s")


def served_normally(rig: FaultRig) -> bool:
    r = nba(rig, 3)
    return r.status_code == 200 and r.json()["fallback_reason"] is None


# -- bad inputs ----------------------------------------------------------------------------


def raw_request(rig: FaultRig, head: str, body: bytes, wait: float) -> tuple[float, bytes]:
    """Sends a hand-made request, returns (seconds to the answer, the answer's bytes)."""
    with socket.create_connection(("127.0.0.1", rig.server.port), timeout=30) as s:
        started = time.perf_counter()
        s.sendall(head.encode() + body)
        s.settimeout(wait)
        answer = s.recv(65536)
        return time.perf_counter() - started, answer


def test_bad_inputs_get_clear_4xx_without_echo(rig: FaultRig) -> None:
    cid = rig.customers[1]
    url = rig.server.url
    for route in ("/v1/next-best-action", "/v1/score", "/v1/events", "/v1/feedback"):
        # multipart without a boundary was a 500
        r = httpx.post(
            f"{url}{route}", content=b"x", timeout=30,
            headers={**H, "content-type": "multipart/form-data"},
        )  # fmt: skip
        assert r.status_code == 415, (route, r.status_code, r.text)
        # a JSON body sent form-encoded was echoed back in a 400, customer id included
        r = httpx.post(
            f"{url}{route}", content=json.dumps({"customer_id": cid}).encode(), timeout=30,
            headers={**H, "content-type": "application/x-www-form-urlencoded"},
        )  # fmt: skip
        assert r.status_code == 415 and cid not in r.text
    assert cid not in rig.server.log_text()
    # a body shorter than its Content-Length: 408 after the body timeout (1 s), not 504 at 10 s
    head = (
        f"POST /v1/score HTTP/1.1\r\nhost: x\r\nx-api-key: {H['x-api-key']}\r\n"
        "content-type: application/json\r\ncontent-length: 100\r\n\r\n"
    )
    seconds, answer = raw_request(rig, head, b'{"customer_ids": [', wait=9)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert seconds < 9
    # a repeated id: every copy answered (the earlier copies were "unknown")
    r = rig.server.post("/v1/score", {"customer_ids": [cid, cid, cid]})
    assert r.status_code == 200
    assert [x.get("known") for x in r.json()["results"]] == [True, True, True]


def test_the_openapi_document_matches_the_service(rig: FaultRig) -> None:
    spec = httpx.get(f"{rig.server.url}/docs.json", timeout=30).json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {"type": "apiKey", "in": "header", "name": "x-api-key"}
    assert schemes["Bearer"]["scheme"] == "bearer"
    for route in ("/v1/next-best-action", "/v1/score", "/v1/events", "/v1/feedback"):
        op = spec["paths"][route]["post"]
        assert {"400", "401", "403", "413", "415", "503"} <= set(op["responses"])
        assert (
            op["responses"]["400"]["content"]["application/json"]["schema"]["properties"]["detail"][
                "type"
            ]
            == "array"
        )
    text = json.dumps(spec)
    assert '"maxItems": 1000' not in text and '"maxItems": 10000' not in text
    assert '"maxItems": 100' in text and '"maxItems": 200' in text


# -- bounded memory ------------------------------------------------------------------------


def test_distinct_unknown_paths_do_not_grow_memory(rig: FaultRig) -> None:
    worker = rig.server.worker()
    n = 10_000

    def hit(start: int) -> None:
        with httpx.Client(base_url=rig.server.url, timeout=30) as client:
            for i in range(start, n, 4):
                assert client.get(f"/probe/{i}/x{i * 7919}").status_code == 404

    with httpx.Client(base_url=rig.server.url, timeout=30) as client:  # warm the 404 path
        for i in range(200):
            client.get(f"/warm/{i}")
    before = worker.memory_info().rss
    threads = [threading.Thread(target=hit, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    grown = (worker.memory_info().rss - before) / 2**20
    assert grown < 10, f"{n} distinct unknown paths grew the worker by {grown:.1f} MB"
    metrics = httpx.get(f"{rig.server.url}/metrics", timeout=30).text
    assert "/probe/" not in metrics and "/__unknown__" in metrics


# -- Redis hangs and dies ------------------------------------------------------------------


class Load:
    """Decisions and liveness probes in the background, each call's time and answer kept."""

    def __init__(self, rig: FaultRig):
        self.rig = rig
        self.decisions: list[tuple[float, float, int, dict[str, Any]]] = []  # t, s, status, body
        self.livez: list[tuple[float, float, int]] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._decide, daemon=True),
            threading.Thread(target=self._live, daemon=True),
        ]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def _decide(self) -> None:
        i = 0
        with httpx.Client(base_url=self.rig.server.url, headers=H, timeout=30) as client:
            while not self._stop.is_set():
                cid = self.rig.customers[i % len(self.rig.customers)]
                at = time.monotonic()
                seconds, r = timed(
                    lambda cid=cid: client.post("/v1/next-best-action", json={"customer_id": cid})
                )
                self.decisions.append((at, seconds, r.status_code, r.json()))
                i += 1
                time.sleep(0.01)

    def _live(self) -> None:
        with httpx.Client(base_url=self.rig.server.url, timeout=30) as client:
            while not self._stop.is_set():
                at = time.monotonic()
                seconds, r = timed(lambda: client.get("/livez"))
                self.livez.append((at, seconds, r.status_code))
                time.sleep(0.05)

    def between(self, start: float, end: float) -> list[tuple[float, float, int, dict[str, Any]]]:
        return [d for d in self.decisions if start <= d[0] and d[0] + d[1] <= end]


def test_redis_paused_then_killed_mid_load(rig: FaultRig) -> None:
    deadline_s = rig.server.settings.deadline_ms / 1000
    wait_until(lambda: served_normally(rig), 30)
    with Load(rig) as load:
        time.sleep(1.0)
        paused_at = time.monotonic()
        rig.redis.pause()
        time.sleep(PAUSE_SECONDS)
        resumed_at = time.monotonic()
        rig.redis.resume()
        recovered = wait_until(lambda: served_normally(rig), 30)
        time.sleep(0.5)
        killed_at = time.monotonic()
        rig.redis.kill()
        time.sleep(2.0)
        ready = httpx.get(f"{rig.server.url}/readyz", timeout=30)
        died_for = time.monotonic()
    assert recovered < RECOVERY_SECONDS, f"recovered {recovered:.1f} s after Redis resumed"
    paused = load.between(paused_at, resumed_at)
    assert len(paused) >= 10, "decisions stalled while Redis was paused"
    assert all(s == 200 and b["fallback_reason"] in FALLBACKS for _, _, s, b in paused)
    seconds = [d[1] for d in paused]
    assert statistics.median(seconds) <= deadline_s + 0.020, seconds
    assert max(seconds) < 2.0, max(seconds)  # was ~12 s a call
    dead = load.between(killed_at, died_for)
    assert len(dead) >= 10 and all(b["fallback_reason"] in FALLBACKS for *_, b in dead)
    assert statistics.median(d[1] for d in dead) <= deadline_s + 0.020
    assert all(code == 200 and s < 2.0 for _, s, code in load.livez), max(load.livez)
    assert ready.status_code == 503
    assert ready.json()["components"]["online_store"]["ok"] is False
    # Redis returns (empty: no persistence): service resumes, decisions are cold starts
    rig.redis.start()
    back = wait_until(lambda: served_normally(rig), 30)
    assert back < RECOVERY_SECONDS, f"recovered {back:.1f} s after Redis restarted"
    assert httpx.get(f"{rig.server.url}/readyz", timeout=30).status_code == 200
    from features.online import load_latest_snapshot
    from features.store import open_store

    store = open_store(rig.store_settings, rig.workspace)
    load_latest_snapshot(store, rig.catalog, rig.workspace.snapshots)


# -- the state store locked ----------------------------------------------------------------


def test_state_store_locked_then_released(rig: FaultRig) -> None:
    d = nba(rig, 5).json()
    assert d["logged"] is True
    holder = sqlite3.connect(rig.state_db, timeout=30, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")  # every other writer waits, then gives up
        feedback = rig.server.post(
            "/v1/feedback", {"decision_id": d["decision_id"], "outcome": "clicked"}
        )
        assert feedback.status_code == 503, feedback.text
        assert "state store unavailable" in feedback.json()["error"]
        assert d["decision_id"] not in feedback.text and d["customer_id"] not in feedback.text
        decided = nba(rig, 6)
        assert decided.status_code == 200 and decided.json()["logged"] is False
        ready = httpx.get(f"{rig.server.url}/readyz", timeout=30)
        assert ready.status_code == 503 and not ready.json()["components"]["state_store"]["ok"]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    released = time.monotonic()

    def stored() -> bool:
        r = rig.server.post("/v1/feedback", {"decision_id": d["decision_id"], "outcome": "clicked"})
        return r.status_code == 200

    wait_until(stored, RECOVERY_SECONDS)
    assert time.monotonic() - released < RECOVERY_SECONDS
    assert httpx.get(f"{rig.server.url}/readyz", timeout=30).status_code == 200
    log = rig.server.log_text()
    assert d["customer_id"] not in log and "[parameters" not in log


def test_state_store_unwritable_then_restored(rig: FaultRig) -> None:
    """The database and its write-ahead log immutable (root's read-only file system, where
    chmod changes nothing): 503 on feedback, decisions unlogged, readiness 503; writable
    again, service resumes by itself without a restart."""
    d = nba(rig, 7).json()
    assert d["logged"] is True
    db = rig.state_db
    with unwritable(db, db.with_name(db.name + "-wal")):
        feedback = rig.server.post(
            "/v1/feedback", {"decision_id": d["decision_id"], "outcome": "clicked"}
        )
        assert feedback.status_code == 503, feedback.text
        assert "state store unavailable" in feedback.json()["error"]
        assert d["decision_id"] not in feedback.text and d["customer_id"] not in feedback.text
        decided = nba(rig, 8)
        assert decided.status_code == 200 and decided.json()["logged"] is False
        assert decided.json()["fallback_reason"] == "state_store_unavailable"
        ready = httpx.get(f"{rig.server.url}/readyz", timeout=30)
        assert ready.status_code == 503 and not ready.json()["components"]["state_store"]["ok"]
    restored = time.monotonic()

    def stored() -> bool:
        r = rig.server.post("/v1/feedback", {"decision_id": d["decision_id"], "outcome": "clicked"})
        return r.status_code == 200

    wait_until(stored, RECOVERY_SECONDS)
    assert time.monotonic() - restored < RECOVERY_SECONDS
    assert httpx.get(f"{rig.server.url}/readyz", timeout=30).status_code == 200
    assert nba(rig, 8).json()["logged"] is True
    log = rig.server.log_text()
    assert d["customer_id"] not in log and "[parameters" not in log


# -- the worker killed ---------------------------------------------------------------------


def test_kill_9_of_the_worker_loses_no_acknowledged_decision(rig: FaultRig) -> None:
    acked: list[str] = []
    stop = threading.Event()

    def load() -> None:
        i = 0
        with httpx.Client(base_url=rig.server.url, headers=H, timeout=10) as client:
            while not stop.is_set():
                try:
                    r = client.post(
                        "/v1/next-best-action", json={"customer_id": rig.customers[i % 50]}
                    )
                except httpx.HTTPError:
                    time.sleep(0.1)
                    continue
                if r.status_code == 200 and r.json()["logged"]:
                    acked.append(r.json()["decision_id"])
                i += 1

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(acked) >= 20, 60)
        worker = rig.server.worker()
        worker.kill()  # SIGKILL, mid-load
        before = len(acked)
        wait_until(lambda: len(acked) >= before + 20, 240)  # a new worker serves again
    finally:
        stop.set()
        thread.join(timeout=30)
    con = sqlite3.connect(rig.state_db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {row[0] for row in con.execute("SELECT decision_id FROM jml_decisions")}
    finally:
        con.close()
    missing = [d for d in acked if d not in stored]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged decisions lost"


# -- the OpenAPI document against the service ----------------------------------------------

EXAMPLES = 100 if LONG else 15  # per operation and generation mode, derandomized


def test_the_service_keeps_its_openapi_document(rig: FaultRig) -> None:
    """Schemathesis: requests generated from the document, valid and invalid, against every
    operation; no 5xx, and every status, content type and body as the document says."""
    schema = schemathesis.openapi.from_url(f"{rig.server.url}/docs.json")
    # an invalid body over limits.max_body_bytes is refused for its size first: 413, as the
    # document says (the long version's generator makes such bodies; schemathesis' default
    # rejection statuses leave 413 out)
    rejection = schema.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/next-best-action", "/v1/score", "/livez"}
    for operation in operations:
        # a GET without parameters has no invalid form to generate
        post = operation.method.upper() == "POST"
        for mode in list(GenerationMode) if post else [GenerationMode.POSITIVE]:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case: Any) -> None:
                case.call_and_validate(
                    base_url=rig.server.url, headers=dict(H), timeout=30,
                    # a valid-looking date can still be outside the event contract's window
                    # (it depends on the lake's first event), which no OpenAPI schema can
                    # state: that 400 is tested by the time-bound tests, not here
                    excluded_checks=[positive_data_acceptance],
                )  # fmt: skip

            check()
