"""A circuit breaker per store: stop calling a store that is down, probe it in the background.

A request that finds a store down pays for one failed call at most: the first failure opens the
breaker, and from then on calls are refused at once (:class:`StoreUnavailableError`) instead of
each waiting for the store's timeout. A background thread calls the probe (a cheap read or
write) every ``probe_seconds``; the first probe that succeeds closes the breaker, so service
resumes by itself within about ``probe_seconds`` of the store coming back. No request ever
waits for a probe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class StoreUnavailableError(RuntimeError):
    """The store is known to be down (its breaker is open); the message says which and why."""


class CircuitBreaker:
    """Closed (calls go through) or open (calls refused, the store probed in the background).

    Args:
        name: the store's name, as readiness and the logs show it.
        probe: raises while the store is down; called only from the background thread.
        probe_seconds: the pause between probes while open.
    """

    def __init__(self, name: str, probe: Callable[[], None], probe_seconds: float = 0.5):
        self.name = name
        self._probe = probe
        self._probe_seconds = probe_seconds
        self._lock = threading.Lock()
        self._error: str | None = None
        self._opened_at: float | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self.trips = 0

    @property
    def is_open(self) -> bool:
        return self._error is not None

    @property
    def error(self) -> str | None:
        """Why the store is down (exception class and message), or None while closed."""
        return self._error

    def check(self) -> None:
        """Raises :class:`StoreUnavailableError` while the breaker is open."""
        error = self._error
        if error is not None:
            raise StoreUnavailableError(f"{self.name} unavailable: {error}")

    def trip(self, exc: BaseException) -> None:
        """Opens the breaker after a store error and starts probing in the background."""
        with self._lock:
            first = self._error is None
            self._error = f"{type(exc).__name__}: {_first_line(exc)}"
            if not first:
                return
            self.trips += 1
            self._opened_at = time.monotonic()
            logger.warning("%s is down, calls stop until a probe succeeds: %s", self.name, exc)
            if self._stopped.is_set():
                return
            self._thread = threading.Thread(
                target=self._probe_loop, name=f"probe-{self.name}", daemon=True
            )
            self._thread.start()

    def _probe_loop(self) -> None:
        while not self._stopped.wait(self._probe_seconds):
            try:
                self._probe()
            except Exception as exc:  # still down: the reason may have changed
                with self._lock:
                    self._error = f"{type(exc).__name__}: {_first_line(exc)}"
                continue
            with self._lock:
                down = time.monotonic() - (self._opened_at or time.monotonic())
                self._error = None
                self._opened_at = None
                self._thread = None
            logger.warning("%s is back after %.1f s", self.name, down)
            return

    def stop(self) -> None:
        """Ends the background probe (at shutdown)."""
        self._stopped.set()


def _first_line(exc: BaseException) -> str:
    """An error's message without what drivers append after the first line (SQLAlchemy adds
    the statement and its parameters there, and parameters may hold customer ids)."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""
