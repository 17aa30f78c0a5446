"""A small HTTP/1.1 load generator for the serving benchmark (keep-alive, raw asyncio streams).

A Python client on the same 2-core machine competes with the server for CPU, so it is kept as
light as possible: requests are pre-encoded bytes, responses are read by Content-Length, and
it runs in its own process. Three modes:

- ``closed``: ``concurrency`` connections send back to back for ``seconds`` → saturation
  throughput;
- ``open``: requests start at a fixed ``rate`` (spread over ``concurrency`` connections)
  → latency at a given load;
- ``sequential``: one connection, ``count`` requests one after another → the slowest call;
- ``burst``: ``concurrency`` connections each send one request at the same moment → whether
  every one of a burst is answered.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: np.ndarray
    statuses: dict[int, int]

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else 0.0

    def summary(self) -> dict[str, Any]:
        lat = self.latencies_ms
        return {
            "requests": self.requests,
            "errors": self.errors,
            "rps": round(self.throughput, 1),
            "p50_ms": round(self.pct(50), 3),
            "p99_ms": round(self.pct(99), 3),
            "max_ms": round(float(lat.max()) if len(lat) else 0.0, 3),
            "over_50ms": int((lat > 50).sum()),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
        }


def encode_requests(
    host: str, port: int, path: str, bodies: Sequence[dict[str, object]], headers: dict[str, str]
) -> list[bytes]:
    out = []
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    for body in bodies:
        data = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n{extra}\r\n"
        ).encode()
        out.append(head + data)
    return out


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> int:
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:].strip())
    if length:
        await reader.readexactly(length)
    return status


async def _run(
    host: str,
    port: int,
    requests: list[bytes],
    mode: str,
    concurrency: int,
    seconds: float,
    rate: float,
    count: int,
) -> LoadResult:
    conns = [await asyncio.open_connection(host, port) for _ in range(concurrency)]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    stop_at = time.perf_counter() + seconds
    counter = 0

    def record(started: float, status: int) -> None:
        nonlocal errors
        latencies.append((time.perf_counter() - started) * 1000)
        statuses[status] = statuses.get(status, 0) + 1
        if status >= 400:
            errors += 1

    async def closed(i: int) -> None:
        nonlocal counter
        reader, writer = conns[i]
        while time.perf_counter() < stop_at:
            req = requests[counter % len(requests)]
            counter += 1
            t0 = time.perf_counter()
            record(t0, await _one(reader, writer, req))

    async def opened(i: int) -> None:
        nonlocal counter
        reader, writer = conns[i]
        interval = concurrency / rate
        next_at = time.perf_counter() + i * interval / concurrency
        while next_at < stop_at:
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            req = requests[counter % len(requests)]
            counter += 1
            # latency counts from the scheduled start: queueing behind a slow call counts
            t0 = next_at
            record(t0, await _one(reader, writer, req))
            next_at += interval

    started = time.perf_counter()
    if mode == "closed":
        await asyncio.gather(*(closed(i) for i in range(concurrency)))
    elif mode == "open":
        await asyncio.gather(*(opened(i) for i in range(concurrency)))
    elif mode == "burst":

        async def once(i: int) -> None:
            reader, writer = conns[i]
            t0 = time.perf_counter()
            try:
                status = await _one(reader, writer, requests[i % len(requests)])
            except (ConnectionError, asyncio.IncompleteReadError):
                status = 599  # the server dropped the connection: not answered
            record(t0, status)

        await asyncio.gather(*(once(i) for i in range(concurrency)))
    else:
        reader, writer = conns[0]
        for n in range(count):
            t0 = time.perf_counter()
            record(t0, await _one(reader, writer, requests[n % len(requests)]))
    elapsed = time.perf_counter() - started
    for _, writer in conns:
        writer.close()
    return LoadResult(len(latencies), errors, elapsed, np.asarray(latencies), statuses)


def run_load(
    host: str,
    port: int,
    requests: list[bytes],
    mode: str,
    concurrency: int = 8,
    seconds: float = 10.0,
    rate: float = 100.0,
    count: int = 1000,
) -> LoadResult:
    """Runs one load in this process (call it from a child process of the benchmark)."""
    return asyncio.run(_run(host, port, requests, mode, concurrency, seconds, rate, count))
