"""The lean reference path of the serving benchmark: the same work without BentoML.

A bare Starlette app on uvicorn with one route, ``POST /v1/next-best-action``, that does what
the BentoML endpoint does: the same API-key check, the same request model, the same
:class:`serving.runtime.Runtime` (Feast online read, all models, rules, contact policy, decision
log). Only the web framework differs, so the ratio of the two is BentoML's cost.

Usage: ``python benchmarks/lean_server.py PORT`` with the same environment as the service.
"""

from __future__ import annotations

import os
import sys

import uvicorn
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from serving.auth import RequestGuard
from serving.config import load_serving_settings
from serving.runtime import Runtime, freeze_heap, load_keyring
from serving.schemas import NextBestActionRequest

INLINE = os.environ.get("JOURNEYML_INLINE", "1") == "1"


def build() -> RequestGuard:
    settings = load_serving_settings(
        os.environ.get("JOURNEYML_SERVING_CONFIG") or None,
        os.environ.get("JOURNEYML_DATA_DIR"),
    )
    runtime = Runtime(settings)
    keys = load_keyring(settings)

    async def handler(request: Request) -> JSONResponse:
        try:
            req = NextBestActionRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            return JSONResponse({"error": str(exc.error_count())}, status_code=400)
        # inline on the event loop, as the BentoML endpoint runs the engine (one worker, CPU
        # bound: a thread hop only adds a hand-off); JOURNEYML_INLINE=0 uses the thread pool
        if INLINE:
            reply = runtime.next_best_action(req)
        else:
            reply = await run_in_threadpool(runtime.next_best_action, req)
        return JSONResponse(reply.body, status_code=reply.status)

    app = Starlette(routes=[Route("/v1/next-best-action", handler, methods=["POST"])])
    freeze_heap()
    return RequestGuard(app, keys, settings.limits.max_body_bytes)


if __name__ == "__main__":
    uvicorn.run(
        build(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False
    )
