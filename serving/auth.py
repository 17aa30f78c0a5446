"""API keys with scopes, stored hashed, and the HTTP guard in front of the endpoints.

A key is a random token shown once (``journeyml serve keygen``); only its sha256 is stored, in
the environment variable ``JOURNEYML_API_KEYS`` and/or a JSON file, as entries::

    [{"id": "orchestrator", "sha256": "<hex>", "scopes": ["decide", "score"]}]

(the variable may also hold ``id:sha256:scope,scope;id:...``). Callers send
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Keys are long random tokens, so a plain
sha256 is the right hash (as for GitHub tokens): a slow password hash would only add latency.

:class:`RequestGuard` is an ASGI middleware: requests over the body limit get 413 before
anything reads them, requests to a protected route without a valid key 401, with a key that
lacks the route's scope 403. Health, metrics and the API docs stay open. Neither keys nor
bodies are ever logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCOPES = ("decide", "score", "write-events", "feedback")
ROUTE_SCOPES = {
    "/v1/next-best-action": "decide",
    "/v1/score": "score",
    "/v1/events": "write-events",
    "/v1/feedback": "feedback",
}
logger = logging.getLogger(__name__)
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
API_KEY_ID = "journeyml.api_key_id"
"""Where the guard leaves the id of the request's API key in the ASGI scope."""
_HEX = re.compile(r"^[0-9a-f]{64}$")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class KeyConfigError(ValueError):
    """The key configuration is malformed; the message says where (never the key)."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    """A new random API key (256 bits)."""
    return "jml_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class ApiKey:
    id: str
    sha256: str
    scopes: frozenset[str]


def _entry(raw: Mapping[str, Any], where: str) -> ApiKey:
    key_id, digest, scopes = raw.get("id"), raw.get("sha256"), raw.get("scopes")
    if not isinstance(key_id, str) or not _ID.match(key_id):
        raise KeyConfigError(f"{where}: id must match {_ID.pattern}")
    if not isinstance(digest, str) or not _HEX.match(digest):
        raise KeyConfigError(f"{where} ({key_id}): sha256 must be 64 lower-case hex digits")
    if not isinstance(scopes, list) or not scopes or any(s not in SCOPES for s in scopes):
        raise KeyConfigError(f"{where} ({key_id}): scopes must be a list from {', '.join(SCOPES)}")
    return ApiKey(key_id, digest, frozenset(scopes))


def parse_keys(text: str, where: str) -> list[ApiKey]:
    """Entries from JSON (a list of objects) or ``id:sha256:scope,scope;...``."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KeyConfigError(f"{where}: not valid JSON (line {exc.lineno})") from None
        if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
            raise KeyConfigError(f"{where}: expected a list of key objects")
        return [_entry(e, f"{where}[{i}]") for i, e in enumerate(data)]
    out = []
    for i, part in enumerate(p for p in text.split(";") if p.strip()):
        fields = part.strip().split(":")
        if len(fields) != 3:
            raise KeyConfigError(f"{where} entry {i}: expected id:sha256:scope,scope")
        out.append(
            _entry(
                {"id": fields[0], "sha256": fields[1], "scopes": fields[2].split(",")},
                f"{where} entry {i}",
            )
        )
    return out


class KeyRing:
    """The accepted keys, looked up by hash.

    Keys from a file are re-read when the file changes (checked at most once a second), so
    a key added with ``journeyml serve-keygen`` works without a restart; a file that became
    invalid keeps the previous keys and logs why.
    """

    def __init__(
        self, keys: list[ApiKey], env_keys: list[ApiKey] | None = None, path: Path | None = None
    ):
        self._env = env_keys if env_keys is not None else keys
        self._path = path
        self._stamp: float | None = None
        self._checked = 0.0
        self._by_hash = {k.sha256: k for k in keys}

    @classmethod
    def load(cls, env_var: str, path: str | Path | None) -> KeyRing:
        env_keys = parse_keys(os.environ.get(env_var, ""), f"${env_var}")
        ring = cls(env_keys, env_keys, Path(path) if path is not None else None)
        ring._reload()
        return ring

    def _reload(self) -> None:
        self._checked = time.monotonic()
        if self._path is None:
            return
        try:
            stamp = self._path.stat().st_mtime if self._path.is_file() else None
        except OSError:
            return
        if stamp == self._stamp:
            return
        try:
            file_keys = (
                parse_keys(self._path.read_text(encoding="utf-8"), str(self._path))
                if stamp is not None
                else []
            )
        except (KeyConfigError, OSError) as exc:
            logger.error("API keys not reloaded: %s", exc)
            return
        self._stamp = stamp
        self._by_hash = {k.sha256: k for k in [*self._env, *file_keys]}

    def __len__(self) -> int:
        return len(self._by_hash)

    def check(self, presented: str | None, scope: str) -> tuple[int, ApiKey | None]:
        """(HTTP status, key): 200 with the key, 401 unknown or missing, 403 wrong scope."""
        if time.monotonic() - self._checked > 1.0:
            self._reload()
        if not presented:
            return 401, None
        key = self._by_hash.get(hash_key(presented))
        if key is None or not secrets.compare_digest(key.sha256, hash_key(presented)):
            return 401, None
        if scope not in key.scopes:
            return 403, key
        return 200, key


async def _reply(send: Send, status: int, error: str) -> None:
    body = json.dumps({"error": error}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI middleware: body size limit, then API key and scope for the protected routes."""

    def __init__(self, app: ASGIApp, keyring: KeyRing | None, max_body_bytes: int):
        self.app = app
        self.keyring = keyring
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _reply(send, 413, f"request body larger than {self.max_body} bytes")
            return
        route = ROUTE_SCOPES.get(scope.get("path", "").rstrip("/"))
        if route is not None and self.keyring is not None:
            presented = headers.get("x-api-key")
            auth = headers.get("authorization", "")
            if presented is None and auth.lower().startswith("bearer "):
                presented = auth[7:].strip()
            status, key = self.keyring.check(presented, route)
            if key is not None:  # the handlers scope idempotency keys by the caller
                scope[API_KEY_ID] = key.id
            if status == 401:
                await _reply(send, 401, "missing or unknown API key")
                return
            if status == 403:
                await _reply(send, 403, f"this API key lacks the {route!r} scope")
                return
        # Bodies without a length (chunked) are counted as they arrive: past the limit the
        # app gets an end of body, and whatever it answers is replaced by 413.
        seen = 0
        oversize = False

        async def limited_receive() -> Message:
            nonlocal seen, oversize
            if oversize:
                return {"type": "http.request", "body": b"", "more_body": False}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    oversize = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded_send(message: Message) -> None:
            if not oversize:
                await send(message)
            elif message["type"] == "http.response.start":
                await _reply(send, 413, f"request body larger than {self.max_body} bytes")

        await self.app(scope, limited_receive, guarded_send)
