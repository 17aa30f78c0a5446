"""Request ids and previews in the state store: a request key is stored once with its answer
(concurrent retries from threads or from separate processes: one decision, one contact), it
expires, and previews are logged without a contact and left out of the decision log that
off-policy evaluation reads. SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing
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
    ContactPolicy,
    DecisionRecord,
    DuplicateRequestError,
    RequestKey,
    StateStore,
)
from tests.serving.test_state_concurrency import postgres_available

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
POLICY = ContactPolicy((ChannelCap("email", 1, 7),), 0.0, 0, 0.0)
EMAIL = Candidate("winback_email", "email")
CUSTOMER = "retried-customer"
ATTEMPTS = 24
PROCESSES = 4


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(url, table prefix) of a fresh store whose tables exist before any worker runs."""
    if request.param == "postgres" and not postgres_available():
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    url = PG_URL if request.param == "postgres" else f"sqlite:///{tmp_path / 'state.db'}"
    prefix = f"r{uuid.uuid4().hex[:10]}_"
    store = StateStore(url, table_prefix=prefix)
    yield url, prefix
    if request.param == "postgres":
        for table in (store.requests, store.feedback_table, store.contacts, store.decisions):
            table.drop(store.engine, checkfirst=True)
    store.close()


def key(request_id: str = "order-42:retry-safe", caller: str = "orchestrator") -> RequestKey:
    return RequestKey(caller, request_id, datetime.now(UTC) + timedelta(hours=1))


def record(decision_id: str, customer_id: str = CUSTOMER, mode: str = "decide") -> DecisionRecord:
    return DecisionRecord(
        decision_id=decision_id,
        decided_at=T0,
        customer_id=customer_id,
        request={"channel": "web"},
        chosen_action=EMAIL.action_id,
        propensity=1.0,
        channel=EMAIL.channel,
        holdout=False,
        explored=False,
        fallback_reason=None,
        candidates=[{"action": EMAIL.action_id, "removed_by": None}],
        features=None,
        feature_version=None,
        model_versions={"churn": "1"},
        policy_version="p1",
        mode=mode,
    )


def decide_once(
    store: StateStore, decision_id: str, request: RequestKey, customer_id: str = CUSTOMER
) -> str:
    """One call of a retried request: "stored", or "duplicate" when another call stored it."""
    rec = record(decision_id, customer_id)
    try:
        store.settle(
            customer_id, [EMAIL], POLICY, T0, lambda _: (rec, EMAIL), request,
            lambda r: f'{{"decision_id": "{r.decision_id}"}}',
        )  # fmt: skip
    except DuplicateRequestError:
        return "duplicate"
    return "stored"


def counts(store: StateStore) -> tuple[int, int, int]:
    with store.engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
            for t in (store.decisions, store.contacts, store.requests)
        )


def test_a_request_key_is_stored_once_with_its_answer(target: tuple[str, str]) -> None:
    store = StateStore(*target[:1], table_prefix=target[1])
    try:
        assert store.find_request(key()) is None
        assert decide_once(store, "d1", key()) == "stored"
        stored = store.find_request(key())
        assert stored is not None
        assert (stored.customer_id, stored.decision_id, stored.mode) == (CUSTOMER, "d1", "decide")
        assert stored.answer == '{"decision_id": "d1"}'
        assert decide_once(store, "d2", key()) == "duplicate"
        assert store.decision("d2") is None and counts(store) == (1, 1, 1)
        # another caller's key with the same request id is its own
        assert store.find_request(key(caller="other")) is None
    finally:
        store.close()


def test_an_expired_request_key_can_be_used_again(target: tuple[str, str]) -> None:
    store = StateStore(*target[:1], table_prefix=target[1])
    try:
        expired = RequestKey("c", "nightly-1", datetime.now(UTC) - timedelta(seconds=1))
        assert decide_once(store, "d1", expired, "cust-a") == "stored"
        assert store.find_request(expired) is None
        store._next_purge = float("inf")  # the key's own expired row gives way, not a purge
        assert decide_once(store, "d2", key("nightly-1", "c"), "cust-b") == "stored"
        stored = store.find_request(key("nightly-1", "c"))
        assert stored is not None and stored.decision_id == "d2"
        assert counts(store)[2] == 1
    finally:
        store.close()


def test_a_preview_records_no_contact_and_stays_out_of_the_evaluated_log(
    target: tuple[str, str],
) -> None:
    store = StateStore(*target[:1], table_prefix=target[1])
    try:
        preview = record("p1", mode="preview")
        store.settle(CUSTOMER, [EMAIL], POLICY, T0, lambda _: (preview, None))
        assert store.blocked(CUSTOMER, [EMAIL], POLICY, T0) == {}  # the cap counts no preview
        with pytest.raises(ValueError, match="a preview records no contact"):
            store.settle(
                CUSTOMER, [EMAIL], POLICY, T0, lambda _: (record("p2", mode="preview"), EMAIL)
            )
        assert store.commit(record("d1"), EMAIL, POLICY).ok
        got = store.decision("p1")
        assert got is not None and got.mode == "preview"
        logged = list(store.iter_decisions())
        assert [list(f["decision_id"]) for f in logged] == [["d1"]]
        every = next(iter(store.iter_decisions(include_previews=True)))
        assert dict(zip(every["decision_id"], every["mode"], strict=True)) == {
            "d1": "decide",
            "p1": "preview",
        }
        assert not every.set_index("decision_id").loc["p1", "contacted"]
        assert counts(store)[:2] == (2, 1)
    finally:
        store.close()


def test_a_decision_table_of_an_earlier_version_gets_the_mode_column(
    target: tuple[str, str],
) -> None:
    store = StateStore(*target[:1], table_prefix=target[1])
    assert store.commit(record("old-1"), None, POLICY).ok
    with store.engine.begin() as conn:
        conn.exec_driver_sql(f"ALTER TABLE {store.decisions.name} DROP COLUMN mode")
    store.close()
    store = StateStore(*target[:1], table_prefix=target[1])
    try:
        got = store.decision("old-1")
        assert got is not None and got.mode == "decide"
        assert store.commit(record("new-1", mode="preview"), None, POLICY).ok
        assert len(next(iter(store.iter_decisions()))) == 1
    finally:
        store.close()


def test_concurrent_retries_from_threads_store_one_decision_and_one_contact(
    target: tuple[str, str],
) -> None:
    store = StateStore(*target[:1], table_prefix=target[1])
    gate = threading.Barrier(ATTEMPTS)

    def run(i: int) -> str:
        gate.wait(timeout=30)
        return decide_once(store, f"t{i}", key())

    try:
        with ThreadPoolExecutor(max_workers=ATTEMPTS) as pool:
            outcomes = list(pool.map(run, range(ATTEMPTS)))
        assert sorted(outcomes) == ["duplicate"] * (ATTEMPTS - 1) + ["stored"]
        stored = store.find_request(key())
        assert stored is not None
        assert stored.decision_id == f"t{outcomes.index('stored')}"
        assert counts(store) == (1, 1, 1)
    finally:
        store.close()


def test_one_request_id_for_many_customers_at_once_is_stored_once(
    target: tuple[str, str],
) -> None:
    # different customers take different locks: the key's uniqueness alone decides
    store = StateStore(*target[:1], table_prefix=target[1])
    gate = threading.Barrier(8)

    def run(i: int) -> str:
        gate.wait(timeout=30)
        return decide_once(store, f"c{i}", key("shared"), f"customer-{i}")

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            outcomes = list(pool.map(run, range(8)))
        assert outcomes.count("stored") == 1
        assert counts(store) == (1, 1, 1)
    finally:
        store.close()


def retry_worker(url: str, prefix: str, worker: int, start: Any, results: Any) -> None:
    """A server worker process retrying the same request: its own engine and pool."""
    store = StateStore(url, table_prefix=prefix)
    try:
        per_worker = ATTEMPTS // PROCESSES
        with ThreadPoolExecutor(max_workers=2) as pool:
            start.wait(timeout=60)
            outcomes = list(
                pool.map(lambda i: decide_once(store, f"w{worker}-{i}", key()), range(per_worker))
            )
        results.put((worker, outcomes))
    except Exception as exc:  # reported to the parent, which fails the test
        results.put((worker, repr(exc)))
    finally:
        store.close()


def test_concurrent_retries_from_processes_store_one_decision_and_one_contact(
    target: tuple[str, str],
) -> None:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["serving.state", __name__])
    start = ctx.Event()
    results = ctx.Queue()
    procs = [
        ctx.Process(target=retry_worker, args=(*target, w, start, results))
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
    every = [o for worker in outcomes.values() for o in worker]
    assert sorted(every) == ["duplicate"] * (ATTEMPTS - 1) + ["stored"]
    store = StateStore(target[0], table_prefix=target[1])
    try:
        assert counts(store) == (1, 1, 1)
        assert store.find_request(key()) is not None
    finally:
        store.close()
