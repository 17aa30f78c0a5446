"""A PostgreSQL state store that stops answering: every call is bounded by the client's own
clock, the first one and a new connection included, and service resumes by itself (issue 19).

The database is reached through a TCP proxy of the test's own that can be paused: paused, it
accepts connections and keeps the bytes without forwarding them, which is what a client sees of
a server stopped with SIGSTOP (the kernel still accepts and acknowledges, nothing answers), and
the machine's shared PostgreSQL is never stopped.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from serving.state import STORE_ERRORS, StateStore, StoreUnavailableError
from tests.services import require_postgres

TIMEOUT_MS = 300.0
BOUND_S = 2 * TIMEOUT_MS / 1000  # the watchdog's hold limit, and the connect's
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class PausableProxy:
    """Forwards 127.0.0.1:<port> to PostgreSQL; while paused nothing is forwarded."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.running = threading.Event()
        self.running.set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def pause(self) -> None:
        self.running.clear()

    def resume(self) -> None:
        self.running.set()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                self.running.wait()  # paused: the bytes wait here, unanswered
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self.running.set()
        self._listener.close()
        for s in self._sockets:
            s.close()


@pytest.fixture
def proxied() -> Iterator[tuple[PausableProxy, StateStore]]:
    require_postgres()
    proxy = PausableProxy(("127.0.0.1", 5432))
    url = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/test"
    store = StateStore(url, table_prefix=f"p{uuid.uuid4().hex[:10]}_", timeout_ms=TIMEOUT_MS)
    store.guard(probe_seconds=0.2)
    yield proxy, store
    proxy.resume()
    direct = StateStore(
        "postgresql+psycopg://postgres@127.0.0.1:5432/test", table_prefix=store.prefix
    )
    for table in (direct.requests, direct.feedback_table, direct.contacts, direct.decisions):
        table.drop(direct.engine, checkfirst=True)
    direct.close()
    store.close()
    proxy.close()


def timed_failure(call: object) -> tuple[float, BaseException]:
    started = time.monotonic()
    try:
        call()  # type: ignore[operator]
    except STORE_ERRORS as exc:
        return time.monotonic() - started, exc
    raise AssertionError("the call succeeded against a paused database")


def test_a_paused_postgres_bounds_the_first_call_and_new_connections(
    proxied: tuple[PausableProxy, StateStore],
) -> None:
    proxy, store = proxied
    assert store.record_feedback("d1", "clicked", T0) == "unknown_decision"  # pooled, warm
    proxy.pause()
    # the first call waits on a pooled connection that never answers: the watchdog cuts it
    seconds, exc = timed_failure(lambda: store.record_feedback("d1", "clicked", T0))
    assert seconds < BOUND_S + 1.0, seconds
    assert not isinstance(exc, StoreUnavailableError)
    assert store.breaker is not None and store.breaker.is_open
    # then the breaker answers at once
    seconds, exc = timed_failure(lambda: store.record_feedback("d1", "clicked", T0))
    assert isinstance(exc, StoreUnavailableError) and seconds < 0.05
    # a new connection (the pool emptied, as the breaker's probe does) is bounded too
    store.engine.dispose()
    started = time.monotonic()
    with pytest.raises(STORE_ERRORS):
        store.ping()
    assert time.monotonic() - started < BOUND_S + 1.0
    proxy.resume()
    deadline = time.monotonic() + 5
    while store.breaker.is_open:
        assert time.monotonic() < deadline, f"still down: {store.breaker.error}"
        time.sleep(0.05)
    assert store.record_feedback("d1", "clicked", T0) == "unknown_decision"
