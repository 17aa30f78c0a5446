"""The circuit breaker: refuses calls while a store is down, closes when a probe succeeds."""

from __future__ import annotations

import threading
import time

import pytest

from serving.breaker import CircuitBreaker, StoreUnavailableError


def test_a_trip_refuses_calls_until_the_background_probe_succeeds() -> None:
    up = threading.Event()
    probes: list[float] = []

    def probe() -> None:
        probes.append(time.monotonic())
        if not up.is_set():
            raise ConnectionError("still down")

    breaker = CircuitBreaker("test store", probe, probe_seconds=0.02)
    breaker.check()  # closed: nothing raised
    breaker.trip(OSError("connection refused\n[SQL: ...]\n[parameters: ('C1',)]"))
    with pytest.raises(StoreUnavailableError, match="test store unavailable: OSError"):
        breaker.check()
    assert breaker.error is not None and "parameters" not in breaker.error
    deadline = time.monotonic() + 5
    while len(probes) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert breaker.is_open and "still down" in (breaker.error or "")
    up.set()
    while breaker.is_open and time.monotonic() < deadline:
        time.sleep(0.01)
    breaker.check()  # closed again
    assert breaker.trips == 1
    breaker.stop()


def test_repeated_trips_start_one_probe() -> None:
    calls = []
    breaker = CircuitBreaker("s", lambda: calls.append(1), probe_seconds=0.05)
    for _ in range(20):
        breaker.trip(OSError("down"))
    time.sleep(0.3)
    assert not breaker.is_open and len(calls) == 1 and breaker.trips == 1
    breaker.stop()
