"""Posting monitoring incidents to a webhook (Slack-compatible JSON).

A post never blocks or fails the monitoring run: it runs in a daemon thread that the caller
waits for at most ``timeout_seconds × (retries + 1)`` plus the backoffs; each attempt has its
own timeout, a failed attempt (connection refused, timeout, HTTP status other than 2xx) is
retried ``retries`` times, and the outcome — delivered or not, and why — is returned for the
run's summary. Only incidents that are new or whose status changed since the last delivery
(recorded in a small state file next to the output) are posted, so a daily run does not repeat
itself. Messages hold incident summaries only: no customer id, no URL secret in the logs.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from evaluation.monitor import WebhookSettings

logger = logging.getLogger(__name__)


@dataclass
class Delivery:
    """What happened to one webhook post."""

    target: str  # scheme://host[:port] only: the path may hold a secret token
    posted: int = 0
    attempts: int = 0
    delivered: bool = False
    error: str | None = None
    skipped: int = 0  # incidents already delivered with the same status
    incidents: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "posted": self.posted,
            "attempts": self.attempts,
            "delivered": self.delivered,
            "error": self.error,
            "skipped": self.skipped,
        }


def webhook_url(settings: WebhookSettings) -> str | None:
    """The configured URL, or the one in the environment variable ``url_env``."""
    if settings.url:
        return settings.url
    if settings.url_env:
        return os.environ.get(settings.url_env) or None
    return None


def slack_payload(incidents: list[dict[str, Any]], title: str) -> dict[str, Any]:
    """A Slack-compatible message: a ``text`` fallback and one section block per incident."""
    lines = []
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}}
    ]
    for inc in incidents:
        end = inc.get("end") or "ongoing"
        value = inc.get("value_at_stake")
        stake = (
            f"value at stake {value:,.0f}"
            if isinstance(value, int | float)
            else f"{inc.get('affected_customers', 0):,} customers (the log has no values)"
        )
        text = (
            f"*#{inc.get('rank')}* {inc.get('headline')}\n"
            f"{inc.get('start')} → {end} · {inc.get('affected_customers', 0):,} customers · "
            f"{stake} · segments: {', '.join(inc.get('segments') or [])} · "
            f"KPIs: {', '.join(inc.get('kpis') or [])}"
        )
        lines.append(text)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}})
    return {"text": f"{title}\n" + "\n".join(lines), "blocks": blocks[:50]}


def _post_once(url: str, body: bytes, timeout: float) -> None:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        status = getattr(response, "status", 200)
        if not 200 <= status < 300:
            raise urllib.error.HTTPError(url, status, "not a 2xx answer", None, None)  # type: ignore[arg-type]


def _state_key(inc: dict[str, Any]) -> str:
    return f"{inc.get('incident')}|{inc.get('status')}"


def post_incidents(
    incidents: list[dict[str, Any]],
    settings: WebhookSettings,
    state_file: Path | None = None,
    title: str = "journeyml monitoring",
) -> Delivery | None:
    """Posts the new or changed incidents (at most ``max_incidents``, most severe first).

    Returns None when no URL is configured; else what happened (never raises for a network
    problem). The state file records what was delivered, so the next run skips it.
    """
    url = webhook_url(settings)
    if not url:
        return None
    parts = urlsplit(url)
    delivery = Delivery(target=f"{parts.scheme}://{parts.netloc}")
    if parts.scheme not in ("http", "https"):
        delivery.error = f"the webhook URL must be http or https, not {parts.scheme!r}"
        return delivery
    sent: set[str] = set()
    if state_file is not None and state_file.is_file():
        try:
            sent = set(json.loads(state_file.read_text()).get("delivered", []))
        except (OSError, ValueError):
            sent = set()
    fresh = [i for i in incidents if _state_key(i) not in sent]
    delivery.skipped = len(incidents) - len(fresh)
    fresh = fresh[: settings.max_incidents]
    if not fresh:
        delivery.delivered = True
        return delivery
    body = json.dumps(slack_payload(fresh, f"{title}: {len(fresh)} incident(s)")).encode()

    def attempt_all() -> None:
        for attempt in range(settings.retries + 1):
            delivery.attempts = attempt + 1
            try:
                _post_once(url, body, settings.timeout_seconds)
            except urllib.error.HTTPError as exc:
                delivery.error = f"HTTP {exc.code} {exc.reason}"
                if attempt < settings.retries:
                    time.sleep(settings.backoff_seconds * (2**attempt))
                continue
            except (OSError, urllib.error.URLError, ValueError) as exc:
                delivery.error = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
                if attempt < settings.retries:
                    time.sleep(settings.backoff_seconds * (2**attempt))
                continue
            delivery.delivered, delivery.error = True, None
            delivery.posted = len(fresh)
            return

    worker = threading.Thread(target=attempt_all, name="monitor-webhook", daemon=True)
    worker.start()
    budget = (settings.timeout_seconds + settings.backoff_seconds * 2**settings.retries) * (
        settings.retries + 1
    )
    worker.join(budget + 1.0)
    if worker.is_alive():
        delivery.error = f"no answer within {budget:.0f} s; the run went on without it"
    if delivery.delivered:
        delivery.incidents = [_state_key(i) for i in fresh]
        if state_file is not None:
            keep = sorted(sent | set(delivery.incidents))
            try:
                state_file.write_text(json.dumps({"delivered": keep}, indent=1))
            except OSError as exc:
                logger.warning("could not record the delivered incidents: %s", exc)
    else:
        logger.warning("webhook %s: %s", delivery.target, delivery.error)
    return delivery
