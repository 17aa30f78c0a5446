"""The state store under concurrency: many simultaneous commits for one customer, from threads
and from separate processes (as several server workers share one store), never break a cap;
simultaneous identical feedback is stored once. SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing
import socket
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from serving.state import (
    Candidate,
    ChannelCap,
    CommitResult,
    ContactPolicy,
    DecisionRecord,
    StateStore,
)
from tests.services import skip_or_fail

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
CAP = 3
POLICY = ContactPolicy((ChannelCap("email", CAP, 7), ChannelCap("any", 10, 30)), 0.0, 3, 30.0)
CUSTOMER = "one-busy-customer"
ATTEMPTS = 50
PROCESSES = 5


def postgres_available(host: str = "127.0.0.1", port: int = 5432) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(url, table prefix) of a fresh store; the tables are created before any worker runs."""
    if request.param == "postgres" and not postgres_available():
        skip_or_fail("PostgreSQL is not running on 127.0.0.1:5432")
    url = PG_URL if request.param == "postgres" else f"sqlite:///{tmp_path / 'state.db'}"
    prefix = f"c{uuid.uuid4().hex[:10]}_"
    store = StateStore(url, table_prefix=prefix)
    yield url, prefix
    if request.param == "postgres":
        for table in (store.requests, store.feedback_table, store.contacts, store.decisions):
            table.drop(store.engine, checkfirst=True)
    store.close()


def attempt(store: StateStore, i: int, worker: int = 0) -> CommitResult:
    """One decision for the busy customer: a new email action at (almost) the same time."""
    contact = Candidate(f"email_{worker}_{i}", "email")
    record = DecisionRecord(
        decision_id=f"w{worker}-{i}",
        decided_at=T0 + timedelta(milliseconds=i),
        customer_id=CUSTOMER,
        request={"channel": "web"},
        chosen_action=contact.action_id,
        propensity=1.0,
        channel="email",
        holdout=False,
        explored=False,
        fallback_reason=None,
        candidates=[{"action": contact.action_id, "removed_by": None}],
        features=None,
        feature_version="v1",
        model_versions={"churn": "1"},
        policy_version="p1",
    )
    return store.commit(record, contact, POLICY)


def stored_counts(store: StateStore) -> tuple[int, int]:
    with store.engine.connect() as conn:
        contacts = conn.execute(sa.select(sa.func.count()).select_from(store.contacts))
        decisions = conn.execute(sa.select(sa.func.count()).select_from(store.decisions))
        return int(contacts.scalar_one()), int(decisions.scalar_one())


def commit_worker(url: str, prefix: str, worker: int, start: Any, results: Any) -> None:
    """A server worker process: its own store (engine, pool), commits once the gate opens."""
    store = StateStore(url, table_prefix=prefix)
    try:
        per_worker = ATTEMPTS // PROCESSES
        with ThreadPoolExecutor(max_workers=2) as pool:
            start.wait(timeout=60)
            oks = list(pool.map(lambda i: attempt(store, i, worker).ok, range(per_worker)))
        results.put((worker, oks))
    except Exception as exc:  # reported to the parent, which fails the test
        results.put((worker, repr(exc)))
    finally:
        store.close()


def test_concurrent_commits_from_threads_never_exceed_the_cap(target: tuple[str, str]) -> None:
    store = StateStore(target[0], table_prefix=target[1])
    gate = threading.Barrier(ATTEMPTS)

    def run(i: int) -> CommitResult:
        gate.wait(timeout=30)
        return attempt(store, i)

    try:
        with ThreadPoolExecutor(max_workers=ATTEMPTS) as pool:
            results = list(pool.map(run, range(ATTEMPTS)))
        assert sum(r.ok for r in results) == CAP
        refused = [r for r in results if not r.ok]
        assert all(
            r.reason is not None and r.reason.startswith("email cap 3 per 7 days reached")
            for r in refused
        )
        assert stored_counts(store) == (CAP, CAP)  # a refused commit writes nothing
    finally:
        store.close()


def test_concurrent_commits_from_processes_never_exceed_the_cap(
    target: tuple[str, str],
) -> None:
    # Separate processes with their own engines, as server workers are. A fork server with
    # the store's module preloaded starts them in milliseconds instead of seconds each.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["serving.state", __name__])
    start = ctx.Event()
    results = ctx.Queue()
    procs = [
        ctx.Process(target=commit_worker, args=(*target, w, start, results))
        for w in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    try:
        start.set()
        outcomes = dict(results.get(timeout=60) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    errors = {w: r for w, r in outcomes.items() if isinstance(r, str)}
    assert not errors
    assert sum(sum(oks) for oks in outcomes.values()) == CAP
    store = StateStore(target[0], table_prefix=target[1])
    try:
        assert stored_counts(store) == (CAP, CAP)
    finally:
        store.close()


def test_concurrent_identical_feedback_is_stored_once(target: tuple[str, str]) -> None:
    store = StateStore(target[0], table_prefix=target[1])
    posts = 20
    gate = threading.Barrier(posts)
    try:
        assert attempt(store, 0).ok

        def post(_: int) -> str:
            gate.wait(timeout=30)
            return store.record_feedback("w0-0", "ignored", T0 + timedelta(hours=5))

        with ThreadPoolExecutor(max_workers=posts) as pool:
            statuses = list(pool.map(post, range(posts)))
        assert sorted(statuses) == ["created"] + ["duplicate"] * (posts - 1)
        assert store.feedback("w0-0") == [("ignored", T0 + timedelta(hours=5))]

        def post_unknown(_: int) -> str:
            return store.record_feedback("never-logged", "ignored", T0)

        with ThreadPoolExecutor(max_workers=4) as pool:
            assert set(pool.map(post_unknown, range(8))) == {"unknown_decision"}
        assert len(store.feedback("never-logged")) == 0
    finally:
        store.close()
