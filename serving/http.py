"""The HTTP edge in front of the API: health answers, bounded metrics labels, media types,
whole bodies within a time limit, and an OpenAPI document that matches the service.

:class:`EdgeGuard` is an ASGI middleware (inside :class:`serving.auth.RequestGuard`, outside
BentoML's own middlewares and routes):

* ``/livez`` is answered here, before anything else, and touches no store;
* ``/readyz`` reports each component (:meth:`serving.runtime.Runtime.readiness`, run in a
  thread, so a slow store never holds the event loop) and answers 503 while a required one is
  down;
* a path the service does not serve reaches BentoML as ``/__unknown__`` (see
  :func:`fold_unknown_paths`): it still gets 404, but BentoML's request metrics, labelled by
  path, count every unknown path under that one label instead of growing a label set, and
  memory, per distinct path (10,000 distinct 404 paths grew the worker by 196 MB);
* a POST to an API route must be ``application/json`` (415 otherwise, before the body is
  parsed, so a form-encoded or multipart body is never echoed back or logged), and its whole
  body must arrive within ``body_timeout`` seconds (408 otherwise: a body shorter than its
  ``Content-Length`` held the worker's request slot until BentoML's 10 s timeout);
* ``/docs.json`` gets BentoML's document with what it leaves out: the API-key and Bearer
  security schemes, the real request limits, and every status the API answers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import anyio.to_thread

from serving.auth import ASGIApp, Message, Receive, RequestGuard, Scope, Send
from serving.config import LimitSettings, ServingSettings

UNKNOWN_PATH = "/__unknown__"
STATIC_PREFIX = "/static_content/"
SERVER_PATHS = frozenset({"/", "/docs.json", "/metrics", "/livez", "/readyz", "/healthz"})


@dataclass
class RuntimeSlot:
    """Where the service instance puts its runtime once built (the middleware is created by
    the server before the service's ``__init__`` runs)."""

    readiness: Callable[[], dict[str, Any]] | None = None


def install(service: Any, settings: ServingSettings, slot: RuntimeSlot) -> None:
    """Puts the API key guard and :class:`EdgeGuard` in front of a BentoML service class, and
    declares its responses JSON once (otherwise BentoML derives the media type from the output
    model's JSON schema on every response: 0.24 ms each, and garbage for the collector)."""
    from serving.runtime import load_keyring

    for api in service.apis.values():
        api.output_spec.media_type = "application/json"
    routes = [a.route if a.route.startswith("/") else f"/{a.route}" for a in service.apis.values()]
    fold_unknown_paths(routes)
    service.add_asgi_middleware(
        RequestGuard, keyring=load_keyring(settings), max_body_bytes=settings.limits.max_body_bytes
    )
    service.add_asgi_middleware(
        EdgeGuard,
        slot=slot,
        api_routes=routes,
        limits=settings.limits,
        body_timeout=settings.limits.body_timeout_seconds,
    )


def fold_unknown_paths(api_routes: Iterable[str]) -> None:
    """Makes BentoML's request metrics see ``/__unknown__`` for every path the service does
    not serve.

    BentoML puts its metrics middleware (``RunnerTrafficMetricsMiddleware``, labels
    ``endpoint=<raw path>``) outside every middleware a service adds, so the path can only be
    folded by wrapping that middleware's call; BentoML 1.4.39 offers no option for it. The
    wrapper is installed once per process and changes nothing for known paths.
    """
    from bentoml._internal.server.http import instruments

    known = frozenset(api_routes) | SERVER_PATHS
    cls: Any = instruments.RunnerTrafficMetricsMiddleware
    original = getattr(cls, "_journeyml_original_call", cls.__call__)

    async def call(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope.get("path", "")
            if (path.rstrip("/") or "/") not in known and not path.startswith(STATIC_PREFIX):
                scope = {**scope, "path": UNKNOWN_PATH, "raw_path": UNKNOWN_PATH.encode()}
        await original(self, scope, receive, send)

    cls._journeyml_original_call = original
    cls.__call__ = call


async def reply_json(send: Send, status: int, body: dict[str, Any] | bytes) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def is_json(content_type: str | None) -> bool:
    """``application/json`` or a ``+json`` type, parameters (charset) allowed."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class EdgeGuard:
    """ASGI middleware; see the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        slot: RuntimeSlot,
        api_routes: Iterable[str],
        limits: LimitSettings,
        body_timeout: float = 5.0,
    ):
        self.app = app
        self.slot = slot
        self.api_routes = frozenset(api_routes)
        self.limits = limits
        self.body_timeout = body_timeout
        self._docs: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path in ("/livez", "/readyz", "/docs.json"):
            if scope.get("method") not in ("GET", "HEAD"):
                await reply_json(send, 405, {"error": "method not allowed (GET)"})
            elif path == "/livez":
                await reply_json(send, 200, {"status": "alive"})
            elif path == "/readyz":
                await self._readyz(send)
            else:
                await self._openapi(scope, receive, send)
            return
        if (path.rstrip("/") or "/") in self.api_routes and scope.get("method") == "POST":
            await self._api(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _readyz(self, send: Send) -> None:
        readiness = self.slot.readiness
        if readiness is None:
            await reply_json(send, 503, {"ready": False, "detail": "starting"})
            return
        report = await anyio.to_thread.run_sync(readiness)
        await reply_json(send, 200 if report["ready"] else 503, report)

    async def _api(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not is_json(headers.get("content-type")):
            await reply_json(send, 415, {"error": "Content-Type must be application/json"})
            return
        chunks: list[bytes] = []
        received = 0
        try:
            async with asyncio.timeout(self.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return  # the client is gone: nobody to answer
                    chunk = message.get("body", b"")
                    chunks.append(chunk)
                    received += len(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            declared = headers.get("content-length", "unknown")
            await reply_json(
                send,
                408,
                {
                    "error": f"request body incomplete: {received} of {declared} bytes "
                    f"received within {self.body_timeout:g} s"
                },
            )
            return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _openapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._docs is None:
            status = 500
            parts: list[bytes] = []

            async def capture(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                elif message["type"] == "http.response.body":
                    parts.append(message.get("body", b""))

            await self.app(scope, receive, capture)
            if status != 200:
                await reply_json(send, status, b"".join(parts))
                return
            spec = complete_openapi(json.loads(b"".join(parts)), self.api_routes, self.limits)
            self._docs = json.dumps(spec).encode()
        await reply_json(send, 200, self._docs)


_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
}
_BAD_REQUEST = {
    "type": "object",
    "description": "a validation error (``detail``: the fields, never their values) or a "
    "limit (``error``)",
    "properties": {
        "detail": {"type": "array", "items": {"type": "object"}},
        "error": {"type": "string"},
    },
}
_STATUS = {
    "400": ("invalid request: the fields that are wrong, or a batch over its limit", _BAD_REQUEST),
    "401": ("missing or unknown API key", _ERROR),
    "403": ("the API key lacks this route's scope", _ERROR),
    "408": ("the body did not arrive in time (shorter than its Content-Length)", _ERROR),
    "413": ("request body over the size limit", _ERROR),
    "415": ("Content-Type is not application/json", _ERROR),
    "503": ("a store the route needs is unavailable; retry later", _ERROR),
}


SMALL_MAPPINGS = ("properties", "details")
SMALL_MAPPING = {
    "maxProperties": 20,
    "propertyNames": {"maxLength": 64},
    "additionalProperties": {
        "anyOf": [
            {"type": "string", "maxLength": 256},
            {"type": "number"},
            {"type": "boolean"},
            {"type": "null"},
        ]
    },
}
"""What :data:`serving.schemas.SmallMapping` accepts (its validator is not in the schema)."""


def complete_openapi(
    spec: dict[str, Any], api_routes: Iterable[str], limits: LimitSettings
) -> dict[str, Any]:
    """BentoML's OpenAPI document with the security schemes, the statuses and the limits the
    service enforces (the request models allow more than the configured limits)."""
    components = spec.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update(
        {
            "ApiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            "Bearer": {"type": "http", "scheme": "bearer"},
        }
    )
    for route in api_routes:
        operation = spec.get("paths", {}).get(route, {}).get("post")
        if operation is None:
            continue
        operation["security"] = [{"ApiKey": []}, {"Bearer": []}]
        if "requestBody" in operation:
            operation["requestBody"]["required"] = True  # no body is a 400
        responses = operation.setdefault("responses", {})
        for status, (description, schema) in _STATUS.items():
            responses[status] = {
                "description": description,
                "content": {"application/json": {"schema": schema}},
            }
        if route == "/v1/next-best-action":
            responses["409"] = {
                "description": "request_id already used for another customer or mode, or by "
                "a call that has not finished",
                "content": {"application/json": {"schema": _ERROR}},
            }
        if route == "/v1/feedback":
            responses["404"] = {
                "description": "unknown decision_id",
                "content": {"application/json": {"schema": _ERROR}},
            }
    _document_next_event(spec)
    _limit_arrays(spec, {"customer_ids": limits.max_customers, "events": limits.max_events})
    return spec


def _document_next_event(spec: dict[str, Any]) -> None:
    """The next step after the latest event in the answers' documentation: the ``NextEvent``
    schema, and where each answer carries it."""
    from serving.schemas import CustomerNextEventOut, NextEventOut

    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for name, model in (("NextEvent", NextEventOut), ("CustomerNextEvent", CustomerNextEventOut)):
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(body.pop("$defs", {}))
        schemas[name] = body
    where = {
        "/v1/events": "`next_steps`: a CustomerNextEvent for each customer updated",
        "/v1/next-best-action": "`scores.next_event`: a NextEvent (null without the model)",
        "/v1/score": "`results[].next_event`: a NextEvent (null without the model)",
    }
    for route, text in where.items():
        operation = spec.get("paths", {}).get(route, {}).get("post")
        if operation is None:
            continue
        ok = operation.setdefault("responses", {}).setdefault("200", {"description": "OK"})
        ok["description"] = (
            f"{ok.get('description') or 'OK'}. The next step after the latest event: {text} "
            "(see components.schemas)."
        )


def _limit_arrays(node: Any, limit: dict[str, int]) -> None:
    """Sets ``maxItems`` of the named array properties wherever a schema declares them
    (BentoML inlines the request schemas in each operation)."""
    if isinstance(node, list):
        for item in node:
            _limit_arrays(item, limit)
        return
    if not isinstance(node, dict):
        return
    properties = node.get("properties")
    if isinstance(properties, dict):
        for name, maximum in limit.items():
            prop = properties.get(name)
            if isinstance(prop, dict) and prop.get("type") == "array":
                prop["maxItems"] = min(int(prop.get("maxItems", maximum)), maximum)
        for name in SMALL_MAPPINGS:
            prop = properties.get(name)
            if isinstance(prop, dict):
                for option in [prop, *prop.get("anyOf", [])]:
                    if option.get("type") == "object":
                        option.update(SMALL_MAPPING)
    for value in node.values():
        _limit_arrays(value, limit)
