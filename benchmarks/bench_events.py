"""`/v1/events`: the incremental journey state against recomputing each customer's history.

Usage::

    .venv/bin/python benchmarks/bench_events.py [--customers 500] [--seconds 10] [--batch 10]
        [--late-share 0.02] [--active 200] [--workdir /tmp/journeyml-bench-serving]

Builds once (kept in --workdir, shared with ``bench_serving.py``) a simulated workspace like
``make demo``. Then, for each ``event_state`` of the serving config in turn — ``incremental``
(the per-customer journey state) and ``recompute`` (the batch feature query over the
customer's whole history per request, the reference) — it starts ``bentoml serve`` and
measures with a separate load-generator process (``benchmarks/loadgen.py``):

1. warm-up: one request per active customer (the incremental server loads each state on first
   touch; the figure is reported as the cold first-touch latency);
2. saturation throughput (closed loop, 8 connections), in requests and events per second;
3. latency at half of that throughput (open loop: scheduled starts, queueing counts);
4. a burst of 50 concurrent requests: how many are answered (no 504).

Every request carries ``--batch`` new events of one customer (a burst of clicks), dated just
before the run and in order, except ``--late-share`` of them, dated 20 days earlier: late
events that make the incremental path replay that customer's events. Every event id is new,
so nothing is a cheap duplicate.

Targets (issue 17): ≥ 500 events/s, p99 ≤ 20 ms at half of saturation, 50 concurrent
requests all answered.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_serving import (  # noqa: E402
    build_workspace,
    free_port,
    load,
    serving_config,
    simulator_env,
)
from benchmarks.loadgen import encode_requests  # noqa: E402
from serving.auth import generate_key, hash_key  # noqa: E402

BIN = Path(sys.executable).parent
TYPES = ["page_view", "product_view", "add_to_cart", "login", "checkout_start", "purchase"]


def event_bodies(
    ids: list[str], n: int, batch: int, late_share: float, start: datetime, seed: int, tag: str
) -> list[dict[str, Any]]:
    """``n`` requests of ``batch`` new events each, customers in turn, times increasing."""
    rng = random.Random(seed)
    bodies = []
    for i in range(n):
        cid = ids[i % len(ids)]
        events = []
        for j in range(batch):
            at = start + timedelta(milliseconds=i, microseconds=j)
            if rng.random() < late_share:
                at -= timedelta(days=20)
            etype = rng.choice(TYPES)
            events.append(
                {
                    "event_id": f"{tag}-{i}-{j}",
                    "customer_id": cid,
                    "timestamp": at.isoformat(),
                    "event_type": etype,
                    "channel": rng.choice(["web", "app"]),
                    "session_id": f"{tag}-{cid}-{i // (len(ids) * 5)}",
                    **({"value": round(rng.uniform(5, 200), 2)} if etype == "purchase" else {}),
                }
            )
        bodies.append({"events": events})
    return bodies


def start_server(config: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    cmd = [
        str(BIN / "bentoml"),
        "serve",
        "serving.service:JourneyML",
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--working-dir",
        str(ROOT),
    ]
    env = {**env, "JOURNEYML_SERVING_CONFIG": str(config)}
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    import httpx

    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        time.sleep(1)
    proc.kill()
    raise RuntimeError("server not ready in 300 s")


def measure(
    state: str,
    data: Path,
    env: dict[str, str],
    ids: list[str],
    key: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    config = serving_config(data, f"bench-events-{state}")
    with config.open("a", encoding="utf-8") as out:
        out.write(f"event_state: {state}\n")
    port = free_port()
    proc = start_server(config, port, env)
    start = datetime.now(UTC) - timedelta(hours=2)
    tag = f"{state}{int(time.time())}"
    headers = {"x-api-key": key}
    pool = 20_000 if state == "incremental" else 1_500

    def requests(offset: int, n: int) -> list[bytes]:
        bodies = event_bodies(
            ids, n, args.batch, args.late_share, start + timedelta(seconds=offset), offset, tag
        )
        return encode_requests("127.0.0.1", port, "/v1/events", bodies, headers)

    try:
        # one request per customer, once: cold states (first touch) for the incremental path
        warm = load(port, requests(0, len(ids)), "sequential", count=len(ids))
        sat = load(port, requests(100, pool), "closed", concurrency=8, seconds=args.seconds)
        half = load(
            port,
            requests(200, pool),
            "open",
            concurrency=8,
            seconds=args.seconds,
            rate=max(sat["rps"] / 2, 0.5),
        )
        burst = load(port, requests(300, 50), "burst", concurrency=50)
        return {
            "warm_up": warm,
            "saturation": {**sat, "events_per_s": round(sat["rps"] * args.batch, 1)},
            "half_load": half,
            "burst_50": burst,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=10, help="events per request")
    parser.add_argument("--active", type=int, default=200, help="customers sending events")
    parser.add_argument("--late-share", type=float, default=0.02)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/journeyml-bench-serving"))
    parser.add_argument("--only", choices=["incremental", "recompute"], default=None)
    args = parser.parse_args()

    data = build_workspace(args.workdir, args.customers, "sqlite")
    import pandas as pd

    ids = sorted(
        pd.read_parquet(data / "features" / "journey_features", columns=["customer_id"])[
            "customer_id"
        ]
        .unique()
        .tolist()
    )[: args.active]
    key = generate_key()
    env = {
        **simulator_env(),
        "JOURNEYML_DATA_DIR": str(data.resolve()),
        "JOURNEYML_API_KEYS": json.dumps(
            [{"id": "bench", "sha256": hash_key(key), "scopes": ["write-events", "decide"]}]
        ),
        "BENTOML_DO_NOT_TRACK": "true",
        "PYTHONPATH": str(ROOT),
    }
    results: dict[str, dict[str, Any]] = {}
    for state in ("incremental", "recompute"):
        if args.only and state != args.only:
            continue
        results[state] = measure(state, data, env, ids, key, args)
        print(state, json.dumps(results[state]), flush=True)
    if len(results) == 2:
        inc, ref = results["incremental"], results["recompute"]
        ratio = inc["saturation"]["events_per_s"] / max(ref["saturation"]["events_per_s"], 1e-9)
        print(
            f"\nsaturation: incremental {inc['saturation']['events_per_s']:.0f} events/s "
            f"({inc['saturation']['rps']:.0f} req/s), recompute "
            f"{ref['saturation']['events_per_s']:.1f} events/s: ratio {ratio:.1f} "
            "(target >= 500 events/s)"
        )
        print(
            f"p99 at half of saturation: incremental {inc['half_load']['p99_ms']:.1f} ms "
            f"(target <= 20), recompute {ref['half_load']['p99_ms']:.0f} ms"
        )
        print(
            "50 concurrent requests answered 2xx: incremental "
            f"{inc['burst_50']['requests'] - inc['burst_50']['errors']:.0f}, recompute "
            f"{ref['burst_50']['requests'] - ref['burst_50']['errors']:.0f}"
        )
        print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
