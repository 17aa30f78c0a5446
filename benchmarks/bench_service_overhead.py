"""BentoML's own work per request, in process: the service's ASGI app against the decision alone.

Usage::

    .venv/bin/python benchmarks/bench_service_overhead.py [--calls 3000]
        [--workdir /tmp/journeyml-bench-serving]

Uses the workspace of ``bench_serving.py`` (built there if missing). In one process it loads
``serving.service:JourneyML``, starts its ASGI app (lifespan) and then, alternating customer by
customer, times the thread CPU of

1. ``Runtime.next_best_action`` called directly (the reference: the decision with its feature
   read, models, rules, contact policy and decision record);
2. the same request through the ASGI app: BentoML's middleware (metrics, tracing, timeout,
   context), the API-key guard, request parsing and validation, the endpoint, the response;
3. a request with a wrong API key, which stops at the guard: the middleware stack in front of it.

No sockets and no load generator, so the figures are the server's CPU per request, not
latency; the difference of (2) and (1) is what BentoML and the HTTP layer add to a decision.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_serving import build_workspace, serving_config, simulator_env  # noqa: E402
from serving.auth import generate_key, hash_key  # noqa: E402

Message = dict[str, Any]


async def call(app: Any, body: bytes, key: str) -> int:
    """One POST /v1/next-best-action through the ASGI app; returns the status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/next-best-action",
        "raw_path": b"/v1/next-best-action",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"localhost"),
            (b"content-type", b"application/json"),
            (b"x-api-key", key.encode()),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 3000),
        "state": {},
    }
    sent = False
    status = 0

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        return {}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def start(app: Any) -> None:
    """Runs the app's lifespan start-up (the service's ``__init__``: models, feature store)."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    asyncio.get_running_loop().create_task(app(scope, inbox.get, outbox.put))
    message = await outbox.get()
    if message["type"] != "lifespan.startup.complete":
        raise RuntimeError(message.get("message", "the service did not start"))


def summary(times: list[float]) -> str:
    ts = sorted(times)
    return (
        f"mean {1e3 * statistics.fmean(ts):.3f} ms, p50 {1e3 * ts[len(ts) // 2]:.3f} ms, "
        f"p99 {1e3 * ts[int(len(ts) * 0.99)]:.3f} ms"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--workdir", default="/tmp/journeyml-bench-serving")
    args = parser.parse_args()

    data = build_workspace(Path(args.workdir), args.customers, "sqlite")
    config = serving_config(data, "overhead")
    key = generate_key()
    os.environ.update(
        JOURNEYML_CONFIG_DIR=simulator_env()["JOURNEYML_CONFIG_DIR"],
        JOURNEYML_SERVING_CONFIG=str(config),
        JOURNEYML_DATA_DIR=str(data.resolve()),
        JOURNEYML_API_KEYS=json.dumps([{"id": "b", "sha256": hash_key(key), "scopes": ["decide"]}]),
        BENTOML_DO_NOT_TRACK="true",
    )
    import pandas as pd

    import serving.service as service
    from serving.runtime import Runtime
    from serving.schemas import NextBestActionRequest, RequestContext

    app = service.JourneyML.to_asgi()
    await start(app)
    ids = sorted(
        pd.read_parquet(data / "features" / "journey_features", columns=["customer_id"])[
            "customer_id"
        ].unique()
    )
    bodies = [json.dumps({"customer_id": c, "context": {"channel": "web"}}).encode() for c in ids]
    requests = [
        NextBestActionRequest(customer_id=c, context=RequestContext(channel="web")) for c in ids
    ]
    runtime = Runtime(service.SETTINGS)  # a second one, beside the service's, on the same stores

    async def direct(i: int) -> int:
        return runtime.next_best_action(requests[i % len(requests)]).status

    async def through_app(i: int) -> int:
        return await call(app, bodies[i % len(bodies)], key)

    async def rejected(i: int) -> int:
        return await call(app, bodies[i % len(bodies)], "wrong-key")

    kinds: dict[str, Callable[[int], Awaitable[int]]] = {
        "decision alone (Runtime.next_best_action)": direct,
        "through the BentoML ASGI app": through_app,
        "rejected at the API-key guard": rejected,
    }
    expected = {direct: 200, through_app: 200, rejected: 401}
    for i in range(200):  # warm-up
        for fn in kinds.values():
            assert await fn(i) == expected[fn]
    gc.collect()
    times: dict[str, list[float]] = {name: [] for name in kinds}
    for i in range(args.calls):
        for name, fn in kinds.items():
            t0 = time.thread_time()
            status = await fn(i)
            times[name].append(time.thread_time() - t0)
            if status != expected[fn]:
                raise RuntimeError(f"{name}: status {status}")
    for name, ts in times.items():
        print(f"{name:45s} {summary(ts)}")
    alone = statistics.fmean(times["decision alone (Runtime.next_best_action)"])
    app_mean = statistics.fmean(times["through the BentoML ASGI app"])
    print(
        f"\nBentoML and HTTP add {1e3 * (app_mean - alone):.3f} ms a decision: "
        f"ratio decision / whole request {alone / app_mean:.2f} "
        f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )


if __name__ == "__main__":
    asyncio.run(main())
