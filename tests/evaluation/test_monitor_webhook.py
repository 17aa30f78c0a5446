"""Incidents posted to a webhook: against a local HTTP server started by the test (one that
answers, one that fails then answers, and one that is down), the run always ends."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from evaluation.monitor import WebhookSettings
from evaluation.monitor_webhook import post_incidents, slack_payload
from journeyml.cli import app

INCIDENTS: list[dict[str, Any]] = [
    {
        "rank": 1,
        "incident": "2025-03-02:loop:basket <-> delivery:platform=mobile",
        "start": "2025-03-02",
        "end": None,
        "status": "ongoing",
        "segments": ["platform=mobile"],
        "kpis": ["loop:basket <-> delivery"],
        "affected_customers": 27,
        "value_at_stake": None,
        "headline": "Customers looped between basket and delivery (platform=mobile)",
    }
]


class _Server:
    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.calls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.calls += 1
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.calls <= fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.bodies.append(json.loads(body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/hooks/T000/secret"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.close()


def _down_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there any more
    return f"http://127.0.0.1:{port}/hook"


def test_incidents_are_posted_as_slack_json_once(server: _Server, tmp_path: Path) -> None:
    settings = WebhookSettings(url=server.url, retries=0)
    state = tmp_path / "state.json"
    delivery = post_incidents(INCIDENTS, settings, state)
    assert delivery is not None and delivery.delivered and delivery.posted == 1
    assert delivery.target == f"http://127.0.0.1:{server.httpd.server_port}"  # no secret path
    body = server.bodies[0]
    assert "basket and delivery" in body["text"]
    assert body["blocks"][0]["type"] == "header"
    assert "27 customers (the log has no values)" in body["blocks"][1]["text"]["text"]
    # the next run does not repeat it; a status change is posted again
    again = post_incidents(INCIDENTS, settings, state)
    assert again is not None and again.posted == 0 and again.skipped == 1
    assert len(server.bodies) == 1
    ended = [dict(INCIDENTS[0], status="ended", end="2025-03-20")]
    assert (post_incidents(ended, settings, state) or again).posted == 1
    assert len(server.bodies) == 2


def test_a_failing_server_is_retried_within_the_bound() -> None:
    flaky = _Server(fail_first=2)
    try:
        delivery = post_incidents(
            INCIDENTS, WebhookSettings(url=flaky.url, retries=2, backoff_seconds=0.01)
        )
        assert delivery is not None and delivery.delivered and delivery.attempts == 3
        assert flaky.calls == 3 and len(flaky.bodies) == 1
    finally:
        flaky.close()
    stubborn = _Server(fail_first=10)
    try:
        delivery = post_incidents(
            INCIDENTS, WebhookSettings(url=stubborn.url, retries=1, backoff_seconds=0.01)
        )
        assert delivery is not None and not delivery.delivered and stubborn.calls == 2
        assert "503" in str(delivery.error)
    finally:
        stubborn.close()


def test_a_server_that_is_down_does_not_stop_the_run(tmp_path: Path) -> None:
    settings = WebhookSettings(url=_down_url(), retries=2, backoff_seconds=0.01, timeout_seconds=1)
    began = time.monotonic()
    delivery = post_incidents(INCIDENTS, settings, tmp_path / "state.json")
    assert time.monotonic() - began < 10
    assert delivery is not None and not delivery.delivered and delivery.attempts == 3
    assert "refused" in str(delivery.error).lower() or "URLError" in str(delivery.error)
    assert not (tmp_path / "state.json").exists()  # nothing recorded as delivered


def test_no_url_no_post_and_only_http(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNEYML_MONITOR_WEBHOOK", raising=False)
    assert post_incidents(INCIDENTS, WebhookSettings()) is None
    bad = post_incidents(INCIDENTS, WebhookSettings(url="file:///etc/passwd"))
    assert bad is not None and not bad.delivered and "http" in str(bad.error)
    assert slack_payload([], "t")["blocks"][0]["text"]["text"] == "t"


def test_the_monitor_command_reports_a_failed_delivery_and_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.evaluation.test_monitor import SHOP, ingest_shop_log

    (tmp_path / "data").mkdir()
    ingest_shop_log(tmp_path / "data", 75, bug_from=60)
    (tmp_path / "journeys.yaml").write_text(json.dumps(SHOP.model_dump(mode="json")))
    (tmp_path / "monitoring.yaml").write_text("segments: [platform]\n")
    monkeypatch.setenv("JOURNEYML_MONITOR_WEBHOOK", _down_url())
    result = CliRunner().invoke(
        app,
        [
            "monitor", "--data-dir", str(tmp_path / "data"),
            "--config", str(tmp_path / "monitoring.yaml"),
            "--journeys", str(tmp_path / "journeys.yaml"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "not delivered" in result.output
    summary = json.loads(
        (tmp_path / "data" / "evaluation" / "monitoring" / "summary.json").read_text()
    )
    assert summary["webhook"]["delivered"] is False and summary["incidents"] >= 1
