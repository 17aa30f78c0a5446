"""API keys (hashed, scoped) and the request guard: 401/403/413 before the app sees anything."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.auth import (
    KeyConfigError,
    KeyRing,
    RequestGuard,
    generate_key,
    hash_key,
    parse_keys,
)

KEY = generate_key()
OTHER = generate_key()
RING = KeyRing(
    parse_keys(
        json.dumps(
            [
                {"id": "orchestrator", "sha256": hash_key(KEY), "scopes": ["decide", "score"]},
                {"id": "ingest", "sha256": hash_key(OTHER), "scopes": ["write-events"]},
            ]
        ),
        "test",
    )
)


async def echo(scope: Any, receive: Any, send: Any) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    payload = json.dumps({"path": scope["path"], "bytes": len(body)}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": payload})


def client(limit: int = 1000) -> httpx.AsyncClient:
    app = RequestGuard(echo, RING, max_body_bytes=limit)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/v1/next-best-action", {}, 401),
        ("/v1/next-best-action", {"x-api-key": "jml_wrong"}, 401),
        ("/v1/next-best-action", {"x-api-key": KEY}, 200),
        ("/v1/next-best-action", {"authorization": f"Bearer {KEY}"}, 200),
        ("/v1/score", {"x-api-key": KEY}, 200),
        ("/v1/events", {"x-api-key": KEY}, 403),
        ("/v1/events", {"x-api-key": OTHER}, 200),
        ("/v1/feedback", {"x-api-key": OTHER}, 403),
        ("/livez", {}, 200),
        ("/metrics", {}, 200),
    ],
)
async def test_keys_and_scopes(path: str, headers: dict[str, str], status: int) -> None:
    async with client() as c:
        r = await c.post(path, content=b"{}", headers=headers)
    assert r.status_code == status
    if status != 200:
        assert KEY not in r.text and "jml_wrong" not in r.text


@pytest.mark.anyio
async def test_body_limit_with_and_without_content_length() -> None:
    async with client(limit=100) as c:
        r = await c.post("/v1/score", content=b"x" * 101, headers={"x-api-key": KEY})
        assert r.status_code == 413
        assert "100 bytes" in r.json()["error"]

        async def chunks() -> Any:
            for _ in range(5):
                yield b"y" * 40

        r = await c.post("/v1/score", content=chunks(), headers={"x-api-key": KEY})
        assert r.status_code == 413
        r = await c.post("/v1/score", content=b"z" * 100, headers={"x-api-key": KEY})
        assert r.status_code == 200 and r.json()["bytes"] == 100


def test_key_configuration_errors_name_the_entry_not_the_key() -> None:
    with pytest.raises(KeyConfigError, match=r"test\[0\].*sha256"):
        parse_keys('[{"id": "a", "sha256": "nothex", "scopes": ["decide"]}]', "test")
    with pytest.raises(KeyConfigError, match="scopes"):
        parse_keys(f'[{{"id": "a", "sha256": "{"0" * 64}", "scopes": ["admin"]}}]', "test")
    with pytest.raises(KeyConfigError, match="entry 0"):
        parse_keys("just-a-key", "$ENV")
    ring = KeyRing(parse_keys(f"ops:{hash_key(KEY)}:feedback,score", "$ENV"))
    assert ring.check(KEY, "score")[0] == 200 and ring.check(KEY, "decide")[0] == 403


def test_keys_added_to_the_file_work_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.json"
    path.write_text(json.dumps([{"id": "a", "sha256": hash_key(KEY), "scopes": ["score"]}]))
    ring = KeyRing.load("JML_UNSET_VARIABLE", path)
    assert ring.check(OTHER, "score")[0] == 401
    entries = json.loads(path.read_text())
    entries.append({"id": "b", "sha256": hash_key(OTHER), "scopes": ["score"]})
    path.write_text(json.dumps(entries))
    os.utime(path, (time.time() + 5, time.time() + 5))
    ring._checked = 0.0  # the next check re-reads (at most once a second otherwise)
    assert ring.check(OTHER, "score")[0] == 200
    path.write_text("[not json")  # a broken file keeps the keys that worked
    os.utime(path, (time.time() + 10, time.time() + 10))
    ring._checked = 0.0
    assert ring.check(KEY, "score")[0] == 200
